"""Client.map: many calls per message, results in input order, per-item errors where the item is."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from broker import Pool
from client import ArgumentError, BrokerUnavailable, Client, Timeout, UnknownMethod, WorkerCrashed

from .conftest import demo_service


def test_results_come_in_input_order_over_many_chunks(client: Client) -> None:
    results = client.map("demo", "add", ((i, 2 * i) for i in range(5000)), chunksize=37)
    assert list(results) == [3 * i for i in range(5000)]


def test_the_chunks_are_spread_over_every_worker_of_the_service(pool: Pool, client: Client) -> None:
    pids = list(client.map("demo", "worker_pid", [()] * 12, chunksize=3))
    assert all(len(set(pids[i : i + 3])) == 1 for i in range(0, 12, 3)), "a chunk runs in one worker"
    assert set(pids) == set(pool.worker_pids("demo"))


def test_an_items_error_is_raised_at_that_item(client: Client) -> None:
    items = [(i, 1) for i in range(10)]
    items[6] = (2**31, 0)  # does not fit the declared int: the worker refuses that call only
    results = client.map("demo", "add", items, chunksize=4)
    assert [next(results) for _ in range(6)] == [i + 1 for i in range(6)]
    with pytest.raises(ArgumentError, match="does not fit in 32-bit signed") as info:
        next(results)
    assert info.value.details["service"] == "demo" and info.value.details["method"] == "add"
    with pytest.raises(StopIteration):
        next(results)


def test_return_exceptions_puts_each_error_in_its_items_place(client: Client) -> None:
    items: list[Any] = [(i, 1) for i in range(10)]
    items[2] = (2**31, 0)  # refused by the worker
    items[5] = (2**70, 1)  # cannot even be sent
    items[7] = 7  # not a tuple of arguments
    results = list(client.map("demo", "add", items, chunksize=3, return_exceptions=True))
    assert len(results) == 10
    assert [r for i, r in enumerate(results) if i not in (2, 5, 7)] == [i + 1 for i in range(10) if i not in (2, 5, 7)]
    assert isinstance(results[2], ArgumentError) and "does not fit" in str(results[2])
    assert isinstance(results[5], ArgumentError) and "cannot be sent" in str(results[5])
    assert isinstance(results[7], ArgumentError) and "tuple of arguments" in str(results[7])


def test_an_error_for_the_whole_batch_reaches_each_of_its_items(client: Client) -> None:
    results = list(client.map("demo", "no_such_method", [(1,)] * 5, chunksize=2, return_exceptions=True))
    assert len(results) == 5 and all(isinstance(r, UnknownMethod) for r in results)


def test_empty_input_gives_nothing(client: Client) -> None:
    assert list(client.map("demo", "add", [])) == []
    assert list(client.map("demo", "add", iter(()), chunksize=1)) == []


def test_the_input_is_read_lazily_and_an_abandoned_map_stops_reading(client: Client) -> None:
    taken = itertools.count()

    def endless() -> Iterator[tuple[int, int]]:
        for i in itertools.count():
            next(taken)
            yield i, i

    results = client.map("demo", "add", endless(), chunksize=10)
    assert list(itertools.islice(results, 500)) == [2 * i for i in range(500)]
    results.close()
    read = next(taken)
    assert read < 500 + 100 * 10, f"{read} items read for 500 results"
    assert client.call("demo", "add", 1, 1) == 2


def test_validation_errors_come_at_once_not_at_the_first_item(client: Client) -> None:
    for chunksize, error in [(0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError)]:
        with pytest.raises(error, match="chunksize"):
            client.map("demo", "add", [(1, 2)], chunksize=chunksize)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        client.map("demo", "add", [(1, 2)], timeout=-1)
    with pytest.raises(ValueError, match="method name"):
        client.map("demo", "", [(1, 2)])
    with pytest.raises(TypeError):
        client.map("demo", "add", 5)  # type: ignore[arg-type]


def test_a_crashed_worker_fails_each_item_of_its_batch_and_the_rest_go_on() -> None:
    with Pool.from_config({"services": {"s": demo_service(workers=2)}}) as pool, pool.client(timeout=30) as client:
        results = list(client.map("s", "crash", [()] * 4, chunksize=2, return_exceptions=True))
        assert len(results) == 4 and all(isinstance(r, WorkerCrashed) for r in results)
        assert list(client.map("s", "add", [(i, i) for i in range(100)], chunksize=7)) == [2 * i for i in range(100)]


def test_the_timeout_covers_the_whole_map() -> None:
    config = {"pool": {"kill_grace": 0.2}, "services": {"s": demo_service(workers=2)}}
    with Pool.from_config(config) as pool, pool.client(timeout=30) as client:
        results = client.map("s", "sleep_ms", [(200,)] * 40, chunksize=1, timeout=0.5)
        with pytest.raises(Timeout):
            list(results)
        assert pool.stats()["requests"] < 40, "the map kept sending calls past its timeout"
        outcomes = list(client.map("s", "sleep_ms", [(200,)] * 40, chunksize=1, timeout=0.5, return_exceptions=True))
        assert len(outcomes) == 40 and isinstance(outcomes[-1], Timeout)
        assert all(r is None or isinstance(r, Timeout) for r in outcomes)


def test_a_map_on_a_closed_client_is_broker_unavailable(pool: Pool) -> None:
    client = pool.client()
    client.close()
    with pytest.raises(BrokerUnavailable, match="closed"):
        list(client.map("demo", "add", [(1, 2)]))
