"""The broker in a thread of this process: its run folder, sockets, core, supervisor and loop thread.

A :class:`broker.Pool` with ``broker="thread"`` drives one directly; with
``broker="process"`` the child process of :mod:`broker.hosted` drives one.
Either way this is the one place that builds and tears down a broker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import zmq

from protocol import ConfigError, DllPoolError, transport

from .config import PoolConfig
from .core import BrokerCore, ServicePolicy
from .loop import BrokerLoop
from .rundir import RunDir, make_worker_source
from .security import BACKEND, FRONTEND, Allowlist, CurveServer, HandshakeWatch, start_authenticator
from .supervisor import Supervisor

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

    from .early import EarlyStart

__all__ = ["DEFAULT_GRACE", "NOT_RUNNING", "InProcessBroker", "Readiness", "ipc_available"]

_HWM = 100_000
NOT_RUNNING = "the pool is not running; use start() or a with block"
DEFAULT_GRACE = 5.0
"""Seconds a stop lets running calls finish, unless told otherwise."""


@dataclasses.dataclass(frozen=True)
class Readiness:
    """What :meth:`broker.Pool.wait_ready` decides on."""

    ready: dict[str, int]
    """Ready workers per service."""
    wanted: dict[str, int]
    """Workers each service runs or is starting (changed by scaling)."""
    failure: DllPoolError | None
    """Why a worker failed to start, if one did."""
    stopped: str | None
    """Why the broker loop ended, if it did."""


class InProcessBroker:
    """A broker serving from a thread of this process until :meth:`stop`."""

    def __init__(self, config: PoolConfig, early: EarlyStart | None = None) -> None:
        self.config = config
        self._early = early
        """A run folder and zygote a broker process made before importing the broker (:mod:`broker.early`)."""
        self.address = ""
        self.backend_address = ""
        self.thread: threading.Thread | None = None
        """The broker loop's thread: it spawns the workers, whose parent-death signal follows it."""
        self._context: zmq.Context[Any] | None = None
        self._loop: BrokerLoop | None = None
        self._run_dir: RunDir | None = None
        self._auth: ThreadAuthenticator | None = None
        self._curve: CurveServer | None = None

    def start(self) -> None:
        """Bind the sockets and start the workers (without waiting for them); :meth:`stop` undoes a partial start."""
        early, self._early = self._early, None
        zygote = None if early is None else early.zygote
        try:
            self._run_dir = RunDir() if early is None else early.run_dir
            self._context = zmq.Context()
            worker_curve = self._start_curve()
            frontend = self._router(self.config.frontend, FRONTEND)
            backend = self._router(self.config.backend, BACKEND)
            self.address = frontend.getsockopt_string(zmq.LAST_ENDPOINT)
            self.backend_address = backend.getsockopt_string(zmq.LAST_ENDPOINT)
            if not backend.curve_server:
                worker_curve = None
            source = make_worker_source(self._run_dir.path) if early is None else early.source
            supervisor = Supervisor(self.config, self.backend_address, source, worker_curve)
            supervisor.check_interpreters()
            sockets = ((frontend, FRONTEND), (backend, BACKEND))
            watches = [HandshakeWatch(sock, name) for sock, name in sockets if sock.curve_server]
            self._loop = BrokerLoop(core_for(self.config), supervisor, frontend, backend, watches)
            self.thread = threading.Thread(target=self._loop.run, name="dllpool-broker", daemon=True)
            if zygote is not None:
                supervisor.adopt_zygote(zygote)  # the loop, started next, is what stops the supervisor
        finally:
            if zygote is not None:  # a no-op once the supervisor took it over
                zygote.discard()
        self.thread.start()

    def _start_curve(self) -> dict[str, str] | None:
        """Load the pool's keys and start the ZAP handler; the key pair this run's workers use."""
        if self.config.curve_secret_key is None:
            return None
        assert self._context is not None
        self._curve = CurveServer.from_files(
            Path(self.config.curve_secret_key),
            [Path(p) for p in self.config.curve_clients],
            [Path(p) for p in self.config.curve_workers],
        )
        worker_public, worker_secret = zmq.curve_keypair()
        allowed = {FRONTEND: set(self._curve.allowed), BACKEND: {*self._curve.workers, worker_public}}
        self._auth = start_authenticator(self._context, Allowlist(allowed))
        return {
            "server_public": self._curve.public.decode("ascii"),
            "public": worker_public.decode("ascii"),
            "secret": worker_secret.decode("ascii"),
        }

    def _router(self, endpoint: str | None, name: str) -> zmq.Socket[Any]:
        assert self._context is not None and self._run_dir is not None
        if endpoint is None:
            endpoint = f"ipc://{self._run_dir.path}/{name}" if ipc_available() else "tcp://127.0.0.1:*"
        self._check_exposure(endpoint)
        sock: zmq.Socket[Any] = self._context.socket(zmq.ROUTER)
        sock.router_mandatory = True
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = _HWM
        sock.maxmsgsize = self.config.max_message_size
        if self._curve is not None and endpoint.startswith("tcp://"):
            self._curve.apply(sock, name)
        try:
            transport.bind(sock, endpoint, name)
        except ConfigError:
            sock.close()
            raise
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

    def stop(self, grace: float) -> None:
        """Let running calls finish within ``grace`` seconds, answer the rest, stop every worker, clean up."""
        if self._early is not None:  # never started
            self._early.discard()
            self._early = None
        if self._loop is not None and self.thread is not None:
            self._loop.grace = grace
            self._loop.stop_requested.set()
            self.thread.join()
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
        self._loop = self.thread = self._context = self._run_dir = self._auth = None

    # --- state, read under the loop's lock --------------------------------------------

    def worker_pids(self, service: str | None = None) -> list[int]:
        loop = self._require_loop()
        with loop.lock:
            return loop.core.worker_pids(service)

    def workers(self) -> list[dict[str, Any]]:
        loop = self._require_loop()
        with loop.lock:
            return loop.core.workers()

    def stats(self) -> dict[str, int]:
        """The core's counters, and the CURVE handshakes each socket refused (``clients_refused``,
        ``workers_refused``): a peer without an allowed key never reaches the core."""
        loop = self._require_loop()
        refused = {watch.name: watch.refused for watch in loop.watches}
        with loop.lock:
            counters = loop.core.counters()
        return {**counters, "clients_refused": refused.get(FRONTEND, 0), "workers_refused": refused.get(BACKEND, 0)}

    def kill_worker(self, pid: int) -> None:
        loop = self._require_loop()
        with loop.lock:
            loop.supervisor.kill(pid, "asked to by the pool's owner")

    def readiness(self) -> Readiness:
        loop = self._require_loop()
        with loop.lock:
            ready = {s.name: loop.core.ready_workers(s.name) for s in self.config.services}
            wanted = {s.name: loop.supervisor.target(s.name) for s in self.config.services}
            failure = loop.supervisor.startup_failure()
        stopped = (loop.failure or "it was asked to stop") if loop.stopped.is_set() else None
        return Readiness(ready, wanted, failure, stopped)

    def _require_loop(self) -> BrokerLoop:
        if self._loop is None:
            raise RuntimeError(NOT_RUNNING)
        return self._loop


