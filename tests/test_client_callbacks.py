"""Future callbacks run off the I/O thread: a slow one never stops the heartbeats that keep a connection's
calls alive at the broker (every Client of the process shares them), they run in completion order, and one
may close its Client or make other calls. Real brokers, real workers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, wait
from typing import Any

import pytest

from broker import Pool
from client import BrokerUnavailable, Client

from .conftest import demo_service

CALLBACK_THREAD = "dllpool-client-callbacks"


@pytest.fixture(scope="module")
def pool2() -> Iterator[Pool]:
    """Service s has two workers (one may sleep while the other answers); service one has one (its calls
    complete in the order they were sent)."""
    config = {"services": {"s": demo_service(workers=2), "one": demo_service(workers=1)}}
    with Pool.from_config(config) as running:
        yield running


def test_a_callback_that_blocks_past_the_liveness_window_costs_no_client_its_calls(pool2: Pool) -> None:
    """The defect of review: a 4 s callback on Client a blocked the I/O thread that heartbeats the connection
    Client b shares, so the broker forgot it (3 s window) and b's 6 s call failed with BrokerUnavailable."""
    forgotten = pool2.stats()["clients_forgotten"]
    with pool2.client(timeout=30) as a, pool2.client(timeout=30) as b:
        assert a._conn is b._conn, "the two Clients share one connection, and so its heartbeats"
        innocent = b.submit("s", "sleep_ms", 6000)
        started, release = threading.Event(), threading.Event()

        def slow(_: Future[Any]) -> None:
            started.set()
            release.wait(30)  # blocks until b's 6 s call is answered: well past the 3 s window

        a.submit("s", "add", 1, 2).add_done_callback(slow)
        try:
            assert started.wait(30), "the callback did not run"
            assert a.call("s", "add", 2, 3) == 5, "a blocking call of the same Client"
            assert a.submit("s", "add", 3, 4).result(timeout=30) == 7, "a submitted call of the same Client"
            assert innocent.result(timeout=30) is None, "the other Client's long call"
            assert not release.is_set()
        finally:
            release.set()
    assert pool2.stats()["clients_forgotten"] == forgotten


def test_callbacks_run_in_completion_order_in_one_thread_while_the_io_thread_settles_on(
    pool2: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[int, str]] = []
    with pool2.client(timeout=30) as client:
        head = client.submit("one", "sleep_ms", 2000)  # holds the one worker while the callbacks are added
        futures = [client.submit("one", "add", i, 0) for i in range(20)]
        all_done: list[bool] = []

        def first(_: Future[Any]) -> None:
            all_done.append(not wait(futures, 30).not_done)  # the later ones are settled while this waits

        def record(future: Future[Any]) -> None:
            seen.append((future.result(), threading.current_thread().name))
            if future.result() == 5:
                raise ValueError("a failing callback")

        futures[0].add_done_callback(first)
        for future in futures:
            future.add_done_callback(record)
        assert not head.done(), "the calls completed before their callbacks were added"
        failing = client.submit("nowhere", "add", 1, 2)
        errors: Future[str] = Future()
        failing.add_done_callback(lambda f: errors.set_result(threading.current_thread().name))
        with caplog.at_level(logging.ERROR, logger="client.connection"):
            assert errors.result(timeout=30) == CALLBACK_THREAD, "an error's callbacks are handed over too"
            wait(futures, 30)
            client.close()  # returns once every callback of its connection has run (the last Client on it)
    assert all_done == [True]
    assert seen == [(i, CALLBACK_THREAD) for i in range(20)]
    assert "a failing callback" in caplog.text, "an exception in a callback is logged, and the next ones run"


@pytest.mark.parametrize("last", [True, False], ids=["last-client", "one-of-two"])
def test_close_from_a_callback_fails_the_clients_other_calls_and_returns(pool2: Pool, last: bool) -> None:
    keeper = None if last else pool2.client(timeout=30)
    client = pool2.client(timeout=30)
    connection = client._conn
    sleeping = client.submit("one", "sleep_ms", 5000)  # pending when the add on s has been answered
    after: Future[str] = Future()
    sleeping.add_done_callback(lambda f: after.set_result(repr(f.exception())))
    closed = threading.Event()

    def close(_: Future[Any]) -> None:
        client.close()
        closed.set()

    client.submit("s", "add", 1, 2).add_done_callback(close)
    assert closed.wait(30), "close() from a callback did not return"
    assert client.closed
    assert "client closed" in after.result(timeout=30), "the other call's callback ran, after close() returned"
    assert isinstance(sleeping.exception(), BrokerUnavailable)
    if keeper is None:
        connection._thread.join(30)
        callbacks = connection._callbacks.thread
        assert callbacks is not None
        callbacks.join(30)
        assert not connection._thread.is_alive() and not callbacks.is_alive(), "the connection's threads ended"
    else:
        assert keeper.submit("s", "add", 2, 2).result(timeout=30) == 4
        keeper.close()
    with pool2.client(timeout=30) as fresh:
        assert fresh.call("s", "add", 3, 3) == 6


def test_a_callback_may_call_map_and_wait_for_submitted_calls(client: Client) -> None:
    """Futures are settled by the I/O thread, not by the thread that runs callbacks: waiting there is safe."""
    got: Future[tuple[Any, ...]] = Future()

    def callback(_: Future[Any]) -> None:
        try:
            got.set_result(
                (
                    client.call("demo", "add", 1, 2),
                    list(client.map("demo", "add", [(i, i) for i in range(5)])),
                    client.submit("demo", "add", 3, 4).result(timeout=30),
                )
            )
        except BaseException as exc:
            got.set_exception(exc)

    client.submit("demo", "add", 1, 1).add_done_callback(callback)
    assert got.result(timeout=30) == (3, [0, 2, 4, 6, 8], 7)
