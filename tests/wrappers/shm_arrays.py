"""A wrapper whose methods take typed arrays (``protocol.codec.NDArray``) and work in them in place, to test
the transport of arrays (frames or shared memory) on its own. Runs in a 32-bit worker: standard library only."""

import array
import ctypes
import os
from typing import Any

from protocol.codec import TYPESTRS, NDArray
from workers32 import Server32


class Arrays(Server32):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.lib.scale.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int, ctypes.c_double]
        self.lib.scale.restype = None
        self.lib.sleep_ms.argtypes = [ctypes.c_int]
        self.lib.sleep_ms.restype = None

    def scale(self, values: NDArray, factor: float) -> NDArray:
        """Doubles multiplied in place by the C library, through a pointer to the array's own memory."""
        assert values.typestr == "<f8"
        if values.size:
            buffer = (ctypes.c_double * values.size).from_buffer(values.data)  # type: ignore[arg-type]
            self.lib.scale(buffer, values.size, factor)
        return values

    def reverse(self, values: NDArray) -> list[Any]:
        """The elements in reverse order, in place (any element type), and the segment the array came in
        (None: it came as a frame or inline)."""
        code = TYPESTRS[values.typestr]
        items = array.array("B" if code == "?" else code)
        view = memoryview(values.data).cast("B")  # type: ignore[arg-type]
        items.frombytes(view)
        items.reverse()
        view[:] = items.tobytes()
        return [values, values.shared]

    def segment(self, values: NDArray) -> Any:
        """Where the array came: a segment's name, or None."""
        return values.shared

    def alias(self, first: NDArray, second: NDArray) -> list[Any]:
        """The segments of two arrays, and whether a change to the first shows in the second."""
        first.view().cast("B")[0] ^= 0xFF
        return [first.shared, second.shared, first.view().tobytes() == second.view().tobytes()]

    def sleep_holding(self, values: NDArray, ms: int) -> int:
        """Sleeps in the C library while the array (and its mapping) is held; its size."""
        self.lib.sleep_ms(ms)
        return values.nbytes

    def exit_holding(self, values: NDArray) -> None:
        """The worker process ends while it holds the array's mapping."""
        os._exit(9)

    def crash_holding(self, values: NDArray) -> None:
        """A segfault in C while a ctypes array over the mapping is alive."""
        pointer = (ctypes.c_double * values.size).from_buffer(values.data)  # type: ignore[arg-type]
        ctypes.memset(ctypes.addressof(pointer), 0, 8)
        ctypes.string_at(0)

    def keep(self, values: NDArray) -> int:
        """Keeps a ctypes array over the mapping after the call: the mapping must outlive it safely."""
        self.kept = (ctypes.c_double * values.size).from_buffer(values.data)  # type: ignore[arg-type]
        return int(self.kept[0])

    def read_kept(self) -> float:
        return float(self.kept[0])
