"""The 32-bit worker: hosts a library through ctypes and serves its calls.

Runs under a bare CPython 3.9+ (32- or 64-bit) with only pyzmq and msgpack. The names below are imported when
first used (:func:`__getattr__`): the broker reads :mod:`workers32.constants` and the type names of
:mod:`workers32.marshal` without paying for the worker's sockets and wrappers.
"""

from typing import TYPE_CHECKING

from protocol.lazy import on_first_use

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

__getattr__, __dir__ = on_first_use(__name__, _ON_FIRST_USE)


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
