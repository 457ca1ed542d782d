"""What a worker hosts: a declared library, or a user's Server32-style class.

Both forms end up as a fixed table of callables built once at start-up.
A request names an entry of that table and nothing else, so it can never
reach a library path, a private attribute or a dunder.

Whatever can never work with the configuration as written (a missing or
wrong-bitness library, a missing symbol, a wrapper module that does not
import, a class that is not there, options its constructor does not take)
raises :class:`ConfigError` (mostly :class:`LibraryLoadError`): the worker
reports it as permanent and is not restarted. Anything else a wrapper's
constructor raises may be transient (a device still busy) and is retried.
"""

import ctypes
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Mapping
from typing import Any, Callable

from protocol.errors import ArgumentError, ConfigError, LibraryLoadError

from .signatures import CFunction

__all__ = ["LIBRARY_KINDS", "Server32", "load_library", "build_methods", "call"]

LIBRARY_KINDS = ("cdll", "windll", "oledll")
"""The ``kind`` values a declared library may have, as msl-loadlib's ``libtype`` names them."""
_LOADERS = {"cdll": "CDLL", "windll": "WinDLL", "oledll": "OleDLL"}
"""The ctypes class of each kind (Windows only for the last two: ``__stdcall``, and HRESULTs checked)."""


def load_library(path: str, kind: str = "cdll") -> Any:
    """Load a shared library the way msl-loadlib's ``libtype`` names it."""
    if kind not in LIBRARY_KINDS:
        raise ConfigError(f"library kind {kind!r} is not one of {', '.join(LIBRARY_KINDS)}")
    if kind != "cdll" and sys.platform != "win32":
        raise LibraryLoadError(f"cannot load {path!r}: library kind {kind!r} exists only on Windows; use 'cdll'")
    if not os.path.exists(path):
        raise LibraryLoadError(f"library {path!r} does not exist")
    loader = getattr(ctypes, _LOADERS[kind])
    try:
        return loader(path)
    except OSError as exc:
        raise LibraryLoadError(
            f"cannot load {path!r} in this {8 * ctypes.sizeof(ctypes.c_void_p)}-bit process: {exc}"
        ) from None


class Server32:
    """Base class for wrapper modules, shaped like msl-loadlib's ``Server32``.

    Subclass it, call ``super().__init__(path, libtype)`` from the constructor,
    and give the subclass public methods: those are what clients can call.
    """

    def __init__(self, path: str, libtype: str = "cdll", **kwargs: Any) -> None:
        self.path = path
        self.lib = load_library(path, libtype)


def _import_module(spec: Mapping[str, Any]) -> Any:
    """The wrapper module; any failure to import it is permanent (running it again changes nothing)."""
    module = str(spec["module"])
    for extra in spec.get("path", []):
        if extra not in sys.path:
            sys.path.insert(0, extra)
    try:
        if not module.endswith(".py"):
            return importlib.import_module(module)
        name = "_dllpool_wrapper_" + os.path.splitext(os.path.basename(module))[0]
        file_spec = importlib.util.spec_from_file_location(name, module)
        if file_spec is None or file_spec.loader is None:
            raise ImportError("not a Python module")
        loaded = importlib.util.module_from_spec(file_spec)
        sys.modules[name] = loaded
        file_spec.loader.exec_module(loaded)
        return loaded
    except Exception as exc:
        raise LibraryLoadError(f"cannot import wrapper module {module!r}: {type(exc).__name__}: {exc}") from None


def _wrapper_methods(spec: Mapping[str, Any]) -> dict[str, Callable[..., Any]]:
    module = _import_module(spec)
    class_name = str(spec["class"])
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        raise LibraryLoadError(f"wrapper module {spec['module']!r} has no class {class_name!r}")
    options = dict(spec.get("options", {}))
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"the options of wrapper class {class_name!r} do not fit its constructor: {exc}") from None
    except ValueError:
        pass  # no introspectable signature: let the constructor decide
    instance = cls(**options)
    methods: dict[str, Callable[..., Any]] = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, (staticmethod, classmethod)) or inspect.isfunction(attr):
            methods[name] = getattr(instance, name)
    return methods


def _declared_methods(spec: Mapping[str, Any]) -> dict[str, Callable[..., Any]]:
    library = load_library(str(spec["library"]), str(spec.get("kind", "cdll")))
    structs = spec.get("structs", {})
    limit = spec.get("max_message_size")
    return {
        name: CFunction(library, name, decl, structs, limit) for name, decl in dict(spec.get("functions", {})).items()
    }


def build_methods(spec: Mapping[str, Any]) -> dict[str, Callable[..., Any]]:
    """The table of callables a worker exposes, from its service spec."""
    if "module" in spec:
        return _wrapper_methods(spec)
    if "library" in spec:
        return _declared_methods(spec)
    raise ConfigError("a service needs either 'library' (with 'functions') or 'module' and 'class'")


def call(function: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call a wrapper method or declared function; a signature mismatch is an ArgumentError."""
    if not isinstance(function, CFunction):
        try:
            inspect.signature(function).bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentError(f"{getattr(function, '__name__', 'method')}(): {exc}") from None
        except ValueError:
            pass  # no introspectable signature (a builtin); let the call itself decide
    return function(*args, **kwargs)
