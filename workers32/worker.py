"""The worker process: one DEALER socket to the broker, one or more call threads.

With ``threads = 1`` (the default) a call runs on the socket thread itself:
no hand-off between threads on the way in or out. While it is inside the
library, a watchdog thread takes the socket (they share it under a lock;
ZeroMQ allows a socket to move between threads behind a full memory
barrier) to keep heartbeats and the broker's messages flowing, so a call may
take minutes without the worker being declared dead.

With ``threads = K > 1`` calls run on a pool of K threads; finished calls
come back to the socket thread over an inproc PUSH/PULL pipe (one PUSH socket
per pool thread: ZeroMQ sockets are not thread-safe).

Whatever happens, the broker gets exactly one answer per request it sent:
a request the broker cancels before it started is answered at once without
running, and a result too big for the broker's ``max_message_size`` is
answered :class:`ReplyTooLarge` rather than sent (the broker would drop this
worker's connection for it).
"""

import contextlib
import ctypes
import functools
import logging
import math
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

import zmq

from protocol import (
    BadRequest,
    CallError,
    ConfigError,
    ProtocolError,
    RemoteError,
    ReplyTooLarge,
    Timeout,
    UnknownMethod,
    WorkerRequest,
    error_to_wire,
    pack_value,
    parse_for_worker,
    transport,
    unpack_batch,
    unpack_call,
)
from protocol import frames as wire
from protocol.frames import Buffer, CancelToWorker, DisconnectToWorker, StopToWorker

from .constants import EXIT_BROKER_GONE, EXIT_RETIRED, EXIT_STARTUP_FAILED, EXIT_UNLOADABLE
from .hosting import build, call
from .resources import figures
from .shm import MAPPINGS, SharedArguments, limit_of

log = logging.getLogger("workers32")

__all__ = [
    "EXIT_BROKER_GONE",
    "EXIT_RETIRED",
    "EXIT_STARTUP_FAILED",
    "EXIT_UNLOADABLE",
    "Worker",
    "report_unloadable",
    "run",
]

