"""What a calling thread costs its process: many threads calling through ``Client`` against a fake broker.

    python bench/client_threads.py [--threads 64] [--seconds 4] [--delay 0.010] [--mode client|raw] [--json]

The fake broker (a child process running this script with ``--serve``) answers every REQUEST with
``None`` after ``--delay`` seconds, and every HEARTBEAT, so the client process is all that is measured:
no workers, no broker loop, the 2 cores nearly free for it. Each of ``--threads`` threads calls in a loop,
either through one shared ``Client`` (``client``) or on a DEALER of its own speaking the wire protocol
directly with no other Python (``raw``: the floor for the same frames).

Printed: calls/s, and per call the process's CPU (all its threads, libzmq's included) and its context
switches (voluntary and not, summed over its threads from ``/proc/self/task/*/status``). With 64 threads
a call's own Python is paid several times over: each time a thread lets go of the GIL (pyzmq does around
every frame it sends or receives) it may have to wait for it behind the others. Compare two trees by
running this script with ``PYTHONPATH`` set to each (the fake broker speaks the tree's protocol).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from client import Client
from protocol import frames as wire
from protocol import pack_call, pack_value

SERVICE, METHOD = "demo", "sleep_ms"


def serve(address: str, delay: float) -> None:
    """The fake broker: one ROUTER; REPLY(None) ``delay`` seconds after each REQUEST, HEARTBEAT at once."""
    sock: zmq.Socket[Any] = zmq.Context().socket(zmq.ROUTER)
    sock.bind(address)
    print("ready", flush=True)
    body = pack_value(None)
    due: list[tuple[float, int, bytes, int]] = []
    order = itertools.count()
    while True:
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, ident, corr = heapq.heappop(due)
            sock.send_multipart([ident, *wire.reply_to_client(corr, body)])
        timeout = max(0, round((due[0][0] - now) * 1000)) if due else 100
        if not sock.poll(timeout):
            continue
        while True:
            try:
                ident, *frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            message = wire.parse_client(frames)
            if isinstance(message, wire.ClientRequest):
                heapq.heappush(due, (time.monotonic() + delay, next(order), ident, message.corr))
            elif isinstance(message, wire.ClientHeartbeat):
                sock.send_multipart([ident, *wire.heartbeat_to_client()])


def switches(status: Path) -> int:
    """A thread's context switches so far (voluntary and not), from its ``status`` file."""
    return sum(int(line.split()[1]) for line in status.read_text().splitlines() if "ctxt_switches" in line)


def each_thread() -> dict[str, int]:
    """Context switches of every live thread of this process, by thread id."""
    counts = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            counts[task.name] = switches(task / "status")
    return counts


def run(address: str, mode: str, threads: int, seconds: float) -> dict[str, float]:
    context: zmq.Context[Any] = zmq.Context()
    counts = [0] * threads
    ended = [0] * threads
    """Each calling thread's own context switches, read as it ends (its ``/proc`` entry goes with it)."""
    with Client(address, 60) as client:
        client.call(SERVICE, METHOD, 10)
        end = time.monotonic() + seconds

        def through_client(t: int) -> None:
            while time.monotonic() < end:
                client.call(SERVICE, METHOD, 10)
                counts[t] += 1
            ended[t] = switches(Path("/proc/thread-self/status"))

        def raw(t: int) -> None:
            sock: zmq.Socket[Any] = context.socket(zmq.DEALER)
            sock.rcvtimeo = 100
            sock.connect(address)
            for corr in itertools.count(1):
                if time.monotonic() >= end:
                    break
                frames = wire.client_request(corr, SERVICE, METHOD, 60.0, pack_call((10,), {}))
                sock.send_multipart(frames)
                while True:
                    try:
                        sock.recv_multipart()
                        break
                    except zmq.Again:
                        continue
                counts[t] += 1
            sock.close(0)
            ended[t] = switches(Path("/proc/thread-self/status"))

        pool = [threading.Thread(target=raw if mode == "raw" else through_client, args=(t,)) for t in range(threads)]
        started, cpu, before = time.monotonic(), time.process_time(), each_thread()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        elapsed, cpu, after = time.monotonic() - started, time.process_time() - cpu, each_thread()
        switched = sum(ended) + sum(after[tid] - before[tid] for tid in after.keys() & before.keys())
    context.destroy(0)
    calls = sum(counts)
    return {
        "calls_per_s": calls / elapsed,
        "cpu_us_per_call": 1e6 * cpu / calls,
        "switches_per_call": switched / calls,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--delay", type=float, default=0.010, help="seconds the fake broker holds each call")
    parser.add_argument("--mode", choices=("client", "raw"), default="client")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", metavar="ADDRESS", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, options.delay)
        return 0
    address = f"ipc:///tmp/dllpool-bench-{os.getpid()}"
    command = [sys.executable, __file__, "--serve", address, "--delay", str(options.delay)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as broker:
        try:
            assert broker.stdout is not None
            broker.stdout.readline()
            figures = run(address, options.mode, options.threads, options.seconds)
        finally:
            broker.kill()
    if options.json:
        print(json.dumps({"mode": options.mode, "threads": options.threads, **figures}))
    else:
        print(
            f"{options.mode}, {options.threads} threads: {figures['calls_per_s']:,.0f} calls/s, "
            f"{figures['cpu_us_per_call']:.1f} us of CPU and {figures['switches_per_call']:.2f} context switches "
            "per call"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
