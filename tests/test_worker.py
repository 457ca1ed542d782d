"""The worker side of issue 8: big arguments, repeated frame references, results too big, in real pools."""

from __future__ import annotations

import array
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from broker import Pool
from protocol import BadRequest, ReplyTooLarge
from protocol import frames as wire
from protocol.codec import EXT_BUFFER

from .conftest import demo_service

WRAPPER = Path(__file__).resolve().parent / "wrappers" / "misbehaving.py"


def test_a_600_mib_array_argument_does_not_stop_its_workers_heartbeats() -> None:
    """The worker copies the argument once, in slices (the GIL is free between two), and the library reads that
    copy in place: the watchdog keeps heartbeating, and the call next door runs as usual."""
    service = demo_service(workers=2)
    service["functions"]["scale_sum"] = {"args": ["double*", "int", "double"], "returns": "double"}  # type: ignore[index]
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