_MAX_TRACEBACK = 16 * 1024
_BATCH = 256
"""Messages taken from a socket at once before heartbeats are looked at again."""
_WAIT_STEP = 100
"""Milliseconds: the socket thread's waits are rounded up to a multiple of this (of an eighth of the
heartbeat interval, if that is shorter)."""
_RCVTIMEO = int(zmq.RCVTIMEO)
_NEVER = float("inf")


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
        self._wait_step = max(1, min(_WAIT_STEP, int(self.interval * 1000 / 8)))
        self.liveness = int(spec.get("heartbeat_liveness", 3))
        limit = spec.get("max_message_size")
        self.max_message_size: Optional[int] = None if limit is None else int(limit)
        """The broker's bound on one frame (ZMQ_MAXMSGSIZE); None for a spec that does not say."""
        self.shared_memory_max = limit_of(spec)
        """Bytes of shared memory one call may map (see :mod:`workers32.shm`)."""
        self.methods = methods
        self.parent_pid = parent_pid
        self.curve = curve
        self.context = zmq.Context()
        self._stop = threading.Event()
        self.retired = False
        """The broker said STOP: the exit code says so (``EXIT_RETIRED``)."""
        self._lock = threading.Lock()
        """Held by whichever thread uses the DEALER socket and the heartbeat clocks."""
        self._sock: Optional[zmq.Socket[Any]] = None
        self._poller = zmq.Poller()
        """Watches the broker's socket and the pool threads' results (threads > 1)."""
        self._timeout = -1
        """The socket's ``RCVTIMEO`` as last set (ms; -1 is libzmq's default, forever)."""
        self._next_heartbeat = 0.0
        self._broker_deadline = 0.0
        self._backoff = self.interval
        self._inline: deque[tuple[WorkerRequest, float]] = deque()
        """Requests for the socket thread itself to run (threads = 1), with their local deadlines."""
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending: dict[int, tuple[Future[None], WorkerRequest]] = {}
        """The pool's calls by job until they end (threads > 1), so a CANCEL can stop one not yet started."""
        self._results: Optional[zmq.Socket[Any]] = None
        self._results_address = f"inproc://results-{id(self)}"
        self._local = threading.local()
        self._pipes: list[zmq.Socket[Any]] = []
        self._pipes_lock = threading.Lock()

    # --- answering a request ------------------------------------------------------

    def _answer(self, request: WorkerRequest, deadline: float) -> list[Buffer]:
        """The reply frames; whatever happens, the broker gets exactly one answer for a request.

        A request whose deadline passed while it waited here is answered Timeout and never run.
        """
        try:
            if time.monotonic() >= deadline:
                raise Timeout(
                    f"{self.service}.{request.method} did not start within {request.timeout} s: "
                    "it was still waiting in the worker; it never ran",
                    service=self.service,
                    method=request.method,
                )
            payload = self._execute_batch(request) if request.flags & wire.FLAG_BATCH else self._execute(request)
            frames = wire.worker_reply(request.job, payload)
            limit = self.max_message_size
            if limit is not None and max(map(len, frames)) > limit:  # len() of pack_value's frames counts bytes
                raise self._too_large(request.method, frames, limit)
            return frames
        except CallError as exc:
            return _error_frames(request.job, exc)
        except BaseException as exc:  # SystemExit from a wrapper, say: still an answer, not silence
            return _error_frames(request.job, _remote_error(exc, self.service, request.method))

    def _too_large(self, method: str, frames: list[Buffer], limit: int) -> ReplyTooLarge:
        """Why a reply is refused here: the broker drops the connection of a peer that sends a frame over its limit,
        so the caller would see this live worker as crashed. (A small body is sent in its header's frame: the
        frames as sent are what count.)"""
        size = max(map(len, frames))
        return ReplyTooLarge(
            f"{self.service}.{method} returned a result with a frame of {size:,} bytes, over the pool's "
            f"max_message_size of {limit:,} bytes, so it was not sent: return less per call, or raise "
            "max_message_size in the configuration's [pool] table",
            service=self.service,
            method=method,
            limit=limit,
            size=size,
        )

    def _cancelled(self, request: WorkerRequest) -> list[Buffer]:
        return _error_frames(
            request.job,
            CallError(
                f"{self.service}.{request.method} was cancelled by the broker before it started; it never ran",
                service=self.service,
                method=request.method,
            ),
        )

    def _run_pooled(self, request: WorkerRequest, deadline: float) -> None:
        """On a pool thread: answer, and hand the reply to the socket thread."""
        pipe = getattr(self._local, "pipe", None)
        if pipe is None:
            pipe = self._local.pipe = self.context.socket(zmq.PUSH)
            pipe.connect(self._results_address)
            with self._pipes_lock:
                self._pipes.append(pipe)
        transport.send(pipe, self._answer(request, deadline))

    def _function(self, method: str) -> Callable[..., Any]:
        function = self.methods.get(method)
        if function is None:
            names = sorted(m for m in self.methods if not m.startswith("$"))
            raise UnknownMethod(
                f"service {self.service!r} has no method {method!r}; it has: {', '.join(names)}",
                service=self.service,
                method=method,
                methods=names,
            )
        return function

    def _decode(self, request: WorkerRequest, unpack: Callable[[list[Buffer]], Any]) -> Any:
        try:
            return unpack(request.payload)
        except ProtocolError as exc:
            raise BadRequest(
                f"cannot decode the arguments of {self.service}.{request.method}: {exc}",
                service=self.service,
                method=request.method,
            ) from None
        finally:
            # The call has its own copy now: free the frames during the call (a 32-bit process has
            # room for few copies of a big argument).
            request.payload.clear()

    def _run(self, function: Callable[..., Any], method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        try:
            return call(function, args, kwargs)
        except CallError as exc:
            exc.details.setdefault("service", self.service)
            exc.details.setdefault("method", method)
            raise
        except Exception as exc:  # the library's or wrapper's own failure: report it, keep serving
            raise _remote_error(exc, self.service, method) from None

    def _pack(self, method: str, result: Any) -> list[Buffer]:
        try:
            return pack_value(result)
        except (TypeError, ValueError, OverflowError) as exc:
            raise RemoteError(
                f"{self.service}.{method} returned a {type(result).__name__}, which cannot be sent: {exc}",
                service=self.service,
                method=method,
                remote_type=type(exc).__name__,
            ) from None

    def _execute(self, request: WorkerRequest) -> list[Buffer]:
        """Run one call. Its shared-memory arguments are mapped before (a segment that cannot be mapped fails
        the call unrun) and unmapped once the reply is packed (a result may name a segment, not hold it)."""
        function = self._function(request.method)
        shared = SharedArguments(self.shared_memory_max)
        args, kwargs = self._decode(request, functools.partial(unpack_call, arrays=shared.collect))
        try:
            if shared.arrays:  # most calls have none: nothing to map, and nothing to release after
                shared.map(self.service, request.method)
            return self._pack(request.method, self._run(function, request.method, args, kwargs))
        finally:
            if shared.arrays:  # emptied by a map that failed (it released what it had mapped)
                shared.release()

    def _execute_batch(self, request: WorkerRequest) -> list[Buffer]:
        """Many calls of one method (``Client.map``): one outcome per call, in order; one failing call
        fails only its own item."""
        function = self._function(request.method)
        outcomes: list[list[Any]] = []
        for args in self._decode(request, unpack_batch):
            try:
                outcomes.append([True, self._run(function, request.method, args, {})])
            except CallError as exc:
                outcomes.append([False, error_to_wire(exc)])
        return self._pack(request.method, outcomes)

    # --- the socket ---------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "pointer_size": struct.calcsize("P"),
            "python": ".".join(map(str, sys.version_info[:3])),
            "platform": sys.platform,
            "threads": self.threads,
            "methods": sorted(m for m in self.methods if not m.startswith("$")),
        }

    def _connect(self) -> None:
        """A fresh DEALER (a fresh identity) that registers with the broker. Caller holds the lock."""
        sock = self.context.socket(zmq.DEALER)
        sock.linger = 0
        if self.curve:
            sock.curve_serverkey = self.curve["server_public"].encode()
            sock.curve_publickey = self.curve["public"].encode()
            sock.curve_secretkey = self.curve["secret"].encode()
        sock.connect(self.endpoint)
        transport.send(sock, wire.worker_ready(self._info()))
        self._poller.register(sock, zmq.POLLIN)
        self._sock = sock
        self._timeout = -1
        now = time.monotonic()
        self._next_heartbeat = now + self.interval
        self._broker_deadline = now + self.interval * self.liveness

    def _reconnect(self) -> None:
        assert self._sock is not None
        log.warning("no word from the broker for %.1f s; reconnecting", self.interval * self.liveness)
        self._poller.unregister(self._sock)
        self._sock.close()
        time.sleep(self._backoff * random.uniform(0.5, 1.0))
        self._backoff = min(self._backoff * 2, 30.0)
        self._connect()

    def stop(self) -> None:
        self._stop.set()

    def serve(self) -> None:
        """Run until stopped. With one thread, calls run right here on the socket thread (no hand-off),
        and a watchdog thread takes over the socket for heartbeats while a call is in the library."""
        if self.threads > 1:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="call")
            self._results = self.context.socket(zmq.PULL)
            self._results.bind(self._results_address)
            self._poller.register(self._results, zmq.POLLIN)
        with self._lock:
            self._connect()
        if self._executor is None:
            threading.Thread(target=self._watch, name="heartbeats", daemon=True).start()
        log.info("worker pid %d serving %r with %d thread(s)", os.getpid(), self.service, self.threads)
        try:
            frames: Optional[list[Buffer]] = None
            while True:  # one round per call: its answer goes out with the wait for the next request
                with self._lock:
                    if frames is not None:
                        assert self._sock is not None
                        transport.send(self._sock, frames)
                    if self._stop.is_set():
                        break
                    if not self._inline:  # else a request the watchdog took during the call runs at once
                        self._step(self._next_heartbeat - time.monotonic(), drain=False)
                    # The watchdog may take a cancelled request out of _inline: it changes only under the lock.
                    entry = self._inline.popleft() if self._inline else None
                frames = None if entry is None else self._answer(*entry)
        finally:
            self._stop.set()
            with self._lock:
                self._close()

    def _watch(self) -> None:
        """Heartbeats and broker messages while the socket thread is inside a call (the lock is free then)."""
        while not self._stop.wait(self.interval / 4):
            if self._lock.acquire(blocking=False):
                try:
                    if not self._stop.is_set():
                        self._step(0.0)
                finally:
                    self._lock.release()

    def _step(self, wait: float, drain: bool = True) -> None:
        """One round of socket work: receive, forward results, heartbeat, check peers. Caller holds the lock.

        ``drain``: with one thread, take every message waiting, not only the first (a worker with a pool of
        threads always does). The socket thread of a one-thread worker takes one per round: it runs a request
        as soon as it has one, and its next round's wait returns at once if another is there, so asking the
        socket whether more wait (a system call) would be wasted.
        (So a CANCEL right behind a request held ahead no longer reaches it before it starts when both wait
        on the socket as the previous call ends; the request runs, and the broker discards its answer. One
        that arrives during the call reaches the watchdog, which drains, as before.)
        """
        assert self._sock is not None
        # Rounded up to whole steps: the socket's timeout then changes a few times a second, not on every call
        # (a heartbeat may go out up to one step late).
        timeout = max(0, math.ceil(wait * 1000 / self._wait_step)) * self._wait_step
        if self._results is None:
            self._from_broker(self._sock, timeout, drain)
        else:
            events = dict(self._poller.poll(timeout))
            if self._sock in events:
                self._from_broker(self._sock, 0, True)
            if self._results in events:
                for frames in transport.drain(self._results, _BATCH, copied=1):
                    transport.send(self._sock, frames)
        now = time.monotonic()
        if now >= self._next_heartbeat:
            transport.send(self._sock, wire.worker_heartbeat(figures()))
            self._next_heartbeat = now + self.interval
            MAPPINGS.prune()  # segments their clients let go of since
            if not _parent_alive(self.parent_pid):
                log.warning("the broker process is gone; exiting")
                logging.shutdown()
                os._exit(EXIT_BROKER_GONE)  # a call may be stuck in the library: do not wait for it
        if now >= self._broker_deadline and not self._stop.is_set():
            self._reconnect()

    def _from_broker(self, sock: "zmq.Socket[Any]", timeout: int, drain: bool) -> None:
        """Take what the broker sent (the first message only, unless ``drain``), waiting up to ``timeout`` ms for
        the first.

        With one socket to watch, a blocking ``recv`` (``RCVTIMEO``) waits in libzmq itself: half the
        system calls of ``zmq_poll``, which polls once without waiting before it waits, then asks the
        socket's ``EVENTS``.
        """
        if timeout != self._timeout:
            sock.setsockopt(_RCVTIMEO, timeout)  # not ``sock.rcvtimeo =``: 4 us in a 32-bit worker, this 0.8
            self._timeout = timeout
        try:
            first = transport.recv(sock, 1, 0)
        except zmq.Again:
            return
        now = time.monotonic()
        self._broker_deadline = now + self.interval * self.liveness
        self._backoff = self.interval
        self._on_broker(first, now)
        if drain:
            for frames in transport.drain(sock, _BATCH - 1, copied=1, ready=False):
                self._on_broker(frames, now)

    def _on_broker(self, frames: list[Buffer], now: float) -> None:
        try:
            message = parse_for_worker(frames)
        except ProtocolError as exc:
            log.warning("dropped a malformed message from the broker: %s", exc)
            return
        if isinstance(message, WorkerRequest):
            deadline = _NEVER if message.timeout is None else now + message.timeout
            if self._executor is None:
                self._inline.append((message, deadline))
            else:
                future = self._executor.submit(self._run_pooled, message, deadline)
                self._pending[message.job] = future, message
                future.add_done_callback(functools.partial(self._ended, message.job))
        elif isinstance(message, CancelToWorker):
            self._cancel(message.job)
        elif isinstance(message, StopToWorker):
            log.info("retired by the broker; stopping")
            self.retired = True
            self._stop.set()
        elif self._stop.is_set():
            return  # stopping: it registers nowhere again
        elif isinstance(message, DisconnectToWorker):
            log.info("the broker does not know this worker; registering again")
            assert self._sock is not None
            transport.send(self._sock, wire.worker_ready(self._info()))

    def _ended(self, job: int, _: "Future[None]") -> None:
        """Forget a pool call that ended or was cancelled. It is registered after the call's entry, so it
        removes even the entry of a call that ended before it was registered."""
        self._pending.pop(job, None)

    def _cancel(self, job: int) -> None:
        """Answer ``job`` now if it has not started; a running or finished job answers for itself.
        Caller holds the lock."""
        assert self._sock is not None
        if self._executor is not None:
            pending = self._pending.pop(job, None)
            # A future that cannot be cancelled has started: its call answers when it ends.
            if pending is not None and pending[0].cancel():
                transport.send(self._sock, self._cancelled(pending[1]))
            return
        for entry in self._inline:
            if entry[0].job == job:
                self._inline.remove(entry)
                transport.send(self._sock, self._cancelled(entry[0]))
                return

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                transport.send(self._sock, wire.worker_disconnect(), int(zmq.NOBLOCK))
            self._sock.close(linger=0)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        if self._results is not None:
            self._results.close(linger=0)
        with self._pipes_lock:
            for pipe in self._pipes:
                pipe.close(linger=0)


