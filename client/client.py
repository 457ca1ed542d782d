"""The threaded client: any thread calls, one I/O thread owns the socket.

ZeroMQ sockets are not thread-safe, so caller threads never touch the DEALER.
They register a Future under a correlation ID, then hand the ready-made
frames to the I/O thread: an outbox deque plus a wake-up on an inproc PUSH
socket, both behind one lock. The I/O thread forwards requests, matches
replies to Futures by correlation ID, keeps a backstop timer on every
deadline (a silent broker cannot make a call hang), and watches the broker's
liveness with heartbeats and a socket monitor.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from typing import Any, Final

import zmq
from zmq.utils.monitor import parse_monitor_message

from protocol import frames as wire
from protocol import transport
from protocol.codec import pack_call, pack_value, unpack_value
from protocol.errors import (
    ArgumentError,
    BrokerUnavailable,
    CallError,
    ConfigError,
    DllPoolError,
    ProtocolError,
    Timeout,
    error_from_wire,
)

from .keys import CurveKeys
from .proxy import ServiceProxy

log = logging.getLogger(__name__)

__all__ = ["Client"]


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET: Final = _Unset.UNSET

_HWM = 100_000
"""Per-socket message limit toward the broker: hundreds of in-flight calls never block."""
_BATCH = 256
"""Messages taken from one socket before serving the others: no side starves."""
_MAX_WAIT = 0.1
"""Longest poll: bounds how late a liveness check runs."""
_MIN_GRACE = 0.5
"""Shortest wait past a deadline for the broker's own Timeout answer (see ``Client``)."""
_CONNECTED = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_CONNECTED)
_HANDSHAKE_FAILED = {
    getattr(zmq, name): name
    for name in (
        "EVENT_HANDSHAKE_FAILED_NO_DETAIL",
        "EVENT_HANDSHAKE_FAILED_PROTOCOL",
        "EVENT_HANDSHAKE_FAILED_AUTH",
    )
    if hasattr(zmq, name)
}
_MONITOR_EVENTS = _CONNECTED | zmq.EVENT_DISCONNECTED
for _event in _HANDSHAKE_FAILED:
    _MONITOR_EVENTS |= _event
_WAKE = b""
"""What the inproc PUSH carries: only 'look at the outbox (and at ``_closed``)'."""
_ZAP_DENIED = 400
"""ZAP status code of a definite refusal (RFC 27); 300 and 500 are temporary."""
_ZMTP_MECHANISM_MISMATCH = 0x11000002
"""ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: one peer uses CURVE, the other does not."""
_instances = itertools.count()
_NOBLOCK: Final = int(zmq.NOBLOCK)


class _Call:
    """One pending call, as the I/O thread needs it."""

    __slots__ = ("deadline", "future", "method", "sent", "service", "timeout")

    def __init__(self, future: Future[Any], service: str, method: str, timeout: float | None, now: float) -> None:
        self.future = future
        self.service = service
        self.method = method
        self.timeout = timeout
        self.deadline = None if timeout is None else now + timeout
        self.sent = False
        """Handed to the DEALER (only the I/O thread reads or writes this)."""


class _CallFuture(Future[Any]):
    """A Future that tells the broker when the caller gives up on it.

    It stays PENDING until answered, so ``cancel()`` works at any time before
    that; a queued request is then dropped by the broker (a running one
    cannot be stopped, and its late answer is discarded).
    """

    def __init__(self, on_cancel: Callable[[int], None]) -> None:
        super().__init__()
        self._on_cancel = on_cancel
        self.corr = 0

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        if self.corr:
            self._on_cancel(self.corr)
        return True


def _settle(future: Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Complete ``future`` unless its caller cancelled it in the meantime."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a str, not {type(name).__name__}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} name {name!r:.80} cannot be encoded as UTF-8") from None
    if not 0 < size <= wire.MAX_NAME_LEN:
        raise ValueError(f"{what} name must be 1-{wire.MAX_NAME_LEN} UTF-8 bytes, got {size}")


