"""``Pool``: a broker and its supervised workers, running in the background.

``with Pool.from_config("config/pool.toml") as pool:`` binds the sockets,
starts every worker, and returns once all of them are ready, so the first
call never waits for a cold start. Leaving the block stops the workers and
removes the per-run folder that holds the ipc sockets.

A pool outlives the thread that started it and dies with its process: the
workers are spawned by the broker loop's own thread. A pool still running at
interpreter exit is stopped then. A pool started from the main thread while
SIGTERM has its default action turns SIGTERM into ``SystemExit``, so ``with``
blocks unwind and the pool stops cleanly; a handler the application set is
left alone. What SIGKILL leaves behind, the next start removes
(:mod:`broker.rundir`).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

import zmq
from zmq.auth.thread import ThreadAuthenticator

from client import Client
from protocol import ConfigError, PoolStartError

from .config import PoolConfig, load_config
from .core import BrokerCore, ServicePolicy
from .loop import BrokerLoop
from .rundir import RunDir
from .security import CurveServer, start_authenticator
from .supervisor import Supervisor, make_worker_source

log = logging.getLogger(__name__)

__all__ = ["Pool"]

_HWM = 100_000

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


class Pool:
    """A running broker with its worker pool; see the module docstring."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self._context: zmq.Context[Any] | None = None
        self._loop: BrokerLoop | None = None
        self._thread: threading.Thread | None = None
        self._run_dir: RunDir | None = None
        self._auth: ThreadAuthenticator | None = None
        self._curve: CurveServer | None = None
        self.address = ""
        """The frontend endpoint clients connect to."""
        self.backend_address = ""
        self._owner_pid = 0

    @classmethod
    def from_config(cls, source: str | Path | Mapping[str, Any] | None = None, *, start: bool = True) -> Pool:
        """A pool for a TOML file, a dict, or (None) the embedded default; started unless ``start=False``."""
        pool = cls(load_config(source))
        return pool.start() if start else pool

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> Pool:
        if self._thread is not None:
            raise RuntimeError("the pool is already started")
        self._run_dir = RunDir()
        self._owner_pid = os.getpid()
        _running.add(self)
        self._own_sigterm()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        assert self._run_dir is not None
        self._context = zmq.Context()
        worker_curve = self._start_curve()
        frontend = self._router(self.config.frontend, "frontend")
        backend = self._router(self.config.backend, "backend")
        self.address = frontend.getsockopt_string(zmq.LAST_ENDPOINT)
        self.backend_address = backend.getsockopt_string(zmq.LAST_ENDPOINT)
        if not backend.curve_server:
            worker_curve = None
        supervisor = Supervisor(self.config, self.backend_address, make_worker_source(self._run_dir.path), worker_curve)
        supervisor.check_interpreters()
        core = BrokerCore(
            [ServicePolicy(s.name, s.idempotent, s.queue_limit, s.prefetch) for s in self.config.services],
            heartbeat_interval=self.config.heartbeat_interval,
            heartbeat_liveness=self.config.heartbeat_liveness,
            kill_grace=self.config.kill_grace,
        )
        self._loop = BrokerLoop(core, supervisor, frontend, backend)
        self._thread = threading.Thread(target=self._loop.run, name="dllpool-broker", daemon=True)
        self._thread.start()
        self.wait_ready(self.config.ready_timeout)
        log.info(
            "pool ready at %s: %s", self.address, ", ".join(f"{s.name} x{s.workers}" for s in self.config.services)
        )

    def _start_curve(self) -> dict[str, str] | None:
        """Load the pool's keys and start the ZAP handler; the key pair this run's workers use."""
        if self.config.curve_secret_key is None:
            return None
        assert self._context is not None
        self._curve = CurveServer.from_files(
            Path(self.config.curve_secret_key), [Path(p) for p in self.config.curve_clients]
        )
        worker_public, worker_secret = zmq.curve_keypair()
        self._auth = start_authenticator(self._context, {*self._curve.allowed, worker_public})
        return {
            "server_public": self._curve.public.decode("ascii"),
            "public": worker_public.decode("ascii"),
            "secret": worker_secret.decode("ascii"),
        }

    def _router(self, endpoint: str | None, name: str) -> zmq.Socket[Any]:
        assert self._context is not None and self._run_dir is not None
        if endpoint is None:
            endpoint = f"ipc://{self._run_dir.path}/{name}" if os.name == "posix" else "tcp://127.0.0.1:*"
        self._check_exposure(endpoint)
        sock: zmq.Socket[Any] = self._context.socket(zmq.ROUTER)
        sock.router_mandatory = True
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = _HWM
        sock.maxmsgsize = self.config.max_message_size
        if self._curve is not None and endpoint.startswith("tcp://"):
            self._curve.apply(sock)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise ConfigError(f"cannot bind the {name} to {endpoint}: {exc}") from None
        return sock

    def _check_exposure(self, endpoint: str) -> None:
        """Refuse to listen beyond this host without authentication."""
        parts = urlsplit(endpoint)
        if parts.scheme != "tcp" or self.config.insecure or self._curve is not None:
            return
        host = (parts.hostname or "").strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(
                f"{endpoint} is reachable from other hosts and would accept any caller. Bind 127.0.0.1 "
                "(or an ipc:// endpoint), or create keys with `dllpool keys` and set curve_secret_key and "
                "curve_clients under [pool], or set insecure = true under [pool] if the network is trusted"
            )

    def stop(self, grace: float = 5.0) -> None:
        """Let running calls finish within ``grace`` seconds, answer the rest, stop every worker."""
        if self._loop is not None and self._thread is not None:
            self._loop.grace = grace
            self._loop.stop_requested.set()
            self._thread.join()
        if self._loop is not None:
            self._loop.frontend.close(linger=0)
            self._loop.backend.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self._context is not None:
            self._context.destroy(linger=0)
        for endpoint in (self.address, self.backend_address):
            if endpoint.startswith("ipc://"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(endpoint.removeprefix("ipc://"))
        if self._run_dir is not None:
            self._run_dir.remove()
        self._loop = self._thread = self._context = self._run_dir = self._auth = None
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
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- use ------------------------------------------------------------------------

    def client(self, timeout: float | None = None, **options: Any) -> Client:
        """A Client connected to this pool's frontend."""
        return Client(self.address, timeout, **options)

    def worker_pids(self, service: str | None = None) -> list[int]:
        """PIDs of the workers that are registered and ready."""
        loop = self._require_loop()
        with loop.lock:
            return loop.core.worker_pids(service)

    def workers(self) -> list[dict[str, Any]]:
        """Each ready worker's READY report: service, pid, pointer_size, python, threads, methods."""
        loop = self._require_loop()
        with loop.lock:
            return loop.core.workers()

    def stats(self) -> dict[str, int]:
        loop = self._require_loop()
        with loop.lock:
            return dict(loop.core.stats)

    def kill_worker(self, pid: int) -> None:
        """Kill one worker process (for tests and chaos drills); the supervisor replaces it."""
        loop = self._require_loop()
        with loop.lock:
            loop.supervisor.kill(pid, "asked to by the pool's owner")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every service has all its workers ready (at start, or after crashes)."""
        loop = self._require_loop()
        timeout = self.config.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        wanted = {s.name: s.workers for s in self.config.services}
        while True:
            with loop.lock:
                ready = {name: loop.core.ready_workers(name) for name in wanted}
                failure = loop.supervisor.startup_failure()
            if all(ready[name] >= count for name, count in wanted.items()):
                return
            if failure is not None:
                raise failure.with_traceback(None)  # the stored error, without earlier raises' frames
            if loop.stopped.is_set():
                raise PoolStartError(
                    f"the broker loop stopped while workers were starting: {loop.failure or 'it was asked to stop'}"
                )
            if time.monotonic() >= deadline:
                missing = ", ".join(f"{n}: {ready[n]}/{c}" for n, c in wanted.items() if ready[n] < c)
                raise PoolStartError(
                    f"workers not ready after {timeout:.1f} s ({missing} ready); "
                    "raise [pool] ready_timeout if the library is slow to load"
                )
            time.sleep(0.01)

    def _require_loop(self) -> BrokerLoop:
        if self._loop is None:
            raise RuntimeError("the pool is not running; use start() or a with block")
        return self._loop