def _error_frames(job: int, error: CallError) -> list[Buffer]:
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
        remote_frame=_origin(exc),
    )


def _origin(exc: BaseException) -> str:
    """The frame of the wrapper's own code the exception came from, as msl-loadlib's ``Server32Error.traceback``
    gives it: the first frame outside the worker's package."""
    here = os.path.dirname(os.path.abspath(__file__))
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.dirname(os.path.abspath(frame.filename)) != here:
            text = f"  File {frame.filename!r}, line {frame.lineno}, in {frame.name}"
            return f"{text}\n    {frame.line}" if frame.line else text
    return ""


def report_unloadable(status_file: Optional[str], message: str) -> None:
    """Tell the supervisor why this worker can never start, as the text of ``status_file``.

    A file the supervisor names, rather than a marked line on stderr: stderr is shared with the
    library, which may print anything (even a line that looks like our marker, or half a line
    when it crashes), and is read by another thread that may lag behind the exit. The file holds
    exactly our message and is complete when the process has ended. Without a file (a worker
    started by hand) the message is logged instead.
    """
    if status_file is not None:
        try:
            with open(status_file, "w", encoding="utf-8") as f:
                f.write(message)
            return
        except OSError as exc:
            log.warning("cannot write the status file %s: %s", status_file, exc)
    log.error("%s", message)


