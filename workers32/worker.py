"""The worker process: one DEALER socket to the broker, calls on a thread pool.

The socket thread only moves frames and heartbeats; every library call runs
on a pool thread, so heartbeats keep flowing while a call takes minutes.
Finished calls come back to the socket thread over an inproc PUSH/PULL pipe
(one PUSH socket per pool thread: ZeroMQ sockets are not thread-safe).
"""

import contextlib
import ctypes
import logging
import os
import random
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import zmq

from protocol import (
    BadRequest,
    CallError,
    DllPoolError,
    ProtocolError,
    RemoteError,
    UnknownMethod,
    WorkerRequest,
    error_to_wire,
    pack_value,
    parse_for_worker,
    unpack_call,
)
from protocol import frames as wire
from protocol.frames import Buffer, DisconnectToWorker

from .hosting import build_methods, call

log = logging.getLogger("workers32")

__all__ = ["Worker", "run"]

EXIT_STARTUP_FAILED = 3
"""Exit code when the library or wrapper cannot be loaded: the supervisor must not respawn in a tight loop."""

_MAX_TRACEBACK = 16 * 1024


def _set_parent_death_signal() -> None:
    """Have Linux kill us when the broker process dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable; relying on the liveness check")


def _parent_alive(parent_pid: Optional[int]) -> bool:
    if parent_pid is None:
        return True
    if sys.platform == "win32":
        return _windows_process_alive(parent_pid)
    return os.getppid() == parent_pid


def _windows_process_alive(pid: int) -> bool:
    kernel32 = ctypes.WinDLL("kernel32")  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    code = ctypes.c_ulong()
    kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
    kernel32.CloseHandle(handle)
    return code.value == 259  # STILL_ACTIVE


class Worker:
    """Serves one service's calls for one broker until told to stop."""

    def __init__(
        self,
        endpoint: str,
        spec: Mapping[str, Any],
        methods: dict[str, Callable[..., Any]],
        parent_pid: Optional[int] = None,
        curve: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.endpoint = endpoint
        self.service = str(spec["service"])
        self.threads = int(spec.get("threads", 1))
        self.interval = float(spec.get("heartbeat_interval", 1.0))
        self.liveness = int(spec.get("heartbeat_liveness", 3))
        self.methods = methods
        self.parent_pid = parent_pid
        self.curve = curve
        self.context = zmq.Context()
        self._local = threading.local()
        self._pipes: list[zmq.Socket[Any]] = []
        self._pipes_lock = threading.Lock()
        self._results_address = f"inproc://results-{id(self)}"
        self._stop = threading.Event()

    # --- call path (pool threads) -------------------------------------------------

    def _pipe(self) -> "zmq.Socket[Any]":
        pipe = getattr(self._local, "pipe", None)
        if pipe is None:
            pipe = self.context.socket(zmq.PUSH)
            pipe.connect(self._results_address)
            self._local.pipe = pipe
            with self._pipes_lock:
                self._pipes.append(pipe)
        return pipe

    def _run(self, request: WorkerRequest) -> None:
        """Answer one request; whatever happens, the broker gets exactly one answer for it."""
        try:
            frames = wire.worker_reply(request.job, self._execute(request))
        except CallError as exc:
            frames = _error_frames(request.job, exc)
        except BaseException as exc:  # SystemExit from a wrapper, say: still an answer, not silence
            frames = _error_frames(request.job, _remote_error(exc, self.service, request.method))
        self._pipe().send_multipart(frames, copy=False)

    def _execute(self, request: WorkerRequest) -> list[Buffer]:
        function = self.methods.get(request.method)
        if function is None:
            names = sorted(self.methods)
            raise UnknownMethod(
                f"service {self.service!r} has no method {request.method!r}; it has: {', '.join(names)}",
                service=self.service,
                method=request.method,
                methods=names,
            )
        try:
            args, kwargs = unpack_call(request.payload)
        except ProtocolError as exc:
            raise BadRequest(
                f"cannot decode the arguments of {self.service}.{request.method}: {exc}",
                service=self.service,
                method=request.method,
            ) from None
        try:
            result = call(function, args, kwargs)
        except CallError as exc:
            exc.details.setdefault("service", self.service)
            exc.details.setdefault("method", request.method)
            raise
        except Exception as exc:  # the library's or wrapper's own failure: report it, keep serving
            raise _remote_error(exc, self.service, request.method) from None
        try:
            return pack_value(result)
        except (TypeError, ValueError, OverflowError) as exc:
            raise RemoteError(
                f"{self.service}.{request.method} returned a {type(result).__name__}, which cannot be sent: {exc}",
                service=self.service,
                method=request.method,
                remote_type=type(exc).__name__,
            ) from None

    # --- socket thread ------------------------------------------------------------

    def _connect(self) -> "zmq.Socket[Any]":
        sock = self.context.socket(zmq.DEALER)
        sock.linger = 0
        if self.curve:
            sock.curve_serverkey = self.curve["server_public"].encode()
            sock.curve_publickey = self.curve["public"].encode()
            sock.curve_secretkey = self.curve["secret"].encode()
        sock.connect(self.endpoint)
        sock.send_multipart(wire.worker_ready(self._info()))
        return sock

    def _info(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "pid": os.getpid(),
            "pointer_size": struct.calcsize("P"),
            "python": ".".join(map(str, sys.version_info[:3])),
            "platform": sys.platform,
            "threads": self.threads,
            "methods": sorted(self.methods),
        }

    def stop(self) -> None:
        self._stop.set()

    def serve(self) -> None:
        results = self.context.socket(zmq.PULL)
        results.bind(self._results_address)
        executor = ThreadPoolExecutor(self.threads, thread_name_prefix="call")
        sock = self._connect()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        broker_deadline = time.monotonic() + self.interval * self.liveness
        next_heartbeat = time.monotonic() + self.interval
        backoff = self.interval
        log.info("worker pid %d serving %r with %d thread(s)", os.getpid(), self.service, self.threads)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(max(0, int(1000 * (next_heartbeat - time.monotonic())) + 1)))
                now = time.monotonic()
                if sock in events:
                    broker_deadline = now + self.interval * self.liveness
                    backoff = self.interval
                    for frames in _drain(sock):
                        self._on_broker(sock, frames, executor)
                if results in events:
                    for frames in _drain(results):
                        sock.send_multipart(frames, copy=False)
                if now >= next_heartbeat:
                    sock.send_multipart(wire.worker_heartbeat())
                    next_heartbeat = now + self.interval
                    if not _parent_alive(self.parent_pid):
                        log.warning("the broker process is gone; exiting")
                        return
                if now >= broker_deadline:
                    log.warning("no word from the broker for %.1f s; reconnecting", self.interval * self.liveness)
                    poller.unregister(sock)
                    sock.close()
                    time.sleep(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, 30.0)
                    sock = self._connect()
                    poller.register(sock, zmq.POLLIN)
                    broker_deadline = time.monotonic() + self.interval * self.liveness
        finally:
            with contextlib.suppress(zmq.ZMQError):
                sock.send_multipart(wire.worker_disconnect(), flags=zmq.NOBLOCK)
            executor.shutdown(wait=False)
            sock.close(linger=0)
            results.close(linger=0)
            with self._pipes_lock:
                for pipe in self._pipes:
                    pipe.close(linger=0)

    def _on_broker(self, sock: "zmq.Socket[Any]", frames: list[Any], executor: ThreadPoolExecutor) -> None:
        try:
            message = parse_for_worker([f.buffer for f in frames])
        except ProtocolError as exc:
            log.warning("dropped a malformed message from the broker: %s", exc)
            return
        if isinstance(message, WorkerRequest):
            executor.submit(self._run, message)
        elif isinstance(message, DisconnectToWorker):
            log.info("the broker does not know this worker; registering again")
            sock.send_multipart(wire.worker_ready(self._info()))


