"""Worker credit with real 32-bit workers: idempotent calls held ahead by a busy worker (``prefetch``).

The demo library counts calls per process (``count_calls``) and names its process (``worker_pid``),
so each test can tell which worker ran a call, and whether a call ran at all.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from broker import Pool
from client import Client, Timeout, WorkerCrashed

from .conftest import assert_busy_while_full, demo_service, in_nanosleep, wait_for


def credit_config(workers: int, prefetch: int, idempotent: list[str], **extra: Any) -> dict[str, Any]:
    pool = extra.pop("pool", {})
    return {
        "pool": pool,
        "services": {"s": demo_service(workers=workers, idempotent=idempotent, prefetch=prefetch, **extra)},
    }


def test_idempotent_calls_held_ahead_by_a_worker_that_is_sigkilled_are_all_answered() -> None:
    config = credit_config(workers=2, prefetch=2, idempotent=["worker_pid"])
    with Pool.from_config(config) as pool, pool.client(timeout=60) as client:
        long_calls = [client.submit("s", "sleep_ms", 1500) for _ in range(2)]
        wait_for(lambda: all(in_nanosleep(pid) for pid in pool.worker_pids("s")), 10, "both workers to be in a call")
        held = [client.submit("s", "worker_pid") for _ in range(4)]
        wait_for(lambda: pool.stats()["sent_ahead"] == 4, 10, "the broker to send the four calls ahead")
        victim = pool.worker_pids("s")[0]
        os.kill(victim, signal.SIGKILL)
        outcomes = []
        for call in long_calls:
            try:
                outcomes.append(call.result())
            except WorkerCrashed as exc:
                outcomes.append(exc.details["pid"])
        assert sorted(outcomes, key=str) == sorted([None, victim], key=str), "the non-idempotent call it ran failed"
        pids = [call.result() for call in held]
        assert victim not in pids, "a call held by the killed worker was answered without being re-sent"
        stats = pool.stats()
        assert stats["retried"] == 2, "each worker held two calls ahead; the killed one's were re-sent"
        assert stats["workers_lost"] == 1


@contextmanager
def one_worker_in_a_long_call(pool: Pool, client: Client) -> Iterator[int]:
    """Keep one worker of ``s`` in a non-idempotent minute-long call; yields its pid, and kills it at the end."""
    long_call = client.submit("s", "sleep_ms", 60_000)
    wait_for(lambda: any(in_nanosleep(pid) for pid in pool.worker_pids("s")), 10, "a worker to be in the long call")
    (busy,) = [pid for pid in pool.worker_pids("s") if in_nanosleep(pid)]
    yield busy
    os.kill(busy, signal.SIGKILL)
    with pytest.raises(WorkerCrashed):
        long_call.result()


def test_non_idempotent_calls_are_never_held_by_a_busy_worker() -> None:
    """With prefetch on, ``worker_pid`` (not idempotent here) never waits inside the worker busy with a long call."""
    config = credit_config(workers=2, prefetch=4, idempotent=["add"])
    with Pool.from_config(config) as pool, pool.client(timeout=60) as client:
        with one_worker_in_a_long_call(pool, client) as busy:
            pids = [client.submit("s", "worker_pid") for _ in range(20)]
            assert busy not in {call.result() for call in pids}
        assert pool.stats()["sent_ahead"] == 0


def test_an_idempotent_call_goes_to_an_idle_worker_rather_than_ahead_into_a_busy_one() -> None:
    config = credit_config(workers=2, prefetch=4, idempotent=["worker_pid"])
    with Pool.from_config(config) as pool, pool.client(timeout=60) as client:
        with one_worker_in_a_long_call(pool, client) as busy:
            assert busy not in {client.call("s", "worker_pid") for _ in range(20)}
        assert pool.stats()["sent_ahead"] == 0


def test_calls_held_ahead_count_toward_the_queue_limit() -> None:
    config = credit_config(workers=1, prefetch=2, idempotent=["add"], queue_limit=2)
    with Pool.from_config(config) as pool, pool.client(timeout=60) as client:
        running = client.submit("s", "sleep_ms", 2000)
        held = [client.submit("s", "add", i, 1) for i in range(2)]
        wait_for(lambda: pool.stats()["sent_ahead"] == 2, 10, "the broker to send two calls ahead")
        assert_busy_while_full(client, running, held, 2)


def test_a_call_whose_deadline_passes_while_it_waits_in_a_worker_never_runs() -> None:
    """``count_calls`` is marked idempotent here so that it is sent ahead; the long call is not."""
    config = credit_config(workers=1, prefetch=1, idempotent=["count_calls"], pool={"kill_grace": 0.1})
    with Pool.from_config(config) as pool, pool.client(timeout=60) as client:
        (pid,) = pool.worker_pids("s")
        busy = client.submit("s", "sleep_ms", 600)
        wait_for(lambda: in_nanosleep(pid), 10, "the worker to be in the long call")  # call() could overtake it
        with pytest.raises(Timeout, match="waiting in worker"):  # the broker's answer, not the client's backstop
            client.call("s", "count_calls", timeout=0.05)
        assert busy.result() is None
        # The worker answers the expired call Timeout without running it; the broker discards that answer.
        wait_for(lambda: pool.stats()["late_replies"] == 1, 10, "the worker's answer to the expired call")
        assert client.call("s", "count_calls") == 1, "the expired call reached the library"
        stats = pool.stats()
        assert (stats["sent_ahead"], stats["expired_ahead"]) == (1, 1)
        assert pool.worker_pids("s") == [pid], "a call that never started cannot get its worker killed"
        assert stats["workers_lost"] == 0


def test_a_poison_call_is_not_resent_but_the_calls_held_behind_it_are() -> None:
    """The crash goes to an idle worker, so it is the call running there whatever the timing; the two calls
    submitted with it are held ahead behind it (or, if the crash is seen first, queued): either way each is
    answered, by the replacement."""
    config = credit_config(workers=1, prefetch=2, idempotent=["crash", "worker_pid"])
    with Pool.from_config(config) as pool, pool.client(timeout=60) as client:
        (first,) = pool.worker_pids("s")
        crash = client.submit("s", "crash")
        behind = [client.submit("s", "worker_pid") for _ in range(2)]
        with pytest.raises(WorkerCrashed, match="not sent again"):
            crash.result()
        assert first not in {call.result() for call in behind}
        stats = pool.stats()
        assert stats["workers_lost"] == 1, "the poison call was sent again and killed the replacement too"
        assert stats["retried"] <= 2
