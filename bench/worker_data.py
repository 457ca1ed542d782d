"""What moving big data costs a 32-bit worker: a huge argument, and a request that names one frame many times.

    python bench/worker_data.py [--mib 600] [--refs 5000] [--heartbeat-interval 1.0]

``big``: ``scale_sum(double*, int, double)`` declared on the demo library gets an ``array.array('d')`` of
``--mib`` MiB on one worker of two, while a second client calls ``add`` on the other one until it is
answered. Prints the outcome, its time, the cheap calls' worst latency, the workers lost (heartbeats that
stopped) and each worker's peak RSS. ``refs``: a hand-built request of one 1 MiB frame whose body refers to
it ``--refs`` times, sent through the broker; prints the answer, its time and the worker's peak RSS.
"""

from __future__ import annotations

import argparse
import array
import time
from typing import Any

import msgpack
import zmq
from demo_pool import demo_service, status_mib

from broker import Pool
from protocol import frames as wire
from protocol.codec import EXT_BUFFER


def big(mib: int, interval: float) -> None:
    count = mib * 1024 * 1024 // 8
    values = array.array("d", [0.0]) * count
    values[0], values[-1] = 1.0, 2.0
    config = {"pool": {"heartbeat_interval": interval}, "services": {"s": demo_service("add", "scale_sum", workers=2)}}
    # The caller's own heartbeats may queue behind its upload: a wide window keeps this about the worker.
    with (
        Pool.from_config(config) as pool,
        pool.client(timeout=600, heartbeat_liveness=60) as client,
        pool.client(timeout=30) as other,
    ):
        pids = sorted(pool.worker_pids("s"))
        started = time.monotonic()
        call = client.submit("s", "scale_sum", values, count, 1.0)
        worst, cheap = 0.0, 0
        while not call.done():
            before = time.monotonic()
            other.call("s", "add", cheap, 1)
            worst = max(worst, time.monotonic() - before)
            cheap += 1
        try:
            outcome = f"result {call.result()}"
        except Exception as exc:  # the figure to report is which error it was
            outcome = f"{type(exc).__name__}: {exc}"
        print(f"big: {mib} MiB double* argument: {outcome} after {time.monotonic() - started:.2f} s")
        print(f"big: {cheap} cheap calls meanwhile, the slowest in {worst:.3f} s")
        same = sorted(pool.worker_pids("s")) == pids
        print(f"big: workers lost {pool.stats()['workers_lost']}, worker pids unchanged {same}")
        print("big: worker peak RSS " + ", ".join(f"{status_mib(pid, 'VmHWM'):.0f} MiB" for pid in pids))


def refs(count: int) -> None:
    ext = msgpack.ExtType(EXT_BUFFER, msgpack.packb(1))
    body = msgpack.packb([[ext] * count, {}], use_bin_type=True)
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    with (
        Pool.from_config({"services": {"s": demo_service("add", "scale_sum")}}) as pool,
        pool.client(timeout=30) as client,
        sock,
    ):
        (pid,) = pool.worker_pids("s")
        before = status_mib(pid, "VmHWM")
        sock.connect(pool.address)
        started = time.monotonic()
        sock.send_multipart(wire.client_request(1, "s", "add", 600.0, [body, bytes(1 << 20)]))
        sock.poll(600_000)
        answer = wire.parse_for_client(sock.recv_multipart())
        took = time.monotonic() - started
        error = answer.error if isinstance(answer, wire.ReplyToClient) else None
        shown = f"{error['type']}: {error['message']}" if error else "a result"
        print(f"refs: one 1 MiB frame named {count} times: {shown} after {took:.2f} s")
        print(f"refs: worker peak RSS {before:.0f} MiB before, {status_mib(pid, 'VmHWM'):.0f} MiB after")
        serving = client.call("s", "add", 1, 2) == 3 and pool.worker_pids("s") == [pid]
        print(f"refs: the same worker serves on: {serving}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=600, help="size of the big argument (default 600)")
    parser.add_argument("--refs", type=int, default=5000, help="references to one frame (default 5000)")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0, help="the pool's (liveness stays 3)")
    options = parser.parse_args()
    big(options.mib, options.heartbeat_interval)
    refs(options.refs)


if __name__ == "__main__":
    main()
