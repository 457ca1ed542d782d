"""One connection to a broker, shared by every Client of a process that names it with the same settings.

A connection costs an I/O thread and five ZeroMQ sockets, and a ZeroMQ
context allows 1,023 sockets by default, so a :class:`~client.client.Client`
is a light handle over a reference-counted :class:`Connection`: the Clients
of one process that name the same broker with the same context, CURVE keys
and heartbeat settings share one. Each Client keeps its own default timeout,
closed flag and pending calls (its :class:`Owner`), so closing one fails and
cancels its own calls and no others; the last one closes the connection.

ZeroMQ sockets are not thread-safe, so no socket is ever used by two threads
at once:

* The fast path. A blocking call takes a DEALER of its own (a lane) from a
  pool shared by the connection's Clients (a new one only when every one is
  in use, so there are as many as the most calls that ever waited at once),
  sends on it, waits on it and reads its own answer: one round trip through
  the broker, no hand-off to another thread and back.
* The I/O thread. Submitted calls (and map chunks, and calls while there is
  no connection yet) reach one I/O thread through an outbox deque and a
  wake-up on an inproc PUSH; it sends them, matches answers to Futures, and
  owns the connection: it watches it with a socket monitor, reconnects, and
  fails what a dropped connection carried.
* Bulk. Requests with more than :data:`BULK_MIN` bytes of arguments go out
  on another DEALER of the I/O thread, watched by a monitor of its own: the
  heartbeats on the I/O thread's main socket never wait behind an upload,
  and a broker that drops the connection over a message above its
  ``max_message_size`` fails the calls that connection carried at once.

Every socket tells the broker its liveness window (a HEARTBEAT carrying it)
before its first request and heartbeats while calls wait on it, and says
DISCONNECT when the connection closes. A fast-path call learns of a dropped
connection from the I/O thread (a connection generation it checks while it
waits) and fails with BrokerUnavailable as a submitted call does.

The I/O thread settles Futures but runs no user code: the done-callbacks of a
Future it settles go, in completion order, to a callback thread of the
connection (started on first use). A slow callback delays only the callbacks
after it, never the heartbeats that keep every Client's calls alive at the
broker, and a callback may wait on another call: Futures are settled by the
I/O thread, not by the thread that runs their callbacks.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import math
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, Final, NamedTuple

import zmq

from protocol import frames as wire
from protocol import transport
from protocol.errors import BrokerUnavailable, ConfigError, DllPoolError, SharedMemoryError
from protocol.frames import Buffer

from .calls import FramesOnly, drop_calls
from .core import Call, ClientCore, Outcome, Tick, unavailable
from .handles import Drops
from .keys import CurveKeys
from .shm import CallSegments

log = logging.getLogger(__name__)

__all__ = ["BULK_MIN", "CallFuture", "Connection", "Owner"]

BULK_MIN = 1 << 20
"""Bytes of arguments above which a request goes out on the bulk socket."""
_HWM = 100_000
"""Per-socket message limit toward the broker: hundreds of in-flight calls never block."""
_BATCH = 256
"""Messages taken from one socket before serving the others: no side starves."""
_MAX_WAIT = 0.1
"""Longest poll: bounds how late a liveness check, a lost connection or close() is noticed."""
_CLOSE_WAIT = 2.0
"""How long close() waits for fast-path calls to give their sockets back (they notice within ``_MAX_WAIT``)."""
_LINGER = 1000
"""Milliseconds a closing socket keeps trying to deliver its last CANCEL or DISCONNECT."""
_BULK_NOTE = (
    f" (on the socket for requests over {BULK_MIN >> 20} MiB: a broker drops it when a message is bigger than "
    "its max_message_size)"
)
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
_NOBLOCK: Final = int(zmq.NOBLOCK)
_instances = itertools.count()


class _Key(NamedTuple):
    """What Clients must have in common to share a connection."""

    address: str
    context: zmq.Context[Any]
    curve: CurveKeys | None
    interval: float
    liveness: int
    pid: int
    """A forked child must not use its parent's connection: its threads did not come along."""


_connections: dict[_Key, Connection] = {}
_connections_lock = threading.Lock()


