"""A pool's broker in a child process of its own, and the pool's end of the pipe to it.

With ``Pool(config, broker="process")`` the broker loop, core and supervisor
(and so the workers) run in a child Python started with ``subprocess`` and
:data:`sys.executable`: the broker's Python code never waits for the
caller's threads to let go of the GIL, nor they for it. The child runs the
same :class:`~broker.inprocess.InProcessBroker` a thread-mode pool runs.

The control channel is the child's stdin and stdout, JSON lines both ways
(no pickle): each request on stdin is answered in order on stdout, where the
child's log records come too, to be handled here by the loggers of the same
names. It carries no call: clients use the broker's ZeroMQ sockets directly.

The child's stdin is also its owner's lifeline. End of input means the owner
is gone, however it died: the child stops its workers and removes its run
folder at once. So does a new parent pid, for when stdin stays open: a child
the owner forked without exec holds a copy of the pipe. No parent-death
signal is involved (Linux would send it when the *thread* that started the
pool ends). Ctrl-C is the owner's to act on: the child ignores SIGINT, which
a terminal sends to the whole process group.
SIGTERM stops the child as :meth:`broker.Pool.stop` would. Whatever other
code writes to the child's stdout (a library's ``printf`` in a worker) goes
to its stderr instead, which it shares with its owner.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

from protocol import BrokerUnavailable, ConfigError, DllPoolError, LibraryLoadError, PoolStartError, RuntimeMissing

from .config import PoolConfig
from .early import ENV, EarlyStart
from .inprocess import DEFAULT_GRACE, InProcessBroker, Readiness
from .runtime32 import Interpreter, interpreter_to_dict
from .supervisor import how_it_ended, interpreter_for
from .zygote import dedicate_process, supported

log = logging.getLogger(__name__)

__all__ = ["HostedBroker", "serve"]

_EXIT_WAIT = 10.0
"""Seconds a broker process may take to exit once it has stopped or closed its output; then it is killed."""
_ERRORS: dict[str, type[DllPoolError]] = {
    cls.__name__: cls for cls in (ConfigError, LibraryLoadError, RuntimeMissing, PoolStartError)
}
"""The errors the broker process raises that are re-raised here as themselves."""
_RECORD_FIELDS = (
    "name",
    "levelno",
    "levelname",
    "pathname",
    "filename",
    "module",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "process",
    "thread",
    "threadName",
    "stack_info",
)


class HostedBroker:
    """The pool's end of a broker process: each method is one request and its answer."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.address = ""
        self.backend_address = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._answers: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        """Answers in the order the requests went; ``None`` once the process's output has ended."""
        self._lock = threading.Lock()
        """Held from sending a request until its answer is taken: one request at a time, from any thread."""
        self._sent = 0
        self._ended = False

    def start(self) -> None:
        """Start the broker process and have it bind its sockets and start the workers."""
        root = str(Path(__file__).resolve().parent.parent)  # the child imports this very copy of the package
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        env.pop(ENV, None)  # one this process was given is not for its own pool
        interp = _first_interpreter(self.config)
        if interp is not None:
            env[ENV] = json.dumps(interpreter_to_dict(interp))
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self._process.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._process.stdout,), name=f"dllpool-broker-{self._process.pid}", daemon=True
        )
        self._reader.start()
        endpoints = self._request("start", config=self.config.to_dict(), levels=_log_levels())
        self.address, self.backend_address = endpoints["address"], endpoints["backend_address"]

    def stop(self, grace: float) -> None:
        """Have the broker process stop as a thread-mode pool would, then wait for it to exit."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(BrokerUnavailable):  # it ended already: nothing left to stop
            self._request("stop", grace=grace)
        assert process.stdin is not None
        with self._lock, contextlib.suppress(OSError):  # BrokenPipeError: a request it never read is still buffered
            process.stdin.close()
        try:
            process.wait(_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            log.warning("the broker process (pid %d) did not exit after stopping; killing it", process.pid)
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join()

    def worker_pids(self, service: str | None = None) -> list[int]:
        return list(self._request("worker_pids", service=service))

    def workers(self) -> list[dict[str, Any]]:
        return list(self._request("workers"))

    def stats(self) -> dict[str, int]:
        return dict(self._request("stats"))

    def kill_worker(self, pid: int) -> None:
        self._request("kill_worker", pid=pid)

    def readiness(self) -> Readiness:
        state = self._request("readiness")
        failure = state["failure"]
        return Readiness(
            state["ready"], state["wanted"], None if failure is None else _rebuild(failure), state["stopped"]
        )

    def _request(self, op: str, **args: Any) -> Any:
        """Send one request and return its answer; BrokerUnavailable once the process has ended."""
        assert self._process is not None and self._process.stdin is not None
        with self._lock:
            if self._ended:
                raise self._unavailable()
            self._sent += 1
            # A broken pipe (it ended) or a closed one (it is being stopped): its output ends too, and says so.
            with contextlib.suppress(OSError, ValueError):
                self._process.stdin.write(json.dumps({"id": self._sent, "op": op, **args}).encode() + b"\n")
                self._process.stdin.flush()
            while (answer := self._answers.get()) is None or answer["id"] != self._sent:
                if answer is None:
                    raise self._unavailable()
                # else the answer to a request whose caller was interrupted (KeyboardInterrupt) while it waited
        if "error" in answer:
            raise _rebuild(answer["error"])
        return answer["result"]

    def _unavailable(self) -> BrokerUnavailable:
        assert self._process is not None
        try:
            how = how_it_ended(self._process.wait(_EXIT_WAIT))
        except subprocess.TimeoutExpired:
            how = "it closed its output"
        pid = self._process.pid
        return BrokerUnavailable(
            f"the pool's broker process (pid {pid}) ended unexpectedly ({how}); its log records say why; "
            "start a new pool",
            pid=pid,
        )

    def _read(self, stream: IO[bytes]) -> None:
        """Handle the process's log records here, and queue its answers for the request waiting on them."""
        try:
            with stream:
                for line in stream:
                    try:
                        message = json.loads(line)
                    except ValueError:
                        log.warning("the broker process wrote %r", line)
                        continue
                    if "log" in message:
                        _handle(message["log"])
                    else:
                        self._answers.put(message)
        finally:
            self._ended = True
            self._answers.put(None)


