"""What one careless or dead peer costs everyone else at the broker: issue 8's figures, before and after.

    python bench/broker_limits.py [--json FILE] dead-clients [--clients 12] [--calls 1000] [--give-up 85]
    python bench/broker_limits.py [--json FILE] endless [--max-call-seconds S] [--wait 60]
    python bench/broker_limits.py [--json FILE] memory [--requests 40] [--mib 64]
    python bench/broker_limits.py [--json FILE] recycled

It measures whichever dllpool code is importable: run it with
``PYTHONPATH=<an older checkout>`` to measure that one. It works from the root
of that code, so the ``python -c`` processes it starts (and the old code's
broker process) import the same code; it logs which code that is, and
``--json`` records it with the figures. Every pool is the demo library's
service ``s`` (non-idempotent functions, so nothing is held ahead), with its
broker in a thread unless said otherwise.

``dead-clients``: ``--clients`` processes each submit ``--calls``
``sleep_ms(20)`` to a 4-worker service (beyond ``queue_limit``, 10,000, some
get Busy), and once the broker has counted every request they are all
SIGKILLed. Then an innocent client calls ``add(1, 2, timeout=2)`` until one
succeeds (or ``--give-up`` seconds pass): seconds from the kill to that
success, its Timeouts, the calls the broker held at the kill, and how many
of the dead clients' calls still ran after it (the rise of replies + errors +
discarded_replies + late_replies, less the innocent's one success), with the
raw counters at the kill and once the broker is idle again.

``endless``: one client submits four ``sleep_ms(2**31 - 1)`` without a
timeout to a 4-worker service, waits until all four are sleeping in the
library, and ``close()``s. Another client calls ``add(1, 2, timeout=2)`` for
up to ``--wait`` seconds: whether and how long after the close it was first
answered, and its Timeouts; then how long ``Pool.stop()`` took.
``--max-call-seconds`` sets the service's ``max_call_seconds`` (a key the
code before issue 8 does not know); without it the figures say "default".

``memory``: a broker process of its own (``broker="process"``) and a
1-worker service whose worker runs ``sleep_ms(30000)``; then ``--requests``
submits of ``str_len(char*)`` carrying ``--mib`` MiB each, one at a time,
each once the broker has counted the one before. Reports the broker
process's RSS before and after (and its peak), and how many were refused
with Busy.

``recycled``: a 1-worker service with ``threads = 2``; one ``sleep_ms(60000)``
without a timeout, and once it sleeps, one ``sleep_ms(60000, timeout=1.0)``.
The second times out and its worker is killed: reports what each call got
(exception type and message).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

from demo_pool import demo_service, sleeping_threads, status_mib, wait_until

import broker
import client
from broker import Pool
from client import Busy, Client, DllPoolError

log = logging.getLogger("broker_limits")

CODE = Path(broker.__file__).resolve().parent.parent
"""The root of the dllpool code under test (a ``PYTHONPATH`` checkout, or this one)."""
ENDLESS_MS = 2**31 - 1
RAN = ("replies", "errors", "discarded_replies", "late_replies")
"""The broker's counters of answers a worker sent: each is a call that ran."""
CHILD = """
import sys, threading
import client
c = client.Client(sys.argv[1])
futures = [c.submit("s", "sleep_ms", 20) for _ in range(int(sys.argv[2]))]
print(client.__file__, flush=True)
threading.Event().wait()
"""
"""A client process: submits its calls, says which code it runs, and waits to be killed."""

Figures = dict[str, Any]


