"""Shared memory against frames: N doubles multiplied in place by the 32-bit library, and back.

    python bench/shm_path.py [--sizes 1000000,8000000] [--repeat R] [--json]

One pool, one worker hosting the ``InPlace`` wrapper below (the C demo library's ``scale`` through a pointer to
the array's own memory), and in the same run:

* ``copy floor``: copying the array once in this process (``numpy.copy``), the floor the targets refer to;
* ``shared_array``: an array made by :func:`client.shared_array`: nothing is copied, the worker maps it;
* ``shm (copy in)``: a plain NumPy array, written once into a per-call segment;
* ``frames``: the same with ``shared_memory_min=0``: a frame each way, copied at both ends.

The 32-bit worker imports this file for the wrapper class, so what it runs needs only the standard library.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import timeit
from typing import Any

from protocol.codec import NDArray
from workers32 import Server32


class InPlace(Server32):
    """``scale(values, factor)``: the library multiplies the doubles where they are and the array comes back."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.lib.scale.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int, ctypes.c_double]
        self.lib.scale.restype = None

    def scale(self, values: NDArray, factor: float) -> NDArray:
        if values.size:
            buffer = (ctypes.c_double * values.size).from_buffer(values.data)  # type: ignore[arg-type]
            self.lib.scale(buffer, values.size, factor)
        return values


_LIBRARY = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "build", "32", "libdemo.so"
)


def _timed(call: Any, repeat: int) -> float:
    """The median of ``repeat`` runs, after one to warm up."""
    call()
    return statistics.median(timeit.repeat(call, number=1, repeat=repeat))


def _runs(shm_client: Any, frames_client: Any, size: int, repeat: int) -> dict[str, float]:
    """Median seconds of each path for arrays of ``size`` doubles."""
    import numpy

    from client import shared_array

    values = numpy.arange(size, dtype="f8")
    shared = shared_array(size)
    shared[:] = values
    for client in (shm_client, frames_client):
        assert numpy.array_equal(client.call("bench", "scale", values, 2.0), values * 2.0)
    return {
        "copy floor": _timed(values.copy, repeat),
        "shared_array": _timed(lambda: shm_client.call("bench", "scale", shared, 1.0), repeat),
        "shm (copy in)": _timed(lambda: shm_client.call("bench", "scale", values, 1.0), repeat),
        "frames": _timed(lambda: frames_client.call("bench", "scale", values, 1.0), repeat),
    }


def main() -> int:
    from broker import Pool

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,8000000", help="doubles per array, comma-separated")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    options = parser.parse_args()
    config = {
        "services": {"bench": {"module": os.path.abspath(__file__), "class": "InPlace", "options": {"path": _LIBRARY}}}
    }
    report: dict[str, dict[str, dict[str, float]]] = {}
    with (
        Pool.from_config(config) as pool,
        pool.client(timeout=120) as shm_client,
        pool.client(timeout=120, shared_memory_min=0) as frames_client,
    ):
        for size in (int(s) for s in options.sizes.split(",")):
            runs = _runs(shm_client, frames_client, size, options.repeat)
            report[str(size)] = {
                kind: {"ms": t * 1e3, "MB_per_s": size * 8 / 1e6 / t, "x_floor": t / runs["copy floor"]}
                for kind, t in runs.items()
            }
    if options.json:
        print(json.dumps(report, indent=2))
        return 0
    for size_text, rows in report.items():
        print(f"{int(size_text):,} doubles ({int(size_text) * 8 / 1e6:.0f} MB), in place and back:")
        for kind, row in rows.items():
            print(f"  {kind:<14} {row['ms']:8.2f} ms  {row['MB_per_s']:8.0f} MB/s  {row['x_floor']:6.1f}x the floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
