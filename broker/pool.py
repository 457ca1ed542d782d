"""``Pool``: a broker and its supervised workers, running in the background.

``with Pool.from_config("config/pool.toml") as pool:`` binds the sockets,
starts every worker, and returns once all of them are ready, so the first
call never waits for a cold start. Leaving the block stops the workers and
removes the per-run folder that holds the ipc sockets.

The broker runs either in a thread of this process (``broker="thread"``,
:mod:`broker.inprocess`) or in a child process of its own
(``broker="process"``, :mod:`broker.hosted`), where its Python code does not
compete with the caller's threads for this interpreter's GIL. Both give the
same API, errors and guarantees; :data:`DEFAULT_BROKER` picks one.

A pool outlives the thread that started it and dies with its process: the
workers are spawned by the broker loop's own thread, and a broker process
stops when its owner goes away (its stdin closes). A pool still running at
interpreter exit is stopped then. A pool started from the main thread while
SIGTERM has its default action turns SIGTERM into ``SystemExit``, so ``with``
blocks unwind and the pool stops cleanly; a handler the application set is
left alone. What SIGKILL leaves behind, the next start removes
(:mod:`broker.rundir`).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType, TracebackType
from typing import Any, Literal, Protocol

import client as client_package  # its clients (and asyncio with AsyncClient) load when first used
from protocol import BrokerUnavailable, ConfigError, PoolStartError

from .config import PoolConfig, load_config
from .hosted import HostedBroker
from .inprocess import DEFAULT_GRACE, NOT_RUNNING, InProcessBroker, Readiness

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_BROKER", "BrokerKind", "Pool", "wait_scaled"]

BrokerKind = Literal["thread", "process"]
DEFAULT_BROKER: BrokerKind = "process"
"""Where a pool's broker runs unless ``broker=`` says. A process of its own measured faster on
bench/compare.py (docs/performance.md): in a thread, the broker and the caller's threads take turns
at one GIL, and pyzmq releases and re-takes it around every frame it sends or receives."""

_running: set[Pool] = set()
"""Pools started and not yet stopped: referenced here so that each is stopped at interpreter exit."""
_sigterm_owners: set[Pool] = set()
"""Running pools that rely on :func:`_on_sigterm` (started from the main thread while SIGTERM was SIG_DFL)."""


@atexit.register
def _stop_running_pools() -> None:
    for pool in list(_running):
        if pool._owner_pid == os.getpid():  # a forked child must not tear down its parent's pool
            pool.stop()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into ``SystemExit`` in the main thread, so ``with`` blocks unwind and pools stop."""
    if not _sigterm_owners:  # its pools stopped from threads that could not put SIG_DFL back
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    log.warning("SIGTERM received; stopping the pool")
    raise SystemExit(128 + signum)


