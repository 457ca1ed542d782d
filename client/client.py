"""The threaded client: a sans-io core per connection (:mod:`client.core`), driven two ways.

ZeroMQ sockets are not thread-safe, so no socket is ever used by two threads
at once:

* The fast path. A blocking :meth:`Client.call` takes a DEALER of its own
  from a small pool (a new one only when every one is in use, so there are
  as many as the most calls that ever waited at once, not one per thread),
  sends on it, waits on it and reads its own answer: one round trip through
  the broker, no hand-off to another thread and back.
* The I/O thread. :meth:`Client.submit` (and :meth:`Client.map`, and
  ``call`` while there is no connection yet) hand calls to one I/O thread
  through an outbox deque and a wake-up on an inproc PUSH; it sends them,
  matches answers to Futures, and owns the connection: it watches it with a
  socket monitor, reconnects, and fails what a dropped connection carried.

Each socket's core keeps the backstop timers on deadlines and heartbeats
while calls wait on it. A fast-path call learns of a dropped connection from
the I/O thread (a connection generation it checks while it waits) and
fails with BrokerUnavailable as a submitted call does.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, InvalidStateError
from itertools import islice
from typing import Any, Final

import zmq
from zmq.utils.monitor import parse_monitor_message

from protocol import frames as wire
from protocol import transport
from protocol.codec import pack_batch, pack_call, pack_value
from protocol.errors import (
    ArgumentError,
    BrokerUnavailable,
    ConfigError,
    DllPoolError,
    ProtocolError,
    Timeout,
)
from protocol.frames import Buffer

from .core import Call, ClientCore, Outcome, Tick, remote_error, unavailable
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
"""Longest poll: bounds how late a liveness check, a lost connection or close() is noticed."""
_CLOSE_WAIT = 2.0
"""How long close() waits for fast-path calls to give their sockets back (they notice within ``_MAX_WAIT``)."""
_CANCEL_LINGER = 1000
"""Milliseconds an abandoned fast-path socket keeps trying to deliver its CANCEL."""
_MAP_CHUNKSIZE = 512
"""Default calls per message of :meth:`Client.map`. ``demo.add`` on 4 workers (2 cores, 8 in flight): about
75k calls/s with 64, 150k with 256, 205k with 512, 200-270k with 1024. Bigger chunks gain little, and a worker
that dies fails every call of its chunk."""
_MAP_WINDOW = 16
"""Chunks of one map in flight: two per worker for services of up to 8 workers, so each has the next at hand
(with 4 workers, 8 and 16 measure the same); the broker queues the rest."""
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
_FAST_PATH_MAX = 1 << 20
"""Bytes of arguments above which ``call()`` takes the I/O thread's (monitored) socket: see ``call``."""
_NOBLOCK: Final = int(zmq.NOBLOCK)


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


class _Lane:
    """One DEALER of the fast path and its core; used by one calling thread at a time."""

    __slots__ = ("core", "generation", "sock", "timeo")

    def __init__(self, sock: zmq.Socket[Any], core: ClientCore, generation: int) -> None:
        self.sock = sock
        self.core = core
        self.timeo = -1
        """The socket's RCVTIMEO in ms, as last set."""
        self.generation = generation
        """The I/O thread's connection this socket was opened alongside; a newer one means it is stale."""


class _Chunk:
    """Some items of a map: the Future of their batch request, and the items that failed before sending."""

    __slots__ = ("count", "future", "local")

    def __init__(self, count: int, future: Future[Any] | None, local: dict[int, Exception]) -> None:
        self.count = count
        self.future = future
        self.local = local


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
    service: str, method: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], error: Exception
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


def _check_chunksize(chunksize: int | None) -> int:
    if chunksize is None:
        return _MAP_CHUNKSIZE
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int or None, not {type(chunksize).__name__}")
    if chunksize < 1:
        raise ValueError(f"chunksize must be >= 1, got {chunksize}")
    return chunksize


