"""A user's wrapper class that misbehaves cannot leave a call unanswered or take the pool down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import Pool
from client import ArgumentError, Client, RemoteError, UnknownMethod, WorkerCrashed

WRAPPER = Path(__file__).resolve().parent / "wrappers" / "misbehaving.py"


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    service = {"module": str(WRAPPER), "class": "Misbehaving", "workers": 1, "options": {"colour": "blue"}}
    with Pool.from_config({"services": {"w": service}}) as pool, pool.client(timeout=10) as c:
        yield c


def test_system_exit_in_a_method_is_a_remote_error(client: Client) -> None:
    with pytest.raises(RemoteError) as info:
        client.call("w", "exit")
    assert info.value.remote_type == "SystemExit"
    assert client.call("w", "echo", 1) == 1


def test_a_result_that_cannot_be_sent_is_a_remote_error(client: Client) -> None:
    with pytest.raises(RemoteError, match="cannot be sent"):
        client.call("w", "unsendable")


def test_a_method_that_ends_the_process_is_a_worker_crash(client: Client) -> None:
    pid = client.call("w", "pid")
    with pytest.raises(WorkerCrashed, match="exit code 7"):
        client.call("w", "hard_exit")
    assert client.call("w", "pid") != pid


def test_values_round_trip_through_a_wrapper(client: Client) -> None:
    value = {"text": "héllo", "bytes": b"\x00\xff" * 10_000, "list": [1, 2.5, None, True], "nested": {"a": [1]}}
    assert client.call("w", "echo", value) == value
    assert client.call("w", "option", "colour") == "blue"
    assert client.call("w", "static_add", 2, 3) == 5


def test_keyword_arguments_reach_wrapper_methods(client: Client) -> None:
    assert client.call("w", "nap", seconds=0.01) == 0.01
    with pytest.raises(ArgumentError):
        client.call("w", "nap", minutes=1)


def test_only_methods_defined_on_the_class_are_exposed(client: Client) -> None:
    for name in ("options", "__init__", "__dict__", "_private"):
        with pytest.raises(UnknownMethod):
            client.call("w", name)
