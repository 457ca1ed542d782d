"""Server32-style wrapper around the 32-bit demo library (examples/c/demo.c).

Runs inside a 32-bit worker process (Python 3.9+, standard library only). The
worker creates one ``DemoWrapper`` and clients call its public methods by
name; names starting with an underscore are never callable remotely.
"""

from __future__ import annotations

import array
import ctypes
import os
import struct
import sys
from collections.abc import Sequence
from typing import Any

from workers32 import Server32

_HERE = os.path.dirname(os.path.abspath(__file__))


def default_library_path() -> str:
    """The demo library built for this interpreter's bitness by `dllpool setup`."""
    bits = struct.calcsize("P") * 8
    if sys.platform.startswith("win"):
        name = "demo.dll"
    elif sys.platform == "darwin":
        name = "libdemo.dylib"
    else:
        name = "libdemo.so"
    return os.path.normpath(os.path.join(_HERE, os.pardir, "build", str(bits), name))


class DemoWrapper(Server32):
    """Why this exists: shows the wrapper form: Python code around a 32-bit
    library that runs in the 32-bit worker, so a client calls plain Python
    methods (``add``, ``scale_sum``, ``greet``...) and never deals with ctypes
    types, pointers or 32-bit memory itself. The wrapper converts arguments
    (a list of floats becomes a C ``double`` array) and results (a ``const
    char*`` becomes a ``str``) on the 32-bit side.

    Options: ``path`` overrides the library file (default:
    ``examples/build/<bits>/libdemo.so``); any other option is passed on to
    ``Server32``.
    """

    def __init__(self, **options: Any) -> None:
        path = options.pop("path", None) or default_library_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"demo library not found: {path} (build it with `dllpool setup`)")
        super().__init__(path, "cdll", **options)
        lib = self.lib

        lib.add.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.add.restype = ctypes.c_int

        lib.version.argtypes = []
        lib.version.restype = ctypes.c_int

        lib.pointer_size.argtypes = []
        lib.pointer_size.restype = ctypes.c_int

        lib.scale_sum.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int, ctypes.c_double]
        lib.scale_sum.restype = ctypes.c_double

        lib.scale.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int, ctypes.c_double]
        lib.scale.restype = None

        lib.greet.argtypes = []
        lib.greet.restype = ctypes.c_char_p

        lib.count_calls.argtypes = []
        lib.count_calls.restype = ctypes.c_int

        lib.sleep_ms.argtypes = [ctypes.c_int]
        lib.sleep_ms.restype = None

        lib.crash.argtypes = []
        lib.crash.restype = ctypes.c_int

    def add(self, a: int, b: int) -> int:
        """a + b computed by the C library (32-bit int arithmetic)."""
        return int(self.lib.add(a, b))

    def version(self) -> int:
        """Library version as major*10000 + minor*100 + patch (10203 = 1.2.3)."""
        return int(self.lib.version())

    def scale_sum(self, values: Sequence[float], factor: float) -> float:
        """factor * sum(values); builds the C double array on this side."""
        n = len(values)
        buffer = (ctypes.c_double * n)(*values)
        return float(self.lib.scale_sum(buffer, n, float(factor)))

    def scalar_multiply(self, a: float, xin: Any) -> array.array[float]:
        """A new array: each element of xin times a. Send an ``array.array('d')``: it travels as one
        frame of raw doubles, not as a million msgpack floats."""
        values = array.array("d", xin)
        buffer = (ctypes.c_double * len(values)).from_buffer(values)
        self.lib.scale(buffer, len(values), float(a))
        return values

    def pointer_size(self) -> int:
        """sizeof(void*) in the worker: 4 in a 32-bit worker."""
        return int(self.lib.pointer_size())

    def greet(self) -> str:
        """The library's static greeting, decoded to str."""
        raw = self.lib.greet()
        return raw.decode("utf-8") if raw is not None else ""

    def fail(self, message: str) -> None:
        """Always raises ValueError(message): a deliberate remote exception for tests."""
        raise ValueError(message)

    def count_calls(self) -> int:
        """Increments and returns the library's per-process call counter."""
        return int(self.lib.count_calls())

    def sleep_ms(self, ms: int) -> None:
        """Blocks this worker for ms milliseconds inside the C library."""
        self.lib.sleep_ms(int(ms))

    def crash(self) -> int:
        """Segfaults the worker process (for crash-isolation tests)."""
        return int(self.lib.crash())

    def _private(self) -> str:
        """Not part of the remote interface: leading underscore."""
        return "private: must not be callable remotely"
