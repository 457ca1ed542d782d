"""Garbage at both broker sockets while a real client keeps calling: nothing breaks, memory stays flat."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client import Client
from protocol import frames as wire
from protocol import pack_call

from .conftest import ROOT, library, wait_for

DLLPOOL = [sys.executable, "-m", "broker.cli"]
_PROBE = 2**64 - 1
"""A correlation ID no template uses."""
EXAMPLES_PER_SOCKET = 3000
"""Hostile messages per socket: 6,000 in all, as many as the suite's 10-minute budget leaves room for."""

_HOSTILE_BODIES = [
    b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
    b"\xdf\xff\xff\xff\xff",  # map32 claiming 4 billion entries
    b"\xc6\x7f\xff\xff\xff",  # bin32 claiming 2 GiB
    b"\x91" * 100_000 + b"\xc0",  # nested 100,000 deep
    b"\xc7\x05\x01\xff\xff\xff\xff\xff",  # ext type 1 pointing nowhere
    b"\xd4\x00\x00",  # ext type 0 (what a pickle hook would be)
]

CLIENT_TEMPLATES: list[list[bytes]] = [
    [bytes(f) for f in wire.client_request(1, "demo", "add", None, pack_call((1, 2), {}))],
    [bytes(f) for f in wire.client_request(2, "demo", "add", 0.5, [b"\x92\x90\x80"])],
    [bytes(f) for f in wire.client_request(3, "nope", "x", None, [b"\xc0"])],
    [bytes(f) for f in wire.client_request(4, "demo", "add", None, [b"\x90", b"\x90"], wire.FLAG_BATCH)],
    *([bytes(f) for f in wire.client_request(5, "demo", "add", None, [body])] for body in _HOSTILE_BODIES),
    [bytes(f) for f in wire.client_heartbeat()],
    [bytes(f) for f in wire.client_cancel(1)],
    [bytes(f) for f in wire.worker_ready({"service": "demo", "pid": 1, "threads": 1})],  # a READY sent to clients' side
]
WORKER_TEMPLATES: list[list[bytes]] = [
    [bytes(f) for f in wire.worker_reply(1, [b"\x03"])],
    [bytes(f) for f in wire.worker_error(2, {"type": "RemoteError"})],
    [bytes(f) for f in wire.worker_heartbeat()],
    [bytes(f) for f in wire.worker_disconnect()],
    [bytes(wire.worker_ready({})[0]), msgpack.packb({"service": "demo", "pid": "x", "threads": 0})],
    [bytes(wire.worker_ready({})[0]), b"\xdf\xff\xff\xff\xff"],
    [bytes(f) for f in wire.client_request(6, "demo", "add", None, [b"\xc0"])],  # a client REQUEST to the backend
]


@st.composite
def _mutated(draw: st.DrawFn, templates: list[list[bytes]]) -> list[bytes]:
    frames = list(draw(st.sampled_from(templates)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["flip", "truncate", "drop", "dup", "replace", "version", "empty"]))
        if not frames:
            frames.append(b"")
        i = draw(st.integers(0, len(frames) - 1))
        if action == "flip" and frames[i]:
            j = draw(st.integers(0, len(frames[i]) - 1))
            frames[i] = frames[i][:j] + bytes([frames[i][j] ^ draw(st.integers(1, 255))]) + frames[i][j + 1 :]
        elif action == "truncate":
            frames[i] = frames[i][: draw(st.integers(0, len(frames[i])))]
        elif action == "drop":
            del frames[i]
        elif action == "dup":
            frames.insert(i, frames[i])
        elif action == "replace":
            frames[i] = draw(st.binary(max_size=40))
        elif action == "version":
            frames[0] = frames[0][:3] + bytes([draw(st.integers(0, 255))]) + frames[0][4:]
        else:
            frames[i] = b""
    return frames


