"""What each step of a call costs in CPU, measured without the other processes: the profile's unit prices.

    python bench/microcosts.py            # the 64-bit side, then the same script in the 32-bit runtime
    python bench/microcosts.py --side worker    # one side only: socket, broker, client or worker

Each figure is the best of 5 repeats, in microseconds per operation:

* socket: pyzmq operations on an ipc DEALER -> ROUTER pair in one process (nothing blocks: the
  messages are queued first, then read), by frame count and copy mode; a NOBLOCK recv on an empty
  socket (the raised ``zmq.Again`` that ends every drain) against asking ``EVENTS``; the end of a
  message told by ``getsockopt(RCVMORE)`` against ``zmq.Frame.more``; pyzmq's ``send`` with and
  without its Python wrapper; flag enums;
* broker (64-bit): ``BrokerCore`` routing one request and its reply, and the wire functions it uses;
* client (64-bit): the work ``Client.call`` does before any I/O, its core's share, and reading a reply;
* worker (32-bit): ``Worker._answer`` for ``demo.add`` and its parts, and per call of a ``Client.map`` batch.

Runs on Python 3.9+ (the worker side runs in the project's 32-bit runtime, started like a worker).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zmq

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocol import frames as wire  # noqa: E402
from protocol.codec import pack_batch, pack_call, pack_value, unpack_batch, unpack_call, unpack_value  # noqa: E402

Figures = dict[str, float]

BATCH = 512
"""Calls per batch in the worker's map figures (Client.map's default chunk size)."""


def per_op(function: Callable[[], Any], number: int = 20_000) -> float:
    """Microseconds per call of ``function``, best of 5 (the callable's own overhead, ~0.03 us, included)."""
    return min(timeit.Timer(function).repeat(5, number)) / number * 1e6


# --------------------------------------------------------------------------- sockets


def socket_costs() -> Figures:
    figures: Figures = {}
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    dealer = context.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 0
    folder = f"/tmp/dllpool-microcosts-{os.getpid()}"
    router.bind(f"ipc://{folder}")
    dealer.connect(f"ipc://{folder}")
    batch = 5_000
    try:
        for count in (1, 2, 4, 7):
            frames = [b"x" * 8] * count
            for copy in (True, False):
                mode = "copy" if copy else "zero-copy"
                sent = received = float("inf")
                for _ in range(5):
                    started = time.perf_counter()
                    for _ in range(batch):
                        dealer.send_multipart(frames, copy=copy)
                    sent = min(sent, time.perf_counter() - started)
                    while router.poll(0) == 0:
                        time.sleep(0.001)
                    time.sleep(0.05)  # let the I/O thread move them all
                    started = time.perf_counter()
                    for _ in range(batch):
                        router.recv_multipart(copy=copy)
                    received = min(received, time.perf_counter() - started)
                figures[f"send_multipart, {count} frame(s), {mode}"] = sent / batch * 1e6
                figures[f"recv_multipart, {count}+1 frames, {mode}"] = received / batch * 1e6

        def empty_recv() -> None:
            try:  # noqa: SIM105 (the try/except is what a drain loop pays; suppress() would add its own cost)
                router.recv(zmq.NOBLOCK)
            except zmq.Again:
                pass

        rcvmore = int(zmq.RCVMORE)

        def by_getsockopt() -> None:
            frames = [router.recv()]
            while router.getsockopt(rcvmore):
                frames.append(router.recv())

        def by_frame_more() -> None:
            frame = router.recv(copy=False)
            frames = [frame.bytes]
            while frame.more:
                frame = router.recv(copy=False)
                frames.append(frame.bytes)

        for name, receive in (
            ("asking getsockopt(RCVMORE)", by_getsockopt),
            ("reading zmq.Frame.more (protocol.transport)", by_frame_more),
        ):
            best = float("inf")
            for _ in range(5):
                for _ in range(batch):
                    dealer.send(b"x" * 8)
                while router.poll(0) == 0:
                    time.sleep(0.001)
                time.sleep(0.05)
                started = time.perf_counter()
                for _ in range(batch):
                    receive()
                best = min(best, time.perf_counter() - started)
            figures[f"recv 1+1 frames, {name}"] = best / batch * 1e6

        wrapped, below = dealer.send, zmq.backend.Socket.send
        figures["send 1 frame through zmq.Socket.send (the Python wrapper)"] = per_op(
            lambda: wrapped(b"x", 0, copy=True)
        )
        figures["send 1 frame, zmq.backend.Socket.send (protocol.transport)"] = per_op(
            lambda: below(dealer, b"x", 0, True)
        )
        while router.poll(50):  # until 50 ms pass with nothing more: the next figure needs an empty socket
            router.recv_multipart()
        events = zmq.EVENTS
        figures["recv(NOBLOCK) on an empty socket, raising zmq.Again"] = per_op(empty_recv)
        figures["getsockopt(EVENTS) instead"] = per_op(lambda: router.getsockopt(events))
        figures["poll(0) instead"] = per_op(lambda: router.poll(0))
        figures["zmq.SNDMORE | zmq.NOBLOCK (enum flags)"] = per_op(lambda: zmq.SNDMORE | zmq.NOBLOCK)
        zframes = [zmq.Frame(b"x" * 8) for _ in range(7)]
        figures["[f.buffer for f in 7 zmq.Frames]"] = per_op(lambda: [f.buffer for f in zframes])
    finally:
        router.close(0)
        dealer.close(0)
        context.term()
        if os.path.exists(folder):
            os.unlink(folder)
    return figures


# --------------------------------------------------------------------------- 64-bit sides


def broker_costs() -> Figures:
    from broker.core import BrokerCore, ServicePolicy, ToClient, ToWorker

    core = BrokerCore([ServicePolicy("demo", frozenset({"add"}))])
    now = time.monotonic()
    core.worker_message(b"worker", wire.worker_ready({"service": "demo", "threads": 1, "pid": 1}), now)
    body = pack_call((2, 3), {})
    request: list[wire.Buffer] = list(wire.client_request(1, "demo", "add", 10.0, body))
    reply_body = pack_value(5)

    def round_trip() -> None:
        (to_worker,) = core.client_message(b"client", request, now)
        assert isinstance(to_worker, ToWorker)
        job = wire.parse_for_worker(to_worker.frames)
        assert isinstance(job, wire.WorkerRequest)
        reply = wire.worker_reply(job.job, reply_body)
        (to_client,) = core.worker_message(b"worker", reply, now)
        assert isinstance(to_client, ToClient)

    worker_reply = wire.worker_reply(1, reply_body)
    return {
        "BrokerCore: route one request and its reply (client_message + worker_message)": per_op(round_trip),
        "parse_client (header + body)": per_op(lambda: wire.parse_client(request)),
        "parse_worker (header + body)": per_op(lambda: wire.parse_worker(worker_reply)),
        "request_to_worker (header + body)": per_op(lambda: wire.request_to_worker(1, "add", 9.5, body)),
        "answer_to_client (header + body forwarded)": per_op(lambda: wire.answer_to_client(1, False, reply_body)),
    }


def client_costs() -> Figures:
    from client.calls import check_name as _check_name
    from client.calls import check_timeout as _check_timeout
    from client.core import Call, ClientCore

    body = pack_call((2, 3), {})
    reply = wire.reply_to_client(1, pack_value(5))
    core = ClientCore("ipc://unused", 1.0, 3, time.monotonic())
    core.connection_made(time.monotonic())

    def before_io() -> None:
        _check_name("demo", "service")
        _check_name("add", "method")
        _check_timeout(10.0)
        Call(1, "demo", "add", 10.0, pack_call((2, 3), {}), time.monotonic())

    def core_round() -> None:
        now = time.monotonic()
        core.add(Call(1, "demo", "add", 10.0, body, now))
        core.next_request(now)
        core.sent(now)
        core.received(reply, now)

    def future_round() -> None:
        future: Future[Any] = Future()
        future.set_result(5)
        future.result()

    def read_reply() -> None:
        answer = wire.parse_for_client(reply)
        assert isinstance(answer, wire.ReplyToClient)
        unpack_value(answer.payload)

    return {
        "call() before any I/O: names, timeout, pack_call, Call": per_op(before_io),
        "pack_call((2, 3), {})": per_op(lambda: pack_call((2, 3), {})),
        "ClientCore: add, next_request (client_request), sent, received (parse + unpack)": per_op(core_round),
        "client_request (header + body)": per_op(lambda: wire.client_request(1, "demo", "add", 10.0, body)),
        "Future: create, set_result, result (the submit path only)": per_op(future_round),
        "parse_for_client + unpack_value (a reply)": per_op(read_reply),
    }


# --------------------------------------------------------------------------- 32-bit worker


def worker_costs(hosting: dict[str, Any]) -> Figures:
    from workers32.hosting import build, call
    from workers32.worker import Worker

    spec = {**hosting, "service": "demo", "functions": {"add": hosting["functions"]["add"]}}
    methods = build(spec).methods
    worker = Worker("inproc://unused", spec, methods)
    frames = wire.request_to_worker(1, "add", 9.5, pack_call((2, 3), {}))
    request = wire.parse_for_worker(frames)
    assert isinstance(request, wire.WorkerRequest)
    add = methods["add"]
    payload = list(request.payload)
    args, kwargs = unpack_call(payload)
    batch = wire.parse_for_worker(
        wire.request_to_worker(2, "add", 9.5, pack_batch([(i, 1) for i in range(BATCH)]), wire.FLAG_BATCH)
    )
    assert isinstance(batch, wire.WorkerRequest)
    batch_payload = list(batch.payload)
    outcomes = [[True, i + 1] for i in range(BATCH)]
    try:
        return {
            "parse + Worker._answer (demo.add) + worker_reply": per_op(
                lambda: worker._answer(wire.parse_for_worker(frames), math.inf)  # type: ignore[arg-type]
            ),
            "parse_for_worker (header + body)": per_op(lambda: wire.parse_for_worker(frames)),
            # _answer empties the payload it decoded (see Worker._decode): each run gets a fresh list
            "Worker._answer (unpack_call, call, pack_value, worker_reply)": per_op(
                lambda: worker._answer(request._replace(payload=list(payload)), math.inf)
            ),
            "unpack_call": per_op(lambda: unpack_call(payload)),
            "hosting.call(add, [2, 3]) (CFunction: checks + ctypes)": per_op(lambda: call(add, args, kwargs)),
            "pack_value(5)": per_op(lambda: pack_value(5)),
            f"Worker._answer, a batch of {BATCH} demo.add calls (Client.map), per call": per_op(
                lambda: worker._answer(batch._replace(payload=list(batch_payload)), math.inf), 200
            )
            / BATCH,
            f"  unpack_batch, per call of {BATCH}": per_op(lambda: unpack_batch(batch_payload), 200) / BATCH,
            f"  pack_value of {BATCH} outcomes, per call": per_op(lambda: pack_value(outcomes), 200) / BATCH,
        }
    finally:
        worker.context.destroy(0)


# --------------------------------------------------------------------------- driver


def measure(side: str, hosting: dict[str, Any]) -> Figures:
    if side == "socket":
        return socket_costs()
    if side == "broker":
        return broker_costs()
    if side == "client":
        return client_costs()
    return worker_costs(hosting)


def in_runtime32(sides: list[str], hosting: dict[str, Any]) -> dict[str, Figures]:
    from broker import runtime32

    interp = runtime32.load()
    command = [*interp.command, "-s", str(Path(__file__).resolve()), "--json", "--hosting", json.dumps(hosting)]
    for side in sides:
        command += ["--side", side]
    done = subprocess.run(
        command, env=runtime32.command_env(interp, [str(ROOT)]), cwd="/", capture_output=True, text=True, check=True
    )
    result: dict[str, Figures] = json.loads(done.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", action="append", choices=("socket", "broker", "client", "worker"))
    parser.add_argument(
        "--hosting",
        type=json.loads,
        help="the worker's spec of the demo library, as JSON (default: the default "
        "configuration's, resolved by the broker's configuration code)",
    )
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    hosting = options.hosting
    if hosting is None:
        from broker import load_config

        hosting = dict(load_config().service("demo").hosting)
    bits = 8 * struct.calcsize("P")
    results: dict[str, Figures] = {}
    if options.side:
        for side in options.side:
            results[f"{side} ({bits}-bit Python {sys.version.split()[0]})"] = measure(side, hosting)
    else:
        for side in ("socket", "broker", "client"):
            print(f"[microcosts] {side} ...", file=sys.stderr, flush=True)
            results[f"{side} ({bits}-bit Python {sys.version.split()[0]})"] = measure(side, hosting)
        print("[microcosts] socket and worker, in the 32-bit runtime ...", file=sys.stderr, flush=True)
        results.update(in_runtime32(["socket", "worker"], hosting))
    if options.json:
        print(json.dumps(results, indent=2))
    else:
        for title, figures in results.items():
            print(f"\n{title}")
            for name, value in figures.items():
                print(f"  {value:8.2f} us  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