def _drain(sock: "zmq.Socket[Any]") -> Iterator[list[zmq.Frame]]:
    """Every message waiting on ``sock``, without blocking."""
    while True:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return


def _error_frames(job: bytes, error: CallError) -> list[Buffer]:
    try:
        return wire.worker_error(job, error_to_wire(error))
    except (TypeError, ValueError, OverflowError):  # details a wrapper filled with unsendable values
        return wire.worker_error(job, error_to_wire(type(error)(error.message)))


def _remote_error(exc: BaseException, service: str, method: str) -> RemoteError:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return RemoteError(
        f"{service}.{method} raised {type(exc).__name__}: {exc}",
        service=service,
        method=method,
        remote_type=type(exc).__name__,
        remote_message=str(exc),
        remote_traceback=text[-_MAX_TRACEBACK:],
    )


def run(endpoint: str, spec: Mapping[str, Any], parent_pid: Optional[int] = None) -> int:
    """Load what the spec hosts and serve it; the process exit code."""
    _set_parent_death_signal()
    if not _parent_alive(parent_pid):
        return 1
    try:
        methods = build_methods(spec)
    except DllPoolError as exc:
        log.error("cannot start %r: %s", spec.get("service"), exc)
        return EXIT_STARTUP_FAILED
    except Exception:  # a wrapper's constructor may raise anything
        log.exception("cannot start %r: the wrapper failed to load", spec.get("service"))
        return EXIT_STARTUP_FAILED
    worker = Worker(endpoint, spec, methods, parent_pid, spec.get("curve"))
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.serve()
    worker.context.destroy(linger=0)
    return 0
