"""Multiply N doubles by a scalar in a 32-bit library and get them back: every path, side by side, in one run.

    python bench/arrays.py [--sizes 1000,100000,1000000,8000000] [--repeat R] [--json FILE] [--no-msl]

Every path calls the same C function, msl-loadlib's own example
``void scalar_multiply(double a, const double *xin, int n, double *xout)``
(the demo library's copy, declared with ``xin = "in[n]"`` and ``xout = "out[n]"``):

- **shared memory**: ``xin`` and ``xout`` are NumPy arrays made by ``client.shared_array``, so the
  worker maps them and nobody copies anything but the library itself;
- **shared memory, copied in**: a plain NumPy ``xin`` above the threshold, which the client copies once
  into a segment of the call's own; ``xout`` comes back as a NumPy array in a frame;
- **frames**: the same NumPy arrays with shared memory off (``shared_memory_min=0``);
- **array.array**: an ``array('d')`` in, an ``array('d')`` back, as frames;
- **lists**: a list of floats in (msgpack), an ``array('d')`` back (up to 1,000,000: a msgpack body is
  bounded to 16 MiB, so 8,000,000 floats are refused with BadRequest);
- **msl-loadlib**: ``Cpp64().scalar_multiply(2.0, values)``, its 32-bit server in ``bench/.venv-msl``
  (created by bench/compare.py's code the first time);

and the **floor**: copying the same bytes once in this process, the N doubles there and the N doubles
back (two ``numpy.copyto`` of 8 N bytes into arrays already touched); the JSON also has the time of one
8 N-byte copy (``one_way_s``).
Each figure is the median of --repeat runs after one untimed run; "x floor" is the time over the
floor's, "MB/s" the array's bytes (8 N, one way) over the time. Targets (issue 9): 1,000,000 doubles in
at most 3x the floor and at least 50x faster than msl-loadlib; 8,000,000 doubles at 1 GB/s or more.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import compare
import numpy
from demo_pool import demo_service

from broker import Pool, runtime32
from client import Client, shared_array
from protocol.codec import DEFAULT_LIMITS

SIZES = (1_000, 100_000, 1_000_000, 8_000_000)
FACTOR = 2.0


def timed(call: Callable[[], Any], repeat: int) -> float:
    call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def floor_seconds(size: int, repeat: int) -> tuple[float, float]:
    """(there and back, one way): the time to copy the N doubles in, and out again; and one copy alone."""
    source = numpy.arange(size, dtype=numpy.float64)
    there = numpy.zeros_like(source)
    back = numpy.zeros_like(source)

    def both() -> None:
        numpy.copyto(there, source)
        numpy.copyto(back, there)

    return timed(both, max(repeat, 20)), timed(lambda: numpy.copyto(there, source), max(repeat, 20))


def paths(client: Client, plain: Client, size: int) -> dict[str, Callable[[], Any]]:
    """One call per path, each checking its own answer once (the untimed run)."""
    values = numpy.arange(size, dtype=numpy.float64)
    shared_in = shared_array(size, "float64")
    shared_in[:] = values
    shared_out = shared_array(size, "float64")
    as_array = array.array("d", values.tobytes())
    as_list = values.tolist()
    expected = values * FACTOR

    def call(through: Client, xin: Any, **out: Any) -> Any:
        return through.call("demo", "scalar_multiply", FACTOR, xin, size, **out)["xout"]

    runs: dict[str, Callable[[], Any]] = {
        "shared memory": lambda: call(client, shared_in, xout=shared_out),
        "shared memory, copied in": lambda: call(client, values),
        "frames": lambda: call(plain, values),
        "array.array": lambda: call(plain, as_array),
    }
    if 9 * size < DEFAULT_LIMITS.max_body:  # msgpack floats take 9 bytes; a body has a bound
        runs["lists"] = lambda: call(plain, as_list)
    for name, run in runs.items():
        if not numpy.array_equal(numpy.asarray(run(), dtype=numpy.float64), expected):
            raise AssertionError(f"{name}: scalar_multiply returned a wrong result")
    return runs


def msl_seconds(sizes: list[int], repeat: int) -> dict[int, float]:
    """msl-loadlib's medians, from its own virtualenv (bench/compare.py sets it up)."""
    compare.ensure_msl_venv()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    libz = compare.libz32_folder(runtime32.load())
    if libz is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libz), env.get("LD_LIBRARY_PATH")]))
    command = [str(compare.msl_python()), str(compare.BENCH / "msl_loadlib_compare.py"), "--json"]
    command += ["--arrays", ",".join(map(str, sizes)), "--repeat", str(repeat)]
    done = subprocess.run(command, env=env, cwd=compare.BENCH, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench/msl_loadlib_compare.py failed ({done.returncode}): {done.stderr[-2000:]}")
    return {int(n): s for n, s in json.loads(done.stdout)["scalar_multiply_s"].items()}


def measure(sizes: list[int], repeat: int, with_msl: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    config = {"services": {"demo": demo_service("scalar_multiply", workers=1)}}
    with Pool.from_config(config) as pool, pool.client(timeout=120) as client:
        plain = pool.client(timeout=120, shared_memory_min=0)
        try:
            for size in sizes:
                floor, one_way = floor_seconds(size, repeat)
                rows.append(
                    {"size": size, "path": "floor: a copy there and back", "seconds": floor, "one_way_s": one_way}
                )
                for name, run in paths(client, plain, size).items():
                    slow = name == "lists" and size >= 1_000_000
                    compare.progress(f"{size:,} doubles: {name} ...")
                    rows.append({"size": size, "path": name, "seconds": timed(run, 3 if slow else repeat)})
        finally:
            plain.close()
    if with_msl:
        compare.progress("msl-loadlib: Cpp64().scalar_multiply ...")
        for size, seconds in msl_seconds(sizes, min(repeat, 3)).items():
            rows.append({"size": size, "path": "msl-loadlib", "seconds": seconds})
    floors = {row["size"]: row["seconds"] for row in rows if row["path"].startswith("floor")}
    msl = {row["size"]: row["seconds"] for row in rows if row["path"] == "msl-loadlib"}
    for row in rows:
        row["ms"] = row["seconds"] * 1e3
        row["MB_per_s"] = 8 * row["size"] / 1e6 / row["seconds"]
        row["x_floor"] = row["seconds"] / floors[row["size"]]
        row["vs_msl"] = msl[row["size"]] / row["seconds"] if row["size"] in msl else None
    return rows


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's three targets, each with the figure that meets or misses it."""
    shared = {row["size"]: row for row in rows if row["path"] == "shared memory"}
    one_way = {row["size"]: row["one_way_s"] for row in rows if "one_way_s" in row}
    out = []
    if 1_000_000 in shared:
        row = shared[1_000_000]
        out.append(
            f"1,000,000 doubles, shared memory: {row['x_floor']:.2f}x the floor (target <= 3x): "
            + ("met" if row["x_floor"] <= 3 else "missed")
            + f"; {row['seconds'] / one_way[1_000_000]:.2f}x one copy of the 8 MB one way"
        )
        if row["vs_msl"] is not None:
            out.append(
                f"1,000,000 doubles, shared memory: {row['vs_msl']:.0f}x faster than msl-loadlib "
                "(target >= 50x): " + ("met" if row["vs_msl"] >= 50 else "missed")
            )
    if 8_000_000 in shared:
        rate = shared[8_000_000]["MB_per_s"]
        out.append(
            f"8,000,000 doubles, shared memory: {rate:,.0f} MB/s (target >= 1,000): "
            + ("met" if rate >= 1000 else "missed")
        )
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| doubles | path | ms | MB/s | x floor | vs msl-loadlib |", "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        vs = f"{row['vs_msl']:,.0f}x faster" if row["vs_msl"] and row["path"] != "msl-loadlib" else ""
        lines.append(
            f"| {row['size']:,} | {row['path']} | {row['ms']:,.2f} | {row['MB_per_s']:,.0f} | "
            f"{row['x_floor']:,.1f}x | {vs} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated array lengths")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per figure (median)")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    parser.add_argument("--no-msl", action="store_true", help="leave msl-loadlib out")
    options = parser.parse_args()
    sizes = [int(n) for n in options.sizes.split(",")]
    rows = measure(sizes, options.repeat, not options.no_msl)
    print(table(rows))
    verdicts = targets(rows)
    print("\n".join(verdicts))
    if options.json:
        with open(options.json, "w", encoding="utf-8") as out:
            json.dump({"rows": rows, "targets": verdicts, "repeat": options.repeat}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
