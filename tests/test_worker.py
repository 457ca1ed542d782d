"""The worker side of issue 8: cancelled calls, big arguments, repeated frame references, results too big.

The CANCEL tests talk to one real 32-bit worker process from a ROUTER socket of their own, frame by frame, as
the broker does: they decide exactly when each message reaches the worker. The others run a real pool.
"""

from __future__ import annotations

import array
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from broker import Pool, runtime32
from broker.config import load_config
from protocol import BadRequest, ReplyTooLarge, pack_call, unpack_value
from protocol import frames as wire
from protocol.codec import EXT_BUFFER

from .conftest import ROOT, demo_service, in_nanosleep, wait_for

WRAPPER = Path(__file__).resolve().parent / "wrappers" / "misbehaving.py"


class _Backend:
    """The broker's end of one real worker: this test sends the requests and reads every answer."""

    def __init__(self, router: zmq.Socket[Any], ident: bytes, pid: int) -> None:
        self.router = router
        self.ident = ident
        self.pid = pid

    def request(self, job: int, method: str, *args: Any) -> None:
        self.router.send_multipart([self.ident, *wire.request_to_worker(job, method, None, pack_call(args, {}))])

    def cancel(self, job: int) -> None:
        self.router.send_multipart([self.ident, *wire.cancel_to_worker(job)])

    def answers(self, count: int) -> list[tuple[int, Any]]:
        """The next ``count`` answers in the order they came: (job, result, or the error's type name)."""
        got: list[tuple[int, Any]] = []
        while len(got) < count:
            assert self.router.poll(30_000), f"the worker gave {len(got)} of {count} answers: {got}"
            message = wire.parse_worker(self.router.recv_multipart()[1:])
            if isinstance(message, wire.WorkerReply):
                payload = message.payload
                value = wire.unpack_header(payload[0], "error") if message.error else unpack_value(payload)
                got.append((message.job, value["type"] if message.error else value))
        return got