def _messages(templates: list[list[bytes]]) -> st.SearchStrategy[list[bytes]]:
    random_frames = st.lists(st.binary(max_size=64), min_size=1, max_size=10)
    return st.one_of(random_frames, _mutated(templates))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, str]]:
    """A `dllpool up` process (so its memory can be read on its own), with 1 MiB frames at most."""
    folder = tmp_path_factory.mktemp("fuzz")
    config = folder / "pool.toml"
    config.write_text(
        "[pool]\n"
        f'frontend = "ipc://{folder}/frontend"\n'
        f'backend = "ipc://{folder}/backend"\n'
        f"max_message_size = {1 << 20}\n"
        "[services.demo]\nworkers = 2\n"
        f'library = "{library(32)}"\n'
        '[services.demo.functions]\nadd = { args = ["int", "int"], returns = "int" }\n'
    )
    process = subprocess.Popen(
        [*DLLPOOL, "up", "-c", str(config)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("dllpool: serving at "), line
    try:
        yield process.pid, f"ipc://{folder}/frontend", f"ipc://{folder}/backend"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _round_trip(sock: zmq.Socket[Any]) -> None:
    """Wait for the answer to a probe: the broker has handled every frame sent on ``sock`` before it."""
    sock.send_multipart(wire.client_request(_PROBE, "demo", "add", None, pack_call((1, 2), {})))
    while sock.poll(30_000):
        if wire.corr_of(sock.recv_multipart(), wire.CLIENT_PROTOCOL) == _PROBE:
            return
    raise AssertionError("the broker did not answer a well-formed request after the fuzzing")


class _Caller(threading.Thread):
    """A well-behaved client that keeps calling during the fuzzing."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.outcomes: Counter[str] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        with Client(self.address, timeout=10) as client:
            i = 0
            while not self.stop.is_set():
                try:
                    ok = client.call("demo", "add", i, 1) == i + 1
                    self.outcomes["right" if ok else "wrong"] += 1
                except Exception as exc:  # any failure of a well-formed call is a finding
                    self.outcomes[type(exc).__name__] += 1
                i += 1


def _fuzz(sock: zmq.Socket[Any], templates: list[list[bytes]], sent: Counter[str], name: str) -> None:
    @settings(
        max_examples=EXAMPLES_PER_SOCKET,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_messages(templates))
    def send(frames: list[bytes]) -> None:
        sock.send_multipart(frames or [b""])
        sent[name] += 1
        sent["frames"] += len(frames or [b""])
        while sock.poll(0):
            sock.recv_multipart()

    send()


def test_fuzzed_frames_at_both_sockets_do_not_disturb_a_real_client(broker: tuple[int, str, str]) -> None:
    pid, frontend, backend = broker
    context = zmq.Context()
    caller = _Caller(frontend)
    caller.start()
    sent: Counter[str] = Counter()
    try:
        client_side = context.socket(zmq.DEALER)
        worker_side = context.socket(zmq.DEALER)
        for sock, endpoint in ((client_side, frontend), (worker_side, backend)):
            sock.linger = 0
            sock.connect(endpoint)
        wait_for(lambda: sum(caller.outcomes.values()) > 0, 30, "the real client's first answer")
        baseline = _rss_kib(pid)
        _fuzz(worker_side, WORKER_TEMPLATES, sent, "backend")
        _fuzz(client_side, CLIENT_TEMPLATES, sent, "frontend")
        oversized = context.socket(zmq.DEALER)
        oversized.linger = 0
        dropped = oversized.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        oversized.connect(frontend)
        oversized.send_multipart(wire.client_request(7, "demo", "add", None, [b"x" * (2 << 20)]))
        assert dropped.poll(30_000), "the broker did not drop the sender of a frame over max_message_size"
        _round_trip(client_side)
        grown = _rss_kib(pid) - baseline
        calls_before = sum(caller.outcomes.values())
        wait_for(lambda: sum(caller.outcomes.values()) > calls_before, 10, "the real client's next answer")
    finally:
        caller.stop.set()
        caller.join(timeout=15)
        context.destroy(linger=0)
    print(
        f"fuzz: {sent['frontend']} messages to the frontend, {sent['backend']} to the backend, "
        f"{sent['frames']} frames; real client {dict(caller.outcomes)}; broker RSS grew {grown} KiB"
    )
    assert sent["frontend"] + sent["backend"] >= 2 * EXAMPLES_PER_SOCKET * 0.9
    assert set(caller.outcomes) == {"right"}, dict(caller.outcomes)
    assert grown < 20 * 1024, f"the broker grew by {grown} KiB while fuzzed"
