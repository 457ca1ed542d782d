"""The broker's socket loop: moves frames between the sockets and the core.

All decisions live in :class:`broker.core.BrokerCore`; this loop only polls,
receives, hands events to the core, and carries out the actions it returns.
It also maps ZeroMQ's delivery failures (``ROUTER_MANDATORY``) back into
core events, and never lets an exception out: a peer cannot crash it.

Nothing a peer sends can hold the loop for long. Each batch of messages is
bounded in count and in time; a client message is read frame by frame and
stops being kept past ``max_request_frames`` frames or ``max_request_bytes``
bytes: its other frames are read and dropped a slice at a time, with the
backend and the clock served between slices, and the core refuses it. When
the loop could not watch its sockets for longer than a heartbeat interval
anyway (the process was stopped, a long GC, a swap storm), it tells the core,
so peers are not judged on a silence it could not observe.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from client import shm
from protocol import BadRequest, Buffer, error_to_wire, pack_value, transport
from protocol import frames as wire

from .autoscale import Autoscaler, Load
from .config import MAX_WORKERS
from .core import Action, BrokerCore, KillWorker, Retire, Scale, ToClient, ToWorker
from .security import HandshakeWatch
from .supervisor import Supervisor

log = logging.getLogger(__name__)

__all__ = ["SWEEP_SECONDS", "BrokerLoop", "TICK"]

TICK = 0.05
"""Seconds between supervisor polls and core ticks: bounds how late a crash or deadline is noticed."""
_PAUSE_MIN = 4 * TICK
"""The shortest gap between looks at the sockets that counts as a pause, whatever the heartbeat interval: an idle
poll alone takes a TICK."""

_BATCH = 256
"""Messages taken from one socket before looking at the other: neither side can starve the other."""
_BATCH_SECONDS = 0.02
"""Longest the loop spends on one socket's messages before it looks at the other socket and the clock: big
messages count, not only many."""
_REASSURE_MIN = 0.1
"""Seconds between two reassurances of the clients while a message is dropped, at least: clients whose liveness
window is 0.3 s or more keep the broker (whatever window a client declares, it costs at most ten a second)."""
_DISCARD_SLICE = 1024
"""Frames of a refused message dropped between looks at the clock."""
SWEEP_SECONDS = 2.0
"""Seconds between looks for shared-memory segments whose client process died (one listing of /dev/shm)."""

_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_COPIED = 1
"""The header (with a body under ``JOIN_LIMIT`` joined to it) arrives as ``bytes``; later frames, a big body
and the out-of-band buffers, as zero-copy views."""


@dataclass(eq=False)
class _Unread:
    """A client message the loop stopped keeping past a limit: the rest of its frames are still to be dropped."""

    ident: bytes
    header: Buffer
    frames: int
    size: int
    setting: str
    """The limit it passed: ``max_request_frames`` or ``max_request_bytes``."""
    reassure_at: float = 0.0
    """When the other clients are next told that the broker is alive (see :meth:`BrokerLoop._reassure_clients`)."""


class BrokerLoop:
    """Owns the frontend and backend ROUTER sockets once :meth:`run` starts."""

    def __init__(
        self,
        core: BrokerCore,
        supervisor: Supervisor,
        frontend: zmq.Socket[Any],
        backend: zmq.Socket[Any],
        watches: Sequence[HandshakeWatch] = (),
    ) -> None:
        self.core = core
        self.supervisor = supervisor
        self.frontend = frontend
        self.backend = backend
        self.watches = tuple(watches)
        """The monitors of the CURVE sockets: refused handshakes never reach the core, so the loop counts them."""
        self.limits: dict[str, float] = {
            "max_request_frames": core.max_request_frames or math.inf,
            "max_request_bytes": core.max_request_bytes or math.inf,
        }
        """The core's limits on one request, which the loop applies while it reads (no limit: infinite)."""
        self.lock = threading.Lock()
        """Held while the core changes; other threads take it to read the core's state."""
        self.stop_requested = threading.Event()
        self.stopped = threading.Event()
        self.grace = 5.0
        self.failure: str | None = None
        """Why :meth:`run` ended on an error."""
        self._next_tick = 0.0
        self._next_forget = 0.0
        self._next_sweep = 0.0
        self._watched = 0.0
        """When the loop last looked at its sockets (a poll returned)."""
        self._stall = max(core.heartbeat_interval, _PAUSE_MIN)
        """A longer time without looking at them is a stall, which no peer is judged on (:meth:`_watch`)."""
        self._unread: _Unread | None = None
        self._clients: dict[bytes, float] = {}
        """Frontend peers by when they were last heard: the clients to reassure while one message holds the socket."""
        self.autoscalers = {
            s.name: Autoscaler(s.min_workers, s.max_workers, s.autoscale_wait, s.autoscale_cooldown)
            for s in supervisor.config.services
            if s.autoscaled
        }
        self._started = time.monotonic()
        self._host = socket.gethostname()
        """This host's name as workers report it: workers with another are not this supervisor's."""
        core.supervision = self._supervision

    def run(self) -> None:
        """Start the workers, serve until asked to stop, then stop them.

        Every worker is spawned from this thread: Linux sends a worker its parent-death signal when the
        *thread* that forked it ends, and this thread lives exactly as long as the pool, whichever
        thread started the pool.
        """
        try:
            with self.lock:
                self.supervisor.start_all()
            self._serve()
            self._shut_down()
        except Exception as exc:  # the last line of defence: log, then still stop the workers
            log.exception("the broker loop failed")
            self.failure = f"{type(exc).__name__}: {exc}"
            self.supervisor.stop_all()
        finally:
            self.stopped.set()

    def _serve(self) -> None:
        poll_items = self._poll_items()
        self._watched = time.monotonic()
        while not self.stop_requested.is_set():
            self._step(poll_items)

    def _poll_items(self) -> list[tuple[zmq.Socket[Any], int]]:
        """What :func:`zmq.zmq_poll` watches: a ``zmq.Poller`` adds a Python function call to every poll."""
        return [(sock, _POLLIN) for sock in (self.frontend, self.backend, *(w.monitor for w in self.watches))]

    def _step(self, poll_items: list[tuple[zmq.Socket[Any], int]]) -> None:
        # Wait no longer than the next tick: a busy socket must not push the supervisor's poll (a crash noticed,
        # its replacement started) a whole TICK past when it is due.
        wait = 0 if self._unread is not None else max(0, math.ceil(1000 * (self._next_tick - time.monotonic())))
        events = dict(zmq.zmq_poll(poll_items, wait))
        self._watch(time.monotonic())
        if self.backend in events:
            self._drain_backend()
        if self._unread is not None or self.frontend in events:
            self._read_frontend(self.frontend in events)
        now = time.monotonic()
        for watch in self.watches:
            if watch.monitor in events:
                watch.drain(now)
        self._watch(now)  # a stall while handling (a GC, a stop, the GIL held by another thread) counts too
        if now >= self._next_tick:
            self._next_tick = now + TICK
            self._tick(now)

    def _watch(self, now: float) -> None:
        """The loop looks at its sockets now; if it could not for a while, no peer is judged on that silence."""
        unwatched = now - self._watched
        self._watched = now
        if unwatched <= self._stall:
            return
        log.warning(
            "the broker could not watch its sockets for %.1f s (was it stopped, or starved of CPU?); "
            "every peer gets a fresh liveness window",
            unwatched,
        )
        with self.lock:
            self.core.paused(now)

    def _tick(self, now: float) -> None:
        with self.lock:
            actions: list[Action] = []
            exits = self.supervisor.poll(now)
            for pid in self.supervisor.take_late():  # first: an exit this same poll reports must find it known
                actions += self.core.stop_unowned(self._host, pid, now)
            for exit_ in exits:
                actions += self.core.worker_exited(exit_.pid, exit_.returncode, now)
            actions += self.core.tick(now)
            self.supervisor.mark_ready(set(self.core.worker_pids()))
            self._execute(actions, now)
            self.supervisor.reap_leaving(self.core.has_worker, now)
            self._autoscale(now)
        if now >= self._next_forget:
            self._next_forget = now + self.core.heartbeat_interval
            since = now - self.core.heartbeat_interval * self.core.heartbeat_liveness
            self._clients = _heard_since(self._clients, since)
        if now >= self._next_sweep:  # the first tick sweeps too: what clients killed before this start left
            self._next_sweep = now + SWEEP_SECONDS
            shm.sweep()

    def _drain_backend(self) -> None:
        deadline = time.monotonic() + _BATCH_SECONDS
        for ident, *frames in transport.drain(self.backend, _BATCH, copied=2):  # copied=2: the routing ID is bytes
            if self._handle(self.core.worker_message, ident, frames) >= deadline:  # type: ignore[arg-type]
                return

    def _read_frontend(self, readable: bool) -> None:
        """Client messages until the socket is empty or the batch's count or time is used up; a message being
        dropped (``_unread``) is finished first, a slice at a time."""
        deadline = time.monotonic() + _BATCH_SECONDS
        ask = not readable  # the first message is taken without asking when the poll said there is one
        for _ in range(_BATCH):
            if self._unread is None:
                if ask and not int(self.frontend.getsockopt(_EVENTS)) & _POLLIN:
                    return
                ask = True
                try:
                    message = self._recv_client()
                except zmq.Again:  # a spurious wake-up
                    return
                if message is not None:
                    now = self._handle(self.core.client_message, *message)
                    self._clients[message[0]] = now
                    if now >= deadline:
                        return
                    continue
            if not self._drop_rest(deadline):
                self._reassure_clients()
                return
            self._refuse()

    def _recv_client(self) -> tuple[bytes, list[Buffer]] | None:
        """One client message, or None once it passed a limit (then ``_unread`` holds what was read of it)."""
        sock = self.frontend
        recv = sock.recv
        frame = recv(_NOBLOCK, copy=False)  # its ``more`` is cheaper than getsockopt(RCVMORE) (protocol.transport)
        ident = frame.bytes
        frames: list[Buffer] = []
        size = 0
        max_frames, max_bytes = self.limits["max_request_frames"], self.limits["max_request_bytes"]
        while frame.more:
            if len(frames) == max_frames:
                self._unread = _Unread(ident, frames[0], len(frames), size, "max_request_frames")
                return None
            frame = recv(_NOBLOCK, copy=False)
            data = frame.bytes if len(frames) < _COPIED else frame.buffer
            frames.append(data)
            size += len(data)
            if size > max_bytes:
                self._unread = _Unread(ident, frames[0], len(frames), size, "max_request_bytes")
                return None
        return ident, frames

    def _drop_rest(self, deadline: float) -> bool:
        """Read and drop frames of the message being refused until its last one (True) or the deadline (False)."""
        unread = self._unread
        assert unread is not None
        sock = self.frontend
        recv = sock.recv
        frames, size = unread.frames, unread.size
        more = bool(sock.getsockopt(_RCVMORE))
        try:
            while more:
                for _ in range(_DISCARD_SLICE):
                    frame = recv(_NOBLOCK, copy=False)
                    frames += 1
                    size += len(frame)
                    if not frame.more:
                        more = False
                        break
                if more and time.monotonic() >= deadline:
                    return False
            return True
        finally:
            unread.frames, unread.size = frames, size

    def _reassure_clients(self) -> None:
        """While a message is being dropped, once a heartbeat interval (or three times within the shortest liveness
        window a client declared, if oftener, down to :data:`_REASSURE_MIN`), a heartbeat to every client heard
        lately, and a fresh liveness window for every client at the core.

        The socket hands out the rest of a message before anything other clients sent, so their heartbeats wait
        behind it; unanswered, they would take the broker for dead, and unheard, the broker would forget them and
        fail their calls.
        """
        unread = self._unread
        assert unread is not None
        now = time.monotonic()
        if now < unread.reassure_at:
            return
        # Three times within the shortest window a client declared, when that is oftener than once an interval.
        every = min(self.core.heartbeat_interval, self.core.shortest_window / 3)
        unread.reassure_at = now + max(every, _REASSURE_MIN)
        self._clients = dict.fromkeys(self._clients, now)  # unheard, not silent: still reassured at the next beat
        with self.lock:
            self.core.clients_unheard(now)
        heartbeat = wire.heartbeat_to_client()
        for ident in self._clients:
            if ident != unread.ident:
                transport.try_send(self.frontend, [ident, *heartbeat])

    def _refuse(self) -> None:
        unread = self._unread
        assert unread is not None
        self._unread = None
        limit = int(self.limits[unread.setting])  # finite: the message passed it
        self._handle(
            self.core.refuse_unread, unread.ident, unread.header, unread.frames, unread.size, unread.setting, limit
        )

    def _handle(self, handler: Callable[..., list[Action]], ident: bytes, *args: Any) -> float:
        """Have the core handle one event from a peer and carry out its actions; returns the time it used."""
        now = time.monotonic()
        with self.lock:
            try:
                actions = handler(ident, *args, now)
            except Exception:  # a bug in the core must not take the broker down with it
                log.exception("failed to handle a message from %s; dropped", bytes(ident).hex())
                return now
            self._execute(actions, now)
        return now

    def _execute(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, ToClient):
                if not transport.try_send(self.frontend, [action.ident, *action.frames]):
                    log.info("client %s went away before its answer was sent; dropped", action.ident.hex())
            elif isinstance(action, ToWorker):
                if not transport.try_send(self.backend, [action.ident, *action.frames]):
                    self._execute(self.core.worker_unreachable(action.ident, now), now)
            elif isinstance(action, KillWorker):
                self.supervisor.kill(action.pid, action.reason)
            elif isinstance(action, Retire):
                if action.host == self._host:  # another host's worker is its own supervisor's to replace
                    self.supervisor.retire(action.pid, action.replace and self.core.accepting, now)
            elif isinstance(action, Scale):
                self._scale_for_client(action, now)

    # --- scaling ----------------------------------------------------------------------

    def scale(self, service: str, workers: int, now: float) -> int:
        """Have ``service`` run ``workers`` workers; the number it will run. Caller holds the lock.

        Up: new slots start at once. Down: slots whose worker is not ready yet go first, then the broker
        retires ready workers, those with least to do first; each finishes what it runs (nothing is lost),
        its slot going at once. An autoscaled service must stay within its ``min_workers``..``max_workers``.
        """
        config = self.supervisor.service(service)
        low, high = (config.min_workers, config.max_workers) if config.autoscaled else (0, MAX_WORKERS)
        if not low <= workers <= high:
            raise BadRequest(
                f"service {service!r} may run {low} to {high} workers, not {workers}"
                + (" (its min_workers and max_workers)" if config.autoscaled else ""),
                service=service,
            )
        current = self.supervisor.target(service)
        if workers > current:
            self.supervisor.add(service, workers - current, now)
        elif workers < current:
            registered = set(self.core.worker_pids(service))
            dropped, starting = self.supervisor.drop_unready(service, current - workers, registered)
            self.core.unwanted.update((self._host, pid) for pid in starting)
            surplus = current - workers - dropped
            if surplus:
                self._execute(self.core.retire(service, surplus, self.supervisor.pids(service), now), now)
        target = self.supervisor.target(service)
        if target != current:
            self.core.reshaped()
            log.info("service %r scaled from %d to %d workers", service, current, target)
        return target

    def _scale_for_client(self, action: Scale, now: float) -> None:
        """Carry out a client's SCALE and answer it: the number of workers, or why not."""
        try:
            answer = wire.reply_to_client(
                action.corr, pack_value({"workers": self.scale(action.service, action.workers, now)})
            )
        except BadRequest as exc:
            answer = wire.error_to_client(action.corr, error_to_wire(exc))
        transport.try_send(self.frontend, [action.ident, *answer])

    def _autoscale(self, now: float) -> None:
        """Grow or shrink the autoscaled services as their load asks. Caller holds the lock."""
        if not self.core.accepting:  # shutting down
            return
        for name, autoscaler in self.autoscalers.items():
            load = Load(
                workers=self.supervisor.target(name),
                starting=self.supervisor.starting(name),
                queued=self.core.queued(name),
                queue_wait=self.core.queue_wait(name, now),
                free_slots=self.core.free_slots(name),
                threads=self.supervisor.service(name).threads,
                leases=self.core.leases_waiting(name),
            )
            target = autoscaler.target(now, load)
            if target != load.workers:
                log.info(
                    "autoscaling %r from %d to %d workers (oldest queued call waited %.3f s)",
                    name,
                    load.workers,
                    target,
                    load.queue_wait,
                )
                self.scale(name, target, now)

    def _supervision(self) -> dict[str, Any]:
        """What the core's status needs from this loop and its supervisor."""
        return {
            "broker": {"pid": os.getpid(), "uptime": time.monotonic() - self._started},
            **self.supervisor.describe(),
        }

    def _shut_down(self) -> None:
        """Finish what is running within the grace period, answer the rest, stop the workers.

        A worker still running a call when the grace period ends is killed at once: a call stuck in C code
        would never let its SIGTERM handler run. The others get SIGTERM, then a heartbeat that wakes them
        from their poll, so they stop now rather than at their next heartbeat.
        """
        with self.lock:
            self.core.stop_accepting()
        deadline = time.monotonic() + self.grace
        poll_items = self._poll_items()
        while self.core.pending() and time.monotonic() < deadline:
            self._step(poll_items)
        with self.lock:
            now = time.monotonic()
            self._execute(self.core.abort_all("the pool shut down first", now), now)
            self.core.kill_grace = 0.0  # the grace period was the last chance of the calls still running
            for action in self.core.tick(now):  # every call is answered: only the workers it would kill matter
                if isinstance(action, KillWorker):
                    self.supervisor.kill(action.pid, "the pool is stopping and its grace period is over")
        self.supervisor.stop_all(wake=self._wake_workers)

    def _wake_workers(self) -> None:
        """A heartbeat to every registered worker: an idle worker that got SIGTERM stops when its poll ends."""
        heartbeat = wire.heartbeat_to_worker()
        with self.lock:
            idents = self.core.worker_idents()
        for ident in idents:
            transport.try_send(self.backend, [ident, *heartbeat])


def _heard_since(peers: dict[bytes, float], since: float) -> dict[bytes, float]:
    """``peers`` without those last heard before ``since``."""
    if all(heard >= since for heard in peers.values()):
        return peers
    return {ident: heard for ident, heard in peers.items() if heard >= since}
