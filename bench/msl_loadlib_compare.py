"""The same measurement on msl-loadlib's Client64/Server32, for comparison.

    pip install msl-loadlib   # into any 64-bit venv; not a dllpool dependency
    python bench/msl_loadlib_compare.py [--calls N] [--json]
    python bench/msl_loadlib_compare.py --arrays 1000,1000000 [--repeat R] --json

Uses msl-loadlib's own example (``Cpp64``, a 32-bit C++ library behind its
32-bit server): start-up time, p50/p99 of sequential ``add`` calls from one
client (its client is not thread-safe, so there is no multi-thread figure),
and ``scalar_multiply`` of --size doubles. With --arrays, only the median time
of ``scalar_multiply`` for each of the given sizes (bench/arrays.py runs that).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any


def array_medians(cpp: Any, sizes: list[int], repeat: int) -> dict[str, float]:
    """Median seconds of ``scalar_multiply(2.0, values)`` per size (a list in, a list back: msl's own form)."""
    medians = {}
    for size in sizes:
        values = [float(i) for i in range(size)]
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = cpp.scalar_multiply(2.0, values)
            samples.append(time.perf_counter() - t0)
        if size and result[-1] != 2.0 * values[-1]:
            raise AssertionError("scalar_multiply returned a wrong result")
        medians[str(size)] = statistics.median(samples)
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1_000_000, help="doubles for scalar_multiply")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--arrays", help="comma-separated sizes: time only scalar_multiply at each")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size with --arrays (median)")
    options = parser.parse_args()
    try:
        from msl.examples.loadlib import Cpp64
    except ImportError:
        print("msl-loadlib is not installed: pip install msl-loadlib", file=sys.stderr)
        return 1
    started = time.perf_counter()
    cpp = Cpp64()
    startup = time.perf_counter() - started
    if options.arrays:
        try:
            medians = array_medians(cpp, [int(n) for n in options.arrays.split(",")], options.repeat)
        finally:
            cpp.shutdown_server32()
        print(json.dumps({"startup_s": startup, "scalar_multiply_s": medians}))
        return 0
    try:
        for i in range(200):
            cpp.add(i, 1)
        samples = []
        for i in range(options.calls):
            t0 = time.perf_counter()
            cpp.add(i, 1)
            samples.append(time.perf_counter() - t0)
        values = [float(i) for i in range(options.size)]
        t0 = time.perf_counter()
        cpp.scalar_multiply(2.0, values)
        array_seconds = time.perf_counter() - t0
    finally:
        cpp.shutdown_server32()
    samples.sort()
    result = {
        "startup_s": startup,
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
        "calls_per_s": len(samples) / sum(samples),
        "scalar_multiply_ms": array_seconds * 1e3,
        "scalar_multiply_MB_per_s": 2 * 8 * options.size / 1e6 / array_seconds,
    }
    if options.json:
        print(json.dumps(result, indent=2))
    else:
        p50, p99, rate = result["p50_us"], result["p99_us"], result["calls_per_s"]
        print(f"msl-loadlib start-up {startup:.3f} s")
        print(f"Cpp64().add round trip: p50 {p50:.0f} us, p99 {p99:.0f} us, {rate:,.0f} calls/s from one client")
        ms, mb = result["scalar_multiply_ms"], result["scalar_multiply_MB_per_s"]
        print(f"scalar_multiply of {options.size:,} doubles: {ms:.1f} ms ({mb:.0f} MB/s, in and out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
