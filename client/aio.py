"""The asyncio client: :class:`AsyncClient`, the operations of :class:`~client.client.Client` as coroutines.

One DEALER per AsyncClient, driven by a task on the event loop through
:mod:`zmq.asyncio`, and the same sans-io :class:`~client.core.ClientCore` the
threaded client drives: pending calls, backstop deadlines, heartbeats, the
broker's liveness window, CANCEL and DISCONNECT. Everything runs on the loop's
thread, so a call is sent from the coroutine that makes it (no hand-off), and
the loop task only reads answers, watches the connection and keeps time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncGenerator, Generator, Iterable, Mapping
from typing import Any

import zmq
import zmq.asyncio

from protocol import frames as wire
from protocol import transport
from protocol.errors import BrokerUnavailable, CallError, DllPoolError, WorkerCrashed
from protocol.frames import Buffer

from . import shm
from .calls import (
    UNSET,
    FramesOnly,
    MapWindow,
    Unset,
    check_chunksize,
    check_name,
    check_settings,
    check_timeout,
    drop_calls,
    new_call,
    share_from,
)
from .connection import (
    _BULK_NOTE,
    _CONNECTED,
    _HANDSHAKE_FAILED,
    _MONITOR_EVENTS,
    _ZAP_DENIED,
    BULK_MIN,
    _close_watched,
    _send_backlog,
    _size,
)
from .core import Call, ClientCore, Outcome, Tick, unavailable
from .handles import Drops
from .keys import CurveKeys
from .proxy import ServiceProxy, SessionCalls

log = logging.getLogger(__name__)

__all__ = ["AsyncClient", "AsyncSession"]

_HWM = 100_000
"""Messages queued toward the broker before the socket counts as full (the core then holds the rest)."""
_BATCH = 256
"""Answers read in one go before the loop looks at its clock and the monitor."""
_MAX_WAIT = 0.1
"""Longest poll: bounds how late a deadline of a call made meanwhile, or a silent broker, is noticed."""
_LINGER = 1000
"""Milliseconds the closing socket keeps trying to deliver its CANCELs and DISCONNECT."""


class AsyncClient:
    """Calls functions of the pool's services through the broker at ``address``, from asyncio.

    Make it inside a running event loop and use it from that loop only:
    ``async with AsyncClient(address) as ac: await ac.call("svc", "add", 1, 2)``.
    Any number of tasks may call at once. The arguments, the errors
    (DllPoolError subclasses, the same as :class:`~client.client.Client`
    raises), timeouts, the broker's liveness window, NumPy results and
    shared memory are as for Client; what differs:

    * Cancelling the task that awaits a call (or the Future of
      :meth:`submit`) cancels the call: the broker drops it if it is still
      queued (a running call cannot be stopped; its answer is discarded),
      and its shared-memory segments are released at once.
    * :meth:`map` is an async generator: ``async for r in ac.map(...)``.
    * Its sockets are its own (one DEALER, and one more for requests over
      1 MiB opened on the first, as Client has), driven by a task of the
      event loop: no thread, and no connection shared between clients.
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
        self._curve = check_settings(address, curve, heartbeat_interval, heartbeat_liveness, shared_memory_min)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("make an AsyncClient inside a running event loop (in a coroutine)") from None
        self.address = address
        self.timeout = check_timeout(timeout)
        self._ctx = context if context is not None else zmq.Context.instance()
        self._share_min = share_from(address, shared_memory_min)
        """Bytes from which arrays go through shared memory; 0: never."""
        now = time.monotonic()
        self._core = ClientCore(address, float(heartbeat_interval), heartbeat_liveness, now)
        """The main DEALER's: its calls, and the broker's liveness."""
        self._bulk_core = ClientCore(address, float(heartbeat_interval), heartbeat_liveness, now, watch_broker=False)
        """For requests of more than BULK_MIN bytes, on a DEALER opened on the first (as with Client)."""
        self._drops = Drops()
        """Handles their callers let go of, for ``$drop`` calls."""
        self._core.handles = self._bulk_core.handles = self._drops.handle
        self._corr_ids = itertools.count(1)
        self._frames_only = FramesOnly()
        self._closed = False
        self._pollout = 0
        """The main DEALER is polled for POLLOUT too: its core has requests the socket had no room for."""
        self._main = self._open(self._core)
        self._bulk: _Line | None = None
        self._poller = self._watch()
        self._task = self._loop.create_task(self._run(), name=f"dllpool-async-client {address}")

    # --- the caller's side ----------------------------------------------------------

    async def call(
        self, service: str, method: str, /, *args: Any, timeout: float | Unset | None = UNSET, **kwargs: Any
    ) -> Any:
        """Call ``service.method(*args, **kwargs)`` in a worker and return its result.

        Raises the error the worker or broker answered with (a CallError
        subclass), Timeout, or BrokerUnavailable. Cancelling the awaiting
        task cancels the call.
        """
        return await self.submit(service, method, *args, timeout=timeout, **kwargs)

    def submit(
        self, service: str, method: str, /, *args: Any, timeout: float | Unset | None = UNSET, **kwargs: Any
    ) -> asyncio.Future[Any]:
        """Send ``service.method(*args, **kwargs)`` now; the Future holds its result or error.

        Bad names raise ValueError, and arguments that cannot be sent raise
        ArgumentError here, at once. Cancelling the Future cancels the call.
        """
        return self._pinned(service, method, args, kwargs, timeout, None)

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
    ) -> AsyncGenerator[Any, None]:
        """``service.method(*args)`` for each ``args`` tuple of ``iterable``: ``async for`` the results, in order.

        As :meth:`Client.map <client.client.Client.map>`: ``chunksize`` calls
        (default 512) per message, several messages in flight, ``iterable``
        read only as far ahead as they need; an item's error is raised when
        that item is reached (or yielded, with ``return_exceptions=True``);
        ``timeout`` limits the whole map, counted from this call. Leaving the
        loop early, or cancelling the task, cancels the chunks still
        outstanding (wrap it in ``contextlib.aclosing`` to have that happen
        at once rather than when the generator is collected).
        """
        check_name(service, "service")
        check_name(method, "method")
        size = check_chunksize(chunksize)
        seconds = check_timeout(timeout)
        deadline = None if seconds is None else time.monotonic() + seconds
        window = MapWindow(
            self._corr_ids, service, method, iter(iterable), size, seconds, deadline, self._send, "AsyncClient.map"
        )
        return self._map(window, return_exceptions)

    def service(self, name: str) -> ServiceProxy:
        """A proxy whose attributes are the service's functions: ``await ac.service("m").add(1, 2)`` (its
        methods return coroutines, and their ``submit`` Futures, as this client's do)."""
        check_name(name, "service")
        return ServiceProxy(self, name)

    def session(self, service: str, /, *, timeout: float | Unset | None = UNSET) -> AsyncSession:
        """Lease one worker of ``service`` to this caller alone, as :meth:`Client.session
        <client.client.Client.session>` does: ``async with ac.session("driver") as s: await s.call("open", 3)``
        (or ``s = await ac.session("driver")`` and ``await s.close()``). Waits up to ``timeout`` (default:
        the client's) for a worker with nothing to do; its calls fail with WorkerCrashed if that worker dies.
        """
        check_name(service, "service")
        return AsyncSession(self, service, self.timeout if timeout is UNSET else check_timeout(timeout))

    async def broadcast(
        self, service: str, method: str, /, *args: Any, timeout: float | Unset | None = UNSET, **kwargs: Any
    ) -> dict[int, Any]:
        """Run ``service.method(*args, **kwargs)`` on every worker of ``service``: ``{pid: result}``, a
        worker's result being the CallError it failed with, if it did (as :meth:`Client.broadcast
        <client.client.Client.broadcast>`). Cancelled, it cancels the calls still out."""
        workers = await self.submit(service, wire.WORKERS, timeout=timeout)
        pids = [int(worker["pid"]) for worker in workers]
        futures = {pid: self._pinned(service, method, args, kwargs, timeout, pid) for pid in pids}
        results: dict[int, Any] = {}
        try:
            for pid, future in futures.items():
                try:
                    results[pid] = await future
                except CallError as exc:
                    results[pid] = exc
        finally:
            for future in futures.values():
                future.cancel()
        return results

    async def status(self, timeout: float | Unset | None = UNSET) -> dict[str, Any]:
        """The pool as its broker sees it now (as :meth:`Client.status <client.client.Client.status>`)."""
        return dict(await self.call(wire.ANY_SERVICE, wire.STATUS, timeout=timeout))

    async def scale(self, service: str, workers: int, timeout: float | Unset | None = UNSET) -> int:
        """Have the pool run ``workers`` workers for ``service`` (as :meth:`Client.scale
        <client.client.Client.scale>`); the number it will run."""
        return int((await self.call(service, wire.SCALE, workers, timeout=timeout))["workers"])

    async def close(self) -> None:
        """Fail the pending calls with BrokerUnavailable and have the broker drop them (CANCEL); say
        DISCONNECT and close the socket. Calls the broker still queues never run; a call already running
        finishes, and its answer is discarded. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._drops.closed = True
        self._task.cancel()
        await asyncio.wait([self._task])

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> dict[str, int]:
        """Counters (late replies, backstop timeouts, cancels sent, malformed messages, reconnects), summed
        over its sockets."""
        total = Counter(self._core.stats)
        total.update(self._bulk_core.stats)  # update(), unlike +, keeps the zeros
        return dict(total)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._core.pending) + len(self._bulk_core.pending)} pending"
        return f"<AsyncClient {self.address} {state}>"

    # --- calls ------------------------------------------------------------------------

    def _send(self, call: Call) -> asyncio.Future[Any]:
        """Take ``call`` into its core and send it now if the connection allows; its Future."""
        if self._closed or asyncio.get_running_loop() is not self._loop:
            if call.shm is not None:
                call.shm.release()
            if not self._closed:
                raise RuntimeError("an AsyncClient is used only from the event loop it was made in")
            raise BrokerUnavailable("client is closed", address=self.address, service=call.service, method=call.method)
        future: asyncio.Future[Any] = self._loop.create_future()
        call.handle = future
        future.add_done_callback(lambda _: self._ended(call))
        self._core_for(call).add(call)
        self._flush()
        self._catch_up()
        return future

    def _pinned(
        self,
        service: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | Unset | None,
        pin: int | None,
    ) -> asyncio.Future[Any]:
        """Send a call that only worker ``pin`` may run (None: any worker, unless its handles say)."""
        seconds = self.timeout if timeout is UNSET else check_timeout(timeout)
        share = self._share_min if self._frames_only.shares_with(service) else 0
        return self._send(new_call(self._corr_ids, service, method, args, kwargs, seconds, share, pin))

    def _send_drops(self) -> None:
        """The ``$drop`` calls for the Handles let go of (a finalizer may run on any thread: it only appends);
        nobody waits for their answers."""
        for call in drop_calls(self._corr_ids, self._drops.pending):
            call.handle = _unawaited(self._loop.create_future())
            self._core.add(call)

    def _core_for(self, call: Call) -> ClientCore:
        """Requests with more than BULK_MIN bytes of arguments go on a socket of their own, as with Client."""
        return self._bulk_core if _size(call) > BULK_MIN else self._core

    def _ended(self, call: Call) -> None:
        """Whichever way a call ended: its segments go; a cancelled one is dropped by the broker (CANCEL)."""
        if call.shm is not None:
            call.shm.release()
        if not call.handle.cancelled():
            return
        for core, line in ((self._core, self._main), (self._bulk_core, self._bulk)):
            if call.corr in core.pending:
                cancel = core.cancel(call.corr)
                if cancel is not None and line is not None and not self._closed:
                    transport.try_send(line.sock, cancel)
                    self._catch_up()
                return

    def _settle(self, outcome: Outcome) -> None:
        call = outcome.call
        if not call.handle.done():
            if outcome.error is None:
                call.handle.set_result(outcome.result)
            else:
                call.handle.set_exception(outcome.error)

    def _settle_all(self, ended: list[Outcome]) -> None:
        for outcome in ended:
            self._settle(outcome)

    def _answered(self, outcome: Outcome) -> None:
        """An answer: settle its Future, or send the call again with frames if its worker could not open its
        shared memory (a worker on another host)."""
        call = outcome.call
        if not call.handle.done() and self._frames_only.with_frames(call, outcome.error):
            self._core_for(call).add(call)
            self._flush()
        else:
            self._settle(outcome)

    async def _map(self, window: MapWindow, return_exceptions: bool) -> AsyncGenerator[Any, None]:
        try:
            window.fill()
            while (chunk := window.next()) is not None:
                answer = None
                if chunk.handle is not None:
                    try:
                        answer = await chunk.handle
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

    # --- the loop task ----------------------------------------------------------------

    async def _run(self) -> None:
        reason = "client closed"
        try:
            await self._serve()
        except asyncio.CancelledError:  # close()
            pass
        except zmq.ContextTerminated:
            reason = "the ZeroMQ context was terminated"
            log.warning("dllpool async client for %s stopped: %s", self.address, reason)
        except Exception as exc:  # the last line of defence: no call may be left hanging
            reason = f"the client's loop task failed: {exc!r}"
            log.exception("dllpool async client for %s stopped", self.address)
        finally:
            self._closed = True
            self._drops.closed = True
            self._shut(reason)

    async def _serve(self) -> None:
        core, bulk_core = self._core, self._bulk_core
        while True:
            wait = _MAX_WAIT
            for deadline in (core.next_deadline(), bulk_core.next_deadline()):
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
            main = self._main
            want_out = zmq.POLLOUT if core.has_backlog and core.connected else 0
            if want_out != self._pollout:
                self._pollout = want_out
                self._poller.modify(main.waits[0], zmq.POLLIN | want_out)
            events = dict(await self._poller.poll(max(0, math.ceil(wait * 1000))))
            if self._drops.pending:
                self._send_drops()
            if events.get(main.waits[0], 0) & zmq.POLLIN:
                self._drain(main)
            if main.waits[1] in events:
                self._drain_monitor()
            bulk = self._bulk  # the main monitor may have closed it
            if bulk is not None and bulk.waits[0] in events:
                self._drain(bulk)
            if bulk is not None and bulk.waits[1] in events:
                self._drain_bulk_monitor()
            self._flush()
            now = time.monotonic()
            self._apply(core.tick(now), self._main)
            self._apply(bulk_core.tick(now), self._bulk)

    def _drain(self, line: _Line) -> None:
        core = line.core
        for msg in transport.drain(line.sock, _BATCH, copied=1):
            outcome = core.received(msg, time.monotonic())
            if outcome is not None:
                self._answered(outcome)

    def _catch_up(self) -> None:
        """Read what arrived, after a send outside the loop task: libzmq signals arrivals on an edge-triggered
        descriptor, and a send may take the signal of an answer that came meanwhile, which the loop task's
        poll would then not see."""
        for line in (self._main, self._bulk):
            while line is not None and int(line.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                self._drain(line)

    def _flush(self) -> None:
        """Hand queued calls to the sockets until they are full (or there is no connection)."""
        now = time.monotonic()
        _send_backlog(self._core, self._main.sock, now)
        if self._bulk_core.has_backlog and self._core.connected:
            if self._bulk is None:
                self._open_bulk(now)
            if self._bulk is not None:
                _send_backlog(self._bulk_core, self._bulk.sock, now)

    def _apply(self, tick: Tick, line: _Line | None) -> None:
        if line is not None:
            for frames in tick.sends:
                transport.try_send(line.sock, frames)
        self._settle_all(tick.ended)
        if tick.reopen:
            self._reopen()

    def _drain_monitor(self) -> None:
        core = self._core
        for kind, value in transport.monitor_events(self._main.monitor):
            if kind == _CONNECTED:
                core.connection_made(time.monotonic())
                self._flush()
            elif kind == zmq.EVENT_DISCONNECTED:
                if core.connected:
                    self._drain(self._main)  # answers that arrived before the drop still count
                    self._apply(Tick([], core.connection_lost(time.monotonic()), True), None)
                    return  # that monitor is closed now
            elif kind in _HANDSHAKE_FAILED:
                self._handshake_failed(_HANDSHAKE_FAILED[kind], value)

    def _drain_bulk_monitor(self) -> None:
        assert self._bulk is not None
        for kind, _ in transport.monitor_events(self._bulk.monitor):
            if kind == zmq.EVENT_DISCONNECTED or kind in _HANDSHAKE_FAILED:
                self._drain(self._bulk)  # answers that arrived before the drop still count
                self._close_bulk(_BULK_NOTE)  # the next big request opens a fresh one
                return

    def _handshake_failed(self, name: str, value: int) -> None:
        """Name the problem; a refusal (unlike a dropped connection) fails waiting calls at once."""
        if name.endswith("AUTH"):
            problem = f"the broker refused this client's CURVE public key (ZAP status {value})"
        elif name.endswith("PROTOCOL"):
            problem = f"ZMTP protocol error {value:#x}: are CURVE keys given on both sides, or on neither?"
        else:
            problem = zmq.strerror(value)
            if self._curve is not None:
                problem += "; is curve.server_public the broker's public key?"
        refused = name.endswith("PROTOCOL") or (name.endswith("AUTH") and value == _ZAP_DENIED)
        for core in (self._core, self._bulk_core):  # big calls wait for the same connection
            core.handshake_failed(f"the connection handshake failed ({problem})", refused)

    def _shut(self, reason: str) -> None:
        """The end: fail what is pending (CANCEL for what the broker may hold), say DISCONNECT, close."""
        for core, line in ((self._core, self._main), (self._bulk_core, self._bulk)):
            for call in list(core.pending.values()):
                cancel = core.cancel(call.corr)
                if cancel is not None and line is not None:
                    _say(line.sock, cancel)
                self._settle(Outcome(call, error=unavailable(self.address, reason, call)))
            if line is not None:
                if core.connected and _say(line.sock, wire.client_disconnect()):
                    line.sock.linger = _LINGER
                line.close()

    # --- sockets --------------------------------------------------------------------

    def _open(self, core: ClientCore) -> _Line:
        """A fresh DEALER (fresh routing ID, empty queues) and its monitor; requests go out on it only once
        the monitor reports a completed handshake (see :meth:`client.connection.Connection._open_dealer`)."""
        try:
            dealer: zmq.Socket[Any] = self._ctx.socket(zmq.DEALER)
        except zmq.ZMQError as exc:
            raise DllPoolError(f"cannot open the client socket: {exc}") from exc
        try:
            dealer.linger = 0
            dealer.sndhwm = _HWM
            dealer.rcvhwm = _HWM
            if self._curve is not None:
                dealer.curve_serverkey = self._curve.server_public.encode("ascii")
                dealer.curve_publickey = self._curve.public.encode("ascii")
                dealer.curve_secretkey = self._curve.secret.encode("ascii")
            monitor = dealer.get_monitor_socket(_MONITOR_EVENTS)
        except zmq.ZMQError as exc:
            dealer.close()
            raise DllPoolError(f"cannot set up the client socket: {exc}") from exc
        try:
            transport.connect(dealer, self.address)
        except BaseException:
            _close_watched(dealer, monitor)
            raise
        return _Line(dealer, monitor, core)

    def _watch(self) -> zmq.asyncio.Poller:
        """A poller of the event loop over the sockets and their monitors."""
        poller = zmq.asyncio.Poller()
        for line in (self._main, self._bulk):
            if line is not None:
                for each in line.waits:
                    poller.register(each, zmq.POLLIN)
        self._pollout = 0
        return poller

    def _reopen(self) -> None:
        """A fresh DEALER after a lost or silent connection; the calls on the bulk socket fail."""
        self._close_bulk()
        self._main.close()
        self._main = self._open(self._core)
        self._poller = self._watch()

    def _open_bulk(self, now: float) -> None:
        try:
            self._bulk = self._open(self._bulk_core)
        except DllPoolError as exc:  # out of sockets, say: fail the big calls, serve the others
            self._settle_all(
                self._bulk_core.close(f"cannot open a socket for a request over {BULK_MIN >> 20} MiB: {exc}")
            )
            return
        self._poller = self._watch()
        self._bulk_core.connection_made(now)  # the main socket's handshake succeeded: requests may queue here

    def _close_bulk(self, note: str = "") -> None:
        """Close the bulk socket (dropped, or the main connection was lost); the calls it carried fail."""
        if self._bulk is None:
            return
        self._bulk.close()
        self._bulk = None
        self._poller = self._watch()
        self._settle_all(self._bulk_core.connection_lost(time.monotonic(), note))


class _Line:
    """One DEALER toward the broker, its monitor, the core of its calls, and the event loop's shadows of both
    sockets to poll."""

    __slots__ = ("core", "monitor", "sock", "waits")

    def __init__(self, sock: zmq.Socket[Any], monitor: zmq.Socket[Any], core: ClientCore) -> None:
        self.sock = sock
        self.monitor = monitor
        self.core = core
        self.waits = (zmq.asyncio.Socket.from_socket(sock), zmq.asyncio.Socket.from_socket(monitor))

    def close(self) -> None:
        _close_watched(self.sock, self.monitor)


def _say(sock: zmq.Socket[Any], frames: list[Buffer]) -> bool:
    """A last word to the broker, if the socket can still take it (not once the context is terminated)."""
    try:
        return transport.try_send(sock, frames)
    except zmq.ZMQError:
        return False


def _unawaited(future: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """A Future nobody awaits: its error is taken, so asyncio does not log it as never retrieved."""
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return future


class AsyncSession:
    """One worker of a service, leased to its caller alone (made by :meth:`AsyncClient.session`), as
    :class:`~client.client.Session` is for Client: ``call`` (a coroutine), ``submit`` and ``service`` on this
    worker only, in order; ``pid`` is the worker's once the lease is granted (on ``async with`` or ``await``).
    """

    def __init__(self, client: AsyncClient, service: str, timeout: float | None) -> None:
        self._client = client
        self.service_name = service
        self._timeout = timeout
        self.pid: int | None = None
        self.closed = False

    async def open(self) -> AsyncSession:
        """Wait for the lease and run the service's session_init; idempotent."""
        if self.pid is None:
            lease = self._client._pinned(self.service_name, wire.LEASE, (), {}, self._timeout, None)
            self.pid = int((await lease)["pid"])
            try:
                await self.call(wire.SESSION_INIT)  # the service's session_init, if it declares one
            except BaseException:
                self._release()
                raise
        return self

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self.open().__await__()

    async def call(self, method: str, /, *args: Any, timeout: float | Unset | None = UNSET, **kwargs: Any) -> Any:
        """``service.method(*args, **kwargs)`` on the session's worker; WorkerCrashed if it is gone."""
        return await self.submit(method, *args, timeout=timeout, **kwargs)

    def submit(
        self, method: str, /, *args: Any, timeout: float | Unset | None = UNSET, **kwargs: Any
    ) -> asyncio.Future[Any]:
        """Send ``service.method(*args, **kwargs)`` to the session's worker; calls run in the order sent."""
        if self.closed or self.pid is None:
            state = "closed" if self.closed else "not open yet (use async with, or await it)"
            raise ValueError(f"the session on {self.service_name!r} is {state}")
        return self._client._pinned(self.service_name, method, args, kwargs, timeout, self.pid)

    def service(self) -> ServiceProxy:
        """A proxy for attribute-style calls on the session's worker: ``await s.service().read(4)``."""
        return ServiceProxy(SessionCalls(self, self._client.address), self.service_name)

    async def close(self) -> None:
        """Run the service's session_close and end the lease. A session whose worker or broker is gone has
        nothing left to end."""
        if self.closed or self.pid is None:
            self.closed = True
            return
        try:
            with contextlib.suppress(WorkerCrashed, BrokerUnavailable):  # gone: nothing left to close
                await self.call(wire.SESSION_CLOSE)
        finally:
            self._release()

    def _release(self) -> None:
        """End the lease; nobody waits for the broker's answer (its client going away ends it too)."""
        self.closed = True
        if not self._client.closed and self.pid is not None:
            _unawaited(self._client._pinned(self.service_name, wire.RELEASE, (), {}, UNSET, self.pid))

    async def __aenter__(self) -> AsyncSession:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncSession {self.service_name!r} worker pid {self.pid}{' closed' if self.closed else ''}>"
