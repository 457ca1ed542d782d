"""Crashes, hung calls, deadlines and overload: every request gets exactly one answer."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from broker import Pool
from client import BrokerUnavailable, Client, Timeout, WorkerCrashed

from .conftest import (
    ROOT,
    assert_busy_while_full,
    assert_no_children_left,
    demo_service,
    in_nanosleep,
    library,
    pid_alive,
    stopped,
    wait_for,
)

DLLPOOL = [sys.executable, "-m", "broker.cli"]


def test_a_segfault_in_the_library_is_a_worker_crashed_and_the_pool_recovers(pool: Pool, client: Client) -> None:
    before = set(pool.worker_pids("demo"))
    with pytest.raises(WorkerCrashed) as info:
        client.call("demo", "crash")
    error = info.value
    assert error.details["service"] == "demo" and error.details["method"] == "crash"
    assert error.details["pid"] in before
    assert "SIGSEGV" in str(error) or "signal 11" in str(error)
    assert [client.call("demo", "add", i, i) for i in range(100)] == [2 * i for i in range(100)]
    pool.wait_ready(timeout=5)
    after = set(pool.worker_pids("demo"))
    assert len(after) == 4 and error.details["pid"] not in after


def test_an_idempotent_call_is_retried_once_on_another_worker() -> None:
    service = demo_service(workers=2, idempotent=["sleep_ms"])
    with Pool.from_config({"services": {"s": service}}) as pool, pool.client(timeout=10) as client:
        calls = [client.submit("s", "sleep_ms", 1000) for _ in range(2)]
        wait_for(lambda: all(in_nanosleep(pid) for pid in pool.worker_pids("s")), 10, "both workers to be in a call")
        pool.kill_worker(pool.worker_pids("s")[0])
        assert [c.result() for c in calls] == [None, None], "the killed worker's idempotent call was not retried"
        assert pool.stats()["retried"] == 1


def test_a_call_past_its_deadline_times_out_and_the_stuck_worker_is_replaced() -> None:
    config = {"pool": {"kill_grace": 0.2}, "services": {"s": demo_service(workers=1)}}
    with Pool.from_config(config) as pool, pool.client() as client:
        (stuck,) = pool.worker_pids("s")
        started = time.monotonic()
        with pytest.raises(Timeout, match="still running"):  # the broker's answer, not the client's backstop
            client.call("s", "sleep_ms", 1000, timeout=0.05)
        assert time.monotonic() - started < 1.0, "the Timeout came only after the call had finished"
        wait_for(lambda: pool.worker_pids("s") not in ([], [stuck]), 5, "the stuck worker to be replaced")
        assert not pid_alive(stuck)
        assert client.call("s", "add", 1, 2, timeout=5) == 3


def test_a_request_that_expires_in_the_queue_never_runs() -> None:
    with Pool.from_config({"services": {"s": demo_service(workers=1)}}) as pool, pool.client(timeout=10) as client:
        assert client.call("s", "count_calls") == 1
        busy = client.submit("s", "sleep_ms", 300)
        # call() sends on a socket of its own, so it could overtake the submitted call: let that arrive first.
        wait_for(lambda: pool.stats()["requests"] == 2, 10, "the broker to give the sleep to the worker")
        with pytest.raises(Timeout, match="never ran"):  # the broker's answer, not the client's backstop
            client.call("s", "count_calls", timeout=0.05)
        busy.result()
        # The worker's counter proves the expired request never reached the library.
        assert client.call("s", "count_calls") == 2
        assert pool.stats()["expired_in_queue"] == 1


def test_a_full_queue_answers_busy_at_once() -> None:
    config = {"services": {"s": demo_service(workers=1, queue_limit=10)}}
    with Pool.from_config(config) as pool, pool.client(timeout=10) as client:
        running = client.submit("s", "sleep_ms", 1000)
        wait_for(lambda: pool.stats()["requests"] == 1, 10, "the broker to give the first call to the worker")
        queued = [client.submit("s", "add", i, 1) for i in range(10)]
        # call() sends on a socket of its own, so it could overtake the submitted calls: let them arrive first.
        wait_for(lambda: pool.stats()["requests"] == 11, 10, "the broker to queue the ten calls")
        assert_busy_while_full(client, running, queued, 10)


def test_a_cancelled_queued_request_never_runs() -> None:
    with Pool.from_config({"services": {"s": demo_service(workers=1)}}) as pool, pool.client(timeout=10) as client:
        busy = client.submit("s", "sleep_ms", 1000)
        cancelled = client.submit("s", "count_calls")
        wait_for(lambda: pool.stats()["requests"] == 2, 10, "the broker to queue the second call")
        assert cancelled.cancel()
        busy.result()
        assert client.call("s", "count_calls") == 1


def test_a_worker_that_stops_heartbeating_is_declared_dead() -> None:
    config = {"pool": {"heartbeat_interval": 0.1, "heartbeat_liveness": 3}, "services": {"s": demo_service(workers=1)}}
    with Pool.from_config(config) as pool, pool.client(timeout=10) as client:
        (frozen,) = pool.worker_pids("s")
        call = client.submit("s", "sleep_ms", 100)
        os.kill(frozen, signal.SIGSTOP)
        with pytest.raises(WorkerCrashed, match="heartbeats"):
            call.result()
        pool.wait_ready(timeout=5)
        assert frozen not in pool.worker_pids("s")
        assert client.call("s", "add", 2, 2) == 4


def test_chaos_kill_a_worker_every_200ms_and_account_for_every_call() -> None:
    """16 threads call for 8 s while a worker is SIGKILLed every 200 ms: every call gets one right answer or
    WorkerCrashed, none a duplicate. Bounded by time, not by a call count, so a loaded machine is slower, not later."""
    config = {"services": {"demo": demo_service(workers=4)}}
    threads, seconds = 16, 8.0
    outcomes: Counter[str] = Counter()
    made = [0] * threads
    lock = threading.Lock()
    with Pool.from_config(config) as pool, pool.client(timeout=30) as client:
        stop = threading.Event()
        kills = []

        def killer() -> None:
            rng = random.Random(1)
            while not stop.wait(0.2):
                pids = pool.worker_pids("demo")
                if pids:
                    victim = rng.choice(pids)
                    kills.append(victim)
                    os.kill(victim, signal.SIGKILL)

        def caller(t: int) -> None:
            local: Counter[str] = Counter()
            i = 0
            while not stop.is_set():
                i += 1
                made[t] = i
                try:
                    result = client.call("demo", "add", t, i)
                    local["right" if result == t + i else "wrong"] += 1
                except WorkerCrashed:
                    local["WorkerCrashed"] += 1
                except Exception as exc:  # anything else is a failure of the guarantee
                    local[type(exc).__name__] += 1
            with lock:
                outcomes.update(local)

        chaos = threading.Thread(target=killer)
        chaos.start()
        try:
            with ThreadPoolExecutor(threads) as executor:
                done = [executor.submit(caller, t) for t in range(threads)]
                stop.wait(seconds)
                stop.set()
                for future in done:
                    future.result()
        finally:
            stop.set()
            chaos.join()
        started = time.monotonic()
        pool.wait_ready(timeout=2)
        recovered_in = time.monotonic() - started
        pids = pool.worker_pids()
        late = client.stats["late_replies"]
        print(f"chaos: {sum(made)} calls, {len(kills)} kills, {dict(outcomes)}, back in {recovered_in:.2f} s")
    assert sum(outcomes.values()) == sum(made)
    assert set(outcomes) <= {"right", "WorkerCrashed"}, dict(outcomes)
    assert outcomes["right"] > 0 and len(kills) > 5
    assert late == 0, "a call got a second answer after its first"
    assert_no_children_left(pids + kills)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_call_longer_than_the_heartbeat_window_is_not_mistaken_for_a_dead_worker(threads: int) -> None:
    config = {
        "pool": {"heartbeat_interval": 0.1, "heartbeat_liveness": 3},
        "services": {"s": demo_service(workers=1, threads=threads)},
    }
    with Pool.from_config(config) as pool, pool.client(timeout=10) as client:
        (pid,) = pool.worker_pids("s")
        assert client.call("s", "sleep_ms", 1200) is None  # four times the 0.3 s liveness window
        assert pool.worker_pids("s") == [pid]
        assert pool.stats()["workers_lost"] == 0


@pytest.fixture()
def closed_tcp_port() -> Iterator[str]:
    """A loopback port that is bound (so nobody else takes it) but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("where", ["ipc", "tcp"])
