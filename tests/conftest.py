"""Shared fixtures: one real pool of real 32-bit workers for the integration tests.

A missing 32-bit runtime makes these fixtures fail, never skip: CI must not
pass without the thing this project exists for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from broker import Pool
from client import Busy, Client

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "build"


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stopped(pid: int) -> bool:
    """True once every thread of ``pid`` is stopped (SIGSTOP takes effect a little after ``kill`` returns)."""
    states = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            states.add((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except OSError:  # the thread just ended
            continue
    return states == {"T"}


def in_nanosleep(pid: int, threads: int = 1) -> bool:
    """True while ``threads`` threads of ``pid`` (or more) are blocked in nanosleep: a worker inside demo's
    ``sleep_ms`` that many times.

    The worker's own threads wait in poll, epoll and futex, never in nanosleep.
    """
    sleeping = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            sleeping += (task / "wchan").read_text() == "hrtimer_nanosleep"
        except OSError:  # the thread or the process just ended
            continue
    return sleeping >= threads


def library(bits: int, name: str = "libdemo.so") -> str:
    path = EXAMPLES / str(bits) / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `dllpool setup` (make test does)")
    return str(path)


def demo_service(bits: int = 32, workers: int = 1, threads: int = 1, **extra: object) -> dict[str, object]:
    """A declared service on the C demo library, for dict configurations."""
    return {
        "bits": bits,
        "workers": workers,
        "threads": threads,
        "library": library(bits),
        "functions": {
            "add": {"args": ["int", "int"], "returns": "int"},
            "sleep_ms": {"args": ["int"], "returns": "void"},
            "pointer_size": {"returns": "int"},
            "worker_pid": {"returns": "int"},
            "count_calls": {"returns": "int"},
            "crash": {"returns": "int"},
            "scale_sum": {
                "c": "double scale_sum(const double *values, int n, double factor)",
                "params": {"values": "in[n]"},
            },
        },
        **extra,
    }


def assert_busy_while_full(client: Client, running: Future[Any], waiting: list[Future[Any]], limit: int) -> None:
    """Service ``s`` is full: the next call gets Busy at once (while ``running`` still runs), and every call
    that was let in (``add(i, 1)`` each) is still answered."""
    with pytest.raises(Busy) as info:
        client.call("s", "add", 0, 0)
    assert not running.done(), "Busy came only after the running call had finished"
    assert info.value.details["queue_limit"] == limit
    assert running.result() is None
    assert [f.result() for f in waiting] == [i + 1 for i in range(len(waiting))]


@pytest.fixture(scope="session")
def pool() -> Iterator[Pool]:
    """The embedded default configuration, as `make demo` runs it."""
    with Pool.from_config() as running:
        yield running


@pytest.fixture()
def client(pool: Pool) -> Iterator[Client]:
    with pool.client(timeout=30) as c:
        yield c


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def assert_no_children_left(pids: list[int]) -> None:
    left = [pid for pid in pids if pid_alive(pid)]
    assert not left, f"worker processes left behind: {left}"
