"""End to end: a real broker, real sockets, real 32-bit worker processes."""

from __future__ import annotations

import array
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from broker import Pool, runtime32
from broker.runtime32 import check_elf_bits
from client import ArgumentError, Client, RemoteError, UnknownMethod, UnknownService
from client.connection import Connection

from .conftest import demo_service


def test_every_demo_worker_is_a_32bit_process_answering_4(pool: Pool, client: Client) -> None:
    pids = set(pool.worker_pids("demo"))
    assert len(pids) == 4
    # Idle workers are used least-recently-used first, so n sequential calls visit all n workers.
    assert {client.call("demo", "worker_pid") for _ in pids} == pids
    assert [client.call("demo", "pointer_size") for _ in pids] == [4] * len(pids)
    for pid in pids:
        assert check_elf_bits(f"/proc/{pid}/exe") == 32
        with open(f"/proc/{pid}/maps") as maps:
            assert "/examples/build/32/libdemo.so" in maps.read()
    assert {w["pointer_size"] for w in pool.workers()} == {4}


def test_workers_load_the_32bit_runtimes_pyzmq_never_the_64bit_one(pool: Pool) -> None:
    site = tuple(str(Path(p).resolve()) for p in runtime32.load().path)
    for pid in pool.worker_pids():
        with open(f"/proc/{pid}/maps") as f:
            mapped = {line.split()[-1] for line in f if "/" in line}
        zmq_libraries = {path for path in mapped if "zmq" in path}
        assert zmq_libraries, f"worker {pid} has no zmq library loaded"
        assert all(path.startswith(site) for path in zmq_libraries), zmq_libraries
        assert not any(path.startswith(sys.prefix) for path in mapped), "a 64-bit venv file is mapped"


def test_32_threads_x_200_calls_each_get_their_own_answers(client: Client) -> None:
    wrong: list[tuple[int, int, object]] = []
    lock = threading.Lock()

    def caller(t: int) -> int:
        for i in range(200):
            a, b = t * 100_000 + i, -t
            result = client.call("demo", "add", a, b)
            if result != a + b:
                with lock:
                    wrong.append((t, i, result))
        return t

    with ThreadPoolExecutor(32) as executor:
        assert sorted(executor.map(caller, range(32))) == list(range(32))
    assert wrong == []


def test_1000_futures_in_flight(client: Client) -> None:
    futures = [client.submit("demo", "add", i, 3 * i) for i in range(1000)]
    assert [f.result(timeout=60) for f in futures] == [4 * i for i in range(1000)]


def _concurrent_sleeps(client: Client, service: str, n: int, ms: int) -> float:
    started = time.perf_counter()
    futures = [client.submit(service, "sleep_ms", ms) for _ in range(n)]
    for f in futures:
        assert f.result(timeout=30) is None
    return time.perf_counter() - started


def test_sleeps_run_in_parallel_on_4_workers(client: Client) -> None:
    elapsed = _concurrent_sleeps(client, "demo", 4, 200)
    assert 0.2 <= elapsed < 0.6, f"4 x sleep_ms(200) on 4 workers took {elapsed:.3f} s"


def test_sleeps_run_in_parallel_on_1_worker_with_4_threads(pool: Pool, client: Client) -> None:
    assert len(pool.worker_pids("demo_threaded")) == 1
    elapsed = _concurrent_sleeps(client, "demo_threaded", 4, 200)
    assert 0.2 <= elapsed < 0.6, f"4 x sleep_ms(200) on 1 worker x 4 threads took {elapsed:.3f} s"


def test_one_worker_one_thread_runs_calls_one_at_a_time(tmp_path: object) -> None:
    with Pool.from_config({"services": {"solo": demo_service(workers=1)}}) as pool, pool.client() as client:
        elapsed = _concurrent_sleeps(client, "solo", 3, 100)
    assert elapsed >= 0.3, "calls on a single-threaded worker overlapped"


def test_unknown_service_names_the_services(client: Client) -> None:
    with pytest.raises(UnknownService) as info:
        client.call("no_such_service", "add", 1, 2)
    assert "no_such_service" in str(info.value)
    assert "demo" in info.value.details["services"]


def test_unknown_method_names_the_methods(client: Client) -> None:
    with pytest.raises(UnknownMethod) as info:
        client.call("demo", "substract", 1, 2)
    assert "substract" in str(info.value)
    assert "add" in info.value.details["methods"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((1,), "takes 2 argument(s), got 1"),
        ((1, 2, 3), "takes 2 argument(s), got 3"),
        ((1, "two"), "argument 2 of int add(int, int): expected an integer, got str"),
        ((2**31, 0), "does not fit in 32-bit signed"),
    ],
)
def test_bad_arguments_to_a_declared_function(client: Client, args: tuple[object, ...], expected: str) -> None:
    with pytest.raises(ArgumentError) as info:
        client.call("demo", "add", *args)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((99999999999999999999999, 1), {}, "argument 1 (99999999999999999999999) cannot be sent: integer out of range"),
        ((1, -(2**64)), {}, "argument 2 (-18446744073709551616) cannot be sent: integer out of range"),
        ((1,), {"b": object()}, "keyword argument 'b' (<object object at"),
        ((1, [2, ...]), {}, "argument 2 ([2, Ellipsis]) cannot be sent: can not serialize 'ellipsis'"),
    ],
)
def test_arguments_that_cannot_be_sent_are_an_argument_error_at_once(
    pool: Pool, client: Client, args: tuple[object, ...], kwargs: dict[str, Any], expected: str
) -> None:
    requests = pool.stats()["requests"]
    with pytest.raises(ArgumentError) as info:
        client.submit("demo", "add", *args, **kwargs)
    assert expected in str(info.value)
    assert info.value.details == {"service": "demo", "method": "add"}
    assert pool.stats()["requests"] == requests, "an unsendable call reached the broker"