def test_a_client_pointed_where_nothing_listens_gets_broker_unavailable_within_the_window(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    address = f"ipc://{tmp_path}/no-broker-here" if where == "ipc" else request.getfixturevalue("closed_tcp_port")
    with Client(address, timeout=30) as client:  # default heartbeats: a 3 s liveness window
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="nothing answers") as info:
            client.call("demo", "add", 1, 2)
        elapsed = time.monotonic() - started
    assert address in str(info.value)
    assert elapsed < 6.0, f"BrokerUnavailable took {elapsed:.1f} s; the liveness window is 3 s"


def test_a_silent_broker_still_gives_a_timeout(tmp_path: Path) -> None:
    """The broker owns deadlines, but a broker that stops answering cannot keep a call waiting past it."""
    config = tmp_path / "pool.toml"
    config.write_text(
        f'[pool]\nfrontend = "ipc://{tmp_path}/frontend"\n'
        f'[services.s]\nworkers = 1\nlibrary = "{library(32)}"\n'
        '[services.s.functions]\nadd = { args = ["int", "int"], returns = "int" }\n'
    )
    broker = subprocess.Popen(
        [*DLLPOOL, "up", "-c", str(config)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert broker.stdout is not None
        address = broker.stdout.readline().split()[-1]
        # A 10 s liveness window: the backstop (deadline + max(0.5 s, 1 s heartbeat)) must win, not the window.
        with Client(address, timeout=10, heartbeat_liveness=10) as client:
            assert client.call("s", "add", 1, 2) == 3
            os.kill(broker.pid, signal.SIGSTOP)
            wait_for(lambda: stopped(broker.pid), 10, "the broker to be stopped")
            started = time.monotonic()
            with pytest.raises(Timeout, match="the broker sent no answer"):
                client.call("s", "add", 2, 2, timeout=0.5)
            elapsed = time.monotonic() - started
        assert elapsed < 5.0, f"the Timeout took {elapsed:.1f} s for a 0.5 s deadline"
    finally:
        os.kill(broker.pid, signal.SIGCONT)
        broker.terminate()
        broker.wait(timeout=30)


def test_a_call_that_never_reached_the_broker_times_out_at_its_deadline(tmp_path: Path) -> None:
    with Client(f"ipc://{tmp_path}/no-broker-here", heartbeat_liveness=10) as client:
        started = time.monotonic()
        with pytest.raises(Timeout, match="never reached the broker"):
            client.call("demo", "add", 1, 2, timeout=1.0)
        elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"the Timeout took {elapsed:.1f} s for a 1 s deadline"


def test_a_request_held_back_until_the_broker_came_up_keeps_the_callers_deadline(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/frontend"
    config = {"pool": {"frontend": address, "kill_grace": 0.2}, "services": {"s": demo_service(workers=1)}}
    with Client(address, heartbeat_liveness=30) as client:  # the request may wait for a connection this long
        call = client.submit("s", "sleep_ms", 30_000, timeout=15.0)
        time.sleep(2.0)  # the condition under test: the request waits unsent while no broker listens
        # Given the whole 15 s on arrival, the broker would answer 2 s + its start-up too late, and the
        # client's backstop (deadline + 1 s) would answer first: the broker must get what is left.
        with Pool.from_config(config), pytest.raises(Timeout, match="still running"):
            call.result()
