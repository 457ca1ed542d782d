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
import functools
import importlib
import importlib.util
import inspect
import logging
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional, cast

from protocol.codec import StructFields, is_pointer
from protocol.errors import ArgumentError, ConfigError, LibraryLoadError
from protocol.frames import DROP_HANDLES, SESSION_CLOSE, SESSION_INIT

from .constants import LIBRARY_KINDS
from .handles import HANDLES
from .signatures import CFunction

__all__ = [
    "ATTRIBUTE",
    "LIBRARY_KINDS",
    "Hosted",
    "Server32",
    "build",
    "call",
    "load_library",
    "resolve_library",
]

log = logging.getLogger("workers32")

ATTRIBUTE = "dllpool:attribute"
"""The built-in method of a wrapper service that reads one public attribute or property of the wrapper object
(msl-loadlib's ``request32`` of a non-callable name). It is not a Python identifier, so no method can clash."""

_LOADERS = {"cdll": "CDLL", "windll": "WinDLL", "oledll": "OleDLL"}
"""The ctypes class of each kind (Windows only for the last two: ``__stdcall``, and HRESULTs checked)."""


def resolve_library(path: "str | os.PathLike[str]") -> str:
    """The file msl-loadlib's ``LoadLibrary`` would open for ``path``: a path without an extension gets this
    platform's (``.dll``, ``.dylib``, ``.so``); then it is looked for as given (relative to the working folder),
    by ``ctypes.util.find_library``, and in every ``sys.path`` and ``PATH`` folder (where a wrapper module's own
    folder is). A path found nowhere is returned as given, for :func:`load_library` to report."""
    original = os.fspath(path)
    if os.path.splitext(original)[1]:
        name = original
    else:
        name = original + {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")
    if os.path.isfile(name):
        return os.path.abspath(name)
    import ctypes.util  # here: it imports subprocess and shutil, 0.1 s of every worker's (and zygote's) start

    found = ctypes.util.find_library(original)
    if found is not None:
        return found
    for folder in sys.path + os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder, name)
        if folder and os.path.isfile(candidate):
            return candidate
    return name


def load_library(path: str, kind: str = "cdll", **options: Any) -> Any:
    """Load a shared library the way msl-loadlib's ``libtype`` names it; ``options`` go to ctypes (``mode``,
    ``use_errno``...), as msl-loadlib passes them."""
    if kind not in LIBRARY_KINDS:
        raise ConfigError(f"library kind {kind!r} is not one of {', '.join(LIBRARY_KINDS)}")
    if kind != "cdll" and sys.platform != "win32":
        raise LibraryLoadError(f"cannot load {path!r}: library kind {kind!r} exists only on Windows; use 'cdll'")
    if not os.path.exists(path) and os.path.dirname(path):
        raise LibraryLoadError(f"library {path!r} does not exist")
    loader = getattr(ctypes, _LOADERS[kind])
    try:
        return loader(path, **options)
    except OSError as exc:
        raise LibraryLoadError(
            f"cannot load {path!r} in this {8 * ctypes.sizeof(ctypes.c_void_p)}-bit process: {exc}"
        ) from None


_hosting = False
"""Set once this process builds what a worker hosts (before the wrapper module is imported)."""