def _forget_connections_after_fork() -> None:
    """A forked child has none of its parent's threads: its Clients must open connections of their own."""
    global _connections_lock
    _connections_lock = threading.Lock()
    _connections.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_connections_after_fork)


class Owner:
    """One Client's share of a connection: what closing that Client fails and cancels, and nothing else."""

    __slots__ = ("closed", "futures")

    def __init__(self) -> None:
        self.closed = False
        self.futures: dict[int, CallFuture] = {}
        """Its calls handed to the I/O thread and not yet ended, by correlation ID (its fast-path calls are
        on lanes that name it)."""


class CallFuture(Future[Any]):
    """A Future that tells the broker when the caller gives up on it.

    It stays PENDING until answered, so ``cancel()`` works at any time before
    that; a queued request is then dropped by the broker (a running one
    cannot be stopped, and its late answer is discarded).
    """

    def __init__(self, connection: Connection, owner: Owner, corr: int, shm: CallSegments | None = None) -> None:
        super().__init__()
        self._connection = connection
        self.owner = owner
        self.corr = corr
        self.shm = shm
        """The call's shared-memory segments: released when it ends, however it ends."""
        owner.futures[corr] = self

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        """As ``Future.add_done_callback``, except that the I/O thread hands ``fn`` to the callback thread."""
        super().add_done_callback(functools.partial(self._connection.run_callback, fn))

    def cancel(self) -> bool:
        if not self.done():
            self._release()  # before a waiter wakes; harmless should the call end first: it is over either way
        if not super().cancel():
            return False
        self.owner.futures.pop(self.corr, None)
        self._connection.to_io(self.corr)
        return True

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Complete this Future unless its caller cancelled it in the meantime (its segments first: whoever
        waits on it finds them gone)."""
        self.owner.futures.pop(self.corr, None)
        self._release()
        try:
            if error is None:
                self.set_result(result)
            else:
                self.set_exception(error)
        except InvalidStateError:
            pass

    def _release(self) -> None:
        if self.shm is not None:
            self.shm.release()


class _Lane:
    """One DEALER of the fast path and its core; used by one calling thread at a time."""

    __slots__ = ("core", "generation", "linger", "owner", "sock", "timeo")

    def __init__(self, sock: zmq.Socket[Any], core: ClientCore, generation: int, owner: Owner) -> None:
        self.sock = sock
        self.core = core
        self.timeo = -1
        """The socket's RCVTIMEO in ms, as last set."""
        self.generation = generation
        """The I/O thread's connection this socket was opened alongside; a newer one means it is stale."""
        self.owner = owner
        """The Client whose call it carries."""
        self.linger = 0
        """Milliseconds to linger at close: set when a CANCEL or DISCONNECT must still go out."""


_Callback = tuple[Callable[[Future[Any]], object], Future[Any]]


class _Callbacks:
    """A connection's callback thread: runs the done-callbacks of the Futures the I/O thread settles, in
    that order, so that no user code holds up the I/O thread (its heartbeats above all)."""

    __slots__ = ("_queue", "thread")

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Callback | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        """Started by the first callback; only the I/O thread starts it and queues for it."""

    def put(self, fn: Callable[[Future[Any]], object], future: Future[Any]) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="dllpool-client-callbacks", daemon=True)
            self.thread.start()
        self._queue.put((fn, future))

    def stop(self) -> None:
        """The I/O thread's last step: the thread runs what is queued, then ends."""
        if self.thread is not None:
            self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, future = item
            try:
                fn(future)
            except BaseException:  # as Future does, but this thread must live on for the callbacks after it
                log.exception("exception calling callback for %r", future)


class _Forget(NamedTuple):
    """For the I/O thread: a Client closed; fail and cancel its calls, then set ``done``."""

    owner: Owner
    done: threading.Event


def _size(call: Call) -> int:
    return sum(map(len, call.payload))


def _closed_error(address: str, call: Call | None) -> BrokerUnavailable:
    if call is None:
        return BrokerUnavailable("client closed", address=address)
    return unavailable(address, "client closed", call)


