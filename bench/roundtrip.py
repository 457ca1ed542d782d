"""Round trip, throughput and start-up time of a pool of real 32-bit workers.

    python bench/roundtrip.py [--calls N] [--threads T] [--json]

Measures, on the embedded default configuration's ``demo`` service alone
(4 workers, bits = 32):

* start-up: ``Pool.from_config`` until all 4 workers are ready (best and median of --starts);
* latency: p50/p99 of sequential ``demo.add`` round trips from one thread;
* throughput: calls/s of ``demo.add`` from --threads client threads on one Client.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from broker import Pool, PoolConfig, load_config


def demo_only() -> PoolConfig:
    config = load_config()
    return dataclasses.replace(config, services=(config.service("demo"),))


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_startup(config: PoolConfig, starts: int) -> list[float]:
    times = []
    for i in range(starts):
        started = time.perf_counter()
        pool = Pool(config).start()
        times.append(time.perf_counter() - started)
        pool.stop()
        progress(f"  start {i + 1}/{starts}: {times[-1]:.3f} s")
    return times


def measure_latency(pool: Pool, calls: int) -> list[float]:
    with pool.client(timeout=10) as client:
        for i in range(200):
            client.call("demo", "add", i, 1)
        samples = []
        for i in range(calls):
            started = time.perf_counter()
            client.call("demo", "add", i, 1)
            samples.append(time.perf_counter() - started)
    return sorted(samples)


def measure_throughput(pool: Pool, threads: int, seconds: float) -> tuple[int, float]:
    done = [0] * threads
    stop = threading.Event()
    with pool.client(timeout=10) as client:

        def worker(t: int) -> None:
            i = 0
            while not stop.is_set():
                assert client.call("demo", "add", t, i) == t + i
                i += 1
            done[t] = i

        with ThreadPoolExecutor(threads) as executor:
            started = time.perf_counter()
            futures = [executor.submit(worker, t) for t in range(threads)]
            time.sleep(seconds)
            stop.set()
            for f in futures:
                f.result()
            elapsed = time.perf_counter() - started
    return sum(done), elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="sequential calls for the latency figures")
    parser.add_argument("--threads", type=int, default=16, help="client threads for the throughput figure")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the throughput run lasts")
    parser.add_argument("--starts", type=int, default=5, help="pool start-ups to time")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    options = parser.parse_args()

    config = demo_only()
    progress(f"start-up of {config.service('demo').workers} 32-bit workers ...")
    startup = measure_startup(config, options.starts)
    with Pool(config).start() as pool:
        progress(f"latency: {options.calls} sequential demo.add calls ...")
        latency = measure_latency(pool, options.calls)
        progress(f"throughput: {options.threads} threads for {options.seconds} s ...")
        calls, elapsed = measure_throughput(pool, options.threads, options.seconds)

    result: dict[str, Any] = {
        "workers": config.service("demo").workers,
        "startup_s": {"best": min(startup), "median": statistics.median(startup)},
        "latency_us": {
            "p50": percentile(latency, 50) * 1e6,
            "p99": percentile(latency, 99) * 1e6,
            "calls": len(latency),
        },
        "throughput": {"threads": options.threads, "calls": calls, "seconds": elapsed, "calls_per_s": calls / elapsed},
    }
    if options.json:
        print(json.dumps(result, indent=2))
    else:
        best, median = min(startup), statistics.median(startup)
        p50, p99 = result["latency_us"]["p50"], result["latency_us"]["p99"]
        rate = calls / elapsed
        print(f"start-up to {result['workers']} workers ready: best {best:.3f} s, median {median:.3f} s")
        print(f"demo.add round trip: p50 {p50:.0f} us, p99 {p99:.0f} us")
        print(f"demo.add with {options.threads} threads: {rate:,.0f} calls/s ({calls} calls in {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