def wait_scaled(client: client_package.Client, service: str, timeout: float) -> int:
    """Wait until the workers ``service`` was scaled to are ready (its own: not those of other hosts, nor those
    still being retired, such as a session's), at most ``timeout`` seconds; how many are ready then."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.status()["services"][service]
        if (state["ready"] == state["target"] and not state["starting"]) or time.monotonic() >= deadline:
            return int(state["ready"])
        time.sleep(0.02)


class _Broker(Protocol):
    """What a Pool needs from where its broker runs: :class:`InProcessBroker` or :class:`HostedBroker`."""

    address: str
    backend_address: str

    def start(self) -> None: ...
    def stop(self, grace: float) -> None: ...
    def worker_pids(self, service: str | None = None) -> list[int]: ...
    def workers(self) -> list[dict[str, Any]]: ...
    def stats(self) -> dict[str, int]: ...
    def kill_worker(self, pid: int) -> None: ...
    def readiness(self) -> Readiness: ...


class Pool:
    """A running broker with its worker pool; see the module docstring.

    With ``broker="process"``, a broker process that ended on its own (killed, crashed) makes every
    method but :meth:`stop` raise :class:`BrokerUnavailable`, as its clients' calls do; :meth:`start`
    raises :class:`PoolStartError` if that happens while the pool starts.
    """

    def __init__(
        self, config: PoolConfig | str | os.PathLike[str] | Mapping[str, Any], broker: BrokerKind = DEFAULT_BROKER
    ) -> None:
        """A pool of ``config``: a PoolConfig, or what :func:`load_config` reads (a TOML file's path, a dict);
        not started (:meth:`start`, or use it as a context manager)."""
        if broker not in ("thread", "process"):
            raise ConfigError(f"broker must be 'thread' or 'process', not {broker!r}")
        self.config = load_config(config)
        self.broker = broker
        self._broker: _Broker | None = None
        self.address = ""
        """The frontend endpoint clients connect to."""
        self.backend_address = ""
        self._owner_pid = 0

    @classmethod
    def from_config(
        cls,
        source: str | os.PathLike[str] | Mapping[str, Any] | PoolConfig | None = None,
        *,
        start: bool = True,
        broker: BrokerKind = DEFAULT_BROKER,
    ) -> Pool:
        """A pool for a TOML file, a dict, a PoolConfig or (None) the embedded default; started unless
        ``start=False``."""
        pool = cls(load_config(source), broker)
        return pool.start() if start else pool

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> Pool:
        if self._broker is not None:
            raise RuntimeError("the pool is already started")
        self._owner_pid = os.getpid()
        _running.add(self)
        self._own_sigterm()
        self._broker = InProcessBroker(self.config) if self.broker == "thread" else HostedBroker(self.config)
        try:
            self._broker.start()
            self.address, self.backend_address = self._broker.address, self._broker.backend_address
            self.wait_ready(self.config.ready_timeout)
        except BrokerUnavailable as exc:
            self.stop()
            raise PoolStartError(exc.message) from None
        except BaseException:
            self.stop()
            raise
        log.info(
            "pool ready at %s: %s", self.address, ", ".join(f"{s.name} x{s.workers}" for s in self.config.services)
        )
        return self

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Let running calls finish within ``grace`` seconds, answer the rest, stop every worker."""
        if self._broker is not None:
            self._broker.stop(grace)
            self._broker = None
        _running.discard(self)
        self._release_sigterm()

    def _own_sigterm(self) -> None:
        """Take over SIGTERM if nobody else handles it (only the main thread may set handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, _on_sigterm):
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_owners.add(self)

    def _release_sigterm(self) -> None:
        """Give SIGTERM back its default action once the last pool relying on our handler stops."""
        _sigterm_owners.discard(self)
        if (
            not _sigterm_owners
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is _on_sigterm
        ):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def __enter__(self) -> Pool:
        """Start the pool unless it already runs (``Pool.from_config(..., start=False)`` in a ``with``)."""
        if self._broker is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- use ------------------------------------------------------------------------

    def client(self, timeout: float | None = None, **options: Any) -> client_package.Client:
        """A Client connected to this pool's frontend, with the configuration's ``shared_memory_min`` unless
        ``options`` say."""
        options.setdefault("shared_memory_min", self.config.shared_memory_min)
        return client_package.Client(self.address, timeout, **options)

    def async_client(self, timeout: float | None = None, **options: Any) -> client_package.AsyncClient:
        """An AsyncClient connected to this pool's frontend (make it in a coroutine), with the configuration's
        ``shared_memory_min`` unless ``options`` say."""
        options.setdefault("shared_memory_min", self.config.shared_memory_min)
        return client_package.AsyncClient(self.address, timeout, **options)

    def worker_pids(self, service: str | None = None) -> list[int]:
        """PIDs of the workers that are registered and ready."""
        return self._require_broker().worker_pids(service)

    def workers(self) -> list[dict[str, Any]]:
        """Each ready worker's READY report: service, pid, pointer_size, python, threads, methods."""
        return self._require_broker().workers()

    def stats(self) -> dict[str, int]:
        """The broker's event counts (requests, replies, busy, late_replies, clients_forgotten, dropped_unrun,
        ...) and gauges of what it holds now: ``pending`` calls, ``clients`` with calls pending, ``held_bytes``."""
        return self._require_broker().stats()

    def kill_worker(self, pid: int) -> None:
        """Kill one worker process (for tests and chaos drills); the supervisor replaces it."""
        self._require_broker().kill_worker(pid)

    def status(self) -> dict[str, Any]:
        """What ``dllpool status`` shows: see :meth:`client.Client.status`."""
        with self.client() as client:
            return client.status()

    def scale(self, service: str, workers: int, wait: bool = True) -> int:
        """Run ``workers`` workers for ``service`` from now on; the number it will run.

        Scaling down retires idle workers first and lets busy ones finish their calls: no call fails or is
        lost. With ``wait``, returns once exactly that many are ready (``ready_timeout`` at most).
        """
        self._require_broker()
        with self.client() as client:
            target = client.scale(service, workers)
            if wait and wait_scaled(client, service, self.config.ready_timeout) != target:
                failure = self._require_broker().readiness().failure
                raise failure or PoolStartError(
                    f"service {service!r} did not get its {target} workers ready in {self.config.ready_timeout:.1f} s"
                )
        return target

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every service has all its workers ready (at start, or after crashes)."""
        broker = self._require_broker()
        timeout = self.config.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            state = broker.readiness()
            ready, wanted = state.ready, state.wanted
            if all(ready[name] >= count for name, count in wanted.items()):
                return
            if state.failure is not None:
                raise state.failure.with_traceback(None)  # the stored error, without earlier raises' frames
            if state.stopped is not None:
                raise PoolStartError(f"the broker loop stopped while workers were starting: {state.stopped}")
            if time.monotonic() >= deadline:
                missing = ", ".join(f"{n}: {ready[n]}/{c}" for n, c in wanted.items() if ready[n] < c)
                raise PoolStartError(
                    f"workers not ready after {timeout:.1f} s ({missing} ready); "
                    "raise [pool] ready_timeout if the library is slow to load"
                )
            time.sleep(0.01)

    def _require_broker(self) -> _Broker:
        if self._broker is None:
            raise RuntimeError(NOT_RUNNING)
        return self._broker
