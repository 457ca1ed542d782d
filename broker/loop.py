"""The broker's socket loop: moves frames between the sockets and the core.

All decisions live in :class:`broker.core.BrokerCore`; this loop only polls,
receives, hands events to the core, and carries out the actions it returns.
It also maps ZeroMQ's delivery failures (``ROUTER_MANDATORY``) back into
core events, and never lets an exception out: a peer cannot crash it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq

from protocol import transport

from .core import Action, BrokerCore, KillWorker, ToClient, ToWorker
from .supervisor import Supervisor

log = logging.getLogger(__name__)

__all__ = ["BrokerLoop", "TICK"]

TICK = 0.05
"""Seconds between supervisor polls and core ticks: bounds how late a crash or deadline is noticed."""

_BATCH = 256
"""Messages taken from one socket before looking at the other: neither side can starve the other."""


class BrokerLoop:
    """Owns the frontend and backend ROUTER sockets once :meth:`run` starts."""

    def __init__(
        self, core: BrokerCore, supervisor: Supervisor, frontend: zmq.Socket[Any], backend: zmq.Socket[Any]
    ) -> None:
        self.core = core
        self.supervisor = supervisor
        self.frontend = frontend
        self.backend = backend
        self.lock = threading.Lock()
        """Held while the core changes; other threads take it to read the core's state."""
        self.stop_requested = threading.Event()
        self.stopped = threading.Event()
        self.grace = 5.0
        self.failure: str | None = None
        """Why :meth:`run` ended on an error."""
        self._next_tick = 0.0

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
        poller = self._poller()
        while not self.stop_requested.is_set():
            self._step(poller)

    def _poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        return poller

    def _step(self, poller: zmq.Poller) -> None:
        events = dict(poller.poll(int(TICK * 1000)))
        if self.backend in events:
            self._drain(self.backend, self.core.worker_message)
        if self.frontend in events:
            self._drain(self.frontend, self.core.client_message)
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + TICK
            self._tick(now)

    def _tick(self, now: float) -> None:
        with self.lock:
            actions: list[Action] = []
            for exit_ in self.supervisor.poll(now):
                actions += self.core.worker_exited(exit_.pid, exit_.returncode, now)
            actions += self.core.tick(now)
            self.supervisor.mark_ready(set(self.core.worker_pids()))
            self._execute(actions, now)

    def _drain(self, sock: zmq.Socket[Any], handler: Any) -> None:
        for ident, *frames in transport.drain(sock, _BATCH):
            now = time.monotonic()
            with self.lock:
                try:
                    actions = handler(ident, frames, now)
                except Exception:  # a bug in the core must not take the broker down with it
                    log.exception("failed to handle a message from %s; dropped", bytes(ident).hex())
                    continue
                self._execute(actions, now)

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

    def _shut_down(self) -> None:
        """Finish what is running within the grace period, answer the rest, stop the workers."""
        with self.lock:
            self.core.stop_accepting()
        deadline = time.monotonic() + self.grace
        poller = self._poller()
        while self.core.pending() and time.monotonic() < deadline:
            self._step(poller)
        with self.lock:
            self._execute(self.core.abort_all("the pool shut down first", time.monotonic()), time.monotonic())
        self.supervisor.stop_all()