def service(workers: int, threads: int = 1, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The demo library's service ``s`` (with ``extra`` keys), as a pool configuration."""
    return {
        "services": {"s": demo_service("add", "sleep_ms", "str_len", workers=workers, threads=threads, **(extra or {}))}
    }


def counted(pool: Pool, requests: int) -> Callable[[], bool]:
    """Whether the broker has counted ``requests`` requests (taken, or refused with Busy) by now."""
    return lambda: pool.stats()["requests"] >= requests


def hosted_broker_pid() -> int:
    """The child of this process that runs ``broker.hosted``: the pool's broker process."""
    me = str(os.getpid())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == me and b"broker.hosted" in command:
            return int(proc.name)
    raise RuntimeError("no child process runs broker.hosted")


def described(exc: BaseException | None) -> str:
    return "no error" if exc is None else f"{type(exc).__name__}: {exc}"


def first_success(innocent: Client, give_up: float, since: float) -> Figures:
    """``add(1, 2, timeout=2)`` until one is answered or ``give_up`` seconds after ``since``."""
    failures: Counter[str] = Counter()
    while time.monotonic() - since < give_up:
        try:
            innocent.call("s", "add", 1, 2, timeout=2)
        except DllPoolError as exc:
            failures[type(exc).__name__] += 1
            continue
        return outcome(round(time.monotonic() - since, 2), failures)
    return outcome(None, failures)


def outcome(seconds: float | None, failures: Counter[str]) -> Figures:
    return {"first_success_s": seconds, "timeouts": failures["Timeout"], "failures": dict(failures)}


def settle(pool: Pool) -> dict[str, int]:
    """The broker's counters once it holds nothing: by its ``pending`` gauge, or (code without one) once they
    stay the same for half a second."""
    stats = pool.stats()
    if "pending" in stats:
        wait_until(lambda: pool.stats()["pending"] == 0, 30, "the broker to hold no request")
        return pool.stats()
    while True:
        time.sleep(0.5)
        now = pool.stats()
        if now == stats:
            return now
        stats = now


def dead_clients(clients: int, calls: int, give_up: float) -> Figures:
    with Pool.from_config(service(4), broker="thread") as pool:
        base = pool.stats()["requests"]
        procs = [
            subprocess.Popen([sys.executable, "-c", CHILD, pool.address, str(calls)], stdout=subprocess.PIPE, text=True)
            for _ in range(clients)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                imported = proc.stdout.readline().strip()
                if imported != client.__file__:
                    raise RuntimeError(f"a client process ran {imported or 'nothing'}, not {client.__file__}")
            total = clients * calls
            wait_until(counted(pool, base + total), 60, f"the broker to count {total} requests")
            at_kill = pool.stats()
            for proc in procs:
                proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        log.info("killed %d clients holding %d calls; an innocent client calls add", clients, total)
        with pool.client() as innocent:
            tried = first_success(innocent, give_up, killed)
        after = settle(pool)
    answered = sum(at_kill.get(key, 0) for key in RAN)
    ran = sum(after.get(key, 0) for key in RAN) - answered - (tried["first_success_s"] is not None)
    keys = sorted(set(RAN) | {"requests", "busy", "expired_in_queue", "dropped_unrun", "clients_forgotten"})
    return {
        "clients": clients,
        "calls_each": calls,
        **tried,
        "dead_calls_ran_after_kill": ran,
        "busy_before_kill": at_kill["busy"],
        "held_at_kill": at_kill.get("pending", at_kill["requests"] - at_kill["busy"] - answered),
        "at_kill": {key: at_kill.get(key) for key in keys},
        "after": {key: after.get(key) for key in keys},
    }


def endless(max_call_seconds: float | None, wait_seconds: float) -> Figures:
    extra = None if max_call_seconds is None else {"max_call_seconds": max_call_seconds}
    pool = Pool.from_config(service(4, extra=extra), broker="thread")
    try:
        pids = pool.worker_pids("s")
        owner = pool.client()
        for _ in pids:
            owner.submit("s", "sleep_ms", ENDLESS_MS)
        wait_until(lambda: all(sleeping_threads(pid) for pid in pids), 30, "every worker to sleep in the library")
        owner.close()
        closed = time.monotonic()
        log.info("4 endless calls running, their client closed; another client calls add for %s s", wait_seconds)
        with pool.client() as other:
            tried = first_success(other, wait_seconds, closed)
        stats = pool.stats()
    finally:
        started = time.monotonic()
        pool.stop()
        stop_s = round(time.monotonic() - started, 2)
    return {
        "max_call_seconds": max_call_seconds if max_call_seconds is not None else "default",
        "waited_up_to_s": wait_seconds,
        **tried,
        "pool_stop_s": stop_s,
        "timed_out_running": stats["timed_out_running"],
        "workers_lost": stats["workers_lost"],
    }


def memory(requests: int, mib: int) -> Figures:
    with Pool.from_config(service(1), broker="process") as pool, pool.client() as caller:
        pid = hosted_broker_pid()
        (worker,) = pool.worker_pids("s")
        caller.submit("s", "sleep_ms", 30_000)
        wait_until(lambda: sleeping_threads(worker) > 0, 30, "the worker to sleep in the library")
        before = status_mib(pid, "VmRSS")
        data = bytes(mib << 20)
        stats = pool.stats()
        futures: list[Future[Any]] = []
        for i in range(1, requests + 1):
            futures.append(caller.submit("s", "str_len", data))
            wait_until(counted(pool, stats["requests"] + i), 60, f"the broker to count request {i}")
        after, peak = status_mib(pid, "VmRSS"), status_mib(pid, "VmHWM")
        busy = pool.stats()["busy"] - stats["busy"]

        def refused() -> list[BaseException]:
            return [exc for f in futures if f.done() and isinstance(exc := f.exception(), Busy)]

        wait_until(lambda: len(refused()) >= busy, 30, f"{busy} Busy answers")
        first_busy = refused()[:1]
    return {
        "requests": requests,
        "mib_each": mib,
        "broker_rss_before_mib": before,
        "broker_rss_after_mib": after,
        "broker_peak_rss_mib": peak,
        "busy": busy,
        "first_busy": described(first_busy[0]) if first_busy else None,
    }


def recycled() -> Figures:
    with Pool.from_config(service(1, threads=2), broker="thread") as pool, pool.client() as caller:
        (worker,) = pool.worker_pids("s")
        first = caller.submit("s", "sleep_ms", 60_000)
        wait_until(lambda: sleeping_threads(worker) > 0, 30, "the first call to sleep in the library")
        second = caller.submit("s", "sleep_ms", 60_000, timeout=1.0)
        wait([first, second], timeout=30)
        if not (first.done() and second.done()):
            raise RuntimeError("a call was not answered within 30 s of the other's timeout")
    return {"first_call_got": described(first.exception()), "timed_out_call_got": described(second.exception())}


def commit() -> str:
    found = subprocess.run(["git", "-C", str(CODE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    sub = parser.add_subparsers(dest="what", required=True)
    dead = sub.add_parser("dead-clients", help="SIGKILLed clients with calls queued")
    dead.add_argument("--clients", type=int, default=12)
    dead.add_argument("--calls", type=int, default=1000)
    dead.add_argument("--give-up", type=float, default=85.0, help="seconds the innocent client keeps trying")
    long = sub.add_parser("endless", help="four calls that never end, their client closed")
    long.add_argument("--max-call-seconds", type=float, help="the service's max_call_seconds (new code only)")
    long.add_argument("--wait", type=float, default=60.0, help="seconds the other client keeps trying")
    mem = sub.add_parser("memory", help="big requests queued at a broker process")
    mem.add_argument("--requests", type=int, default=40)
    mem.add_argument("--mib", type=int, default=64)
    sub.add_parser("recycled", help="a threads = 2 worker recycled by its other call's timeout")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    output = options.json.resolve() if options.json else None
    os.chdir(CODE)  # `python -c` children put the working directory first on sys.path
    code = f"{CODE} ({commit()})"
    log.info("measuring %s on the code at %s", options.what, code)
    if options.what == "dead-clients":
        figures = dead_clients(options.clients, options.calls, options.give_up)
    elif options.what == "endless":
        figures = endless(options.max_call_seconds, options.wait)
    elif options.what == "memory":
        figures = memory(options.requests, options.mib)
    else:
        figures = recycled()
    for key, value in figures.items():
        print(f"{key}: {value}")
    if output is not None:
        output.write_text(json.dumps({"scenario": options.what, "code": code, "figures": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