_CHILD = "from broker.early import begin; started = begin(); from broker.hosted import serve; serve(started)"
"""The broker process's program: its run folder and first zygote start before it imports the broker."""


def _first_interpreter(config: PoolConfig) -> Interpreter | None:
    """The interpreter of the first service that starts workers, when they will be forked from a zygote and it is
    there: the broker process starts that zygote first thing (:mod:`broker.early`)."""
    first = next((service for service in config.services if service.workers), None)
    if not (config.zygote and supported() and first is not None):
        return None
    try:
        interp = interpreter_for(config, first)
    except (RuntimeMissing, ValueError, OSError):
        return None  # the broker process says what is wrong, as the answer to its start
    return interp if os.path.exists(interp.executable) else None


def _log_levels() -> dict[str, int]:
    """This process's levels for the loggers a broker uses, for the broker process to copy ("" is the root).

    What nobody here would see is then not even sent. Read once, at start.
    """
    names = [name for name in logging.root.manager.loggerDict if name.split(".")[0] in ("broker", "dllpool")]
    return {"": logging.getLogger().getEffectiveLevel(), **{n: logging.getLogger(n).getEffectiveLevel() for n in names}}


def _handle(fields: dict[str, Any]) -> None:
    """A log record of the broker process, handled as if it had been made here (its pid and thread kept)."""
    logger = logging.getLogger(fields["name"])
    if logger.isEnabledFor(fields["levelno"]):
        logger.handle(logging.makeLogRecord(fields))


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)}


def _rebuild(error: Mapping[str, str]) -> DllPoolError:
    """The error the broker process raised, as the same type; any other exception there is a bug in it."""
    cls = _ERRORS.get(error["type"])
    if cls is None:
        return BrokerUnavailable(f"the broker process failed: {error['type']}: {error['message']}")
    return cls(error["message"])


# --- the broker process ------------------------------------------------------------------