def _stop_at_end_of_input(worker: "Worker") -> None:
    """Stop ``worker`` once stdin ends: the supervisor closed its end of the pipe (or died)."""
    for _ in sys.stdin.buffer:
        pass
    log.info("stdin closed; stopping")
    worker.stop()


def run(
    endpoint: str,
    spec: Mapping[str, Any],
    parent_pid: Optional[int] = None,
    status_file: Optional[str] = None,
    stop_on_eof: bool = False,
) -> int:
    """Load what the spec hosts and serve it; the process exit code (see the ``EXIT_*`` constants).

    ``stop_on_eof``: stdin is a pipe from the supervisor, whose end of input asks for a clean stop, as SIGTERM
    does where there is one (Windows has none: there ``Popen.send_signal(SIGTERM)`` kills at once).
    """
    _set_parent_death_signal()
    if not _parent_alive(parent_pid):
        return 1
    try:
        hosted = build(spec)
    except ConfigError as exc:
        report_unloadable(status_file, f"service {spec.get('service')!r}: {exc}")
        return EXIT_UNLOADABLE
    except Exception:  # a wrapper's constructor may raise anything, and may succeed next time
        log.exception("cannot start %r: the wrapper's constructor failed", spec.get("service"))
        return EXIT_STARTUP_FAILED
    worker = Worker(endpoint, spec, hosted.methods, parent_pid, spec.get("curve"))
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    if stop_on_eof:
        threading.Thread(target=_stop_at_end_of_input, args=(worker,), name="stdin", daemon=True).start()
    worker.serve()
    worker.context.destroy(linger=0)
    try:
        hosted.close()  # a wrapper's shutdown_handler: the broker no longer sends this worker anything
    except Exception:
        log.exception("the shutdown handler of %r raised", spec.get("service"))
    return EXIT_RETIRED if worker.retired else 0
