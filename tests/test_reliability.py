"""Crashes, hung calls, deadlines and overload: every request gets exactly one answer."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker import Pool
from client import Busy, Client, Timeout, WorkerCrashed

from .conftest import assert_no_children_left, demo_service, pid_alive, wait_for


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
        calls = [client.submit("s", "sleep_ms", 400) for _ in range(2)]
        time.sleep(0.1)  # both workers are now inside a call
        pool.kill_worker(pool.worker_pids("s")[0])
        assert [c.result() for c in calls] == [None, None], "the killed worker's idempotent call was not retried"
        assert pool.stats()["retried"] == 1


def test_a_call_past_its_deadline_times_out_and_the_stuck_worker_is_replaced() -> None:
    config = {"pool": {"kill_grace": 0.2}, "services": {"s": demo_service(workers=1)}}
    with Pool.from_config(config) as pool, pool.client() as client:
        (stuck,) = pool.worker_pids("s")
        started = time.monotonic()
        with pytest.raises(Timeout):
            client.call("s", "sleep_ms", 1000, timeout=0.05)
        assert time.monotonic() - started < 0.25
        wait_for(lambda: pool.worker_pids("s") not in ([], [stuck]), 5, "the stuck worker to be replaced")
        assert not pid_alive(stuck)
        assert client.call("s", "add", 1, 2, timeout=5) == 3


def test_a_request_that_expires_in_the_queue_never_runs() -> None:
    with Pool.from_config({"services": {"s": demo_service(workers=1)}}) as pool, pool.client(timeout=10) as client:
        assert client.call("s", "count_calls") == 1
        busy = client.submit("s", "sleep_ms", 300)
        with pytest.raises(Timeout):
            client.call("s", "count_calls", timeout=0.05)
        busy.result()
        # The worker's counter proves the expired request never reached the library.
        assert client.call("s", "count_calls") == 2
        assert pool.stats()["expired_in_queue"] == 1


def test_a_full_queue_answers_busy_at_once() -> None:
    config = {"services": {"s": demo_service(workers=1, queue_limit=10)}}
    with Pool.from_config(config) as pool, pool.client(timeout=10) as client:
        running = client.submit("s", "sleep_ms", 500)
        time.sleep(0.1)
        queued = [client.submit("s", "add", i, 1) for i in range(10)]
        started = time.monotonic()
        with pytest.raises(Busy) as info:
            client.call("s", "add", 0, 0)
        assert time.monotonic() - started < 0.3
        assert info.value.details["queue_limit"] == 10
        assert running.result() is None
        assert [f.result() for f in queued] == [i + 1 for i in range(10)]


def test_a_cancelled_queued_request_never_runs() -> None:
    with Pool.from_config({"services": {"s": demo_service(workers=1)}}) as pool, pool.client(timeout=10) as client:
        busy = client.submit("s", "sleep_ms", 300)
        time.sleep(0.05)
        cancelled = client.submit("s", "count_calls")
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
    config = {"services": {"demo": demo_service(workers=4)}}
    threads, per_thread = 16, 1250
    outcomes: Counter[str] = Counter()
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
            for i in range(per_thread):
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
                list(executor.map(caller, range(threads)))
        finally:
            stop.set()
            chaos.join()
        started = time.monotonic()
        pool.wait_ready(timeout=2)
        recovered_in = time.monotonic() - started
        pids = pool.worker_pids()
        print(
            f"chaos: {threads * per_thread} calls, {len(kills)} kills, {dict(outcomes)}, back in {recovered_in:.2f} s"
        )
    assert sum(outcomes.values()) == threads * per_thread
    assert set(outcomes) <= {"right", "WorkerCrashed"}, dict(outcomes)
    assert outcomes["right"] > 0 and len(kills) > 5
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
