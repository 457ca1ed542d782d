"""The 32-bit worker: hosts a library through ctypes and serves its calls.

Runs under a bare CPython 3.9+ (32- or 64-bit) with only pyzmq and msgpack. The names below are imported when
first used (:func:`__getattr__`): the broker reads :mod:`workers32.constants` and the type names of
:mod:`workers32.marshal` without paying for the worker's sockets and wrappers.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .constants import EXIT_BROKER_GONE, EXIT_RETIRED, EXIT_STARTUP_FAILED, EXIT_UNLOADABLE, LIBRARY_KINDS
    from .hosting import Server32, build, load_library
    from .signatures import CFunction
    from .worker import Worker, run

_ON_FIRST_USE = {
    **dict.fromkeys(
        ("EXIT_BROKER_GONE", "EXIT_RETIRED", "EXIT_STARTUP_FAILED", "EXIT_UNLOADABLE", "LIBRARY_KINDS"), "constants"
    ),
    **dict.fromkeys(("Server32", "build", "load_library"), "hosting"),
    "CFunction": "signatures",
    **dict.fromkeys(("Worker", "run"), "worker"),
}


def __dir__() -> "list[str]":
    return sorted({*globals(), *_ON_FIRST_USE})


def __getattr__(name: str) -> Any:
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CFunction",
    "EXIT_BROKER_GONE",
    "EXIT_RETIRED",
    "EXIT_STARTUP_FAILED",
    "EXIT_UNLOADABLE",
    "LIBRARY_KINDS",
    "Server32",
    "Worker",
    "build",
    "load_library",
    "run",
]
