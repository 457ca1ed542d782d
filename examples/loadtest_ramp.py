"""A load test of one's own with dllpool's machinery: raise the open-loop rate step by step and see where
the latency breaks away, then merge the steps into one result and plot it.

    python examples/loadtest_ramp.py                      # starts the embedded default pool
    python examples/loadtest_ramp.py --address ipc:///tmp/dllpool-.../frontend --rates 500 1000 2000
"""

from __future__ import annotations

import argparse
import sys

from broker import Pool
from client import LoadResult, LoadTest, Scenario


def ramp(address: str, rates: list[float], seconds: float) -> LoadResult:
    """One open-loop step per rate; the merged result of them all."""
    scenario = Scenario.single("demo", "add", 1, 2)
    steps = []
    print(f"{'rate':>8} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for rate in rates:
        step = LoadTest(address, scenario, clients=4, rate=rate, duration=seconds, timeout=5).run()
        latency = step.latency_us
        print(
            f"{rate:8,.0f} {step.calls_per_second:9,.0f} {latency['p50'] / 1000:8.3f} "
            f"{latency['p99'] / 1000:8.3f} {step.error_count:7,}"
        )
        steps.append(step)
    return LoadResult.merged(steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="a running pool (default: start the embedded default configuration)")
    parser.add_argument("--rates", type=float, nargs="+", default=[250, 500, 1000, 2000], help="calls/s per step")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per step")
    parser.add_argument("--plot", help="write the merged result's plot to this PNG (needs matplotlib)")
    options = parser.parse_args()
    if options.address:
        result = ramp(options.address, options.rates, options.seconds)
    else:
        with Pool.from_config(None, broker="process") as pool:
            result = ramp(pool.address, options.rates, options.seconds)
    print(f"all steps: {result.calls:,} calls, p99 {result.latency_us['p99'] / 1000:.3f} ms")
    if options.plot:
        result.plot(options.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
