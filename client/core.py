"""The client's protocol state for one connection to the broker: no sockets, no threads, time passed in.

Like the broker's core (and h11), it takes events (a call to send, a message
from the broker, a connection made or lost, the clock) and says what to do
(frames to send, calls that ended, whether to replace the socket). The
threaded :class:`~client.client.Client` drives one for its I/O thread's
DEALER, one for its DEALER of big requests and one for each DEALER of its
caller-thread fast path; tests drive it with a fake clock.

It keeps the calls sent and not yet answered (and those waiting for a
connection), a backstop timer on each deadline, and the broker's liveness:
heartbeats when the line is quiet, and a window after which a broker that
answers nothing is given up on. Every heartbeat tells the broker that window
too (``client_heartbeat(window)``), so a broker that judges clients by their
own window forgets this one only after it: :meth:`ClientCore.greeting` says
it before the first request on a fresh socket.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from protocol import frames as wire
from protocol.codec import HandleRef, unpack_value
from protocol.errors import BrokerUnavailable, CallError, ProtocolError, Timeout, error_from_wire
from protocol.frames import Buffer

from .arrays import from_wire
from .handles import lost
from .shm import CallSegments

log = logging.getLogger(__name__)

__all__ = ["MIN_GRACE", "Call", "ClientCore", "Outcome", "Tick", "remote_error", "unavailable"]

MIN_GRACE = 0.5
"""Shortest wait past a deadline for the broker's own Timeout answer (see ``Client``)."""
STAT_NAMES = ("late_replies", "timeouts", "cancels_sent", "malformed", "reconnects")


class Call:
    """One call as the core tracks it; ``handle`` is the driver's own (a Future, say)."""

    __slots__ = (
        "corr",
        "created",
        "deadline",
        "flags",
        "handle",
        "method",
        "payload",
        "pin",
        "sent",
        "service",
        "shm",
        "timeout",
        "via_handle",
    )

    def __init__(
        self,
        corr: int,
        service: str,
        method: str,
        timeout: float | None,
        payload: list[Buffer],
        now: float,
        flags: int = 0,
        handle: Any = None,
        shm: CallSegments | None = None,
        pin: int | None = None,
    ) -> None:
        self.corr = corr
        self.service = service
        self.method = method
        self.timeout = timeout
        self.payload = payload
        self.created = now
        self.deadline = None if timeout is None else now + timeout
        self.flags = flags
        self.handle = handle
        self.sent = False
        """Handed to the socket: the broker may have it."""
        self.shm = shm
        """The call's shared-memory segments, if its arguments named any (the driver releases them)."""
        self.pin = pin
        """The pid of the one worker that must run it (a session's, its handles'), or None."""
        self.via_handle = False
        """It is pinned by the handles it was given: its worker being gone is HandleLost."""


class Outcome(NamedTuple):
    """How a call ended: its result, or (``error``) why not."""

    call: Call
    result: Any = None
    error: BaseException | None = None


class Tick(NamedTuple):
    sends: list[list[Buffer]]
    """Heartbeats and cancels to send now (dropping one when the socket is full does no harm)."""
    ended: list[Outcome]
    """Calls that failed: deadlines (Timeout), a silent broker or no connection (BrokerUnavailable)."""
    reopen: bool
    """The broker fell silent: close the socket and open a fresh one."""


def remote_error(data: dict[str, Any], service: str, method: str) -> CallError:
    """The error a worker or the broker answered with, naming the call."""
    try:
        error = error_from_wire(data)
    except Exception as exc:  # e.g. details that clash with the constructor's arguments
        return CallError(f"{service}.{method} failed with an unreadable error: {exc}")
    error.details.setdefault("service", service)
    error.details.setdefault("method", method)
    return error


def unavailable(address: str, message: str, call: Call) -> BrokerUnavailable:
    return BrokerUnavailable(message, address=address, service=call.service, method=call.method)


