"""Nothing stalls the broker for long: one huge message, a broker that was itself stopped, a stop with endless calls."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from broker import BrokerCore, BrokerKind, Pool
from broker import loop as loop_module
from broker.loop import BrokerLoop
from client import BadRequest, BrokerUnavailable, CallError, Client
from protocol import error_from_wire
from protocol import frames as wire

from .conftest import ROOT, assert_no_children_left, demo_service, in_nanosleep, wait_for
from .test_cli import children_of

DLLPOOL = [sys.executable, "-m", "broker.cli"]
ENDLESS = 2**31 - 1
"""Milliseconds of ``demo.sleep_ms`` that no test waits out: 24 days."""


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@contextlib.contextmanager
def raw_dealer(address: str) -> Iterator[zmq.Socket[bytes]]:
    """A bare DEALER connected to the broker's frontend: a client that sends whatever it likes."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(address)
        yield sock
    finally:
        sock.close()


def refusal(sock: zmq.Socket[bytes], corr: int) -> CallError:
    """The error the broker answered the request ``corr`` with."""
    assert sock.poll(60_000), "the broker never answered"
    answer = wire.parse_for_client(sock.recv_multipart())
    assert isinstance(answer, wire.ReplyToClient) and answer.corr == corr and answer.error is not None, answer
    return error_from_wire(answer.error)


def flood(address: str, frames: int) -> CallError:
    """The broker's answer to a request of ``frames`` frames (all but the header empty) from a raw socket."""
    with raw_dealer(address) as sock:
        sock.send(wire.client_request_header(7, b"s", b"add", None), zmq.SNDMORE)
        for _ in range(frames - 2):
            sock.send(b"", zmq.SNDMORE)
        sock.send(b"")
        return refusal(sock, 7)


def test_a_request_of_a_million_frames_is_refused_and_costs_nobody_else_anything() -> None:
    config = {"services": {"s": demo_service(workers=3)}}
    with Pool.from_config(config, broker="process") as pool, pool.client(timeout=60) as client:
        pids = pool.worker_pids("s")
        sleeping = [client.submit("s", "sleep_ms", 2000) for _ in range(2)]
        wait_for(lambda: sum(in_nanosleep(pid) for pid in pids) == 2, 30, "two calls to run")
        answered: list[int] = []
        failed: list[Exception] = []
        done = threading.Event()

        def cheap_calls() -> None:  # an innocent caller, busy before, during and after the flood
            while not done.is_set():
                try:
                    answered.append(client.call("s", "add", len(answered), 1))
                except Exception as exc:
                    failed.append(exc)
                    return

        caller = threading.Thread(target=cheap_calls)
        caller.start()
        try:
            error = flood(pool.address, 1_000_000)
        finally:
            done.set()
            caller.join()
        assert isinstance(error, BadRequest), error
        assert "max_request_frames" in error.message and "1,024" in error.message, error.message
        assert error.details["frames"] == 1_000_000
        assert [f.result() for f in sleeping] == [None, None]
        assert not failed and answered == [i + 1 for i in range(len(answered))] and answered, failed
        assert client.call("s", "add", 2, 3) == 5
        assert pool.worker_pids("s") == pids
        stats = pool.stats()
        assert stats["workers_lost"] == 0 and stats["requests"] == len(answered) + 3, stats


@pytest.mark.parametrize(
    "heartbeats",
    [{"heartbeat_interval": 0.5}, {"heartbeat_interval": 0.2, "heartbeat_liveness": 2}],
    ids=["window-1.5s", "window-0.4s-shorter-than-the-brokers-interval"],
)
def test_clients_unheard_behind_a_message_being_dropped_are_not_forgotten(
    monkeypatch: pytest.MonkeyPatch, heartbeats: dict[str, Any]
) -> None:
    """Another client's heartbeats wait in the socket behind the rest of a refused message: however long that
    takes to drop, the broker does not take its silence for death and fail its calls, and it keeps telling that
    client it is alive (this one gives up on a broker silent for 1.5 s, or for 0.4 s, less than the broker's own
    heartbeat interval of 1 s: a pause in that would fail its call)."""
    original = BrokerLoop._drop_rest

    def slow_drop(loop: BrokerLoop, deadline: float) -> bool:
        time.sleep(0.05)  # the fault itself: a slow slice, so the drop outlasts the liveness windows
        return original(loop, deadline)

    monkeypatch.setattr(loop_module, "_DISCARD_SLICE", 1000)
    monkeypatch.setattr(BrokerLoop, "_drop_rest", slow_drop)
    config = {"services": {"s": demo_service(workers=1)}}
    with Pool.from_config(config, broker="thread") as pool, Client(pool.address, 60, **heartbeats) as client:
        (pid,) = pool.worker_pids("s")
        running = client.submit("s", "sleep_ms", 10_000)
        wait_for(lambda: in_nanosleep(pid), 30, "the call to run")
        started = time.monotonic()
        error = flood(pool.address, 160_000)
        assert isinstance(error, BadRequest) and "max_request_frames" in error.message, error
        assert time.monotonic() - started > 7.0, "the drop was too quick to outlast both liveness windows"
        assert running.result() is None
        assert pool.stats()["clients_forgotten"] == 0


def test_a_request_over_max_request_bytes_gets_bad_request_naming_the_limit() -> None:
    config = {"pool": {"max_request_bytes": 1 << 20}, "services": {"s": demo_service(workers=1)}}
    with Pool.from_config(config, broker="process") as pool, pool.client(timeout=30) as client:
        with raw_dealer(pool.address) as sock:
            header = wire.client_request_header(9, b"s", b"add", None)
            sock.send_multipart([header, b"\x90", *[bytes(256 << 10)] * 8])  # 2 MiB of buffers
            error = refusal(sock, 9)
        assert isinstance(error, BadRequest) and "max_request_bytes" in error.message, error
        assert error.details["frames"] == 10 and error.details["size"] > 1 << 20
        assert client.call("s", "add", 2, 3) == 5