class Server32:
    """Base class for wrapper modules, with msl-loadlib's ``Server32`` signature and behaviour.

    Subclass it, call ``super().__init__(path, libtype, host, port)`` from a constructor that takes
    ``(self, host, port, **kwargs)`` as msl-loadlib documents (or ``super().__init__(path, libtype)`` from one
    that takes only options), and give the subclass public methods: those are what clients can call.
    ``host`` and ``port`` are always None here: a worker has no server socket of its own. ``kwargs`` go to
    ctypes' loader, as msl-loadlib passes them to ``LoadLibrary``.
    """

    def __init__(
        self,
        path: "str | os.PathLike[str]",
        libtype: str = "cdll",
        host: Optional[str] = None,
        port: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        self._path = resolve_library(path)
        self._lib = load_library(self._path, libtype, **kwargs)

    @property
    def lib(self) -> Any:
        """The loaded library (a ``ctypes.CDLL``, ``WinDLL`` or ``OleDLL``)."""
        return self._lib

    @property
    def path(self) -> str:
        """The library file that was loaded."""
        return self._path

    def shutdown_handler(self) -> None:
        """Called once when the worker stops normally (its pool stops or shrinks); override it to close
        devices and files. A worker that crashes or is killed never gets here."""

    @staticmethod
    def version() -> str:
        """The Python version of the 32-bit worker, in msl-loadlib's ``python -V`` form."""
        return f"Python {platform.python_version()}"

    @staticmethod
    def is_interpreter() -> bool:
        """Whether this code runs in a 32-bit worker process (as msl-loadlib's does on its server)."""
        return _hosting

    @staticmethod
    def remove_site_packages_64bit() -> str:
        """msl-loadlib's helper, kept for wrappers that call it: a worker never has the 64-bit side's
        site-packages on its path, so there is nothing to remove and it returns an empty string."""
        return ""

    @staticmethod
    def interactive_console() -> None:
        """Not available: workers have no terminal. Run the 32-bit interpreter itself instead."""
        raise NotImplementedError(
            "dllpool has no interactive console on its workers; run the 32-bit interpreter directly "
            "(its path is in `dllpool status` or .runtime32/runtime32.json)"
        )


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


class Hosted(NamedTuple):
    """What a worker serves: its table of callables, and what to run when it stops."""

    methods: dict[str, Callable[..., Any]]
    close: Callable[[], None]


def _nothing() -> None:
    """The stop hook of what has nothing to close."""


def _takes_host_and_port(cls: type) -> bool:
    """Whether a wrapper's constructor is msl-loadlib's ``(self, host, port, **kwargs)``."""
    try:
        names = list(inspect.signature(cls).parameters)
    except ValueError:
        return False
    return names[:2] == ["host", "port"]


def _wrapper(spec: Mapping[str, Any]) -> Hosted:
    global _hosting
    _hosting = True
    module = _import_module(spec)
    class_name = str(spec["class"])
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        raise LibraryLoadError(f"wrapper module {spec['module']!r} has no class {class_name!r}")
    options = dict(spec.get("options", {}))
    positional = [None, None] if _takes_host_and_port(cls) else []  # msl-loadlib passes (host, port) first
    try:
        inspect.signature(cls).bind(*positional, **options)
    except TypeError as exc:
        raise ConfigError(f"the options of wrapper class {class_name!r} do not fit its constructor: {exc}") from None
    except ValueError:
        pass  # no introspectable signature: let the constructor decide
    instance = cls(*positional, **options)
    structs = _Structures(module)
    methods: dict[str, Callable[..., Any]] = {}
    for name in dir(cls):
        if name.startswith("_") or name == "shutdown_handler":
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, (staticmethod, classmethod)) or inspect.isfunction(attr):
            methods[name] = structs.rebuilding(getattr(instance, name))
    methods[ATTRIBUTE] = _attribute_reader(instance, methods)
    return Hosted(methods, getattr(instance, "shutdown_handler", _nothing))


def _attribute_reader(instance: Any, methods: Mapping[str, Any]) -> Callable[[str], Any]:
    """The :data:`ATTRIBUTE` built-in: the value of a public, non-callable attribute or property."""

    def attribute(name: str) -> Any:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise AttributeError(f"{name!r:.80} is not a public attribute name")
        value = getattr(instance, name)  # AttributeError: "'X' object has no attribute 'name'", as msl's
        if callable(value) and name not in methods:
            raise AttributeError(f"{type(instance).__name__}.{name} is callable but not a public method")
        return value

    return attribute


