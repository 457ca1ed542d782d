"""Clients share a connection per process (issue 8, item 7), a closed Client's calls are dropped at the broker
(item 1), every socket tells the broker its liveness window, and a big upload does not hold up the heartbeats
(item 4). Real brokers, real workers; where the broker's side is observed, it is the real broker core, spied on."""

from __future__ import annotations

import array
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
import zmq

from broker import BrokerCore, Pool
from client import BrokerUnavailable, Client, DllPoolError
from client.connection import CallFuture
from protocol import frames as wire
from protocol.errors import ProtocolError

from .conftest import demo_service, in_nanosleep, wait_for
from .test_client_paths import start

MISBEHAVING = Path(__file__).resolve().parent / "wrappers" / "misbehaving.py"


def usage() -> tuple[int, int]:
    """This process's open file descriptors and threads (libzmq's own included)."""
    return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task"))


def exit_code(pid: int, timeout: float) -> int:
    """The exit code of child ``pid``, once it ends (killed if it takes longer than ``timeout``)."""
    reaped: list[int] = []

    def ended() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            reaped.append(status)
        return done != 0

    try:
        wait_for(ended, timeout, f"child {pid} to exit")
    finally:
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(reaped[0])


class Ears:
    """What the real broker core (in this process: broker="thread") hears from clients, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.heard: list[tuple[bytes, Any]] = []
        original = BrokerCore.client_message

        def spy(core: BrokerCore, ident: bytes, frames: list[Any], now: float) -> Any:
            try:
                message: Any = wire.parse_client(frames)
            except ProtocolError:
                message = None
            self.heard.append((bytes(ident), message))
            return original(core, ident, frames, now)

        monkeypatch.setattr(BrokerCore, "client_message", spy)

    def of(self, kind: type) -> list[tuple[bytes, Any]]:
        return [(ident, message) for ident, message in list(self.heard) if isinstance(message, kind)]

    def requests(self, method: str) -> list[tuple[bytes, wire.ClientRequest]]:
        return [(ident, message) for ident, message in self.of(wire.ClientRequest) if message.method == method]

    def from_(self, ident: bytes) -> list[Any]:
        return [message for sender, message in list(self.heard) if sender == ident]


@pytest.fixture()
def ears(monkeypatch: pytest.MonkeyPatch) -> Ears:
    return Ears(monkeypatch)


@pytest.fixture()
def spied_pool(ears: Ears) -> Iterator[Pool]:
    """Service ``s`` (2 declared demo workers) and ``w`` (the misbehaving wrapper), the broker in a thread here."""
    wrapper = {"module": str(MISBEHAVING), "class": "Misbehaving", "workers": 1}
    config = {"services": {"s": demo_service(workers=2), "w": wrapper}}
    with Pool.from_config(config, broker="thread") as pool:
        yield pool


# ============================================================ many Clients, one connection


def test_a_thousand_clients_in_one_process_each_call_and_closing_them_gives_back_every_socket(pool: Pool) -> None:
    with pool.client(timeout=30) as first:  # the ZeroMQ context's own threads start with the first socket
        assert first.call("demo", "add", 1, 1) == 2
    fds, threads = usage()
    before = set(threading.enumerate())
    clients = [pool.client(timeout=30) for _ in range(1000)]
    try:
        assert len({id(client._conn) for client in clients}) == 1, "they share one connection"

        def calls(i: int) -> int:
            client = clients[i]
            if i % 2:
                return client.call("demo", "add", i, 1)  # type: ignore[no-any-return]
            return client.submit("demo", "add", i, 1).result()  # type: ignore[no-any-return]

        with ThreadPoolExecutor(8) as executor:
            assert list(executor.map(calls, range(1000))) == [i + 1 for i in range(1000)]
        open_fds = usage()[0]
        # One connection: an I/O thread, 5 sockets and one DEALER per call that waited at once (8 threads here),
        # against 6 descriptors and a thread per Client before.
        assert open_fds - fds < 100, f"{open_fds - fds} descriptors for 1,000 Clients"
        # The threads these Clients started: the connection's I/O thread and, for the submitted calls, the one
        # that runs Future callbacks (counted by name: another test's threads may end or start meanwhile).
        started = sorted(t.name for t in set(threading.enumerate()) - before)
        assert set(started) <= {"dllpool-client-io", "dllpool-client-callbacks"} and len(started) <= 2, started
    finally:
        for client in clients:
            client.close()
    assert all(client.closed for client in clients)
    wait_for(
        lambda: (now := usage())[0] <= fds + 2 and now[1] <= threads,
        30,
        f"descriptors and threads back to {fds} and {threads}",
    )


def test_clients_share_a_connection_only_when_their_settings_match(pool: Pool) -> None:
    with pool.client(timeout=30) as a, pool.client(timeout=5) as b, pool.client(heartbeat_interval=0.5) as c:
        assert a._conn is b._conn, "the timeout is the handle's own"
        assert c._conn is not a._conn, "other heartbeat settings need a connection of their own"
        assert (a.timeout, b.timeout) == (30, 5)
        assert [x.call("demo", "add", 1, i) for i, x in enumerate((a, b, c))] == [1, 2, 3]
        b.close()
        assert b.closed and not a.closed
        with pytest.raises(BrokerUnavailable, match="closed"):
            b.call("demo", "add", 1, 1)
        assert a.call("demo", "add", 2, 2) == 4, "the connection outlives one of its Clients"
        assert repr(a) == f"<Client {pool.address} 0 pending>" and repr(b) == f"<Client {pool.address} closed>"


def test_clients_that_cannot_share_run_out_of_sockets_with_an_error_that_says_what_to_do(pool: Pool) -> None:
    context: zmq.Context[Any] = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 12)  # two connections (5 sockets each) and one blocking call's socket
    clients: list[Client] = []
    try:
        clients += [Client(pool.address, 30, context=context) for _ in range(200)]
        assert [client.call("demo", "add", i, 1) for i, client in enumerate(clients)] == list(range(1, 201))
        clients.append(Client(pool.address, 30, context=context, heartbeat_interval=0.5))
        with pytest.raises(DllPoolError, match=r"allows 12 sockets") as info:
            clients.append(Client(pool.address, 30, context=context, heartbeat_interval=0.6))
        assert "share one connection" in str(info.value) and "zmq.MAX_SOCKETS" in str(info.value)
        assert clients[0].call("demo", "add", 2, 2) == 4, "a failed Client costs the others nothing"
    finally:
        for client in clients:
            client.close()
        context.term()  # returns only once every socket is closed


def test_a_forked_child_opens_a_connection_of_its_own(pool: Pool) -> None:
    with pool.client(timeout=30) as parent:
        assert parent.call("demo", "add", 1, 2) == 3
        pid = os.fork()
        if pid == 0:  # the child has none of the parent's threads: its Clients need their own connection
            code = 1
            try:
                with Client(pool.address, timeout=20) as child:
                    code = 0 if child.call("demo", "add", 2, 3) == 5 else 2
            finally:
                os._exit(code)
        assert exit_code(pid, 60) == 0
        assert parent.call("demo", "add", 3, 4) == 7


# ============================================================ close() cancels its own calls


def test_close_drops_its_queued_calls_unrun_and_the_other_clients_calls_are_served_next() -> None:
    """400 calls queued behind a sleep on a 1-worker service, and 3 blocking ones: none reaches the library once
    its Client closes. The worker's call counter proves it: the other Client's call, queued behind them all,
    is the first count_calls its worker runs."""
    with Pool.from_config({"services": {"s": demo_service(workers=1)}}) as pool:
        closing, other = pool.client(timeout=120), pool.client(timeout=120)
        assert closing._conn is other._conn
        (worker,) = pool.worker_pids("s")
        closing.submit("s", "sleep_ms", 60_000)
        wait_for(lambda: in_nanosleep(worker), 30, "the worker to start sleeping")
        queued = [closing.submit("s", "count_calls") for _ in range(400)]
        blocked = [start(closing, "call", "count_calls") for _ in range(3)]
        wait_for(lambda: pool.stats()["requests"] == 404, 30, "the broker to queue the 403 calls")
        served = other.submit("s", "count_calls")
        wait_for(lambda: pool.stats()["requests"] == 405, 30, "the broker to queue the other Client's call")

        closing.close()
        assert all(isinstance(future.exception(timeout=0), BrokerUnavailable) for future in queued)
        for future in blocked:
            with pytest.raises(BrokerUnavailable, match="client closed"):
                future.result(timeout=10)
        assert other.stats["cancels_sent"] >= 404, "the shared connection's counters"
        pool.kill_worker(worker)  # ends the sleep that was running (a running call cannot be cancelled)
        assert served.result(timeout=60) == 1, "the closed Client's queued calls ran first"
        assert not other.closed and other.call("s", "add", 2, 3) == 5
        other.close()


def test_close_cancels_only_its_own_calls_and_the_last_close_says_disconnect_on_every_socket(
    spied_pool: Pool, ears: Ears
) -> None:
    closing, other = spied_pool.client(timeout=60), spied_pool.client(timeout=60)
    assert other.submit("s", "add", 0, 0).result(timeout=30) == 0  # connected now:
    assert other.call("s", "add", 1, 2) == 3  # a blocking call takes a socket of its own
    running = [closing.submit("s", "sleep_ms", 1000) for _ in range(2)]
    queued = [closing.submit("s", "add", i, 1) for i in range(5)]
    kept = other.submit("s", "add", 20, 22)
    wait_for(lambda: len(ears.requests("add")) == 8, 30, "the broker to hold every call")
    mine = {cast(CallFuture, future).corr for future in running + queued}

    closing.close()
    for future in running + queued:
        with pytest.raises(BrokerUnavailable, match="client closed"):
            future.result(timeout=0)
    wait_for(lambda: len(ears.of(wire.ClientCancel)) == 7, 30, "a CANCEL for each of its calls")
    assert {message.corr for _, message in ears.of(wire.ClientCancel)} == mine
    assert kept.result(timeout=30) == 42, "the other Client's call on the same socket is untouched"
    assert ears.of(wire.ClientDisconnect) == [], "the connection still serves another Client"

    other.close()
    talked = {ident for ident, message in ears.heard if isinstance(message, wire.ClientRequest)}
    assert len(talked) == 2, "the I/O thread's socket and one blocking call's socket"
    wait_for(lambda: {ident for ident, _ in ears.of(wire.ClientDisconnect)} == talked, 30, "DISCONNECT on every socket")


# ============================================================ heartbeats and the window


def test_every_socket_tells_the_broker_its_window_first_and_heartbeats_while_its_calls_run(
    spied_pool: Pool, ears: Ears
) -> None:
    """A submitted call, a map chunk, a blocking call and a call with 2 MiB of arguments (the bulk socket) each
    wait a second at a worker; every socket that carries one heartbeats with the window all along."""
    window = 0.1 * 30
    with spied_pool.client(timeout=60, heartbeat_interval=0.1, heartbeat_liveness=30) as client:
        assert client.submit("s", "add", 0, 0).result(timeout=30) == 0  # connected: call() takes its own socket
        waiting: list[Future[Any]] = [
            client.submit("s", "sleep_ms", 1000),
            start(client, "call", "sleep_ms", 1000),
            client.submit("w", "nap_holding", b"x" * (2 << 20), 1.0),
        ]
        assert list(client.map("s", "sleep_ms", [(1000,)])) == [None]
        assert [future.result(timeout=30) for future in waiting] == [None, None, 2 << 20]

        requests = ears.of(wire.ClientRequest)
        sender = {message.corr: ident for ident, message in requests}
        submitted = sender[cast(CallFuture, waiting[0]).corr]
        bulk = sender[cast(CallFuture, waiting[2]).corr]
        (batch,) = [ident for ident, message in requests if message.flags & wire.FLAG_BATCH]
        (blocking,) = [ident for ident, message in ears.requests("sleep_ms") if ident not in (submitted, batch)]
        assert batch == submitted, "a map's chunks go on the I/O thread's socket"
        assert len({submitted, blocking, bulk}) == 3, "a blocking call and a big one have sockets of their own"
        for ident in (submitted, blocking, bulk):
            said = ears.from_(ident)
            assert said[0] == wire.ClientHeartbeat(window), "the window comes before anything else"
            after = said[[isinstance(m, wire.ClientRequest) for m in said].index(True) :]
            heartbeats = [m for m in after if isinstance(m, wire.ClientHeartbeat)]
            assert len(heartbeats) >= 3, f"only {len(heartbeats)} heartbeats during a 1 s call at 0.1 s"
            assert all(m.window == window for m in heartbeats)


def test_a_big_upload_leaves_the_heartbeats_and_other_calls_of_its_client_alone(ears: Ears) -> None:
    """384 MiB to a 64-bit worker (the 32-bit worker's own copies are not under test here) on a Client whose
    liveness window (0.5 s) may be shorter than the upload: its other calls, blocking and submitted, keep being
    answered meanwhile, and the calls it submits reach the broker before the upload does, on the socket that
    carries its heartbeats, so the Client never takes the broker for silent."""
    service = demo_service(bits=64, workers=2)
    # The workers get a long window: how fast a worker takes in 384 MiB is another matter.
    config = {"pool": {"heartbeat_liveness": 30}, "services": {"s": service}}
    doubles = (384 << 20) // 8
    values = array.array("d", bytes(8 * doubles))
    with (
        Pool.from_config(config, broker="thread") as pool,
        pool.client(timeout=120, heartbeat_interval=0.1, heartbeat_liveness=5) as client,
    ):
        assert client.submit("s", "add", 1, 1).result(timeout=30) == 2
        big = client.submit("s", "scale_sum", values, doubles, 2.0)
        submitted: list[int] = []
        i = 0
        while not big.done():
            i += 1
            if i % 2:
                assert client.call("s", "add", i, 1) == i + 1
            else:
                future = client.submit("s", "add", i, 1)
                submitted.append(cast(CallFuture, future).corr)
                assert future.result(timeout=30) == i + 1
        assert big.result() == 0.0
        assert client.stats["reconnects"] == 0, "the Client took the broker for silent"
        order = [message.corr for _, message in ears.of(wire.ClientRequest)]
        overtook = [corr for corr in submitted if order.index(corr) < order.index(cast(CallFuture, big).corr)]
        assert overtook, "calls submitted after the upload waited behind it"
