"""How fast workers start: the default configuration's ready time, and a crashed worker's replacement.

    python bench/startup.py [--rounds N] [--broker process|thread]

Each round runs both ways, zygote on then off (``[pool] zygote``), so both see the same machine load:

* **ready**: ``Pool(default configuration).start()`` until it returns (every worker ready), split by the
  broker's own log records into: until the first worker is started (the broker process's start, binding,
  and with the zygote on, whatever is left of the zygote's start: a broker process starts its first zygote
  before its own imports), until the last worker is ready, and until ``start()`` returns; with the zygote,
  also its own start (from its launch) and when it was ready, from ``start()``;
* **respawn**: a pool with one worker; SIGKILL it, then call ``worker_pid`` until the replacement answers.
  *kill->answer* runs from just before the kill to the answer. *noticed->answer* from the moment the
  broker noticed the exit (the ``created`` time of its ``worker ... ended`` log record: the supervisor's
  poll that reaped the worker, at most one broker tick, 50 ms, after it died) to the answer;
* **anatomy**: what the serial part of a start costs on its own: the 64-bit interpreter bare and importing
  the broker process's code, the 32-bit one bare and importing what the zygote imports.

Medians over the rounds, with min and max. Times are wall-clock (``time.time()``) since the broker process
stamps its records with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from demo_pool import demo_service

from broker import BrokerKind, Pool, load_config, runtime32
from broker.config import PoolConfig
from protocol import WorkerCrashed


class Records(logging.Handler):
    """The broker's log records (from its process too: a Pool forwards them), by message prefix."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def times(self, fragment: str) -> list[float]:
        return [r.created for r in self.records if fragment in r.getMessage()]


def ready_time(config: PoolConfig, broker: BrokerKind, records: Records) -> dict[str, float]:
    records.records.clear()
    started = time.time()
    with Pool(config, broker).start():
        ready = time.time()
    first_start = min(records.times("started worker pid "))
    last_ready = max(records.times(" ready for "))
    zygote = [r for r in records.records if "zygote pid " in r.getMessage() and " ready in " in r.getMessage()]
    return {
        "ready": ready - started,
        "to first worker started": first_start - started,
        "the zygote's own start": float(zygote[0].getMessage().rsplit(" ready in ", 1)[1].split()[0]) if zygote else 0,
        "the zygote ready, from start()": zygote[0].created - started if zygote else 0.0,
        "workers started to all ready": last_ready - first_start,
        "last ready to start() returned": ready - last_ready,
    }


def respawn_time(zygote: bool, broker: BrokerKind, records: Records, rounds: int) -> list[dict[str, float]]:
    service = demo_service(workers=1, functions={"worker_pid": {"returns": "int", "idempotent": True}})
    config = load_config({"pool": {"zygote": zygote}, "services": {"s": service}})
    figures = []
    with Pool(config, broker).start() as pool, pool.client(timeout=30) as client:
        for _ in range(rounds):
            (victim,) = pool.worker_pids()
            records.records.clear()
            killed = time.time()
            os.kill(victim, signal.SIGKILL)
            while True:
                try:
                    if client.call("s", "worker_pid") != victim:
                        break
                except WorkerCrashed:
                    continue
            answered = time.time()
            (noticed,) = records.times("] ended (")
            figures.append(
                {
                    "kill->answer": answered - killed,
                    "kill->noticed": noticed - killed,
                    "noticed->answer": answered - noticed,
                }
            )
            pool.wait_ready()
    return figures


def anatomy(rounds: int) -> dict[str, list[float]]:
    """Seconds each interpreter takes to start bare, and to import what the broker process or the zygote does."""
    interp = runtime32.load()
    root = str(Path(__file__).resolve().parent.parent)
    env32 = runtime32.command_env(interp, [root])
    commands = {
        "64-bit python, bare": ([sys.executable, "-c", "pass"], None),
        "64-bit python + broker.hosted": ([sys.executable, "-c", "import broker.hosted"], None),
        "32-bit python, bare": ([*interp.command, "-s", "-c", "pass"], env32),
        "32-bit python + workers32.zygote": ([*interp.command, "-s", "-c", "import workers32.zygote"], env32),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, (command, env) in commands.items():
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True)
            times[name].append(time.perf_counter() - started)
    return times


def _summary(name: str, values: list[float]) -> str:
    ms = sorted(1000 * v for v in values)
    return f"  {name:32s} median {statistics.median(ms):7.1f} ms   (min {ms[0]:7.1f}, max {ms[-1]:7.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--broker", choices=["process", "thread"], default="process")
    options = parser.parse_args()
    records = Records()
    for name, level in (
        ("broker.supervisor", logging.DEBUG),
        ("broker.core", logging.INFO),
        ("broker.zygote", logging.DEBUG),
    ):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.addHandler(records)
        logger.propagate = False
    default = load_config(None)
    ready: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(options.rounds):
        for zygote in (True, False):
            ready[zygote].append(ready_time(dataclasses.replace(default, zygote=zygote), options.broker, records))
    respawn = {zygote: respawn_time(zygote, options.broker, records, options.rounds) for zygote in (True, False)}
    parts = anatomy(options.rounds)
    workers = sum(s.workers for s in default.services)
    print(f"bench/startup.py --rounds {options.rounds} --broker {options.broker} (load {os.getloadavg()[0]:.1f})")
    for zygote in (True, False):
        print(f"\nzygote = {str(zygote).lower()}")
        print(f" default configuration ready ({workers} workers), {options.rounds} starts:")
        for key in ready[zygote][0]:
            if zygote or "zygote" not in key:
                print(_summary(key, [r[key] for r in ready[zygote]]))
        print(f" respawn after SIGKILL, {options.rounds} kills:")
        for key in respawn[zygote][0]:
            print(_summary(key, [r[key] for r in respawn[zygote]]))
    print(f"\nanatomy, {options.rounds} runs each:")
    for name, values in parts.items():
        print(_summary(name, values))


if __name__ == "__main__":
    main()