class ClientCore:
    """One connection's pending calls, deadlines and broker liveness.

    The broker is the authority on deadlines while it answers: the timer
    here fails a sent call only ``grace`` seconds after its deadline (a
    backstop for a silent broker), and a call still waiting for a
    connection at the deadline itself.
    """

    def __init__(
        self,
        address: str,
        interval: float,
        liveness: int,
        now: float,
        stats: dict[str, int] | None = None,
        *,
        watch_broker: bool = True,
    ) -> None:
        self.address = address
        self.interval = interval
        self.window = interval * liveness
        """Seconds without an answer (or without a connection) before calls fail with BrokerUnavailable."""
        self.watch_broker = watch_broker
        """Judge the broker's liveness on this socket. False where another socket's core does, and this one's
        answers may wait longer than the window (behind a big upload, say)."""
        self.grace = max(MIN_GRACE, interval)
        """How long past a sent call's deadline the broker's Timeout answer is awaited."""
        self.handles: Callable[[str, HandleRef], Any] | None = None
        """What a handle in an answer becomes, given its call's service (the driver's Handle); None: a
        :class:`~protocol.codec.HandleRef`."""
        self.stats = stats if stats is not None else dict.fromkeys(STAT_NAMES, 0)
        self.pending: dict[int, Call] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._backlog: deque[Call] = deque()
        """Calls not yet handed to the socket, oldest first (entries of calls that ended are skipped)."""
        self.connected = False
        self.handshake_problem = ""
        self.refused = False
        """The last handshake failed for good (keys refused, CURVE on one side only): fail at once."""
        self._down_since = now
        self._last_heard = now
        self._last_sent = now
        self._last_ping = now
        self._last_tick = now
        self._awaiting_since: float | None = None
        """When the first message went out that the broker has not answered anything since."""
        self._greeted = False
        """The broker was told this socket's window since the connection was made."""

    # --- calls -------------------------------------------------------------------------

    def add(self, call: Call) -> None:
        """Take a call to send; :meth:`next_request` hands it out while connected."""
        if not self.pending:  # the deadlines left are of answered calls: a lane's heap stays one entry deep
            self._deadlines.clear()
        self.pending[call.corr] = call
        if call.deadline is not None:
            heapq.heappush(self._deadlines, (call.deadline, call.corr))
        self._backlog.append(call)

    def next_request(self, now: float) -> list[Buffer] | None:
        """The frames of the oldest unsent call, or None (nothing to send, or no connection).

        The header carries the time left until the caller's deadline, so a call
        held back for a connection keeps its caller's deadline at the broker.
        Call :meth:`sent` once the frames are on the socket.
        """
        if not self.connected:
            return None
        backlog, pending = self._backlog, self.pending
        while backlog:
            call = backlog[0]
            if pending.get(call.corr) is call:
                left = None if call.deadline is None else max(0.0, call.deadline - now)
                return wire.client_request(
                    call.corr, call.service, call.method, left, call.payload, call.flags, call.pin
                )
            backlog.popleft()
        return None

    def sent(self, now: float) -> None:
        """The request :meth:`next_request` gave out is on the socket."""
        call = self._backlog.popleft()
        call.sent = True
        call.payload = []
        self._note_sent(now)

    @property
    def has_backlog(self) -> bool:
        return bool(self._backlog)

    @property
    def idle(self) -> bool:
        """Nothing pending and nothing unanswered: the connection is fit for reuse."""
        return not self.pending and self._awaiting_since is None

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has a deadline to look at (maybe earlier: entries of answered calls linger)."""
        return self._deadlines[0][0] if self._deadlines else None

    def greeting(self, now: float) -> list[Buffer] | None:
        """The HEARTBEAT with this socket's window to send before a request, when the broker may not know it.

        That is before the first request on a fresh connection, and after a whole interval of silence (a
        broker may forget a socket that was quiet with nothing pending). None when the broker knows it.
        """
        if self._greeted and now - self._last_sent < self.interval:
            return None
        return self._heartbeat(now)

    def cancel(self, corr: int) -> list[Buffer] | None:
        """The caller gave up on ``corr``: forget it; the CANCEL to send, if the broker may hold it."""
        call = self.pending.pop(corr, None)
        if call is None or not call.sent or not self.connected:
            return None
        self.stats["cancels_sent"] += 1
        return wire.client_cancel(corr)

    def close(self, reason: str) -> list[Outcome]:
        """Fail every pending call with BrokerUnavailable(``reason``)."""
        calls = list(self.pending.values())
        self.pending.clear()
        self._backlog.clear()
        self._deadlines.clear()
        return [Outcome(call, error=self._unavailable(reason, call)) for call in calls]

    # --- what the broker sends ---------------------------------------------------------

    def received(self, frames: list[Buffer], now: float) -> Outcome | None:
        """A message from the broker; the call it answers, if any is still pending."""
        self._last_heard = now
        self._awaiting_since = None  # any message proves the broker alive
        try:
            answer = wire.parse_for_client(frames)
        except ProtocolError as exc:
            self.stats["malformed"] += 1
            log.warning("dropped a malformed message from the broker at %s: %s", self.address, exc)
            return self._malformed(frames, exc)
        if isinstance(answer, wire.HeartbeatToClient):
            return None
        call = self.pending.pop(answer.corr, None)
        if call is None:
            self.stats["late_replies"] += 1
            log.debug("discarded the answer to %#x: its call timed out or was cancelled", answer.corr)
            return None
        if answer.error is not None:
            error = remote_error(answer.error, call.service, call.method)
            return Outcome(call, error=lost(error) if call.via_handle else error)
        try:
            arrays = from_wire if call.shm is None else call.shm.from_wire
            handles = None if self.handles is None else functools.partial(self.handles, call.service)
            return Outcome(call, unpack_value(answer.payload, arrays=arrays, handles=handles))
        except ProtocolError as exc:
            return Outcome(call, error=exc)

    def _malformed(self, frames: list[Buffer], exc: ProtocolError) -> Outcome | None:
        """An unreadable answer that still names a pending call fails it, rather than leave it waiting."""
        corr = wire.corr_of(frames, wire.CLIENT_PROTOCOL)
        call = None if corr is None else self.pending.pop(corr, None)
        if call is None:
            return None
        error = ProtocolError(f"the broker's answer to {call.service}.{call.method} is malformed: {exc}")
        return Outcome(call, error=error)

    # --- the connection ----------------------------------------------------------------

    def connection_made(self, now: float) -> None:
        """The handshake completed: requests may go out."""
        self.connected = True
        self._greeted = False
        self._last_heard = now
        self._awaiting_since = None
        if self.handshake_problem:
            log.info("connected to the broker at %s", self.address)
        self.handshake_problem = ""
        self.refused = False

    def connection_lost(self, now: float, note: str = "") -> list[Outcome]:
        """The connection dropped: the calls it carried are lost (calls not yet sent wait for the next one).

        Read what arrived before the drop first: those answers still count. Then open a fresh socket.
        ``note`` says more about what this connection carried, for the callers' errors.
        """
        lost = [call for call in self.pending.values() if call.sent]
        for call in lost:
            del self.pending[call.corr]
        if lost or self.watch_broker:
            log.warning("lost the connection to the broker at %s; %d call(s) failed", self.address, len(lost))
        self._reset(now)
        return [
            Outcome(
                call,
                error=self._unavailable(
                    f"lost the connection to the broker at {self.address} while {call.service}.{call.method} "
                    f"was pending{note}; it may or may not have run",
                    call,
                ),
            )
            for call in lost
        ]

    def handshake_failed(self, problem: str, refused: bool) -> None:
        """A handshake failed; a refusal (unlike a dropped connection) fails waiting calls at the next tick."""
        if problem != self.handshake_problem:
            log.warning("broker at %s: %s", self.address, problem)
        self.handshake_problem = problem
        self.refused = refused

    def _reset(self, now: float) -> None:
        self.stats["reconnects"] += 1
        self.connected = False
        self._down_since = now
        self._last_heard = now
        self._awaiting_since = None

    # --- the clock ---------------------------------------------------------------------

    def tick(self, now: float) -> Tick:
        """Deadlines, heartbeats and the broker's liveness, as of ``now``."""
        sends: list[list[Buffer]] = []
        ended: list[Outcome] = []
        if now - self._last_tick > self.interval:
            # Nobody watched this connection for a while (its driver was busy elsewhere), so no heartbeat
            # went out either: the broker's silence so far proves nothing. Ask again, and count from now.
            self._awaiting_since = None
        self._last_tick = now
        self._expire_deadlines(now, sends, ended)
        reopen = False
        if self.connected:
            if self.watch_broker and self._awaiting_since is not None and now - self._awaiting_since > self.window:
                ended += self._broker_silent(now - self._last_heard, now)
                reopen = True
            elif now - self._last_ping >= self.interval and (
                now - self._last_heard >= self.interval or now - self._last_sent >= self.interval
            ):
                sends.append(self._heartbeat(now))
        elif self._backlog:
            ended += self._expire_backlog(now)
        return Tick(sends, ended, reopen)

    def _expire_deadlines(self, now: float, sends: list[list[Buffer]], ended: list[Outcome]) -> None:
        deadlines, pending = self._deadlines, self.pending
        while deadlines and deadlines[0][0] <= now:
            when, corr = heapq.heappop(deadlines)
            call = pending.get(corr)
            if call is None:
                continue
            if call.sent and when == call.deadline:  # the broker holds it: wait a grace period for its answer
                heapq.heappush(deadlines, (when + self.grace, corr))
                continue
            del pending[corr]
            ended.append(Outcome(call, error=self._timeout(call)))
            if call.sent and self.connected:  # drop it from the broker's queue if it is still there
                self.stats["cancels_sent"] += 1
                sends.append(wire.client_cancel(corr))
        if len(deadlines) > 1024 and len(deadlines) > 4 * len(pending):
            self._deadlines = [entry for entry in deadlines if entry[1] in pending]  # answered calls' entries
            heapq.heapify(self._deadlines)

    def _timeout(self, call: Call) -> Timeout:
        """The backstop: the broker never answered past the deadline, or never got the request."""
        self.stats["timeouts"] += 1
        if call.sent:
            why = f"and the broker sent no answer for it {self.grace:g} s past the deadline"
        else:
            why = f"and it never reached the broker at {self.address} (no connection yet)"
            if self.handshake_problem:
                why += f": {self.handshake_problem}"
        return Timeout(
            f"{call.service}.{call.method} did not answer within {call.timeout:g} s, {why}",
            service=call.service,
            method=call.method,
            timeout=call.timeout,
        )

    def _broker_silent(self, silence: float, now: float) -> list[Outcome]:
        log.warning(
            "no answer from the broker at %s for %.1f s; failing %d call(s) and reconnecting",
            self.address,
            silence,
            len(self.pending),
        )
        ended = self.close(f"no answer from the broker at {self.address} for {silence:.1f} s")
        self._reset(now)
        return ended

    def _expire_backlog(self, now: float) -> list[Outcome]:
        """Fail calls that found no connection to go out on within the liveness window.

        All of them at once when the broker refused the handshake: waiting would not change that.
        """
        backlog, pending = self._backlog, self.pending
        limit = -math.inf if self.refused else self.window
        ended = []
        while backlog and now - max(backlog[0].created, self._down_since) > limit:
            call = backlog.popleft()
            if pending.pop(call.corr, None) is call:
                ended.append(Outcome(call, error=self._unavailable(self._unreachable(), call)))
        return ended

    def _unreachable(self) -> str:
        if self.refused:
            return f"cannot connect to the broker at {self.address}: {self.handshake_problem}"
        if self.handshake_problem:
            return f"no connection to the broker at {self.address} for {self.window:g} s: {self.handshake_problem}"
        return (
            f"nothing answers at {self.address}: no broker accepted a connection there for {self.window:g} s "
            "(is the pool running, and is this its address?)"
        )

    def _heartbeat(self, now: float) -> list[Buffer]:
        self._greeted = True
        self._last_ping = now
        self._note_sent(now)
        return wire.client_heartbeat(self.window)

    def _note_sent(self, now: float) -> None:
        self._last_sent = now
        if self._awaiting_since is None:
            self._awaiting_since = now

    def _unavailable(self, message: str, call: Call) -> BrokerUnavailable:
        return unavailable(self.address, message, call)
