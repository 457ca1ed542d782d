"""Sessions (a worker leased to one caller) and broadcast, through a real pool of 32-bit workers.

The demo library's ``count_calls`` counts the calls of its own process: a session's worker answers 1, 2, 3
... to the session alone, whatever other callers do meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker import Pool
from client import Client, Timeout, WorkerCrashed

from .conftest import demo_service, wait_for


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    config = {
        "pool": {"kill_grace": 0.2},
        "services": {
            "s": demo_service(workers=3),
            "idle": demo_service(workers=1, session_idle=0.5),
            "hooks": demo_service(init="count_calls", session_init="count_calls", session_close="count_calls"),
        },
    }
    with Pool.from_config(config) as running:
        yield running


@pytest.fixture()
def client(pool: Pool) -> Iterator[Client]:
    pool.wait_ready()  # a test before may have cost a worker
    with pool.client(timeout=30) as c:
        yield c


def test_a_session_keeps_its_worker_its_order_and_its_state_while_others_call(pool: Pool, client: Client) -> None:
    stop = threading.Event()
    leased = threading.Event()
    during: list[int] = []
    """Workers that ran other callers' calls sent once the lease was granted."""

    def hammer() -> None:
        while not stop.is_set():
            after_lease = leased.is_set()
            pid = client.call("s", "worker_pid")
            if after_lease:
                during.append(pid)

    with ThreadPoolExecutor(4) as threads:
        for _ in range(4):
            threads.submit(hammer)
        try:
            with client.session("s") as session:
                leased.set()
                wait_for(lambda: len(during) > 20, 30, "the other callers to be served")
                first = session.call("count_calls")
                counts = [session.call("count_calls") for _ in range(20)]
                counts += [f.result() for f in [session.submit("count_calls") for _ in range(20)]]
                assert counts == list(range(first + 1, first + 41)), "another call reached the session's worker"
                assert session.call("worker_pid") == session.pid
                assert session.service().worker_pid() == session.pid
                served_during = set(during)
        finally:
            stop.set()
    assert session.pid not in served_during, "the leased worker served other callers"
    assert len(served_during) == 2
    wait_for(lambda: session.pid in {client.call("s", "worker_pid") for _ in range(12)}, 30, "the worker to be back")


def test_a_session_whose_worker_dies_fails_with_worker_crashed_and_never_moves(pool: Pool, client: Client) -> None:
    with client.session("s") as session:
        pool.kill_worker(session.pid)
        with pytest.raises(WorkerCrashed, match=f"pid {session.pid}"):
            session.call("worker_pid")
        with pytest.raises(WorkerCrashed, match="bound to worker"):
            session.call("worker_pid")
    pool.wait_ready()


def test_a_lease_waits_for_a_free_worker_and_a_closed_client_gives_its_leases_back(pool: Pool) -> None:
    with pool.client(timeout=30) as holder, pool.client(timeout=30) as waiter:
        held = holder.session("idle")
        with pytest.raises(Timeout):
            waiter.session("idle", timeout=0.3)
        holder.close()  # the broker ends the leases of a client that is gone
        with waiter.session("idle") as session:
            assert session.pid == held.pid


def test_an_idle_session_is_ended_by_the_broker(pool: Pool, client: Client) -> None:
    first = client.session("idle")  # session_idle = 0.5 s
    second = client.session("idle", timeout=30)  # granted once the first one's lease lapses
    assert second.pid == first.pid
    second.close()
    first.close()


def test_broadcast_answers_once_per_worker(pool: Pool, client: Client) -> None:
    answers = client.broadcast("s", "worker_pid")
    assert sorted(answers) == pool.worker_pids("s")
    assert all(pid == answer for pid, answer in answers.items())
    crashes = client.broadcast("s", "crash")
    assert sorted(crashes) == sorted(answers)
    assert all(isinstance(error, WorkerCrashed) for error in crashes.values())
    pool.wait_ready()


def test_init_runs_when_a_worker_starts_and_session_init_and_close_around_each_session(client: Client) -> None:
    """``count_calls`` counts every call of its worker: init (1), then each session's session_init, its own
    calls and its session_close."""
    with client.session("hooks") as first:
        assert first.call("count_calls") == 3
    with client.session("hooks") as second:
        assert second.call("count_calls") == 6