def _unsendable(
    service: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], error: Exception
) -> ArgumentError:
    """An ArgumentError naming the first argument that cannot be packed (the error path only)."""
    named = [(f"argument {i}", value) for i, value in enumerate(args, 1)]
    named += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
    for label, value in named:
        try:
            pack_value(value)
        except (TypeError, ValueError, OverflowError) as exc:
            return ArgumentError(
                f"{service}.{method}: {label} ({value!r:.60}) cannot be sent: {exc}",
                service=service,
                method=method,
            )
    return ArgumentError(f"the arguments of {service}.{method} cannot be sent: {error}", service=service, method=method)


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    value = float(timeout)
    if math.isnan(value) or value < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    return None if math.isinf(value) else value


class Client:
    """Calls functions of the pool's services through the broker at ``address``.

    Thread-safe: any number of threads may call at once; one I/O thread owns
    the socket. ``timeout`` is the default per-call limit in seconds (None:
    wait as long as the broker keeps answering heartbeats).

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
    missing on one side).

    Result callbacks added to the Futures of :meth:`submit` run in the I/O
    thread: keep them short and never block on another call inside them.
    Buffers passed as arguments are sent without copying; do not change them
    until the call's Future is done.
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
    ) -> None:
        if not isinstance(address, str) or not address:
            raise ConfigError(
                f"the broker address must be a non-empty string like 'tcp://127.0.0.1:5555', got {address!r}"
            )
        if not heartbeat_interval > 0:
            raise ValueError(f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval!r}")
        if isinstance(heartbeat_liveness, bool) or not isinstance(heartbeat_liveness, int) or heartbeat_liveness < 1:
            raise ValueError(f"heartbeat_liveness must be an integer >= 1, got {heartbeat_liveness!r}")
        self.address = address
        self.timeout = _check_timeout(timeout)
        self.stats: dict[str, int] = {
            "late_replies": 0,
            "timeouts": 0,
            "cancels_sent": 0,
            "malformed": 0,
            "reconnects": 0,
        }
        """Counters kept by the I/O thread, for diagnostics and tests."""
        self._curve = None if curve is None else CurveKeys.coerce(curve)
        if self._curve is not None and not zmq.has("curve"):
            raise DllPoolError("CURVE keys were given but this pyzmq/libzmq was built without CURVE support")
        self._interval = float(heartbeat_interval)
        self._window = self._interval * heartbeat_liveness
        self._grace = max(_MIN_GRACE, self._interval)
        """How long past a sent call's deadline the broker's Timeout answer is awaited."""
        self._ctx: zmq.Context[Any] = context if context is not None else zmq.Context.instance()

        self._lock = threading.Lock()
        """Guards ``_pending`` and ``_closed``."""
        self._pending: dict[int, _Call] = {}
        self._closed = False
        self._corr_ids = itertools.count(1)

        # State below belongs to the I/O thread alone.
        self._deadlines: list[tuple[float, int]] = []
        self._backlog: deque[tuple[float, int, list[Any]]] = deque()
        """Requests not yet handed to the DEALER: (queued at, corr, frames)."""
        self._connected = False
        now = time.monotonic()
        self._down_since = now
        self._last_heard = now
        self._last_sent = now
        self._last_ping = now
        self._awaiting_since: float | None = None
        """When the first message went out that the broker has not answered anything since."""
        self._handshake_problem = ""
        self._refused = False
        """The last handshake failed for good (keys refused, CURVE on one side only): fail at once."""
        self._pollout = False

        # Callers append frames to the outbox and wake the I/O thread through an
        # inproc PUSH, both under one lock; only the first append after the I/O
        # thread emptied the outbox sends a wake-up. Moving the frames through
        # the inproc pipe too would cost ~15 us more per call (7 frames copied
        # in and out); this way a busy client sends few wake-ups for many calls.
        inbox = f"inproc://dllpool-client-{next(_instances)}-{id(self):x}"
        self._push_lock = threading.Lock()
        """Guards ``_push``, ``_outbox`` and ``_woken``."""
        self._outbox: deque[tuple[int, list[Any]]] = deque()
        self._woken = False
        self._inbox: deque[tuple[int, list[Any]]] = deque()
        """The I/O thread's own copy of the outbox, worked off ``_BATCH`` at a time."""
        # Unbounded on purpose: a caller must never block here, least of all a
        # Future callback running in the I/O thread, which is the only reader.
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.rcvhwm = 0
        self._pull.linger = 0
        self._pull.bind(inbox)
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.sndhwm = 0
        self._push.linger = 0
        self._push.connect(inbox)
        try:
            self._dealer, self._monitor = self._open_dealer()
        except BaseException:
            self._pull.close()
            self._push.close()
            raise
        self._poller = self._make_poller()

        self._thread = threading.Thread(target=self._run, name="dllpool-client-io", daemon=True)
        self._thread.start()

    # --- the caller's side ----------------------------------------------------------

    def call(
        self, service: str, method: str, /, *args: Any, timeout: float | _Unset | None = _UNSET, **kwargs: Any
    ) -> Any:
        """Call ``service.method(*args, **kwargs)`` in a worker and return its result.

        Raises the error the worker or broker answered with (a CallError
        subclass), Timeout, or BrokerUnavailable.
        """
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError(
                "Client.call() from a Future callback would wait on the thread that must deliver its answer; "
                "use submit() there"
            )
        future = self.submit(service, method, *args, timeout=timeout, **kwargs)
        try:
            return future.result()
        except BaseException:
            if not future.done():  # interrupted (Ctrl-C): let the broker drop it if still queued
                future.cancel()
            raise

    def submit(
        self, service: str, method: str, /, *args: Any, timeout: float | _Unset | None = _UNSET, **kwargs: Any
    ) -> Future[Any]:
        """Start ``service.method(*args, **kwargs)``; the Future holds its result or error.

        Bad names raise ValueError, and arguments that cannot be sent at all
        (a type msgpack does not carry, an integer beyond 64 bits) raise
        ArgumentError here, at once. Cancelling the Future drops the request
        if the broker has not yet given it to a worker.
        """
        _check_name(service, "service")
        _check_name(method, "method")
        seconds = self.timeout if timeout is _UNSET else _check_timeout(timeout)
        try:
            payload = pack_call(args, kwargs)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _unsendable(service, method, args, kwargs, exc) from None
        future = _CallFuture(self._cancelled)
        call = _Call(future, service, method, seconds, time.monotonic())
        with self._lock:
            if self._closed:
                raise BrokerUnavailable("client is closed", address=self.address, service=service, method=method)
            corr = next(self._corr_ids)
            self._pending[corr] = call  # registered before it is sent: the answer cannot outrun it
        future.corr = corr
        self._to_io(corr, wire.client_request(corr, service, method, seconds, payload))
        return future

    def service(self, name: str) -> ServiceProxy:
        """A proxy whose attributes are the service's functions: ``client.service("m").add(1, 2)``."""
        _check_name(name, "service")
        return ServiceProxy(self, name)

    def close(self) -> None:
        """Fail pending calls with BrokerUnavailable, stop the I/O thread, close the sockets.

        Idempotent; safe from any thread, including a Future callback.
        """
        with self._lock:
            first = not self._closed
            self._closed = True
            calls = list(self._pending.values())
            self._pending.clear()
        if first:
            for call in calls:
                _settle(call.future, error=self._unavailable("client closed", call))
            self._to_io(0, None)
        if threading.get_ident() != self._thread.ident:
            self._thread.join()
            self._close_push()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._pending)} pending"
        return f"<Client {self.address} {state}>"

    def _cancelled(self, corr: int) -> None:
        """A caller cancelled a Future: forget the call and tell the broker."""
        with self._lock:
            self._pending.pop(corr, None)
        self._to_io(corr, wire.client_cancel(corr))

    def _to_io(self, corr: int, frames: list[Any] | None) -> None:
        """Hand a request or cancel for ``corr`` (None: just a wake-up) to the I/O thread; any thread may call this."""
        with self._push_lock:
            if self._push.closed:
                return  # the I/O thread is gone; close() has already failed every Future
            if frames is not None:
                self._outbox.append((corr, frames))
            if not self._woken:
                self._woken = True
                # Never blocks while the I/O thread's PULL is open (no HWM). Once that thread has closed it
                # on its way out, a blocking send would wait forever, holding the lock _close_push needs.
                with contextlib.suppress(zmq.Again):
                    self._push.send(_WAKE, _NOBLOCK)

    def _close_push(self) -> None:
        with self._push_lock:
            self._push.close()

    def _unavailable(self, message: str, call: _Call) -> BrokerUnavailable:
        return BrokerUnavailable(message, address=self.address, service=call.service, method=call.method)

    # --- the I/O thread -------------------------------------------------------------

    def _open_dealer(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        """A fresh DEALER (fresh routing ID, empty queues) and its monitor.

        IMMEDIATE stays off: with it on, libzmq discards replies that arrived
        but were not yet read when the connection drops, i.e. exactly the
        answers sent just before a broker stops. Instead, requests go to the
        DEALER only while the monitor reports a completed handshake (otherwise
        they wait in ``_backlog``, which fails them after the liveness window
        or at their deadline), and the DEALER is replaced whenever the
        connection is lost or the broker falls silent. So nothing queued
        during an outage is delivered to a broker that comes back much later.
        """
        dealer = self._ctx.socket(zmq.DEALER)
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
        except ConfigError:
            dealer.disable_monitor()
            monitor.close()
            dealer.close()
            raise
        return dealer, monitor

    def _close_dealer(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._dealer.disable_monitor()
        self._monitor.close()
        self._dealer.close()

    def _make_poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._dealer, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        self._pollout = False
        return poller

    def _run(self) -> None:
        reason = "client closed"
        try:
            self._loop()
        except zmq.ContextTerminated:
            reason = "the ZeroMQ context was terminated"
            log.warning("dllpool client for %s stopped: %s", self.address, reason)
        except BaseException as exc:  # the last line of defence: no call may be left hanging
            reason = f"the client's I/O thread failed: {exc!r}"
            log.exception("dllpool client for %s stopped", self.address)
        finally:
            with self._lock:
                self._closed = True
                calls = list(self._pending.values())
                self._pending.clear()
            for call in calls:
                _settle(call.future, error=self._unavailable(reason, call))
            self._close_dealer()
            self._pull.close()
            self._close_push()

    def _loop(self) -> None:
        while not self._closed:
            now = time.monotonic()
            wait = _MAX_WAIT
            if self._inbox:
                wait = 0.0
            elif self._deadlines:
                wait = min(wait, self._deadlines[0][0] - now)
            want_out = bool(self._backlog) and self._connected
            if want_out != self._pollout:
                self._poller.modify(self._dealer, zmq.POLLIN | (zmq.POLLOUT if want_out else 0))
                self._pollout = want_out
            events = dict(self._poller.poll(max(0, math.ceil(wait * 1000))))
            if events.get(self._dealer, 0) & zmq.POLLIN:
                self._drain_dealer()
            if self._monitor in events:
                self._drain_monitor()
            if self._pull in events or self._inbox:
                self._drain_inbox()
            if self._backlog and self._connected:
                self._flush_backlog()
            self._housekeeping(time.monotonic())

    def _drain_inbox(self) -> None:
        """Forward what callers handed over: requests still wanted, and cancels."""
        while True:
            try:
                self._pull.recv(_NOBLOCK)
            except zmq.Again:
                break
        inbox = self._inbox
        with self._push_lock:
            self._woken = False  # from here on, the next append sends a new wake-up
            if self._outbox:
                inbox.extend(self._outbox)
                self._outbox.clear()
        pending = self._pending
        for _ in range(min(len(inbox), _BATCH)):
            corr, msg = inbox.popleft()
            if len(msg) > 1:  # a request (a cancel is its header alone)
                call = pending.get(corr)
                if call is None:
                    continue  # cancelled or failed before it left: never send it
                if call.deadline is not None:
                    heapq.heappush(self._deadlines, (call.deadline, corr))
                if self._backlog or not self._connected:
                    self._backlog.append((time.monotonic(), corr, msg))
                elif self._send(msg):
                    call.sent = True
                else:
                    self._backlog.append((time.monotonic(), corr, msg))
            elif self._connected and self._send(msg):
                self.stats["cancels_sent"] += 1

    def _send(self, frames: list[Any]) -> bool:
        """Hand frames to the DEALER without blocking; False when it is full."""
        if not transport.try_send(self._dealer, frames):
            return False
        now = time.monotonic()
        self._last_sent = now
        if self._awaiting_since is None:
            self._awaiting_since = now
        return True

    def _flush_backlog(self) -> None:
        pending = self._pending
        while self._backlog:
            _, corr, msg = self._backlog[0]
            call = pending.get(corr)
            if call is not None:
                if call.deadline is not None:  # the broker's deadline must be the caller's, not later
                    left = max(0.0, call.deadline - time.monotonic())
                    msg[0] = wire.client_request_header(corr, call.service.encode(), call.method.encode(), left)
                if not self._send(msg):
                    return
                call.sent = True
            self._backlog.popleft()

    def _drain_dealer(self) -> None:
        for msg in transport.drain(self._dealer, _BATCH, copied=2):
            self._last_heard = time.monotonic()
            self._awaiting_since = None  # any message proves the broker alive
            try:
                self._on_broker_message(msg)
            except Exception:  # a bug here must not stop the thread every call depends on
                log.exception("failed to handle a message from the broker at %s; dropped", self.address)

    def _on_broker_message(self, msg: list[Any]) -> None:
        try:
            answer = wire.parse_for_client(msg)
        except ProtocolError as exc:
            self.stats["malformed"] += 1
            log.warning("dropped a malformed message from the broker at %s: %s", self.address, exc)
            self._fail_malformed(msg, exc)
            return
        if isinstance(answer, wire.HeartbeatToClient):
            return
        with self._lock:
            call = self._pending.pop(answer.corr, None)
        if call is None:
            self.stats["late_replies"] += 1
            log.debug("discarded the answer to %#x: its call timed out or was cancelled", answer.corr)
            return
        if answer.error is not None:
            _settle(call.future, error=self._remote_error(answer.error, call))
            return
        try:
            result = unpack_value(answer.payload)
        except ProtocolError as exc:
            _settle(call.future, error=exc)
            return
        _settle(call.future, result)

    def _fail_malformed(self, msg: list[Any], exc: ProtocolError) -> None:
        """An unreadable answer that still names a pending call fails it, rather than leave it waiting."""
        corr = wire.corr_of(msg, wire.CLIENT_PROTOCOL)
        if corr is None:
            return
        with self._lock:
            call = self._pending.pop(corr, None)
        if call is not None:
            error = ProtocolError(f"the broker's answer to {call.service}.{call.method} is malformed: {exc}")
            _settle(call.future, error=error)

    @staticmethod
    def _remote_error(data: dict[str, Any], call: _Call) -> CallError:
        try:
            error = error_from_wire(data)
        except Exception as exc:  # e.g. details that clash with the constructor's arguments
            return CallError(f"{call.service}.{call.method} failed with an unreadable error: {exc}")
        error.details.setdefault("service", call.service)
        error.details.setdefault("method", call.method)
        return error

    def _drain_monitor(self) -> None:
        while True:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            kind = event["event"]
            if kind == _CONNECTED:
                self._connected = True
                now = time.monotonic()
                self._last_heard = now
                self._awaiting_since = None
                if self._handshake_problem:
                    log.info("connected to the broker at %s", self.address)
                self._handshake_problem = ""
                self._refused = False
                self._flush_backlog()
            elif kind == zmq.EVENT_DISCONNECTED:
                if self._connected:
                    self._lost_connection()
                    return  # that monitor is closed now
            elif kind in _HANDSHAKE_FAILED:
                self._handshake_failed(kind, event["value"])

    def _lost_connection(self) -> None:
        """The connection dropped: the calls it carried are lost; start afresh."""
        self._drain_dealer()  # answers that arrived before the drop are still readable
        with self._lock:
            lost = [(corr, call) for corr, call in self._pending.items() if call.sent]
            for corr, _ in lost:
                del self._pending[corr]
        log.warning("lost the connection to the broker at %s; %d call(s) failed", self.address, len(lost))
        for _, call in lost:
            _settle(
                call.future,
                error=self._unavailable(
                    f"lost the connection to the broker at {self.address} while {call.service}.{call.method} "
                    "was pending; it may or may not have run",
                    call,
                ),
            )
        self._reopen()

    def _handshake_failed(self, kind: int, value: int) -> None:
        """Name the problem; a refusal (unlike a dropped connection) fails waiting calls at once."""
        name = _HANDSHAKE_FAILED[kind]
        # ZAP 300/500 are temporary (the authenticator is busy or broken): wait out the window as for a drop.
        self._refused = name.endswith("PROTOCOL") or (name.endswith("AUTH") and value == _ZAP_DENIED)
        if name.endswith("AUTH"):
            problem = (
                f"the broker refused this client's CURVE public key (ZAP status {value}); "
                "it must be one of the pool's curve_clients"
            )
        elif name.endswith("PROTOCOL") and value == _ZMTP_MECHANISM_MISMATCH:
            side = (
                "this client has CURVE keys and the broker has none"
                if self._curve
                else "the broker requires CURVE keys and this client has none (give it curve=...)"
            )
            problem = f"the connection handshake failed: {side}"
        elif name.endswith("PROTOCOL"):
            problem = f"the connection handshake failed (ZMTP protocol error {value:#x})"
        else:
            problem = f"the connection handshake failed ({zmq.strerror(value)})"
            if self._curve is not None:
                problem += "; is curve.server_public the broker's public key?"
        if problem != self._handshake_problem:
            log.warning("broker at %s: %s", self.address, problem)
        self._handshake_problem = problem

    def _reopen(self) -> None:
        self._close_dealer()
        self._dealer, self._monitor = self._open_dealer()
        self._poller = self._make_poller()
        self.stats["reconnects"] += 1
        now = time.monotonic()
        self._connected = False
        self._down_since = now
        self._last_heard = now
        self._awaiting_since = None

    def _housekeeping(self, now: float) -> None:
        """Deadlines, heartbeats and the broker's liveness."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            when, corr = heapq.heappop(deadlines)
            with self._lock:
                call = self._pending.get(corr)
                # A call the broker holds gets a grace period for the broker's own Timeout answer.
                backstop = call is not None and call.sent and when == call.deadline
                if call is not None and not backstop:
                    del self._pending[corr]
            if backstop:
                heapq.heappush(deadlines, (when + self._grace, corr))
            elif call is not None:
                self._expire(corr, call)
        if len(deadlines) > 1024 and len(deadlines) > 4 * len(self._pending):
            pending = self._pending  # drop the entries of calls already answered
            self._deadlines = [entry for entry in deadlines if entry[1] in pending]
            heapq.heapify(self._deadlines)

        if self._connected:
            if self._awaiting_since is not None and now - self._awaiting_since > self._window:
                self._broker_silent(now - self._last_heard)
            elif now - self._last_ping >= self._interval and (
                now - self._last_heard >= self._interval or now - self._last_sent >= self._interval
            ):
                self._last_ping = now
                self._send(wire.client_heartbeat())
        elif self._backlog:
            self._expire_backlog(now)

    def _expire(self, corr: int, call: _Call) -> None:
        """The backstop: the broker never answered past the deadline, or never got the request."""
        self.stats["timeouts"] += 1
        if call.sent:
            why = f"and the broker sent no answer for it {self._grace:g} s past the deadline"
        else:
            why = f"and it never reached the broker at {self.address} (no connection yet)"
            if self._handshake_problem:
                why += f": {self._handshake_problem}"
        _settle(
            call.future,
            error=Timeout(
                f"{call.service}.{call.method} did not answer within {call.timeout:g} s, {why}",
                service=call.service,
                method=call.method,
                timeout=call.timeout,
            ),
        )
        if call.sent and self._connected and self._send(wire.client_cancel(corr)):
            self.stats["cancels_sent"] += 1  # drop it from the broker's queue if it is still there

    def _broker_silent(self, silence: float) -> None:
        with self._lock:
            calls = list(self._pending.values())
            self._pending.clear()
        log.warning(
            "no answer from the broker at %s for %.1f s; failing %d call(s) and reconnecting",
            self.address,
            silence,
            len(calls),
        )
        for call in calls:
            _settle(
                call.future,
                error=self._unavailable(f"no answer from the broker at {self.address} for {silence:.1f} s", call),
            )
        self._backlog.clear()
        self._reopen()

    def _expire_backlog(self, now: float) -> None:
        """Fail requests that found no connection to send them on within the liveness window.

        All of them at once when the broker refused the handshake: waiting would not change that.
        """
        backlog = self._backlog
        limit = -math.inf if self._refused else self._window
        while backlog and now - max(backlog[0][0], self._down_since) > limit:
            _, corr, _ = backlog.popleft()
            with self._lock:
                call = self._pending.pop(corr, None)
            if call is not None:
                _settle(call.future, error=self._unavailable(self._unreachable(), call))

    def _unreachable(self) -> str:
        if self._refused:
            return f"cannot connect to the broker at {self.address}: {self._handshake_problem}"
        if self._handshake_problem:
            return f"no connection to the broker at {self.address} for {self._window:g} s: {self._handshake_problem}"
        return (
            f"nothing answers at {self.address}: no broker accepted a connection there for {self._window:g} s "
            "(is the pool running, and is this its address?)"
        )