class _Structures:
    """Rebuilds the :class:`StructFields` in a wrapper method's arguments as the ctypes Structures they were,
    from the wrapper module's class of the same name; only classes defined in that module, and only with
    exactly their declared fields (a peer cannot instantiate anything else)."""

    def __init__(self, module: Any) -> None:
        self.classes = {
            name: cls
            for name, cls in vars(module).items()
            if inspect.isclass(cls)
            and issubclass(cls, (ctypes.Structure, ctypes.Union))
            and cls.__module__ == module.__name__
        }

    def rebuilding(self, method: Callable[..., Any]) -> Callable[..., Any]:
        if not self.classes:
            return method
        rebuild = self.rebuild

        def call(*args: Any, **kwargs: Any) -> Any:
            return method(*map(rebuild, args), **{k: rebuild(v) for k, v in kwargs.items()})

        call.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]  # for call()'s bind
        call.__name__ = getattr(method, "__name__", "method")
        return call

    def rebuild(self, value: Any) -> Any:
        if isinstance(value, StructFields):
            cls = self.classes.get(value.name)
            if cls is None:
                raise TypeError(f"the server module defines no ctypes Structure {value.name!r} to rebuild it as")
            return self._fill(cls, value)
        if isinstance(value, list):
            return [self.rebuild(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.rebuild(v) for v in value)
        if isinstance(value, dict):
            return {k: self.rebuild(v) for k, v in value.items()}
        return value

    def _fill(self, cls: Any, value: StructFields) -> Any:
        if value.name != cls.__name__:
            raise TypeError(f"a {value.name} was sent where {cls.__name__} is declared")
        declared = {entry[0]: entry[1] for entry in cls._fields_}
        if set(value.fields) != set(declared):
            raise TypeError(
                f"{cls.__name__} has fields {sorted(declared)}; the structure sent has {sorted(value.fields)}"
            )
        result = cls.__new__(cls)  # not __init__: a subclass's may take other arguments (msl's FourPoints)
        for name, ctype in declared.items():
            setattr(result, name, self._convert(ctype, value.fields[name], f"{cls.__name__}.{name}"))
        return result

    def _convert(self, ctype: Any, value: Any, where: str) -> Any:
        if is_pointer(ctype):  # a peer's number would become an address the library follows
            raise TypeError(f"{where} is a pointer ({ctype.__name__}): a structure sent by a caller cannot set it")
        if isinstance(ctype, type) and issubclass(ctype, (ctypes.Structure, ctypes.Union)):
            if not isinstance(value, StructFields):
                raise TypeError(f"{where} is a {ctype.__name__}; a {type(value).__name__} was sent")
            return self._fill(ctype, value)
        if isinstance(ctype, type) and issubclass(ctype, ctypes.Array) and isinstance(value, list):
            length = cast(Any, ctype)._length_
            if len(value) > length:
                raise TypeError(f"{where} holds {length} items; {len(value)} were sent")
            array = ctype()
            for i, item in enumerate(value):
                array[i] = self._convert(ctype._type_, item, f"{where}[{i}]")
            return array
        return value  # a number, bytes: ctypes checks it on assignment


def _declared(spec: Mapping[str, Any]) -> Hosted:
    library = load_library(str(spec["library"]), str(spec.get("kind", "cdll")))
    structs = spec.get("structs", {})
    limit = spec.get("max_message_size")
    methods: dict[str, Callable[..., Any]] = {
        name: CFunction(library, name, decl, structs, limit) for name, decl in dict(spec.get("functions", {})).items()
    }
    if any(isinstance(f, CFunction) and f.uses_handles for f in methods.values()):
        HANDLES.add_closers(methods)
        methods[DROP_HANDLES] = HANDLES.drop
    return Hosted(methods, _nothing)


def build(spec: Mapping[str, Any]) -> Hosted:
    """What a worker serves, from its service spec, with its ``init`` run and its ``close`` (then the wrapper's
    shutdown_handler) as the stop hook; ``session_init``/``session_close`` become the methods
    ``$session_init``/``$session_close`` a session runs on its worker when it starts and ends."""
    _extend_search_paths(spec)
    if "module" in spec:
        hosted = _wrapper(spec)
    elif "library" in spec:
        hosted = _declared(spec)
    else:
        raise ConfigError("a service needs either 'library' (with 'functions') or 'module' and 'class'")
    methods = hosted.methods
    hooks = {key: _hook(methods, spec, key) for key in ("init", "close", "session_init", "session_close")}
    methods[SESSION_INIT] = hooks["session_init"] or _nothing
    methods[SESSION_CLOSE] = hooks["session_close"] or _nothing
    if hooks["init"] is not None:
        hooks["init"]()
    close = hooks["close"]
    if close is None:
        return hosted

    def stop() -> None:
        try:
            close()
        finally:
            hosted.close()

    return Hosted(methods, stop)


_DLL_DIRECTORIES: list[Any] = []
"""What ``os.add_dll_directory`` returned: the directories stay added while these live (the process's life)."""


def _extend_search_paths(spec: Mapping[str, Any]) -> None:
    """Where the library's own dependencies are looked for: ``environ_path`` folders appended to PATH (what
    Windows searches; msl-loadlib's ``append_environ_path``) and ``dll_directories`` added with
    ``os.add_dll_directory`` (Windows only: elsewhere the loader takes no such list, so they are ignored)."""
    extra = [str(p) for p in spec.get("environ_path", [])]
    if extra:
        os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *extra])
    for folder in spec.get("dll_directories", []):
        add = getattr(os, "add_dll_directory", None)
        if add is None:
            log.info("dll_directories: %s is ignored (os.add_dll_directory exists on Windows only)", folder)
            continue
        try:
            _DLL_DIRECTORIES.append(add(str(folder)))
        except OSError as exc:
            raise LibraryLoadError(f"cannot add DLL directory {str(folder)!r}: {exc}") from None


def _hook(methods: Mapping[str, Callable[..., Any]], spec: Mapping[str, Any], key: str) -> Optional[Callable[[], Any]]:
    """The method the spec names for ``key`` (it takes no arguments), or None."""
    name = spec.get(key)
    if name is None:
        return None
    function = methods.get(str(name))
    if function is None:
        raise ConfigError(f"{key} = {name!r} names no function of the service (it has: {', '.join(sorted(methods))})")
    return functools.partial(call, function, [], {})


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
