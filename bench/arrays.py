"""Big arrays through a 32-bit worker: msl-loadlib's scalar_multiply example, both ways.

    python bench/arrays.py [--size N] [--repeat R] [--json]

``wrapped.scalar_multiply(2.0, xin)`` (examples/wrappers/demo_wrapper.py): the
array goes to a 32-bit worker, the C library multiplies it in place, and the
new array comes back. Sent as an ``array.array('d')`` it travels as one frame
of raw doubles each way; sent as a list, as msgpack floats.
"""

from __future__ import annotations

import argparse
import array
import json
import statistics
import sys
import time
from typing import Any

from broker import Pool


def timed(call: Any, repeat: int) -> float:
    call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="doubles per array (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    options = parser.parse_args()
    values = array.array("d", (float(i) for i in range(options.size)))
    as_list = values.tolist()
    megabytes = 2 * 8 * options.size / 1e6  # in and out
    with Pool.from_config() as pool, pool.client(timeout=120) as client:
        result = client.call("wrapped", "scalar_multiply", 2.0, values)
        assert isinstance(result, array.array) and result[-1] == 2.0 * values[-1]
        runs = {
            "array.array": timed(lambda: client.call("wrapped", "scalar_multiply", 2.0, values), options.repeat),
            "list": timed(lambda: client.call("wrapped", "scalar_multiply", 2.0, as_list), options.repeat),
        }
    report = {k: {"median_ms": v * 1e3, "MB_per_s": megabytes / v} for k, v in runs.items()}
    if options.json:
        print(json.dumps({"size": options.size, **report}, indent=2))
    else:
        for kind, figures in report.items():
            print(
                f"scalar_multiply of {options.size:,} doubles as {kind}: {figures['median_ms']:.1f} ms "
                f"({figures['MB_per_s']:.0f} MB/s, in and out)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