class Connection:
    """What the Clients of one process share toward one broker: the I/O thread, its sockets, the lanes.

    Get one with :meth:`acquire`, give it back with :meth:`detach` (a Client's close); the last Client
    to leave closes it.
    """

    @classmethod
    def acquire(
        cls,
        address: str,
        context: zmq.Context[Any] | None,
        curve: CurveKeys | None,
        interval: float,
        liveness: int,
    ) -> Connection:
        """The process's connection for these settings, opened on first use; one more Client on it."""
        ctx = context if context is not None else zmq.Context.instance()
        key = _Key(address, ctx, curve, interval, liveness, os.getpid())
        with _connections_lock:
            connection = _connections.get(key)
            if connection is None or connection._closed:  # never opened, or its I/O thread stopped on its own
                connection = cls(key)
                _connections[key] = connection
            connection._users += 1
        return connection

    def __init__(self, key: _Key) -> None:
        self._key = key
        self.address = address = key.address
        self._ctx = key.context
        self._curve = key.curve
        self._interval = interval = key.interval
        self._liveness = liveness = key.liveness
        self._users = 0
        """Clients on this connection (guarded by ``_connections_lock``)."""
        self.corr_ids = itertools.count(1)
        """Correlation IDs, unique on this connection: its Clients share the I/O thread's socket."""
        now = time.monotonic()
        self._drops = Drops()
        """Handles their callers let go of, sent by the I/O thread as ``$drop`` calls."""
        self._drop_owner = Owner()
        self._core = self._new_core(address, interval, liveness, now)
        """The I/O thread's core for its main DEALER: only that thread touches it (others read ``connected``)."""
        self._bulk_core = self._new_core(address, interval, liveness, now, watch_broker=False)
        """The I/O thread's core for big requests; the main core judges the broker's liveness for both."""
        self._bulk: tuple[zmq.Socket[Any], zmq.Socket[Any]] | None = None
        """The bulk DEALER and its monitor, opened on the first big request while connected."""

        self._lock = threading.Lock()
        """Guards ``_closed``, the lanes, the counters of retired ones and the Owners' ``closed``."""
        self._lanes_back = threading.Condition(self._lock)
        """Notified when a lane comes back; closing waits on it."""
        self._closed = False
        self._lanes: list[_Lane] = []
        """Lanes not in use, most recently used last."""
        self._lanes_out: set[_Lane] = set()
        self._retired: Counter[str] = Counter()
        """Counters of lanes already closed."""
        self._generation = 0
        """Bumped by the I/O thread whenever it replaces its connection: a fast-path call then fails."""
        self.frames_only = FramesOnly()
        """Services whose calls go without shared memory for a while (a worker could not open a segment)."""

        # Callers append to the outbox and wake the I/O thread through an inproc PUSH, both under one lock;
        # only the first append after the I/O thread emptied the outbox sends a wake-up, so a busy client
        # sends few wake-ups for many calls.
        self._push_lock = threading.Lock()
        """Guards ``_push``, ``_outbox``, ``_woken`` and ``_io_gone``."""
        self._outbox: deque[Call | int | _Forget] = deque()
        """Calls to send, correlation IDs of calls to cancel, and Clients that closed."""
        self._woken = False
        self._io_gone = False
        """The I/O thread has stopped taking work: submitting now fails at once."""
        self._inbox: deque[Call | int | _Forget] = deque()
        """The I/O thread's own copy of the outbox, worked off ``_BATCH`` at a time."""
        self._callbacks = _Callbacks()
        # Unbounded on purpose: a caller must never block here.
        inbox = f"inproc://dllpool-client-{next(_instances)}-{id(self):x}"
        self._pull = self._socket(zmq.PULL)
        try:
            self._push = self._socket(zmq.PUSH)
        except BaseException:
            self._pull.close()
            raise
        self._pull.rcvhwm = 0
        self._pull.linger = 0
        self._pull.bind(inbox)
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

    # --- what Clients do ------------------------------------------------------------

    def submit(self, owner: Owner, call: Call) -> CallFuture:
        """Hand ``call`` to the I/O thread; its Future holds the outcome."""
        future = CallFuture(self, owner, call.corr, call.shm)
        call.handle = future
        if owner.closed or not self.to_io(call):
            owner.futures.pop(call.corr, None)
            if call.shm is not None:
                call.shm.release()
            raise BrokerUnavailable("client is closed", address=self.address, service=call.service, method=call.method)
        return future

    def call(self, owner: Owner, call: Call) -> Any:
        """Make ``call`` and wait for its outcome: on a lane of its own, or through the I/O thread.

        Big arguments go on the bulk socket (through the I/O thread), so the main socket keeps heartbeating
        and a broker that drops the connection over a message (max_message_size) fails the call at once.
        A call whose worker could not open its shared memory goes again with frames, through the I/O thread.
        """
        try:
            lane = None if _size(call) > BULK_MIN else self._checkout(owner)
            if lane is None:  # no connection yet (or closed): the I/O thread's path knows how to wait or fail
                return self.wait(self.submit(owner, call))
            try:
                return self._call_on(lane, call)
            except SharedMemoryError as exc:
                if not self.frames_only.with_frames(call, exc):
                    raise
                return self.wait(self.submit(owner, call))
        finally:
            if call.shm is not None:
                call.shm.release()

    @staticmethod
    def wait(future: Future[Any]) -> Any:
        try:
            return future.result()
        except BaseException:
            if not future.done():  # interrupted (Ctrl-C): let the broker drop it if still queued
                future.cancel()
            raise

    def detach(self, owner: Owner) -> None:
        """A Client closes: fail its calls with BrokerUnavailable and tell the broker to drop them (CANCEL);
        the last Client closes the connection. Idempotent; safe from any thread, including a Future callback
        (the I/O thread, which this waits on, runs none)."""
        with self._lock:
            if owner.closed:
                return
            owner.closed = True
        done = threading.Event()
        if self.to_io(_Forget(owner, done)):
            while not done.wait(_MAX_WAIT) and self._thread.is_alive():
                pass
        with self._lock:  # its fast-path calls notice within _MAX_WAIT, send their CANCEL and close their lanes
            if not self._lanes_back.wait_for(lambda: not self.lanes_of(owner), _CLOSE_WAIT):
                log.warning("%d call(s) still hold a socket after close()", self.lanes_of(owner))
        self._release()

    def lanes_of(self, owner: Owner) -> int:
        """How many fast-path calls ``owner`` has waiting."""
        return sum(lane.owner is owner for lane in list(self._lanes_out))

    def run_callback(self, fn: Callable[[Future[Any]], object], future: Future[Any]) -> None:
        """Run a done-callback of ``future`` now, unless this is the I/O thread: then, in turn, in the
        callback thread."""
        if threading.get_ident() == self._thread.ident:
            self._callbacks.put(fn, future)
        else:
            fn(future)

    @property
    def stats(self) -> dict[str, int]:
        """The counters of every socket of this connection, summed."""
        with self._lock:
            total = self._retired.copy()
            for lane in [*self._lanes, *self._lanes_out]:
                total.update(lane.core.stats)
        total.update(self._core.stats)
        total.update(self._bulk_core.stats)
        return dict(total)

    def to_io(self, item: Call | int | _Forget | None) -> bool:
        """Hand a call, a cancel or a closed Client (None: just a wake-up) to the I/O thread; False once it
        has stopped. Any thread may call this."""
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

    def _release(self) -> None:
        """One Client fewer; the last one closes the connection."""
        with _connections_lock:
            self._users -= 1
            if self._users > 0:
                return
            if _connections.get(self._key) is self:
                del _connections[self._key]
        with self._lock:
            self._closed = True
            self._drops.closed = True
            idle, self._lanes = self._lanes, []
        for lane in idle:
            self._retire(lane)
        self.to_io(None)
        self._thread.join()
        self._close_push()
        callbacks = self._callbacks.thread  # settled now: the I/O thread that starts it has ended
        if callbacks is not None and callbacks is not threading.current_thread():
            callbacks.join()  # when close() returns, every callback of this connection's calls has run
        with self._lock:
            if not self._lanes_back.wait_for(lambda: not self._lanes_out, _CLOSE_WAIT):
                log.warning("%d call(s) still hold a socket after close()", len(self._lanes_out))

    def _close_push(self) -> None:
        with self._push_lock:
            self._io_gone = True
            self._push.close()

    # --- sockets --------------------------------------------------------------------

    def _socket(self, kind: int) -> zmq.Socket[Any]:
        """A new socket of this connection's context, or DllPoolError saying what to do when none can be made."""
        try:
            sock: zmq.Socket[Any] = self._ctx.socket(kind)
        except zmq.ZMQError as exc:
            if exc.errno != errno.EMFILE:
                raise DllPoolError(f"cannot set up the client socket: {exc}") from exc
            raise DllPoolError(
                f"cannot open another ZeroMQ socket ({exc}): this ZeroMQ context allows "
                f"{self._ctx.get(zmq.MAX_SOCKETS)} sockets, or the process ran out of file descriptors. "
                "Clients of one process that name the same broker with the same context, CURVE keys and heartbeat "
                "settings share one connection, so close the Clients you no longer need or give them the same "
                "settings; or pass Client(context=ctx) a context made with a higher limit "
                "(ctx = zmq.Context(); ctx.set(zmq.MAX_SOCKETS, 8192) before its first socket), and raise "
                "`ulimit -n` to match"
            ) from exc
        return sock

    def _new_dealer(self) -> zmq.Socket[Any]:
        """A DEALER with this connection's options (CURVE keys); DllPoolError when none can be made."""
        dealer = self._socket(zmq.DEALER)
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
        """A fresh DEALER for the I/O thread (fresh routing ID, empty queues) and its monitor.

        IMMEDIATE stays off: with it on, libzmq discards replies that arrived
        but were not yet read when the connection drops, i.e. exactly the
        answers sent just before a broker stops. Instead, requests go to the
        DEALER only while the main monitor reports a completed handshake
        (otherwise they wait in the core's backlog, which fails them after
        the liveness window or at their deadline), and the DEALER is replaced
        whenever the connection is lost or the broker falls silent. So nothing
        queued during an outage is delivered to a broker that comes back much
        later.
        """
        dealer = self._new_dealer()
        try:
            dealer.sndhwm = _HWM
            dealer.rcvhwm = _HWM
            monitor = dealer.get_monitor_socket(_MONITOR_EVENTS)
        except zmq.ZMQError as exc:
            dealer.close()
            raise DllPoolError(f"cannot set up the client socket's monitor: {exc}") from exc
        try:
            transport.connect(dealer, self.address)
        except ConfigError:
            _close_watched(dealer, monitor)
            raise
        return dealer, monitor

    def _make_poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._dealer, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        if self._bulk is not None:
            for sock in self._bulk:
                poller.register(sock, zmq.POLLIN)
        self._pollout = False
        return poller

    # --- the fast path: the calling thread does the I/O ------------------------------

    def _checkout(self, owner: Owner) -> _Lane | None:
        """A lane for this thread, or None while the I/O thread has no connection (or after close)."""
        if not self._core.connected:
            return None
        with self._lock:
            if owner.closed or self._closed:
                return None
            lane = self._lanes.pop() if self._lanes else None
            if lane is not None and lane.generation == self._generation:
                lane.owner = owner
                self._lanes_out.add(lane)
                return lane
        if lane is not None:
            self._retire(lane)  # opened alongside a connection that has since dropped
        generation = self._generation
        try:
            sock = self._new_dealer()
        except DllPoolError as exc:  # out of sockets, say: the I/O thread still works
            log.warning("%s; the call goes through the I/O thread", exc)
            return None
        try:
            transport.connect(sock, self.address)
        except BaseException:
            sock.close()
            raise
        now = time.monotonic()
        core = self._new_core(self.address, self._interval, self._liveness, now)
        core.connection_made(now)  # the I/O thread's handshake with this broker succeeded
        lane = _Lane(sock, core, generation, owner)
        with self._lock:
            if not (owner.closed or self._closed):  # close() may have run while this socket was being opened
                self._lanes_out.add(lane)
                return lane
        sock.close()
        return None

    def _checkin(self, lane: _Lane, keep: bool) -> None:
        """Give a lane back for reuse, or close it (stale, in doubt, or its Client is closing)."""
        with self._lock:
            if keep and not self._closed and lane.generation == self._generation:
                self._lanes_out.discard(lane)
                self._lanes.append(lane)
                return
        self._retire(lane)

    def _retire(self, lane: _Lane) -> None:
        if self._closed and transport.try_send(lane.sock, wire.client_disconnect()):
            lane.linger = _LINGER
        lane.sock.close(lane.linger)
        with self._lock:
            self._lanes_out.discard(lane)
            self._retired.update(lane.core.stats)
            self._lanes_back.notify_all()

    def _call_on(self, lane: _Lane, call: Call) -> Any:
        """Send ``call`` on the caller's own lane and wait there for its answer."""
        core, sock = lane.core, lane.sock
        core.add(call)
        keep = False
        try:
            now = time.monotonic()
            frames = core.next_request(now)
            assert frames is not None, "a lane's core is connected"
            greeting = core.greeting(now)
            if greeting is not None:
                transport.send(sock, greeting)
            transport.send(sock, frames)
            core.sent(now)
            outcome = self._await(lane, call)
            keep = core.idle and core.connected
        except zmq.ZMQError as exc:
            reason = "the ZeroMQ context was terminated" if isinstance(exc, zmq.ContextTerminated) else str(exc)
            outcome = Outcome(call, error=unavailable(self.address, f"{call.service}.{call.method}: {reason}", call))
        except BaseException:  # interrupted (Ctrl-C): let the broker drop it if still queued
            self._give_up(lane, call)
            raise  # the socket may be in the middle of a message: it goes, with its CANCEL
        finally:
            self._checkin(lane, keep)
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
                msg = transport.recv(sock, 1, 0)  # blocks up to timeo ms, without the GIL
            except zmq.Again:
                pass
            else:
                outcome = core.received(msg, time.monotonic())
                if outcome is not None:
                    return outcome  # the lane carries one call at a time: it is this one
            now = time.monotonic()
            if lane.owner.closed or self._closed:
                self._give_up(lane, call)
                return Outcome(call, error=_closed_error(self.address, call))
            if lane.generation != self._generation:  # the I/O thread saw the connection drop
                return core.connection_lost(now)[0]
            tick = core.tick(now)
            for frames in tick.sends:
                transport.try_send(sock, frames)
            if tick.ended:
                return tick.ended[0]

    @staticmethod
    def _give_up(lane: _Lane, call: Call) -> None:
        """Nobody waits for ``call`` any more: tell the broker (CANCEL); the lane then closes, lingering so
        that the CANCEL still goes out."""
        cancel = lane.core.cancel(call.corr)
        if cancel is not None and transport.try_send(lane.sock, cancel):
            lane.linger = _LINGER

    # --- the I/O thread ----------------------------------------------------------------

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
                self._drops.closed = True
            self._close_sockets()
            self._pull.close()
            self._close_push()
            with self._push_lock:
                left = [*self._inbox, *self._outbox]
                self._outbox.clear()
            self._inbox.clear()
            ended = self._core.close(reason) + self._bulk_core.close(reason)
            for item in left:
                if isinstance(item, Call):
                    ended.append(Outcome(item, error=unavailable(self.address, reason, item)))
                elif isinstance(item, _Forget):
                    item.done.set()
            for outcome in ended:
                outcome.call.handle.settle(error=outcome.error)
            self._callbacks.stop()

    def _close_sockets(self) -> None:
        """Say DISCONNECT on the sockets that reached the broker (it then forgets them at once), and close them."""
        watched = [(self._dealer, self._monitor, self._core)]
        if self._bulk is not None:
            watched.append((*self._bulk, self._bulk_core))
        for sock, monitor, core in watched:
            if core.connected:
                with contextlib.suppress(zmq.ZMQError):
                    if transport.try_send(sock, wire.client_disconnect()):
                        sock.linger = _LINGER
            _close_watched(sock, monitor)

    def _loop(self) -> None:
        core, bulk = self._core, self._bulk_core
        while not self._closed:
            now = time.monotonic()
            wait = _MAX_WAIT
            if self._inbox:
                wait = 0.0
            else:
                for deadline in (core.next_deadline(), bulk.next_deadline()):
                    if deadline is not None:
                        wait = min(wait, deadline - now)
            want_out = core.has_backlog and core.connected
            if want_out != self._pollout:
                self._poller.modify(self._dealer, zmq.POLLIN | (zmq.POLLOUT if want_out else 0))
                self._pollout = want_out
            events = dict(self._poller.poll(max(0, math.ceil(wait * 1000))))
            if events.get(self._dealer, 0) & zmq.POLLIN:
                self._drain(self._dealer, core)
            if self._monitor in events:
                self._drain_monitor()
            if self._bulk is not None:
                sock, monitor = self._bulk
                if sock in events:
                    self._drain(sock, bulk)
                if monitor in events:
                    self._drain_bulk_monitor()
            if self._pull in events or self._inbox:
                self._drain_inbox()
            if self._drops.pending:
                self._send_drops()
            self._flush()
            now = time.monotonic()
            self._apply(core.tick(now))
            self._apply_bulk(bulk.tick(now))

    def _new_core(self, *args: Any, **kwargs: Any) -> ClientCore:
        core = ClientCore(*args, **kwargs)
        core.handles = self._drops.handle
        return core

    def _send_drops(self) -> None:
        """One ``$drop`` call per worker for the handles let go of; nobody waits for their answers."""
        for call in drop_calls(self.corr_ids, self._drops.pending):
            call.handle = CallFuture(self, self._drop_owner, call.corr)
            self._core.add(call)

    def _drain_inbox(self) -> None:
        """Take what callers handed over: calls still wanted, cancels, and Clients that closed."""
        for _ in transport.drain(self._pull, _BATCH, copied=1):
            pass
        inbox = self._inbox
        with self._push_lock:
            self._woken = False  # from here on, the next append sends a new wake-up
            if self._outbox:
                inbox.extend(self._outbox)
                self._outbox.clear()
        for _ in range(min(len(inbox), _BATCH)):
            item = inbox.popleft()
            if isinstance(item, Call):
                future = item.handle
                if future.cancelled():  # cancelled before it left: never send it
                    continue
                if future.owner.closed:  # its Client closed after handing it over
                    future.settle(error=_closed_error(self.address, item))
                elif _size(item) > BULK_MIN:
                    self._bulk_core.add(item)
                else:
                    self._core.add(item)
            elif isinstance(item, int):
                self._cancel(item)
            else:
                self._forget(item)

    def _cancel(self, corr: int) -> Call | None:
        """Forget a call nobody waits for, telling the broker (CANCEL) if it may hold it; the call, if pending."""
        for core, sock in ((self._core, self._dealer), (self._bulk_core, self._bulk and self._bulk[0])):
            call = core.pending.get(corr)
            if call is not None:
                cancel = core.cancel(corr)
                if cancel is not None and sock:
                    transport.try_send(sock, cancel)
                return call
        return None

    def _forget(self, item: _Forget) -> None:
        """A Client closed: its calls fail with BrokerUnavailable, and the broker drops those it may hold."""
        for corr, future in item.owner.futures.copy().items():
            future.settle(error=_closed_error(self.address, self._cancel(corr)))
        item.done.set()

    def _send(self, frames: list[Buffer]) -> None:
        """Without blocking; a heartbeat or cancel that finds the socket full is dropped harmlessly."""
        transport.try_send(self._dealer, frames)

    def _flush(self) -> None:
        """Hand queued calls to the sockets until they are full (or there is no connection)."""
        now = time.monotonic()
        _send_backlog(self._core, self._dealer, now)
        if self._bulk_core.has_backlog and self._core.connected:
            if self._bulk is None:
                self._open_bulk(now)
            if self._bulk is not None:
                _send_backlog(self._bulk_core, self._bulk[0], now)

    def _drain(self, sock: zmq.Socket[Any], core: ClientCore) -> None:
        for msg in transport.drain(sock, _BATCH, copied=1):
            try:
                outcome = core.received(msg, time.monotonic())
            except Exception:  # a bug here must not stop the thread every call depends on
                log.exception("failed to handle a message from the broker at %s; dropped", self.address)
                continue
            if outcome is None:
                continue
            call = outcome.call
            if not call.handle.cancelled() and self.frames_only.with_frames(call, outcome.error):
                (self._bulk_core if _size(call) > BULK_MIN else self._core).add(call)
            else:
                call.handle.settle(outcome.result, outcome.error)

    def _apply(self, tick: Tick) -> None:
        for frames in tick.sends:
            self._send(frames)
        _settle_all(tick.ended)
        if tick.reopen:
            self._reopen()

    def _apply_bulk(self, tick: Tick) -> None:
        if self._bulk is not None:
            for frames in tick.sends:
                transport.try_send(self._bulk[0], frames)
        _settle_all(tick.ended)

    def _drain_monitor(self) -> None:
        for kind, value in transport.monitor_events(self._monitor):
            if kind == _CONNECTED:
                now = time.monotonic()
                self._core.connection_made(now)
                greeting = self._core.greeting(now)
                if greeting is not None:
                    self._send(greeting)
                self._flush()
            elif kind == zmq.EVENT_DISCONNECTED:
                if self._core.connected:
                    self._drain(self._dealer, self._core)  # answers that arrived before the drop still count
                    self._apply(Tick([], self._core.connection_lost(time.monotonic()), True))
                    return  # that monitor is closed now
            elif kind in _HANDSHAKE_FAILED:
                self._handshake_failed(kind, value)

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
        self._bulk_core.handshake_failed(problem, refused)  # big calls wait for the same connection

    def _reopen(self) -> None:
        """A fresh DEALER after a lost or silent connection; fast-path and bulk calls on the old one fail."""
        self._generation += 1
        self._close_bulk()
        _close_watched(self._dealer, self._monitor)
        self._dealer, self._monitor = self._open_dealer()
        self._poller = self._make_poller()

    # --- the bulk socket ---------------------------------------------------------------

    def _open_bulk(self, now: float) -> None:
        try:
            self._bulk = self._open_dealer()
        except DllPoolError as exc:  # out of sockets, say: fail the big calls, serve the others
            _settle_all(self._bulk_core.close(f"cannot open a socket for a request over {BULK_MIN >> 20} MiB: {exc}"))
            return
        for sock in self._bulk:
            self._poller.register(sock, zmq.POLLIN)
        self._bulk_core.connection_made(now)  # the main socket's handshake succeeded: requests may queue here

    def _close_bulk(self, note: str = "") -> None:
        """Close the bulk socket (dropped, or the main connection was lost); the calls it carried fail."""
        if self._bulk is None:
            return
        sock, monitor = self._bulk
        self._bulk = None
        for each in (sock, monitor):
            self._poller.unregister(each)
        _close_watched(sock, monitor)
        _settle_all(self._bulk_core.connection_lost(time.monotonic(), note))

    def _drain_bulk_monitor(self) -> None:
        assert self._bulk is not None
        monitor = self._bulk[1]
        for kind, _ in transport.monitor_events(monitor):
            if kind == zmq.EVENT_DISCONNECTED or kind in _HANDSHAKE_FAILED:
                self._drain(self._bulk[0], self._bulk_core)  # answers that arrived before the drop still count
                self._close_bulk(_BULK_NOTE)  # the next big request opens a fresh one
                return


def _send_backlog(core: ClientCore, sock: zmq.Socket[Any], now: float) -> None:
    """Hand ``core``'s queued calls to ``sock`` until it is full (or there is no connection); the greeting
    first if the broker may not know this socket's window."""
    frames = core.next_request(now)
    if frames is None:
        return
    greeting = core.greeting(now)
    if greeting is not None:
        transport.try_send(sock, greeting)
    while frames is not None:
        if not transport.try_send(sock, frames):
            return
        core.sent(now)
        frames = core.next_request(now)


def _settle_all(ended: list[Outcome]) -> None:
    for outcome in ended:
        outcome.call.handle.settle(error=outcome.error)


def _close_watched(sock: zmq.Socket[Any], monitor: zmq.Socket[Any]) -> None:
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    monitor.close()
    sock.close()
