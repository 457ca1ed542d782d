"""The threaded client: :class:`Client`, a light handle over a connection shared in the process.

The sockets, the I/O thread and the fast path live in :mod:`client.connection`;
a Client holds its own default timeout, its closed flag and its pending calls,
and turns arguments into calls (checking names, timeouts and what can be
sent) and answers into results (``map``'s batches item by item).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import zmq

from protocol import frames as wire
from protocol.errors import BrokerUnavailable, CallError, DllPoolError, WorkerCrashed

from . import shm
from .calls import (
    UNSET,
    MapWindow,
    Unset,
    check_chunksize,
    check_name,
    check_settings,
    check_timeout,
    new_call,
    share_from,
)
from .connection import Connection, Owner
from .core import Call
from .keys import CurveKeys
from .proxy import ServiceProxy, SessionCalls

__all__ = ["Client", "Session"]


class Client:
    """Calls functions of the pool's services through the broker at ``address``.

    Thread-safe: any number of threads may call at once. ``timeout`` is the
    default per-call limit in seconds (None: wait as long as the broker keeps
    answering heartbeats).

    The broker is the one authority on a deadline while it is reachable: it
    answers Timeout, and drops a request that expires in its queue unrun.
    The client's own timer is only a backstop for a broker that stays silent:
    it fails a call ``max(0.5 s, heartbeat_interval)`` after its deadline
    (the broker checks deadlines every few tens of ms, so its answer comes
    well before that), or at the deadline itself for a request that never
    reached the broker.

    A broker that cannot be reached fails calls with BrokerUnavailable after
    ``heartbeat_interval * heartbeat_liveness`` seconds without a connection,
    or at once when the broker refuses the handshake (CURVE keys refused or
    missing on one side). A connection lost while a call was pending fails
    it with BrokerUnavailable: it may or may not have run. The broker keeps
    a client's calls while it hears from it: every socket of the client
    tells it the window ``heartbeat_interval * heartbeat_liveness`` before
    its first request and heartbeats while calls wait on it.

    Clients are cheap: those of one process that name the same broker with
    the same ``context``, ``curve`` keys and heartbeat settings share one
    connection (one I/O thread, its sockets, and the sockets of blocking
    calls), opened by the first and closed by the last to close, so a
    process may hold thousands. Each keeps its own ``timeout`` and its own
    pending calls: :meth:`close` ends only its own.

    A blocking :meth:`call` uses a socket of its own (one per call waiting
    at that moment, reused), so it costs one round trip through the broker.
    A call or submit with more than 1 MiB of arguments goes out on a socket
    kept for big requests, so heartbeats never wait behind an upload.
    Callbacks added to the Futures of :meth:`submit` run one at a time, in
    the order the calls completed, in a thread of the connection's own (the
    I/O thread hands them over, so they never hold up its heartbeats): a
    slow one delays only the callbacks after it, and one may call, map or
    wait for other calls. A callback added to a Future already done runs at
    once, in the thread that adds it.
    Buffers passed as arguments are sent without copying; do not change them
    until the call's Future is done.

    When the broker is on this host (``ipc://``, loopback TCP), a NumPy
    array (or NDArray) argument of at least ``shared_memory_min`` bytes
    (default 1 MiB; 0 turns this off) is written once into a shared-memory
    segment that the worker maps and the library works in; a result array
    the library changed in place comes back over this process's mapping of
    that segment, without another copy. An array from
    :func:`client.shared_array` is not copied at all. Segments made for a
    call are unlinked when it ends, whichever way it ends
    (:mod:`client.shm`). A worker that cannot open a segment (on another
    host) gets the call again with frames, so results never depend on the
    path. Arrays under 16 KiB always travel inside the request, and
    :meth:`map` sends its batches with frames.
    """

    def __init__(
        self,
        address: str,
        timeout: float | None = None,
        *,
        context: zmq.Context[Any] | None = None,
        curve: CurveKeys | Mapping[str, str] | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_liveness: int = 3,
        shared_memory_min: int = shm.DEFAULT_MIN,
    ) -> None:
        keys = check_settings(address, curve, heartbeat_interval, heartbeat_liveness, shared_memory_min)
        self.address = address
        self.timeout = check_timeout(timeout)
        self._owner = Owner()
        """This Client's own calls on the shared connection, and its closed flag."""
        self._conn = Connection.acquire(address, context, keys, float(heartbeat_interval), heartbeat_liveness)
        self._share_min = share_from(address, shared_memory_min)
        """Bytes from which arrays go through shared memory; 0: never."""

    # --- the caller's side ----------------------------------------------------------

    def call(
        self, service: str, method: str, /, *args: Any, timeout: float | Unset | None = UNSET, **kwargs: Any
    ) -> Any:
        """Call ``service.method(*args, **kwargs)`` in a worker and return its result.

        Raises the error the worker or broker answered with (a CallError
        subclass), Timeout, or BrokerUnavailable.
        """
        return self._conn.call(self._owner, self._new_call(service, method, args, kwargs, timeout))

    def submit(
        self, service: str, method: str, /, *args: Any, timeout: float | Unset | None = UNSET, **kwargs: Any
    ) -> Future[Any]:
        """Start ``service.method(*args, **kwargs)``; the Future holds its result or error.

        Bad names raise ValueError, and arguments that cannot be sent at all
        (a type msgpack does not carry, an integer beyond 64 bits) raise
        ArgumentError here, at once. Cancelling the Future drops the request
        if the broker has not yet given it to a worker.
        """
        return self._conn.submit(self._owner, self._new_call(service, method, args, kwargs, timeout))

    def map(
        self,
        service: str,
        method: str,
        iterable: Iterable[tuple[Any, ...] | list[Any]],
        /,
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> Generator[Any, None, None]:
        """``service.method(*args)`` for each ``args`` tuple of ``iterable``: the results, lazily, in order.

        For calling a cheap function many times: ``chunksize`` calls (default
        512) travel in one message and run back to back in one worker, and
        several messages are in flight at once so that every worker of the
        service is busy. ``iterable`` is read only as far ahead as those
        messages need, so it may be endless.

        An item's error (ArgumentError for arguments that do not fit or
        cannot be sent, RemoteError, WorkerCrashed for every item of a chunk
        whose worker died unless the method is idempotent, ...) is raised
        when that item is reached, and the chunks still outstanding are
        cancelled; with ``return_exceptions=True`` the error is yielded in
        the item's place instead. Closing the generator early (leaving a
        ``for`` loop over it, say) cancels the outstanding chunks too.

        ``timeout`` limits the whole map, counted from this call (as in
        ``Executor.map``): items not done by then fail with Timeout. None
        (the default) sets no limit; the client's per-call default does not
        apply to a map. Errors in the arguments of this call itself raise
        here, before anything is sent.
        """
        check_name(service, "service")
        check_name(method, "method")
        size = check_chunksize(chunksize)
        seconds = check_timeout(timeout)
        items = iter(iterable)
        deadline = None if seconds is None else time.monotonic() + seconds
        return self._map(service, method, items, size, seconds, deadline, return_exceptions)

    def service(self, name: str) -> ServiceProxy:
        """A proxy whose attributes are the service's functions: ``client.service("m").add(1, 2)``."""
        check_name(name, "service")
        return ServiceProxy(self, name)

    def session(self, service: str, /, *, timeout: float | Unset | None = UNSET) -> Session:
        """Lease one worker of ``service`` to this caller alone, for a stateful library: ``with
        client.session("driver") as s: s.call("open", 3); s.call("read")``.

        Every call of the session runs on that worker, in order, while other callers are served by the
        service's other workers. Waits up to ``timeout`` (default: the client's) for a worker with nothing
        to do. The lease ends with the ``with`` block (or :meth:`Session.close`), when this client goes
        away, or after the service's ``session_idle`` seconds without a call. If the worker dies, the
        session's calls fail with WorkerCrashed: a session never moves to another worker.
        """
        check_name(service, "service")
        return Session(self, service, self.timeout if timeout is UNSET else check_timeout(timeout))

    def broadcast(
        self, service: str, method: str, /, *args: Any, timeout: float | Unset | None = UNSET, **kwargs: Any
    ) -> dict[int, Any]:
        """Run ``service.method(*args, **kwargs)`` on every worker of ``service``: ``{pid: result}``, where a
        worker's result is the CallError it failed with, if it did (one worker's failure fails no other).

        For what each worker must do or say for itself: configure, initialise, report its state. A worker
        leased to a session runs its call between the session's calls.
        """
        workers = self.submit(service, wire.WORKERS, timeout=timeout).result()
        futures = {
            int(worker["pid"]): self._pinned(service, method, args, kwargs, timeout, int(worker["pid"]), wait=False)
            for worker in workers
        }
        results: dict[int, Any] = {}
        for pid, future in futures.items():
            try:
                results[pid] = future.result()
            except CallError as exc:
                results[pid] = exc
        return results

    def status(self, timeout: float | Unset | None = UNSET) -> dict[str, Any]:
        """The pool as its broker sees it now, for people (``dllpool status``) and for scripts.

        ``services``: per service its ``workers`` (pid, bits, host, threads, ``state`` idle, busy, held (a
        session's), retiring, doomed or gone, ``running`` calls, ``calls`` answered, ``uptime`` s, ``restarts`` of
        its slot after crashes, ``rss`` and ``address_space_free`` bytes), ``target``/``ready``/``starting``,
        ``autoscaled`` with ``min_workers``/``max_workers``, ``queued``, ``queue_wait`` s, ``held_ahead``,
        ``running``, ``calls``, ``calls_per_s`` and ``latency`` percentiles (s) over the last 5-10 s,
        ``latency_since_start``, ``errors`` by type, ``recycled`` and ``restarts``. ``totals`` sums them;
        ``counters`` are the broker's event counts; ``broker`` its pid and uptime.
        """
        return dict(self.call(wire.ANY_SERVICE, wire.STATUS, timeout=timeout))

    def scale(self, service: str, workers: int, timeout: float | Unset | None = UNSET) -> int:
        """Have the pool run ``workers`` workers for ``service`` (see ``Pool.scale``); the number it will run.
        BadRequest if that is outside what the service allows."""
        return int(self.call(service, wire.SCALE, workers, timeout=timeout)["workers"])

    def _pinned(
        self,
        service: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | Unset | None,
        pin: int | None,
        *,
        wait: bool,
    ) -> Any:
        """A call only worker ``pin`` may run: its result (``wait``), or its Future, sent on the connection's
        own socket (a lease belongs to the socket that asked for it: the one that heartbeats while the
        connection lives)."""
        call = self._new_call(service, method, args, kwargs, timeout, pin)
        return self._conn.call(self._owner, call) if wait else self._conn.submit(self._owner, call)

    def close(self) -> None:
        """Fail this Client's pending calls with BrokerUnavailable and have the broker drop them (CANCEL).

        Calls the broker still queues never run; a call already running
        finishes, and its answer is discarded. Other Clients sharing the
        connection are not touched; the last one to close closes the
        connection (its sockets tell the broker DISCONNECT). Idempotent; safe
        from any thread, including a Future callback.
        """
        self._conn.detach(self._owner)

    @property
    def closed(self) -> bool:
        return self._owner.closed

    @property
    def stats(self) -> dict[str, int]:
        """Counters (late replies, backstop timeouts, cancels sent, malformed messages, reconnects) for
        diagnostics: those of the connection, summed over its sockets and shared by its Clients."""
        return self._conn.stats

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        owner = self._owner
        state = "closed" if owner.closed else f"{len(owner.futures) + self._conn.lanes_of(owner)} pending"
        return f"<Client {self.address} {state}>"

    def _new_call(
        self,
        service: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | Unset | None,
        pin: int | None = None,
    ) -> Call:
        seconds = self.timeout if timeout is UNSET else check_timeout(timeout)
        share = self._share_min if self._conn.frames_only.shares_with(service) else 0
        return new_call(self._conn.corr_ids, service, method, args, kwargs, seconds, share, pin)

    # --- map --------------------------------------------------------------------------

    def _map(
        self,
        service: str,
        method: str,
        items: Iterator[Any],
        size: int,
        seconds: float | None,
        deadline: float | None,
        return_exceptions: bool,
    ) -> Generator[Any, None, None]:
        submit = functools.partial(self._conn.submit, self._owner)
        window = MapWindow(self._conn.corr_ids, service, method, items, size, seconds, deadline, submit, "Client.map")
        try:
            window.fill()
            while (chunk := window.next()) is not None:
                answer = None
                if chunk.handle is not None:
                    try:
                        answer = Connection.wait(chunk.handle)
                    except DllPoolError as exc:  # the batch as a whole failed (its worker died, a timeout, ...)
                        answer = exc
                window.fill()  # keep the workers busy while this chunk's results are read
                for ok, value in window.outcomes(chunk, answer):
                    if ok or return_exceptions:
                        yield value
                    else:
                        raise value
        finally:
            window.cancel()


class Session:
    """One worker of a service, leased to its caller alone (made by :meth:`Client.session`).

    ``call``, ``submit`` and ``service`` are the Client's, for this service, on this worker only. ``pid`` is the
    worker's. Closing it (or leaving its ``with`` block) gives the worker back to the service; a second close
    does nothing.
    """

    def __init__(self, client: Client, service: str, timeout: float | None) -> None:
        self._client = client
        self.service_name = service
        self.pid: int = int(client._pinned(service, wire.LEASE, (), {}, timeout, None, wait=False).result()["pid"])
        self.closed = False
        try:
            self.call(wire.SESSION_INIT)  # the service's session_init, if it declares one
        except BaseException:
            self._release()
            raise

    def call(self, method: str, /, *args: Any, timeout: float | Unset | None = UNSET, **kwargs: Any) -> Any:
        """``service.method(*args, **kwargs)`` on the session's worker; WorkerCrashed if it is gone."""
        self._check_open()
        return self._client._pinned(self.service_name, method, args, kwargs, timeout, self.pid, wait=True)

    def submit(self, method: str, /, *args: Any, timeout: float | Unset | None = UNSET, **kwargs: Any) -> Future[Any]:
        """Start ``service.method(*args, **kwargs)`` on the session's worker; calls run in submission order."""
        self._check_open()
        future: Future[Any] = self._client._pinned(
            self.service_name, method, args, kwargs, timeout, self.pid, wait=False
        )
        return future

    def service(self) -> ServiceProxy:
        """A proxy for attribute-style calls on the session's worker: ``s.service().read(4)``."""
        return ServiceProxy(SessionCalls(self, self._client.address), self.service_name)

    def close(self) -> None:
        """End the lease. A session whose worker or broker is gone has nothing left to end."""
        if self.closed:
            return
        try:
            with contextlib.suppress(WorkerCrashed, BrokerUnavailable):  # gone: nothing left to close
                self.call(wire.SESSION_CLOSE)  # the service's session_close, if it declares one
        finally:
            self._release()

    def _release(self) -> None:
        self.closed = True
        with contextlib.suppress(CallError):
            self._client._pinned(self.service_name, wire.RELEASE, (), {}, UNSET, self.pid, wait=False).result()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"the session on {self.service_name!r} (worker pid {self.pid}) is closed")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Session {self.service_name!r} worker pid {self.pid}{' closed' if self.closed else ''}>"
