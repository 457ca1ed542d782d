"""No peer can hurt the others (issue 8), with real 32-bit workers: dead clients, endless calls, byte limits,
and what the other calls of a recycled threaded worker are told.

The demo library counts calls per process (``count_calls``), so a test can tell whether a call ever reached
the library.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from broker import Pool
from client import Busy, Timeout, WorkerCrashed

from .conftest import demo_service, in_nanosleep, wait_for

DEAD_CLIENT = textwrap.dedent(
    """
    import sys, time
    from client import Client
    client = Client(sys.argv[1], timeout=None)
    client.submit("s", "sleep_ms", int(sys.argv[2]))
    each = int(sys.argv[4]) if len(sys.argv) > 4 else 0  # 0: count_calls, else sleep_ms(each)
    calls = [("count_calls",) if not each else ("sleep_ms", each) for _ in range(int(sys.argv[3]))]
    queued = [client.submit("s", *call) for call in calls]
    print("submitted", flush=True)
    time.sleep(3600)  # killed by the test long before
    """
)


def test_a_killed_client_process_costs_its_queued_calls_and_nobody_else_anything() -> None:
    """Its 5,000 queued calls never reach the library, and another client's call runs as soon as the dead
    client's running call ends (a liveness window after the kill, the sleep outlasting it), not after them."""
    config = {"services": {"s": demo_service(workers=1)}}
    with Pool.from_config(config) as pool:
        child = subprocess.Popen(
            [sys.executable, "-c", DEAD_CLIENT, pool.address, "6000", "5000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "submitted"
            wait_for(lambda: pool.stats()["pending"] == 5001, 30, "the broker to hold the dead client's calls")
            child.kill()
            child.wait(10)
            with pool.client(timeout=60) as innocent:
                started = time.monotonic()
                assert innocent.call("s", "count_calls") == 1, "a call of the dead client reached the library"
                waited = time.monotonic() - started
            stats = pool.stats()
            assert stats["clients_forgotten"] == 1
            assert stats["dropped_unrun"] == 5000
            assert stats["discarded_replies"] == 1, "the sleep it had running finished; its answer went nowhere"
            assert stats["pending"] == 0 and stats["clients"] == 0, "nothing of the dead client is kept"
            assert waited < 5 * 3.0, f"the innocent call waited {waited:.1f} s"
        finally:
            child.kill()
            child.wait(10)


def test_a_call_without_timeout_ends_at_max_call_seconds_and_its_worker_is_recycled() -> None:
    config = {"services": {"s": demo_service(workers=1, max_call_seconds=1.0)}}
    with Pool.from_config(config) as pool, pool.client(timeout=None) as client:
        (stuck,) = pool.worker_pids("s")
        with pytest.raises(Timeout) as info:
            client.call("s", "sleep_ms", 2**31 - 1)
        assert "max_call_seconds" in info.value.message
        wait_for(lambda: pool.worker_pids("s") not in ([], [stuck]), 30, "a fresh worker in place of the stuck one")
        assert client.call("s", "add", 2, 3, timeout=30) == 5
        assert pool.stats()["workers_lost"] == 1


def bytes_service(**extra: Any) -> dict[str, Any]:
    """The demo library with ``str_len(char*)``: a call whose argument has as many bytes as we like."""
    service = demo_service(workers=1, **extra)
    service["functions"] = {
        "sleep_ms": {"args": ["int"], "returns": "void"},
        "str_len": {"args": ["char*"], "returns": "int"},
    }
    return service


def test_queued_bytes_are_bounded_per_service_with_busy_and_the_figures() -> None:
    config = {"pool": {"max_request_bytes": 1 << 20}, "services": {"s": bytes_service(queue_limit_bytes=1 << 20)}}
    text = b"x" * (400 << 10)
    with Pool.from_config(config) as pool, pool.client(timeout=60) as client:
        running = client.submit("s", "sleep_ms", 2000)
        wait_for(lambda: in_nanosleep(pool.worker_pids("s")[0]), 10, "the worker to be in the long call")
        waiting = [client.submit("s", "str_len", text) for _ in range(2)]
        wait_for(lambda: pool.stats()["pending"] == 3, 10, "the broker to queue two calls")
        with pytest.raises(Busy) as info:
            client.call("s", "str_len", text)
        assert info.value.details["queue_limit_bytes"] == 1 << 20
        assert info.value.details["waiting_bytes"] >= 2 * len(text)
        assert not running.done(), "Busy came only after the running call had finished"
        assert [f.result() for f in waiting] == [len(text)] * 2


def test_the_other_calls_of_a_threaded_worker_recycled_for_one_hung_call_are_told_why() -> None:
    config = {"services": {"s": demo_service(workers=1, threads=2)}}
    with Pool.from_config(config) as pool, pool.client(timeout=None) as client:
        (pid,) = pool.worker_pids("s")
        innocent = client.submit("s", "sleep_ms", 60_000)
        with pytest.raises(Timeout):
            client.call("s", "sleep_ms", 60_000, timeout=1.0)
        with pytest.raises(WorkerCrashed) as info:
            innocent.result(timeout=60)
        assert info.value.details["pid"] == pid
        assert "recycled because another call on it (s.sleep_ms) ran past its deadline" in info.value.message


def test_a_client_that_heartbeats_keeps_its_long_call_past_the_liveness_window() -> None:
    """The broker forgets only silent clients: a call far longer than the window is still answered."""
    config = {"services": {"s": demo_service(workers=1)}}
    with Pool.from_config(config) as pool, pool.client(timeout=None) as client:
        assert client.call("s", "sleep_ms", 4000) is None
        assert client.submit("s", "sleep_ms", 4000).result(timeout=60) is None
        stats = pool.stats()
        assert stats["clients_forgotten"] == 0 and stats["discarded_replies"] == 0


FLOOD = textwrap.dedent(
    """
    import sys, zmq
    from protocol import frames as wire
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 60_000
    sock.connect(sys.argv[1])
    sock.send(wire.client_request_header(7, b"s", b"add", None), zmq.SNDMORE)
    for _ in range(int(sys.argv[2]) - 2):
        sock.send(b"", zmq.SNDMORE)
    sock.send(b"")
    while True:
        answer = wire.parse_for_client(sock.recv_multipart())
        if isinstance(answer, wire.ReplyToClient):
            print(answer.error["type"], answer.error["message"], flush=True)
            break
    """
)
"""A REQUEST of ``argv[2]`` frames (all but the header empty) from a raw socket of a process of its own (a
hostile peer is one; in the test's process it would also starve the innocent client's threads of the GIL);
prints the type and message of the broker's answer."""


def flood_frames(address: str, count: int) -> str:
    """The broker's answer to a flood of ``count`` frames, as ``"<error type> <message>"``."""
    done = subprocess.run(
        [sys.executable, "-c", FLOOD, address, str(count)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_chaos_offenders_cost_the_innocent_nothing() -> None:
    """While innocent threads call ``add`` with their own arguments, offenders do their worst at once: a client
    process killed with thousands of calls queued, a request of 1,000,000 frames, and a call that never returns.
    Every innocent call gets its own right answer, once; no worker but the hung one is lost; and no late or
    duplicate reply reaches anyone."""
    config = {"services": {"s": demo_service(workers=3), "endless": demo_service(workers=1, max_call_seconds=2.0)}}
    with Pool.from_config(config) as pool, pool.client(timeout=60) as innocent:
        pids = set(pool.worker_pids("s"))
        (endless_pid,) = pool.worker_pids("endless")
        stop = threading.Event()
        results: list[tuple[int, int]] = []
        failures: list[BaseException] = []

        def call_add(base: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    results.append((base + i, innocent.call("s", "add", base, i)))
                except BaseException as exc:  # recorded: the assertion below names it
                    failures.append(exc)
                    return

        threads = [threading.Thread(target=call_add, args=(n * 1_000_000,)) for n in range(4)]
        for thread in threads:
            thread.start()
        try:
            child = subprocess.Popen(
                [sys.executable, "-c", DEAD_CLIENT, pool.address, "100", "3000", "5"], stdout=subprocess.PIPE, text=True
            )
            assert child.stdout is not None and child.stdout.readline().strip() == "submitted"
            wait_for(lambda: pool.stats()["pending"] >= 2000, 30, "the broker to hold the doomed client's calls")
            child.kill()
            child.wait(10)
            with pool.client(timeout=None) as careless:
                endless = careless.submit("endless", "sleep_ms", 2**31 - 1)
                error = flood_frames(pool.address, 1_000_000)
                assert error.startswith("BadRequest ") and "max_request_frames" in error
                with pytest.raises(Timeout):
                    endless.result(timeout=60)
            wait_for(lambda: pool.stats()["clients_forgotten"] == 1, 30, "the broker to forget the killed client")
            count = len(results)
            wait_for(lambda: len(results) > count + 100, 30, "innocent calls after the storm")
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert not failures, f"innocent calls failed: {failures[:3]}"
        assert all(expected == got for expected, got in results), "an innocent call got another call's answer"
        stats = pool.stats()
        assert stats["workers_lost"] == 1, "only the worker of the endless call was recycled"
        assert set(pool.worker_pids("s")) == pids
        assert stats["dropped_unrun"] > 0
        wait_for(lambda: pool.worker_pids("endless") not in ([], [endless_pid]), 30, "the endless worker's successor")
        assert stats["late_replies"] == 0 and innocent.stats["late_replies"] == 0