@contextmanager
def _worker(tmp_path: Path, threads: int, max_message_size: int = 1 << 30) -> Iterator[_Backend]:
    """A real 32-bit worker of the demo library connected to a ROUTER this test holds."""
    router: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.ROUTER)
    router.linger = 0
    endpoint = f"ipc://{tmp_path}/backend"
    router.bind(endpoint)
    hosting = load_config({"services": {"s": demo_service(threads=threads)}}).service("s").hosting
    spec = {
        "service": "s",
        "threads": threads,
        "heartbeat_interval": 1.0,
        "heartbeat_liveness": 60,  # this test sends no heartbeats: the worker must not give up on it
        "max_message_size": max_message_size,
        **hosting,
    }
    interp = runtime32.load()
    command = [*interp.command, "-s", "-m", "workers32", "--connect", endpoint, "--spec", json.dumps(spec)]
    process = subprocess.Popen(
        [*command, "--parent-pid", str(os.getpid())],
        cwd=ROOT,
        env=runtime32.command_env(interp, [str(ROOT)]),
        stdin=subprocess.DEVNULL,
    )
    try:
        assert router.poll(30_000), "the worker did not register"
        ident, *frames = router.recv_multipart()
        ready = wire.parse_worker(frames)
        assert isinstance(ready, wire.WorkerReady)
        yield _Backend(router, ident, ready.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
        router.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_call_cancelled_before_it_started_is_answered_at_once_and_never_runs(tmp_path: Path, threads: int) -> None:
    """With one thread the CANCEL reaches the watchdog (the socket thread is inside the library); with two, the
    waiting call's future is cancelled. A CANCEL for a running or unknown job is ignored."""
    with _worker(tmp_path, threads) as worker:
        running = list(range(1, threads + 1))
        for job in running:
            worker.request(job, "sleep_ms", 1500)
        wait_for(lambda: in_nanosleep(worker.pid, threads), 30, "every thread of the worker to be in a call")
        waiting, after = threads + 1, threads + 2
        worker.request(waiting, "count_calls")
        worker.request(after, "add", 3, 4)
        worker.cancel(waiting)
        worker.cancel(running[0])
        worker.cancel(999)
        answers = worker.answers(threads + 2)
        assert answers[0] == (waiting, "CallError"), "the cancelled call was not answered before the running ones"
        assert sorted(answers[1:]) == [*((job, None) for job in running), (after, 7)]
        worker.request(after + 1, "count_calls")
        assert worker.answers(1) == [(after + 1, 1)], "the cancelled count_calls ran, or a job got two answers"


def test_the_size_check_counts_the_frame_as_sent_with_its_header(tmp_path: Path) -> None:
    """``add``'s one-byte body goes out in its 16-byte header's frame: over a 10-byte max_message_size, which
    the broker would have enforced by dropping the worker's connection."""
    with _worker(tmp_path, 1, max_message_size=10) as worker:
        worker.request(1, "add", 3, 4)
        assert worker.answers(1) == [(1, "ReplyTooLarge")]


def test_a_600_mib_array_argument_does_not_stop_its_workers_heartbeats() -> None:
    """The worker copies the argument once, in slices (the GIL is free between two), and the library reads that
    copy in place: the watchdog keeps heartbeating, and the call next door runs as usual."""
    service = demo_service(workers=2)
    count = 600 * 1024 * 1024 // 8
    values = array.array("d", [0.0]) * count
    values[0], values[-1] = 1.0, 2.0
    # The caller's own heartbeats may queue behind its 600 MiB upload: a wide window keeps this about the worker.
    with (
        Pool.from_config({"services": {"s": service}}) as pool,
        pool.client(timeout=120, heartbeat_liveness=60) as big,
        pool.client(timeout=10) as other,
    ):
        pids = sorted(pool.worker_pids("s"))
        call = big.submit("s", "scale_sum", values, count, 1.0)
        cheap = 0
        while not call.done():
            assert other.call("s", "add", cheap, 1) == cheap + 1
            cheap += 1
        assert call.result() == 3.0
        assert cheap > 0
        assert pool.stats()["workers_lost"] == 0
        assert sorted(pool.worker_pids("s")) == pids


def _frame_references(refs: list[int], frames: int) -> list[bytes]:
    """A call payload of hand-made ext references: ``add(<frame refs[0]>, ...)`` with ``frames`` 16 KiB frames."""
    body = msgpack.packb([[msgpack.ExtType(EXT_BUFFER, msgpack.packb(r)) for r in refs], {}], use_bin_type=True)
    return [body, *(bytes(16 * 1024) for _ in range(frames))]


@pytest.mark.parametrize(
    ("refs", "frames", "needle"),
    [([1] * 5000, 1, "refers to frame 1 more than once"), ([1, 2], 3, "never refers to")],
)
def test_a_body_must_refer_to_each_of_its_frames_exactly_once(refs: list[int], frames: int, needle: str) -> None:
    """A small body naming one frame 5,000 times would make the worker copy it 5,000 times."""
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    with Pool.from_config({"services": {"s": demo_service()}}) as pool, pool.client(timeout=10) as client, sock:
        (pid,) = pool.worker_pids("s")
        sock.connect(pool.address)
        sock.send_multipart(wire.client_request(1, "s", "add", 10.0, _frame_references(refs, frames)))
        assert sock.poll(30_000), "no answer"
        answer = wire.parse_for_client(sock.recv_multipart())
        assert isinstance(answer, wire.ReplyToClient) and answer.error is not None
        assert answer.error["type"] == BadRequest.__name__
        assert needle in answer.error["message"]
        assert client.call("s", "worker_pid") == pid
        assert pool.stats()["workers_lost"] == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_a_result_over_max_message_size_is_reply_too_large_and_the_worker_keeps_serving(threads: int) -> None:
    limit = 1 << 20
    service = {"module": str(WRAPPER), "class": "Misbehaving", "workers": 1, "threads": threads}
    config = {"pool": {"max_message_size": limit}, "services": {"w": service}}
    with Pool.from_config(config) as pool, pool.client(timeout=10) as client:
        pid = client.call("w", "pid")
        with pytest.raises(ReplyTooLarge) as info:
            client.call("w", "blob", limit + 1)
        assert info.value.details["limit"] == limit
        assert info.value.details["size"] == limit + 1
        assert "max_message_size" in str(info.value)
        assert client.call("w", "blob", limit) == bytes(limit)
        assert client.call("w", "pid") == pid
        assert pool.stats()["workers_lost"] == 0
