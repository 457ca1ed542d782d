"""The client's two paths, end to end: a blocking call() on the caller's own socket (the fast path), and
submit() through the I/O thread. Both must survive what the broker and the workers go through."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from broker import Pool
from client import BrokerUnavailable, Client, Timeout, WorkerCrashed

from .conftest import ROOT, demo_service, in_nanosleep, library, wait_for
from .test_cli import children_of

DLLPOOL = [sys.executable, "-m", "broker.cli"]
PATHS = ["call", "submit"]


def start(client: Client, path: str, method: str, *args: Any, **options: Any) -> Future[Any]:
    """Start a call down one of the two paths; the Future holds what the caller gets (result or error)."""
    if path == "submit":
        return client.submit("s", method, *args, **options)
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(client.call("s", method, *args, **options))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def on_fast_path(client: Client, calls: int = 1) -> Callable[[], bool]:
    """True once ``calls`` blocking calls wait on sockets of their own."""
    return lambda: len(client._conn._lanes_out) == calls


class Brokers:
    """Starts `dllpool up` processes at one fixed ipc address (service ``s``, 2 workers each)."""

    def __init__(self, folder: Path) -> None:
        self.address = f"ipc://{folder}/frontend"
        self.config = folder / "pool.toml"
        self.config.write_text(
            f'[pool]\nfrontend = "{self.address}"\n'
            f'[services.s]\nworkers = 2\nlibrary = "{library(32)}"\n'
            "[services.s.functions]\n"
            'add = { args = ["int", "int"], returns = "int" }\n'
            'sleep_ms = { args = ["int"], returns = "void" }\n'
        )
        self.started: list[subprocess.Popen[str]] = []

    def start(self) -> subprocess.Popen[str]:
        """A broker serving at ``address``, its workers ready."""
        process = subprocess.Popen(
            [*DLLPOOL, "up", "-c", str(self.config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().startswith("dllpool: serving at ")
        return process


@pytest.fixture()
def brokers(tmp_path: Path) -> Iterator[Brokers]:
    made = Brokers(tmp_path)
    yield made
    for process in made.started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
        process.wait(timeout=30)


def answers(client: Client) -> bool:
    try:
        return client.call("s", "add", 20, 22, timeout=1.0) == 42  # type: ignore[no-any-return]
    except (BrokerUnavailable, Timeout):
        return False


@pytest.mark.parametrize("path", PATHS)
def test_a_broker_killed_mid_call_fails_the_call_at_once_and_its_successor_serves(path: str, brokers: Brokers) -> None:
    first = brokers.start()
    # A 30 s liveness window: the failure must come from the dropped connection, not from silence.
    with Client(brokers.address, timeout=60, heartbeat_liveness=30) as client:
        assert client.call("s", "add", 1, 2) == 3
        pending = start(client, path, "sleep_ms", 20_000)
        wait_for(lambda: any(in_nanosleep(pid) for pid in children_of(first.pid)), 20, "the call to run")
        if path == "call":
            assert on_fast_path(client)()
        first.kill()
        first.wait()
        # "may or may not have run" is the lost connection's answer; the 30 s window's would name the silence.
        with pytest.raises(BrokerUnavailable, match="may or may not have run") as info:
            pending.result(timeout=20)
        assert info.value.details["service"] == "s"
        brokers.start()
        wait_for(lambda: answers(client), 30, "the client to reach the new broker")
        assert [client.call("s", "add", i, i) for i in range(20)] == [2 * i for i in range(20)]
        assert [client.submit("s", "add", i, 1).result(timeout=10) for i in range(20)] == list(range(1, 21))
        assert not client._conn._lanes_out


@pytest.mark.parametrize("path", PATHS)
def test_a_silent_broker_gives_the_backstop_timeout_on_both_paths(path: str, brokers: Brokers) -> None:
    process = brokers.start()
    with Client(brokers.address, timeout=10, heartbeat_liveness=10) as client:
        assert client.call("s", "add", 1, 2) == 3
        os.kill(process.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(Timeout, match="the broker sent no answer"):
            start(client, path, "add", 2, 2, timeout=0.5).result(timeout=20)
        assert time.monotonic() - started < 5.0
        os.kill(process.pid, signal.SIGCONT)
        wait_for(lambda: answers(client), 20, "the broker to answer again")


@pytest.mark.parametrize("path", PATHS)
def test_a_worker_crash_is_worker_crashed_on_both_paths_and_the_pool_serves_on(path: str) -> None:
    with Pool.from_config({"services": {"s": demo_service(workers=2)}}) as pool, pool.client(timeout=30) as client:
        with pytest.raises(WorkerCrashed) as info:
            start(client, path, "crash").result(timeout=30)
        assert info.value.details["method"] == "crash"
        assert [start(client, path, "add", i, i).result(timeout=30) for i in range(10)] == [2 * i for i in range(10)]


@pytest.mark.parametrize("path", PATHS)
def test_the_brokers_deadline_holds_on_both_paths(path: str) -> None:
    config = {"pool": {"kill_grace": 0.2}, "services": {"s": demo_service(workers=1)}}
    with Pool.from_config(config) as pool, pool.client() as client:
        with pytest.raises(Timeout, match="still running"):  # the broker's answer, not the client's backstop
            start(client, path, "sleep_ms", 1000, timeout=0.05).result(timeout=30)
        wait_for(lambda: answers(client), 20, "a replacement worker")


def test_many_threads_get_their_own_answers_on_as_many_sockets_as_calls_waited_at_once(client: Client) -> None:
    threads = 24
    wrong: list[tuple[int, int, Any]] = []

    def caller(t: int) -> None:
        for i in range(150):
            result = client.call("demo", "add", t * 1000, i)
            if result != t * 1000 + i:
                wrong.append((t, i, result))

    with ThreadPoolExecutor(threads) as executor:
        list(executor.map(caller, range(threads)))
    assert wrong == []
    assert 1 <= len(client._conn._lanes) <= threads
    before = len(client._conn._lanes)
    for t in range(10):  # one thread after another: each takes the socket the last one gave back
        thread = threading.Thread(target=caller, args=(t,))
        thread.start()
        thread.join()
    assert wrong == []
    assert len(client._conn._lanes) == before, "a new thread opened a socket while one was free"


def test_close_fails_calls_waiting_on_their_own_sockets_and_hangs_nothing() -> None:
    with Pool.from_config({"services": {"s": demo_service(workers=2)}}) as pool:
        client = pool.client(timeout=60)
        assert client.call("s", "add", 1, 1) == 2
        waiting = [start(client, "call", "sleep_ms", 5000) for _ in range(3)]
        wait_for(on_fast_path(client, 3), 20, "three calls waiting on the fast path")
        client.close()
        for future in waiting:
            with pytest.raises(BrokerUnavailable, match="client closed"):
                future.result(timeout=10)
        assert any(in_nanosleep(pid) for pid in pool.worker_pids("s")), "close() or the calls waited for the sleeps"
        assert not client._conn._lanes and not client._conn._lanes_out
        with pytest.raises(BrokerUnavailable, match="closed"):
            client.call("s", "add", 1, 1)


def test_ctrl_c_during_a_fast_call_cancels_it_at_the_broker() -> None:
    with Pool.from_config({"services": {"s": demo_service(workers=1)}}) as pool, pool.client(timeout=30) as client:
        assert client.call("s", "count_calls") == 1
        busy = client.submit("s", "sleep_ms", 1500)
        wait_for(lambda: pool.stats()["requests"] == 2, 10, "the worker to take the sleep")
        main = threading.main_thread().ident
        assert main is not None and threading.get_ident() == main

        def interrupt() -> None:
            wait_for(lambda: pool.stats()["requests"] == 3, 10, "the broker to queue the interrupted call")
            signal.pthread_kill(main, signal.SIGINT)

        # A runner started in the background of a shell inherits SIGINT ignored (Python then installs no
        # handler): this test needs Python's own, whatever started it.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                client.call("s", "count_calls")  # queued behind the sleep: interrupted while it waits
        finally:
            interrupter.join()
            signal.signal(signal.SIGINT, previous)
        assert not client._conn._lanes_out
        busy.result()
        assert client.call("s", "count_calls") == 2, "the interrupted call ran after all"


def test_a_call_made_before_the_handshake_completes_still_gets_its_answer(pool: Pool) -> None:
    for _ in range(5):
        with pool.client(timeout=30) as client:
            assert client.call("demo", "add", 2, 3) == 5


@pytest.mark.parametrize("path", PATHS)
def test_an_argument_over_the_brokers_message_limit_fails_instead_of_waiting_forever(path: str) -> None:
    """The broker drops a connection that sends a frame over max_message_size; a call without a timeout
    must still end (BrokerUnavailable, saying why that may be), and the client must serve on."""
    config = {"pool": {"max_message_size": 1 << 20}, "services": {"s": demo_service(workers=1)}}
    with Pool.from_config(config) as pool, pool.client() as client:
        with pytest.raises(BrokerUnavailable, match="bigger than its max_message_size"):
            start(client, path, "add", b"x" * (2 << 20), 1).result(timeout=60)
        assert client.call("s", "add", 2, 3, timeout=30) == 5