def ipc_available() -> bool:
    """Whether default endpoints can be ``ipc://`` sockets; where not (Windows), they are loopback TCP on a free port.

    libzmq on Windows may build ipc on AF_UNIX, but pyzmq's wheels do not promise it, and a run folder's path can
    pass the length a Unix socket's name may have: loopback TCP always works.
    """
    return os.name == "posix" and zmq.has("ipc")


def core_for(config: PoolConfig) -> BrokerCore:
    """The routing core with the configuration's policies and limits."""
    return BrokerCore(
        [
            ServicePolicy(
                s.name,
                s.idempotent,
                queue_limit=s.queue_limit,
                queue_limit_bytes=s.queue_limit_bytes,
                max_call_seconds=s.max_call_seconds,
                prefetch=s.prefetch,
                session_idle=s.session_idle,
                max_calls_per_worker=s.max_calls_per_worker,
                max_worker_rss=s.max_worker_rss,
                min_free_address_space=s.min_free_address_space if s.bits == 32 else 0,
            )
            for s in config.services
        ],
        heartbeat_interval=config.heartbeat_interval,
        heartbeat_liveness=config.heartbeat_liveness,
        kill_grace=config.kill_grace,
        max_request_frames=config.max_request_frames,
        max_request_bytes=config.max_request_bytes,
        client_bytes_in_flight=config.client_bytes_in_flight,
        queue_limit_bytes=config.queue_limit_bytes,
    )