def test_bad_arguments_to_a_wrapper_method(client: Client) -> None:
    with pytest.raises(ArgumentError) as info:
        client.call("wrapped", "add", 1)
    assert "b" in str(info.value)


def test_wrapper_exception_is_a_remote_error_with_traceback(client: Client) -> None:
    with pytest.raises(RemoteError) as info:
        client.call("wrapped", "fail", "the instrument is not connected")
    error = info.value
    assert error.remote_type == "ValueError"
    assert "the instrument is not connected" in str(error)
    assert "demo_wrapper.py" in error.remote_traceback and "in fail" in error.remote_traceback
    assert client.call("wrapped", "add", 20, 22) == 42


def test_private_and_dunder_names_are_not_callable(client: Client) -> None:
    for name in ("_private", "__init__", "__class__", "lib", "path"):
        with pytest.raises(UnknownMethod):
            client.call("wrapped", name)
    proxy = client.service("wrapped")
    with pytest.raises(AttributeError):
        proxy._private  # noqa: B018
    assert proxy.add(1, 2) == 3


def test_the_pool_keeps_serving_after_errors(client: Client) -> None:
    calls: list[tuple[str, str, tuple[object, ...]]] = [
        ("demo", "nope", ()),
        ("nope", "add", ()),
        ("demo", "add", ("x", 1)),
        ("wrapped", "fail", ("x",)),
    ]
    for service, method, args in calls:
        with pytest.raises((UnknownMethod, UnknownService, ArgumentError, RemoteError)):
            client.call(service, method, *args)
    assert client.call("demo", "add", 40, 2) == 42


def test_declared_types_cross_the_process_boundary(client: Client) -> None:
    demo = client.service("demo")
    assert demo.add_i64(2**40, 2**41) == 2**40 + 2**41
    assert demo.half(3.0) == 1.5
    assert demo.is_true(True) == 1 and demo.is_true(False) == 0
    assert demo.str_len("héllo") == len("héllo".encode())
    assert demo.greet() == b"hello from 32-bit C"
    assert demo.scale_sum([1.0, 2.0, 3.5], 3, 2.0) == 13.0
    big = [float(i) for i in range(100_000)]
    assert demo.scale_sum(big, len(big), 0.5) == sum(big) * 0.5


def test_cpp_fortran_and_wrapper_services(client: Client) -> None:
    assert client.call("cpp", "cpp_add", 2, 3) == 5
    assert client.call("cpp", "cpp_mean", [1.0, 2.0, 3.0, 6.0], 4) == 3.0
    assert client.call("cpp", "cpp_pointer_size") == 4
    assert client.call("fortran", "f_add", 2, 3) == 5
    assert client.call("fortran", "f_sum", [0.5, 1.5, 2.0], 3) == 4.0
    assert client.call("fortran", "f_pointer_size") == 4
    assert client.call("wrapped", "greet") == "hello from 32-bit C"
    assert client.call("wrapped", "scale_sum", [1.0, 2.0], 3.0) == 9.0
    assert client.call("wrapped", "pointer_size") == 4


def test_a_big_array_goes_to_a_32bit_worker_and_back(client: Client) -> None:
    values = array.array("d", (float(i) for i in range(200_000)))
    result = client.call("wrapped", "scalar_multiply", 2.5, values)
    assert isinstance(result, array.array) and result.typecode == "d"
    assert result == array.array("d", (2.5 * v for v in values))
    assert client.call("wrapped", "scalar_multiply", 2.0, [1.0, 2.0]) == array.array("d", [2.0, 4.0])


def test_a_wake_up_after_the_io_thread_closed_its_end_does_not_block(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close() race found on a fresh machine (about 1 in 100 closes right after a burst): the I/O thread
    has closed its PULL end and not yet the PUSH one when a caller sends a wake-up. The window is widened here
    by delaying the I/O thread's last step; the wake-up must return, and close() with it."""
    entered = threading.Event()
    original = Connection._close_push

    def slow_close_push(self: Connection) -> None:
        entered.set()
        time.sleep(0.5)  # the window under test, held open
        original(self)

    monkeypatch.setattr(Connection, "_close_push", slow_close_push)
    client = pool.client(timeout=10)
    assert client.call("demo", "add", 1, 2) == 3
    connection = client._conn
    closer = threading.Thread(target=client.close)
    with connection._lock:
        connection._closed = True  # what the last close() does first: the I/O thread leaves its loop
    assert entered.wait(10), "the I/O thread did not reach its last step"
    connection._woken = False
    waker = threading.Thread(target=connection.to_io, args=(None,))  # blocked forever before the fix
    waker.start()
    waker.join(10)
    assert not waker.is_alive(), "the wake-up blocked"
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "close() hung"