class _Output:
    """The broker process's end of the channel: whole JSON lines, one writer at a time (logs come from any thread)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = memoryview(json.dumps(message).encode() + b"\n")
        with self._lock, contextlib.suppress(OSError):  # the owner is gone: its end of our input says so too
            while data:
                data = data[os.write(self._fd, data) :]


class _ForwardLogs(logging.Handler):
    """Sends each log record to the owner, formatted (message and traceback) but not filtered by any format."""

    def __init__(self, output: _Output) -> None:
        super().__init__()
        self.output = output
        self._traceback = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {name: getattr(record, name) for name in _RECORD_FIELDS}
            fields["msg"] = record.getMessage()
            if record.exc_info:
                fields["exc_text"] = self._traceback.formatException(record.exc_info)
            self.output.send({"log": fields})
        except Exception:
            self.handleError(record)


_stopping = threading.Event()
"""Set once the broker process has begun to stop: a SIGTERM then must not cut that short."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if not _stopping.is_set():
        raise SystemExit(128 + signum)


_OWNER_CHECK = 0.5
"""Seconds between looks at the parent pid."""


def _watch_owner(owner: int, gone: threading.Event) -> None:
    """End the broker once its owner has died even while stdin stays open (see the module docstring)."""
    while not gone.wait(_OWNER_CHECK):
        if os.getppid() != owner:
            gone.set()
            os.kill(os.getpid(), signal.SIGTERM)


def serve(started: EarlyStart | None = None) -> None:
    """The broker process: answer the owner's requests on stdin until it says stop or goes away. ``started``: what
    :func:`broker.early.begin` made before this module was imported."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    dedicate_process()
    owner_gone = threading.Event()
    threading.Thread(target=_watch_owner, args=(os.getppid(), owner_gone), name="owner", daemon=True).start()
    output = _Output(os.dup(1))
    os.dup2(2, 1)
    logging.getLogger().addHandler(_ForwardLogs(output))
    broker: InProcessBroker | None = None
    grace = DEFAULT_GRACE  # what SIGTERM gets, as the owner's stop() would
    stop: int | None = None
    try:
        for line in sys.stdin.buffer:
            request = json.loads(line)
            if request["op"] == "stop":
                grace = request["grace"]
                stop = request["id"]
                break
            if request["op"] == "start":
                for name, level in request["levels"].items():
                    logging.getLogger(name).setLevel(level)
                broker = InProcessBroker(PoolConfig.from_dict(request["config"]), started)
                started = None
            output.send(_answer(broker, request))
        else:
            grace = 0.0  # end of input: the owner is gone, and the callers it had with it
    finally:
        _stopping.set()
        if broker is not None:
            broker.stop(0.0 if owner_gone.is_set() else grace)
        if started is not None:  # the owner went away before it asked for a start
            started.discard()
    if stop is not None:
        output.send({"id": stop, "result": None})


def _answer(broker: InProcessBroker | None, request: dict[str, Any]) -> dict[str, Any]:
    """Carry out one request: ``{"id", "result"}``, or ``{"id", "error": {"type", "message"}}`` with what it raised."""
    try:
        assert broker is not None, "the first request must be start"
        return {"id": request["id"], "result": _carry_out(broker, request)}
    except Exception as exc:
        if not isinstance(exc, DllPoolError):
            log.exception("the broker process failed to carry out %r", request["op"])
        return {"id": request["id"], "error": _error(exc)}


def _carry_out(broker: InProcessBroker, request: dict[str, Any]) -> Any:
    op = request["op"]
    if op == "start":
        broker.start()
        return {"address": broker.address, "backend_address": broker.backend_address}
    if op == "readiness":
        state = broker.readiness()
        failure = None if state.failure is None else _error(state.failure)
        return {"ready": state.ready, "wanted": state.wanted, "failure": failure, "stopped": state.stopped}
    if op == "worker_pids":
        return broker.worker_pids(request["service"])
    if op == "workers":
        return broker.workers()
    if op == "stats":
        return broker.stats()
    if op == "kill_worker":
        return broker.kill_worker(request["pid"])
    raise ValueError(f"unknown request {op!r}")
