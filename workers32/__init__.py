"""The 32-bit worker: hosts a library through ctypes and serves its calls.

Runs under a bare CPython 3.9+ (32- or 64-bit) with only pyzmq and msgpack.
"""

from .hosting import LIBRARY_KINDS, Server32, build, load_library
from .signatures import CFunction
from .worker import EXIT_BROKER_GONE, EXIT_RETIRED, EXIT_STARTUP_FAILED, EXIT_UNLOADABLE, Worker, run

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