def _batch_outcomes(answer: Any, count: int, service: str, method: str) -> list[list[Any]]:
    """A batch answer checked item by item: ``[True, result]`` or ``[False, error]`` each."""
    if not isinstance(answer, list) or len(answer) != count:
        error = ProtocolError(f"the answer to a batch of {count} calls of {service}.{method} is malformed")
        return [[False, error]] * count
    for i, pair in enumerate(answer):
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not bool:
            answer[i] = [False, ProtocolError(f"item {i} of a batch answer of {service}.{method} is malformed")]
        elif not pair[0]:
            pair[1] = remote_error(pair[1], service, method)
    return answer


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
    it with BrokerUnavailable: it may or may not have run.

    A blocking :meth:`call` uses a socket of its own (one per call waiting
    at that moment, reused), so it costs one round trip through the broker.
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
        self._curve = None if curve is None else CurveKeys.coerce(curve)
        if self._curve is not None and not zmq.has("curve"):
            raise DllPoolError("CURVE keys were given but this pyzmq/libzmq was built without CURVE support")
        self._interval = float(heartbeat_interval)
        self._liveness = heartbeat_liveness
        self._ctx: zmq.Context[Any] = context if context is not None else zmq.Context.instance()
        self._corr_ids = itertools.count(1)
        self._core = ClientCore(address, self._interval, heartbeat_liveness, time.monotonic())
        """The I/O thread's core: only that thread touches it (others read ``connected``)."""

        self._lock = threading.Lock()
        """Guards ``_closed``, the fast path's sockets and the counters of retired ones."""
        self._lanes_back = threading.Condition(self._lock)
        """Notified when a fast-path socket comes back; close() waits on it."""
        self._closed = False
        self._lanes: list[_Lane] = []
        """Fast-path sockets not in use, most recently used last."""
        self._lanes_out: set[_Lane] = set()
        self._retired: Counter[str] = Counter()
        """Counters of fast-path sockets already closed."""
        self._generation = 0
        """Bumped by the I/O thread whenever it replaces its connection: a fast-path call then fails."""

        # Callers append to the outbox and wake the I/O thread through an inproc PUSH, both under one lock;
        # only the first append after the I/O thread emptied the outbox sends a wake-up, so a busy client
        # sends few wake-ups for many calls.
        inbox = f"inproc://dllpool-client-{next(_instances)}-{id(self):x}"
        self._push_lock = threading.Lock()
        """Guards ``_push``, ``_outbox``, ``_woken`` and ``_io_gone``."""
        self._outbox: deque[Call | int] = deque()
        """Calls to send, and correlation IDs of calls to cancel."""
        self._woken = False
        self._io_gone = False
        """The I/O thread has stopped taking work: submitting now fails at once."""
        self._inbox: deque[Call | int] = deque()
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
        self._not_in_io_thread("call")
        call = self._new_call(service, method, args, kwargs, timeout)
        # Big arguments go through the I/O thread: its socket is watched, so a broker that drops the
        # connection over a message (max_message_size) fails the call instead of leaving it waiting.
        lane = None if sum(len(frame) for frame in call.payload) > _FAST_PATH_MAX else self._checkout()
        if lane is None:  # no connection yet (or closed): the I/O thread's path knows how to wait or fail
            return self._wait(self._enqueue(call))
        return self._call_on(lane, call)

    def submit(
        self, service: str, method: str, /, *args: Any, timeout: float | _Unset | None = _UNSET, **kwargs: Any
    ) -> Future[Any]:
        """Start ``service.method(*args, **kwargs)``; the Future holds its result or error.

        Bad names raise ValueError, and arguments that cannot be sent at all
        (a type msgpack does not carry, an integer beyond 64 bits) raise
        ArgumentError here, at once. Cancelling the Future drops the request
        if the broker has not yet given it to a worker.
        """
        return self._enqueue(self._new_call(service, method, args, kwargs, timeout))

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
        _check_name(service, "service")
        _check_name(method, "method")
        size = _check_chunksize(chunksize)
        seconds = _check_timeout(timeout)
        self._not_in_io_thread("map")
        items = iter(iterable)
        deadline = None if seconds is None else time.monotonic() + seconds
        return self._map(service, method, items, size, seconds, deadline, return_exceptions)

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
            idle, self._lanes = self._lanes, []
        for lane in idle:
            self._retire(lane)
        if first:
            self._to_io(None)
        if threading.get_ident() != self._thread.ident:
            self._thread.join()
            self._close_push()
        with self._lock:  # fast-path calls notice within _MAX_WAIT, fail, and close their sockets
            if not self._lanes_back.wait_for(lambda: not self._lanes_out, _CLOSE_WAIT):
                log.warning("%d call(s) still hold a socket after close()", len(self._lanes_out))

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> dict[str, int]:
        """Counters (late replies, backstop timeouts, cancels sent, malformed messages, reconnects), for diagnostics."""
        with self._lock:
            total = self._retired.copy()
            for lane in [*self._lanes, *self._lanes_out]:
                total.update(lane.core.stats)
        total.update(self._core.stats)
        return dict(total)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._core.pending) + len(self._lanes_out)} pending"
        return f"<Client {self.address} {state}>"

    def _not_in_io_thread(self, what: str) -> None:
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError(
                f"Client.{what}() from a Future callback would wait on the thread that must deliver its answer; "
                "use submit() there"
            )

    def _new_call(
        self, service: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | _Unset | None
    ) -> Call:
        _check_name(service, "service")
        _check_name(method, "method")
        seconds = self.timeout if timeout is _UNSET else _check_timeout(timeout)
        try:
            payload = pack_call(args, kwargs)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _unsendable(service, method, args, kwargs, exc) from None
        return Call(next(self._corr_ids), service, method, seconds, payload, time.monotonic())

    # --- the fast path: the calling thread does the I/O ------------------------------

    def _checkout(self) -> _Lane | None:
        """A fast-path socket for this thread, or None while the I/O thread has no connection (or after close)."""
        if not self._core.connected:
            return None
        with self._lock:
            if self._closed:
                return None
            lane = self._lanes.pop() if self._lanes else None
            if lane is not None and lane.generation == self._generation:
                self._lanes_out.add(lane)
                return lane
        if lane is not None:
            self._retire(lane)  # opened alongside a connection that has since dropped
        generation = self._generation
        try:
            sock = self._new_dealer()
        except (zmq.ZMQError, DllPoolError) as exc:  # out of file descriptors, say: the I/O thread still works
            log.warning(
                "cannot open another socket to the broker at %s (%s); the call goes through the I/O thread",
                self.address,
                exc,
            )
            return None
        try:
            transport.connect(sock, self.address)
        except BaseException:
            sock.close()
            raise
        now = time.monotonic()
        core = ClientCore(self.address, self._interval, self._liveness, now)
        core.connection_made(now)  # the I/O thread's handshake with this broker succeeded
        lane = _Lane(sock, core, generation)
        with self._lock:
            if not self._closed:  # close() may have run while this socket was being opened
                self._lanes_out.add(lane)
                return lane
        sock.close()
        return None

    def _checkin(self, lane: _Lane, keep: bool, linger: int = 0) -> None:
        """Give a socket back for reuse, or close it (stale, in doubt, or the client is closing)."""
        with self._lock:
            if keep and not self._closed and lane.generation == self._generation:
                self._lanes_out.discard(lane)
                self._lanes.append(lane)
                return
        self._retire(lane, linger)

    def _retire(self, lane: _Lane, linger: int = 0) -> None:
        lane.sock.close(linger)
        with self._lock:
            self._lanes_out.discard(lane)
            self._retired.update(lane.core.stats)
            self._lanes_back.notify_all()

    def _call_on(self, lane: _Lane, call: Call) -> Any:
        """Send ``call`` on the caller's own socket and wait there for its answer."""
        core, sock = lane.core, lane.sock
        core.add(call)
        keep = False
        linger = 0
        try:
            now = time.monotonic()
            frames = core.next_request(now)
            assert frames is not None, "a fast-path socket's core is connected"
            transport.send(sock, frames)
            core.sent(now)
            outcome = self._await(lane, call)
            keep = core.idle and core.connected
        except zmq.ZMQError as exc:
            reason = "the ZeroMQ context was terminated" if isinstance(exc, zmq.ContextTerminated) else str(exc)
            outcome = Outcome(call, error=unavailable(self.address, f"{call.service}.{call.method}: {reason}", call))
        except BaseException:  # interrupted (Ctrl-C): let the broker drop it if still queued
            cancel = core.cancel(call.corr)
            if cancel is not None and transport.try_send(sock, cancel):
                linger = _CANCEL_LINGER
            raise  # the socket may be in the middle of a message: it goes, with its CANCEL
        finally:
            self._checkin(lane, keep, linger)
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    def _await(self, lane: _Lane, call: Call) -> Outcome:
        """Wait on the lane for the answer to its one call, heartbeating and watching the deadline meanwhile."""
        core, sock = lane.core, lane.sock
        while True:
            wait = _MAX_WAIT
            deadline = core.next_deadline()
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            timeo = max(0, math.ceil(wait * 1000))
            if timeo != lane.timeo:
                sock.rcvtimeo = lane.timeo = timeo
            try:
                msg = transport.recv(sock, 2, 0)  # blocks up to timeo ms, without the GIL
            except zmq.Again:
                pass
            else:
                outcome = core.received(msg, time.monotonic())
                if outcome is not None:
                    return outcome  # the lane carries one call at a time: it is this one
            now = time.monotonic()
            if self._closed:
                return core.close("client closed")[0]
            if lane.generation != self._generation:  # the I/O thread saw the connection drop
                return core.connection_lost(now)[0]
            tick = core.tick(now)
            for frames in tick.sends:
                transport.try_send(sock, frames)
            if tick.ended:
                return tick.ended[0]

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
        window: deque[_Chunk] = deque()

        def fill() -> None:
            while len(window) < _MAP_WINDOW:
                chunk = list(islice(items, size))
                if not chunk:
                    return
                window.append(self._send_chunk(service, method, chunk, seconds, deadline))

        try:
            fill()
            while window:
                chunk = window.popleft()
                outcomes = self._chunk_outcomes(service, method, chunk)
                fill()  # keep the workers busy while this chunk's results are read
                for ok, value in outcomes:
                    if ok or return_exceptions:
                        yield value
                    else:
                        raise value
        finally:
            for chunk in window:
                if chunk.future is not None:
                    chunk.future.cancel()

    def _send_chunk(
        self, service: str, method: str, chunk: list[Any], seconds: float | None, deadline: float | None
    ) -> _Chunk:
        """Submit one batch; items that cannot go (not argument tuples, unsendable, out of time) fail here."""
        local: dict[int, Exception] = {}
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            error = Timeout(
                f"{service}.{method}: the map's {seconds:g} s ran out before this item was sent",
                service=service,
                method=method,
                timeout=seconds,
            )
            return _Chunk(len(chunk), None, dict.fromkeys(range(len(chunk)), error))
        try:
            if not all(isinstance(args, (tuple, list)) for args in chunk):
                raise TypeError("not a tuple")
            payload = pack_batch(chunk)
        except (TypeError, ValueError, OverflowError):  # find the culprits; the others still go
            for i, args in enumerate(chunk):
                if not isinstance(args, (tuple, list)):
                    local[i] = ArgumentError(
                        f"{service}.{method}: Client.map needs a tuple of arguments per item, "
                        f"got {type(args).__name__} ({args!r:.60})",
                        service=service,
                        method=method,
                    )
                    continue
                try:
                    pack_value(list(args))
                except (TypeError, ValueError, OverflowError) as exc:
                    local[i] = _unsendable(service, method, args, {}, exc)
            chunk = [args for i, args in enumerate(chunk) if i not in local]
            if not chunk:
                return _Chunk(len(local), None, local)
            payload = pack_batch(chunk)
        call = Call(next(self._corr_ids), service, method, left, payload, time.monotonic(), wire.FLAG_BATCH)
        return _Chunk(len(chunk) + len(local), self._enqueue(call), local)

    @staticmethod
    def _chunk_outcomes(service: str, method: str, chunk: _Chunk) -> list[list[Any]]:
        """``[ok, result or error]`` for each item of a chunk, in order; waits for its answer."""
        sent = chunk.count - len(chunk.local)
        outcomes: list[list[Any]] = []
        if chunk.future is not None:
            try:
                outcomes = _batch_outcomes(Client._wait(chunk.future), sent, service, method)
            except DllPoolError as exc:  # the batch as a whole failed (its worker died, a timeout, ...)
                outcomes = [[False, exc]] * sent
        if not chunk.local:
            return outcomes
        remote = iter(outcomes)
        return [[False, chunk.local[i]] if i in chunk.local else next(remote) for i in range(chunk.count)]

    # --- the I/O thread's path ---------------------------------------------------------

    def _enqueue(self, call: Call) -> Future[Any]:
        future = _CallFuture(self._cancelled)
        future.corr = call.corr
        call.handle = future
        if self._closed or not self._to_io(call):
            raise BrokerUnavailable("client is closed", address=self.address, service=call.service, method=call.method)
        return future

    @staticmethod
    def _wait(future: Future[Any]) -> Any:
        try:
            return future.result()
        except BaseException:
            if not future.done():  # interrupted (Ctrl-C): let the broker drop it if still queued
                future.cancel()
            raise

    def _cancelled(self, corr: int) -> None:
        """A caller cancelled a Future: have the I/O thread forget the call and tell the broker."""
        self._to_io(corr)

    def _to_io(self, item: Call | int | None) -> bool:
        """Hand a call or a cancel (None: just a wake-up) to the I/O thread; False once it has stopped.

        Any thread may call this.
        """
        with self._push_lock:
            if self._io_gone:
                return False
            if item is not None:
                self._outbox.append(item)
            if not self._woken:
                self._woken = True
                # Never blocks while the I/O thread's PULL is open (no HWM). Once that thread has closed it
                # on its way out, a blocking send would wait forever, holding the lock _close_push needs.
                with contextlib.suppress(zmq.Again):
                    self._push.send(_WAKE, _NOBLOCK)
        return True

    def _close_push(self) -> None:
        with self._push_lock:
            self._io_gone = True
            self._push.close()

    def _new_dealer(self) -> zmq.Socket[Any]:
        """A DEALER with this client's options (CURVE keys); ZMQError when no socket can be made at all."""
        dealer: zmq.Socket[Any] = self._ctx.socket(zmq.DEALER)
        try:
            dealer.linger = 0
            if self._curve is not None:
                dealer.curve_serverkey = self._curve.server_public.encode("ascii")
                dealer.curve_publickey = self._curve.public.encode("ascii")
                dealer.curve_secretkey = self._curve.secret.encode("ascii")
        except zmq.ZMQError as exc:
            dealer.close()
            raise DllPoolError(f"cannot set up the client socket: {exc}") from exc
        return dealer

    def _open_dealer(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        """The I/O thread's fresh DEALER (fresh routing ID, empty queues) and its monitor.

        IMMEDIATE stays off: with it on, libzmq discards replies that arrived
        but were not yet read when the connection drops, i.e. exactly the
        answers sent just before a broker stops. Instead, requests go to the
        DEALER only while the monitor reports a completed handshake (otherwise
        they wait in the core's backlog, which fails them after the liveness
        window or at their deadline), and the DEALER is replaced whenever the
        connection is lost or the broker falls silent. So nothing queued
        during an outage is delivered to a broker that comes back much later.
        """
        dealer = self._new_dealer()
        try:
            dealer.sndhwm = _HWM
            dealer.rcvhwm = _HWM
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
            self._close_dealer()
            self._pull.close()
            self._close_push()
            with self._push_lock:
                left = [item for item in (*self._inbox, *self._outbox) if isinstance(item, Call)]
                self._outbox.clear()
            self._inbox.clear()
            ended = self._core.close(reason)
            ended += [Outcome(call, error=unavailable(self.address, reason, call)) for call in left]
            for outcome in ended:
                _settle(outcome.call.handle, error=outcome.error)

    def _loop(self) -> None:
        core = self._core
        while not self._closed:
            now = time.monotonic()
            wait = _MAX_WAIT
            if self._inbox:
                wait = 0.0
            else:
                deadline = core.next_deadline()
                if deadline is not None:
                    wait = min(wait, deadline - now)
            want_out = core.has_backlog and core.connected
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
            self._flush()
            self._apply(core.tick(time.monotonic()))

    def _drain_inbox(self) -> None:
        """Take what callers handed over: calls still wanted, and cancels."""
        for _ in transport.drain(self._pull, _BATCH, copied=1):
            pass
        inbox = self._inbox
        with self._push_lock:
            self._woken = False  # from here on, the next append sends a new wake-up
            if self._outbox:
                inbox.extend(self._outbox)
                self._outbox.clear()
        core = self._core
        for _ in range(min(len(inbox), _BATCH)):
            item = inbox.popleft()
            if isinstance(item, Call):
                if not item.handle.cancelled():  # cancelled before it left: never send it
                    core.add(item)
            else:
                cancel = core.cancel(item)
                if cancel is not None:
                    self._send(cancel)

    def _send(self, frames: list[Buffer]) -> None:
        """Without blocking; a heartbeat or cancel that finds the socket full is dropped harmlessly."""
        transport.try_send(self._dealer, frames)

    def _flush(self) -> None:
        """Hand queued calls to the DEALER until it is full (or there is no connection)."""
        core, dealer = self._core, self._dealer
        now = time.monotonic()
        while (frames := core.next_request(now)) is not None:
            if not transport.try_send(dealer, frames):
                return
            core.sent(now)

    def _drain_dealer(self) -> None:
        core = self._core
        for msg in transport.drain(self._dealer, _BATCH, copied=2):
            try:
                outcome = core.received(msg, time.monotonic())
            except Exception:  # a bug here must not stop the thread every call depends on
                log.exception("failed to handle a message from the broker at %s; dropped", self.address)
                continue
            if outcome is not None:
                _settle(outcome.call.handle, outcome.result, outcome.error)

    def _apply(self, tick: Tick) -> None:
        for frames in tick.sends:
            self._send(frames)
        for outcome in tick.ended:
            _settle(outcome.call.handle, error=outcome.error)
        if tick.reopen:
            self._reopen()

    def _drain_monitor(self) -> None:
        while True:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            kind = event["event"]
            if kind == _CONNECTED:
                self._core.connection_made(time.monotonic())
                self._flush()
            elif kind == zmq.EVENT_DISCONNECTED:
                if self._core.connected:
                    self._drain_dealer()  # answers that arrived before the drop are still readable
                    self._apply(Tick([], self._core.connection_lost(time.monotonic()), True))
                    return  # that monitor is closed now
            elif kind in _HANDSHAKE_FAILED:
                self._handshake_failed(kind, event["value"])

    def _handshake_failed(self, kind: int, value: int) -> None:
        """Name the problem; a refusal (unlike a dropped connection) fails waiting calls at once."""
        name = _HANDSHAKE_FAILED[kind]
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
        # ZAP 300/500 are temporary (the authenticator is busy or broken): wait out the window as for a drop.
        refused = name.endswith("PROTOCOL") or (name.endswith("AUTH") and value == _ZAP_DENIED)
        self._core.handshake_failed(problem, refused)

    def _reopen(self) -> None:
        """A fresh DEALER after a lost or silent connection; fast-path calls on the old one fail."""
        self._generation += 1
        self._close_dealer()
        self._dealer, self._monitor = self._open_dealer()
        self._poller = self._make_poller()
