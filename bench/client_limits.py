"""What one process can do with Clients: how many it holds, what closing one costs, what a big upload costs.

    python bench/client_limits.py clients [--count N]
    python bench/client_limits.py close [--queued N]
    python bench/client_limits.py upload [--mib M] [--bits 32|64] [--worker-liveness L] [--interval S]

``clients`` opens Clients to one pool until ``--count`` (default 2,000) are
open or one fails, makes one call on each, closes them all, and reports the
file descriptors and threads of this process before, while open and after.

``close`` queues ``--queued`` (default 400) ``count_calls`` behind a 1 s
``sleep_ms`` on a 1-worker service, closes that Client, and times another
Client's ``count_calls`` made right after: its answer says how many of the
closed Client's calls ran first.

``upload`` sends one ``--mib`` MiB ``array('d')`` to ``scale_sum`` on a
service of ``--bits`` workers (64 by default: the 32-bit worker's own copies
are another matter; ``--worker-liveness`` widens the workers' window for the
same reason) while the main thread keeps calling ``add`` on the same Client
every 50 ms, alternately through ``submit`` and ``call``; it reports how
those calls fared and how the upload ended. ``--interval`` is the Client's
heartbeat interval (its window is three of them).
"""

from __future__ import annotations

import argparse
import array
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from demo_pool import demo_service

from broker import Pool
from client import Client, DllPoolError

ROOT = Path(__file__).resolve().parent.parent


def config(bits: int, workers: int, worker_liveness: int = 3) -> dict[str, Any]:
    functions = ("add", "sleep_ms", "count_calls", "scale_sum")
    service = demo_service(*functions, workers=workers, bits=bits)
    return {"pool": {"heartbeat_liveness": worker_liveness}, "services": {"s": service}}


def usage() -> tuple[int, int]:
    """(open file descriptors, threads including libzmq's own) of this process."""
    return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task"))


def many_clients(count: int) -> None:
    with Pool.from_config(config(32, 1)) as pool:
        before = usage()
        clients: list[Client] = []
        failure = ""
        try:
            for _ in range(count):
                clients.append(pool.client(timeout=30))
        except (DllPoolError, OSError) as exc:  # zmq.ZMQError is an OSError
            failure = f"{type(exc).__name__}: {exc}"
        opened = usage()
        answered = sum(client.call("s", "add", i, 1) == i + 1 for i, client in enumerate(clients))
        for client in clients:
            client.close()
        after = usage()
    n = len(clients)
    print(f"Clients opened: {n} of {count}" + (f"; the next failed: {failure}" if failure else ""))
    print(f"calls answered: {answered} of {n}")
    for i, what in enumerate(("fds", "threads")):
        per_client = (opened[i] - before[i]) / max(n, 1)
        print(f"{what}: before {before[i]}, with {n} open {opened[i]} ({per_client:.2f} per Client), ", end="")
        print(f"after close {after[i]}")


def close_with_queued(queued: int) -> None:
    with Pool.from_config(config(32, 1)) as pool, pool.client(timeout=120) as other:
        closing = pool.client(timeout=120)
        closing.submit("s", "sleep_ms", 1000)
        for _ in range(queued):
            closing.submit("s", "count_calls")
        while pool.stats()["requests"] < queued + 1:
            time.sleep(0.01)
        closing.close()
        started = time.monotonic()
        count = other.call("s", "count_calls")
        waited = time.monotonic() - started
    print(f"after close() with {queued} calls queued behind a 1 s sleep: the next caller waited {waited:.2f} s")
    print(f"and its count_calls answered {count}: {count - 1} of the closed Client's calls ran first")


def upload(mib: int, bits: int, worker_liveness: int, interval: float) -> None:
    doubles = mib * (1 << 20) // 8
    values = array.array("d", bytes(doubles * 8))
    outcomes: Counter[str] = Counter()
    slowest = {"submit": 0.0, "call": 0.0}
    with (
        Pool.from_config(config(bits, 2, worker_liveness)) as pool,
        pool.client(timeout=60, heartbeat_interval=interval) as client,
    ):
        assert client.call("s", "add", 1, 1) == 2
        done = threading.Event()
        took: list[float] = []
        result: list[str] = []

        def big() -> None:
            started = time.monotonic()
            try:
                result.append(repr(client.call("s", "scale_sum", values, doubles, 2.0)))
            except DllPoolError as exc:
                result.append(f"{type(exc).__name__}: {exc}")
            took.append(time.monotonic() - started)
            done.set()

        threading.Thread(target=big).start()
        i = 0
        while not done.wait(0.05):
            i += 1
            path = "submit" if i % 2 else "call"
            started = time.monotonic()
            try:
                if path == "submit":
                    client.submit("s", "add", i, 1).result()
                else:
                    client.call("s", "add", i, 1)
                outcomes["ok"] += 1
            except DllPoolError as exc:
                outcomes[type(exc).__name__] += 1
            slowest[path] = max(slowest[path], time.monotonic() - started)
    print(f"{mib} MiB to a {bits}-bit scale_sum: {result[0]} after {took[0]:.2f} s")
    print(
        f"other calls meanwhile on the same Client: {dict(outcomes)}, "
        f"slowest submit {slowest['submit']:.2f} s, slowest call {slowest['call']:.2f} s"
    )
    print(f"client stats: {client.stats}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("clients").add_argument("--count", type=int, default=2000)
    sub.add_parser("close").add_argument("--queued", type=int, default=400)
    up = sub.add_parser("upload")
    up.add_argument("--mib", type=int, default=600)
    up.add_argument("--bits", type=int, choices=(32, 64), default=64)
    up.add_argument("--worker-liveness", type=int, default=3)
    up.add_argument("--interval", type=float, default=1.0)
    options = parser.parse_args()
    if options.what == "clients":
        many_clients(options.count)
    elif options.what == "close":
        close_with_queued(options.queued)
    else:
        upload(options.mib, options.bits, options.worker_liveness, options.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