def test_a_broker_stopped_for_6_s_keeps_its_workers_and_the_calls_they_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="broker.loop")
    config = {"services": {"s": demo_service(workers=3)}}
    with Pool.from_config(config, broker="process") as pool, pool.client(timeout=30) as client:
        pids = pool.worker_pids("s")
        (broker,) = {parent_of(pid) for pid in pids}
        with Client(pool.address, heartbeat_liveness=30) as patient:  # it waits out the pause itself
            running = patient.submit("s", "sleep_ms", 8000)
            wait_for(lambda: any(in_nanosleep(pid) for pid in pids), 30, "the call to run")
            os.kill(broker, signal.SIGSTOP)
            try:
                time.sleep(6.0)  # the fault itself: twice the 3 s liveness window, not a wait for anything
            finally:
                os.kill(broker, signal.SIGCONT)
            assert running.result(timeout=60) is None
        assert [client.call("s", "add", i, i) for i in range(10)] == [2 * i for i in range(10)]
        assert pool.worker_pids("s") == pids
        assert pool.stats()["workers_lost"] == 0
    assert "could not watch its sockets" in caplog.text


def test_a_stall_while_the_broker_handles_a_message_costs_no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pause can strike anywhere in the loop (a GC, the GIL held by another thread of an in-process pool), not
    only while it polls: the heartbeats that arrived meanwhile are unread, so nobody is judged on them."""
    stalled = threading.Event()
    original = BrokerCore.client_message

    def stall_once(core: BrokerCore, ident: bytes, frames: list[Any], now: float) -> Any:
        if not stalled.is_set() and wire.parse_client(frames).__class__ is wire.ClientRequest:
            stalled.set()
            time.sleep(5.0)  # the fault itself: longer than the 3 s liveness window, not a wait for anything
        return original(core, ident, frames, now)

    monkeypatch.setattr(BrokerCore, "client_message", stall_once)
    config = {"services": {"s": demo_service(workers=3)}}
    with Pool.from_config(config, broker="thread") as pool:
        pids = pool.worker_pids("s")
        with Client(pool.address, heartbeat_liveness=30) as patient:  # it waits out the stall itself
            assert patient.call("s", "add", 2, 3, timeout=60) == 5
            assert [patient.call("s", "add", i, i) for i in range(10)] == [2 * i for i in range(10)]
        assert stalled.is_set()
        assert pool.worker_pids("s") == pids
        assert pool.stats()["workers_lost"] == 0


def assert_stopped_without_waiting_out(busy: list[int], log_text: str) -> None:
    """The workers in endless calls were killed as the grace period ended, and no worker had to be waited out
    (an idle one stops on its SIGTERM at once, woken from a poll that would otherwise last until its next
    heartbeat). How long that takes is measured by ``bench/stalls.py stop``."""
    for pid in busy:
        assert f"killing worker pid {pid}: the pool is stopping and its grace period is over" in log_text
    assert "did not stop in" not in log_text, "a worker was waited out, then killed"


@pytest.mark.parametrize("broker", ["thread", "process"])
def test_a_stop_with_endless_calls_kills_their_workers_and_answers_them(
    broker: BrokerKind, caplog: pytest.LogCaptureFixture
) -> None:
    """The busy workers are killed when the grace period ends; the idle one, woken, stops at once, though its next
    heartbeat (which would end its wait) is 10 s away."""
    caplog.set_level(logging.WARNING, logger="broker.supervisor")
    config = {"pool": {"heartbeat_interval": 10.0}, "services": {"s": demo_service(workers=3)}}
    pool = Pool.from_config(config, broker=broker)
    try:
        pids = pool.worker_pids("s")
        with pool.client() as client:
            endless = [client.submit("s", "sleep_ms", ENDLESS) for _ in range(2)]
            wait_for(lambda: sum(in_nanosleep(pid) for pid in pids) == 2, 30, "two endless calls to run")
            busy = [pid for pid in pids if in_nanosleep(pid)]
            pool.stop(grace=0.5)
            for future in endless:
                with pytest.raises(BrokerUnavailable, match="shut down"):
                    future.result(timeout=30)
    finally:
        pool.stop()
    assert_stopped_without_waiting_out(busy, caplog.text)
    assert_no_children_left(pids)


def test_dllpool_up_with_endless_calls_kills_their_workers_at_its_grace(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    service = demo_service()
    config.write_text(
        f'[services.s]\nworkers = 3\nlibrary = "{service["library"]}"\n'
        '[services.s.functions]\nsleep_ms = { args = ["int"], returns = "void" }\n'
    )
    log_file = tmp_path / "up.log"
    process = subprocess.Popen(
        [*DLLPOOL, "up", "-c", str(config), "--json", "--grace", "0.5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log_file.open("w"),
        text=True,
    )
    try:
        assert process.stdout is not None
        announced = json.loads(process.stdout.readline())
        pids = children_of(process.pid)
        with Client(announced["address"]) as client:
            endless = [client.submit("s", "sleep_ms", ENDLESS) for _ in range(2)]
            wait_for(lambda: sum(in_nanosleep(pid) for pid in pids) == 2, 30, "two endless calls to run")
            busy = [pid for pid in pids if in_nanosleep(pid)]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
            for future in endless:
                with pytest.raises(BrokerUnavailable):
                    future.result(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert_stopped_without_waiting_out(busy, log_file.read_text())
    assert_no_children_left(pids)
