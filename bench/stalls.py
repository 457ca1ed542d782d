"""What one peer can cost everyone else: a huge message, a paused broker, a stop with endless calls.

    python bench/stalls.py flood      # one request of 1,000,000 empty frames against the default pool
    python bench/stalls.py sigstop    # the broker process SIGSTOPped for 6 s while a call runs
    python bench/stalls.py stop       # Pool.stop() and `dllpool up` with endless calls running

Each prints one line per figure: what the offender got, what innocent callers got, workers lost.
Only public API is used, so the same script measures an older commit too (the "before" figures).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any

import zmq
from demo_pool import demo_service, sleeping_threads, wait_until

from broker import BrokerKind, Pool
from client import Client
from protocol import frames as wire

ENDLESS = 2**31 - 1
"""Milliseconds of ``demo.sleep_ms`` nobody waits out."""


def demo(workers: int) -> dict[str, Any]:
    """The demo library as a service ``demo`` alone, with ``workers`` workers."""
    return {"services": {"demo": demo_service("add", "sleep_ms", workers=workers)}}


def sleeping(pids: list[int], count: int) -> None:
    """Return once ``count`` of the workers ``pids`` run ``sleep_ms``."""
    wait_until(lambda: sum(sleeping_threads(pid) > 0 for pid in pids) >= count, 60, f"{count} workers in sleep_ms")


def replaced(pids: list[int], pool: Pool) -> None:
    gone = [pid for pid in pids if pid not in pool.worker_pids()]
    print(f"workers: {len(gone)} of {len(pids)} replaced; workers_lost {pool.stats()['workers_lost']}")


def outcome(future: Future[Any]) -> str:
    try:
        future.result(timeout=60)
    except Exception as exc:
        return type(exc).__name__
    return "result"


def flood() -> None:
    with Pool.from_config() as pool:  # the embedded default: 9 workers in 5 services
        pids = pool.worker_pids()
        stop = threading.Event()
        gaps: list[float] = []
        patient: list[float] = []
        failures: list[str] = []

        def innocent(waits: list[float], liveness: int, service: str, method: str, *args: int) -> None:
            with pool.client(timeout=60, heartbeat_liveness=liveness) as client:
                last = time.monotonic()
                while not stop.is_set():
                    try:
                        client.call(service, method, *args)
                    except Exception as exc:
                        failures.append(f"{service}.{method}: {type(exc).__name__}")
                    waits.append(time.monotonic() - last)
                    last = time.monotonic()

        callers = [
            threading.Thread(target=innocent, args=(gaps, 3, "demo", "add", 1, 2)),
            threading.Thread(target=innocent, args=(gaps, 3, "demo_threaded", "sleep_ms", 200)),
            threading.Thread(target=innocent, args=(patient, 60, "cpp", "cpp_add", 1, 2)),  # waits out any stall
        ]
        for thread in callers:
            thread.start()
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(pool.address)
        sock.send(wire.client_request_header(7, b"demo", b"add", None), zmq.SNDMORE)
        for _ in range(999_998):
            sock.send(b"", zmq.SNDMORE)
        sock.send(b"")
        sent = time.monotonic()
        answer = wire.parse_for_client(sock.recv_multipart()) if sock.poll(120_000) else None
        answered = time.monotonic() - sent
        sock.close()
        stop.set()
        for thread in callers:
            thread.join()
        error = getattr(answer, "error", None) or {}
        print(f"offender: {error.get('type', answer)}, {answered:.2f} s after it was sent: {error.get('message')}")
        kinds = sorted(set(failures))
        print(f"innocent callers: {len(gaps)} calls, longest wait {max(gaps):.2f} s, {len(failures)} failed {kinds}")
        print(f"a caller that waits out any silence (heartbeat_liveness=60): longest wait {max(patient):.2f} s")
        replaced(pids, pool)


def sigstop() -> None:
    with Pool.from_config(demo(3), broker="process") as pool:
        pids = pool.worker_pids()
        with open(f"/proc/{pids[0]}/stat") as f:
            broker = int(f.read().rsplit(")", 1)[1].split()[1])
        with Client(pool.address, heartbeat_liveness=30) as patient, pool.client(timeout=30) as client:
            running = patient.submit("demo", "sleep_ms", 8000)
            sleeping(pids, 1)
            os.kill(broker, signal.SIGSTOP)
            time.sleep(6.0)
            os.kill(broker, signal.SIGCONT)
            print(f"the call running during the pause: {outcome(running)}")
            print(f"a new call after it: {outcome(client.submit('demo', 'add', 2, 3))}")
        replaced(pids, pool)


def stop() -> None:
    runs: list[tuple[BrokerKind, float]] = [("thread", 0.0), ("process", 0.0), ("thread", 2.0)]
    for broker, grace in runs:
        pool = Pool.from_config(demo(6), broker=broker)
        with pool.client() as client:
            endless = [client.submit("demo", "sleep_ms", ENDLESS) for _ in range(4)]
            sleeping(pool.worker_pids(), 4)
            begun = time.monotonic()
            pool.stop(grace=grace)
            took = time.monotonic() - begun
            outcomes = {outcome(future) for future in endless}
        print(f"Pool(broker={broker!r}).stop(grace={grace}), 4 of 6 workers in endless calls: {took:.2f} s; {outcomes}")
    kinds: list[BrokerKind] = ["thread", "process"]
    for broker in kinds:
        pool = Pool.from_config(demo(6), broker=broker)
        begun = time.monotonic()
        pool.stop(grace=0.0)
        print(f"Pool(broker={broker!r}).stop(grace=0), 6 idle workers: {time.monotonic() - begun:.2f} s")
    up = subprocess.Popen([sys.executable, "-m", "broker.cli", "up", "--json"], stdout=subprocess.PIPE, text=True)
    assert up.stdout is not None
    announced = json.loads(up.stdout.readline())
    with Client(announced["address"]) as client:
        endless = [client.submit("demo", "sleep_ms", ENDLESS) for _ in range(4)]
        sleeping([w["pid"] for w in announced["workers"] if w["service"] == "demo"], 4)
        begun = time.monotonic()
        up.send_signal(signal.SIGTERM)
        code = up.wait(120)
        took = time.monotonic() - begun
        outcomes = {outcome(future) for future in endless}
    print(f"dllpool up (--grace 5), 4 endless calls: exit {code} {took:.2f} s after SIGTERM; {outcomes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["flood", "sigstop", "stop"])
    options = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    {"flood": flood, "sigstop": sigstop, "stop": stop}[options.what]()


if __name__ == "__main__":
    main()
