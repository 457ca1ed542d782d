"""Starting worker processes: forked from a zygote of their interpreter, or spawned.

A spawned worker (``subprocess.Popen`` of ``python -m workers32``) pays an interpreter start and the
imports of pyzmq, msgpack and the worker's code: 0.2-0.5 s of CPU on a 2-core machine, for every
start, crash and recycle. A :mod:`zygote <workers32.zygote>` pays that once per interpreter and forks
each worker in milliseconds. :class:`Spawner` gives the supervisor a Popen-like handle
(:class:`WorkerProcess`) either way:

* the zygote is used on Linux unless ``[pool] zygote = false``, in a process that runs nothing but a
  broker or workers (:func:`dedicate_process`: a pool's broker process, ``dllpool up``, ``dllpool
  worker``); elsewhere (Windows, macOS, a ``broker="thread"`` pool inside an application), and when a
  zygote cannot start, workers are spawned (the latter with a warning): never a failed pool;
* one zygote per interpreter, started with the first worker that needs it, from the broker loop's
  thread, whose end (or the broker's) ends the zygote (parent-death signal, end of its channel); a pool's
  broker process starts its first one from its main thread before it imports the broker, and the spawner
  takes it over (:class:`ZygoteStart`, :mod:`broker.early`). A zygote's output, and so a forked worker's
  (a library's ``printf``), goes to this process's stderr: a pool's broker process answers on stdout. One
  that died, or failed a request, is replaced without waiting for it: the broker loop goes on routing
  meanwhile, and spawns the workers it needs until the new zygote says it is ready;
* a forked worker is this process's child, as a spawned one is: this process is a child subreaper
  (PR_SET_CHILD_SUBREAPER) while it has zygotes, so it adopts each worker from the intermediate process
  the zygote forks it through. So it reaps the worker and knows its exit code, signals it without a
  pid-reuse race, the worker watches it as a spawned worker does (parent-death signal, ``getppid()``),
  and a zygote that dies takes no worker with it. The kernel gives an adopted child to the subreaper's
  first live thread, its main thread: the worker's parent-death signal fires when that one ends.

The cost of being a subreaper: a process that a worker (or its library) started and left behind is
adopted by this process rather than by init, and stays a zombie once it ends, as nothing here waits
for pids it did not start. That is why only a dedicated process uses zygotes: in an application's
process (``broker="thread"``) the same would happen to whatever the application's own children leave.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, NamedTuple, Protocol

from workers32.constants import ADOPTION_TIMEOUT, MAX_MESSAGE

from .runtime32 import Interpreter

log = logging.getLogger(__name__)

__all__ = [
    "ForkedWorker",
    "LateWorker",
    "Spawner",
    "WorkerProcess",
    "ZygoteStart",
    "dedicate_process",
    "start_zygote",
    "supported",
]

_START_TIMEOUT = 10.0
"""Seconds a new zygote has to import the worker's code and say it is ready; past it, workers are spawned."""
_REPLY_TIMEOUT = ADOPTION_TIMEOUT
"""Seconds a zygote has to answer a fork request before it counts as broken (and is replaced)."""
_LATE_WINDOW = ADOPTION_TIMEOUT
"""Seconds a zygote replaced for not answering a fork request in time is still read for its answer (the pid of a
worker it forked after all)."""
_STOP_TIMEOUT = 2.0
_MAX_FAILURES = 3
"""Fork requests in a row that an interpreter's zygotes may fail before its workers are spawned instead."""
_PR_SET_CHILD_SUBREAPER = 36
_subreaper_users = 0
"""Spawners with zygotes in this process: it stays a subreaper while there is one."""
_subreaper_lock = threading.Lock()
_dedicated = False
"""This process runs a broker or workers and nothing else: it may become a child subreaper."""


def dedicate_process() -> None:
    """Say that this process exists only to run a broker (or ``dllpool worker``): its pools may fork workers
    from zygotes, which makes it a child subreaper (see the module docstring)."""
    global _dedicated
    _dedicated = True


class WorkerProcess(Protocol):
    """What the supervisor uses of a worker process: ``subprocess.Popen`` and :class:`ForkedWorker` have it."""

    @property
    def pid(self) -> int: ...
    @property
    def stdin(self) -> IO[bytes] | None: ...
    @property
    def stderr(self) -> IO[bytes] | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def kill(self) -> None: ...
    def send_signal(self, sig: int) -> None: ...


class ZygoteFailed(Exception):
    """A zygote could not start, or could not fork a worker."""


class ZygoteSilent(ZygoteFailed):
    """A zygote did not answer in time. Asked to fork, it may still do it and say so later: the worker is then
    this process's child all the same (see :class:`Spawner`)."""


def supported() -> bool:
    """Whether this platform can fork workers from a zygote: Linux (child subreapers, fd passing)."""
    return sys.platform.startswith("linux") and hasattr(socket, "send_fds")


def _subreaper(on: bool) -> None:
    """Count a spawner in (``on``) or out; this process is a child subreaper while one is counted."""
    global _subreaper_users
    with _subreaper_lock:
        _subreaper_users += 1 if on else -1
        if _subreaper_users == (1 if on else 0):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
                _subreaper_users -= 1 if on else -1
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


class _Zygote:
    """One zygote process and this end of its control socket."""

    def __init__(self, interp: Interpreter, cwd: Path, env: dict[str, str]) -> None:
        """Launch it; it is ready to fork once :meth:`wait_ready` says so."""
        self.interp, self.cwd, self.env = interp, cwd, env
        """What it was started with: what its replacement starts with."""
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        command = [*interp.command, "-s", "-m", "workers32.zygote", "--control", str(theirs.fileno())]
        command += ["--broker-pid", str(os.getpid())]
        self.started = time.monotonic()
        try:
            with theirs:
                self.process = subprocess.Popen(
                    command,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=2,  # this process's stderr: see the module docstring
                    stderr=subprocess.PIPE,
                    pass_fds=[theirs.fileno()],
                )
        except BaseException:
            self.control.close()
            raise
        self.ready = False

    def wait_ready(self, timeout: float) -> bool:
        """Whether it is ready, after waiting up to ``timeout`` s for it; ZygoteFailed (and it is closed) when it
        never will be: it ended, said something else, or took :data:`_START_TIMEOUT`."""
        if self.ready:
            return True
        left = self.started + _START_TIMEOUT - time.monotonic()
        try:
            if not _readable(self.control, min(timeout, left)):
                if timeout < left:
                    return False
                raise ZygoteFailed(f"no answer in {_START_TIMEOUT:.0f} s")
            self._receive(0.0, "ready")
        except ZygoteFailed as exc:
            self.kill()
            assert self.process.stderr is not None
            with self.process.stderr as stream:  # it has ended: the pipe ends too
                output = stream.read().decode("utf-8", "replace").strip()
            raise ZygoteFailed(f"{exc}; it printed: {output or 'nothing'}") from None
        self.ready = True
        threading.Thread(target=self._forward_stderr, name=f"stderr zygote {self.process.pid}", daemon=True).start()
        log.debug(
            "zygote pid %d of %s ready in %.3f s", self.process.pid, self.interp.shown, time.monotonic() - self.started
        )
        return True

    def _receive(self, timeout: float, key: str) -> int:
        """The value of ``key`` in the zygote's next message."""
        if not _readable(self.control, timeout):
            raise ZygoteSilent(f"no answer in {timeout:g} s")
        try:
            data = self.control.recv(MAX_MESSAGE)
        except OSError as exc:
            raise ZygoteFailed(f"it is gone ({exc})") from None
        if not data:
            raise ZygoteFailed("it is gone")
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            message = None
        if isinstance(message, dict) and type(message.get(key)) is int:
            return int(message[key])
        error = message.get("error") if isinstance(message, dict) else None
        raise ZygoteFailed(str(error or f"an unexpected answer: {data[:200]!r}"))

    def _forward_stderr(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr as stream:
            for raw in stream:
                log.info("[zygote pid %d] %s", self.process.pid, raw.decode("utf-8", "replace").rstrip())

    def spawn(self, argv: list[str], stderr: int) -> int:
        """Fork a worker with ``argv`` (``python -m workers32``'s) and ``stderr``: its pid, once it is our child."""
        try:
            socket.send_fds(self.control, [json.dumps({"spawn": argv}).encode()], [stderr])
        except OSError as exc:
            raise ZygoteFailed(f"cannot send it the request: {exc}") from None
        return self._receive(_REPLY_TIMEOUT, "spawned")

    def late_answer(self) -> int | None:
        """The pid of the worker forked for a request that went unanswered in time, once the answer is here;
        None while it is not; 0 when none will come (it refused the request, or is gone)."""
        try:
            return self._receive(0.0, "spawned")
        except ZygoteSilent:
            return None
        except ZygoteFailed:
            return 0

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """End the zygote: the end of its control socket tells it to exit. Its workers live on."""
        self.control.close()
        try:
            self.process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """End it now: one that failed or is not ready yet need not be waited for. Its workers live on."""
        self.control.close()
        self.process.kill()
        self.process.wait()


class ZygoteStart:
    """A zygote started before its spawner exists (:mod:`broker.early`), for the spawner to take over; the process
    is a child subreaper from its start on."""

    def __init__(self, interp: Interpreter, cwd: Path, env: dict[str, str]) -> None:
        self.interp = interp
        _subreaper(True)
        try:
            self._zygote: _Zygote | None = _Zygote(interp, cwd, env)
        except BaseException:
            _subreaper(False)
            raise

    def take(self) -> _Zygote | None:
        """The zygote, with this process's count as a subreaper, for a spawner to own; None once taken or ended."""
        zygote, self._zygote = self._zygote, None
        return zygote

    def discard(self) -> None:
        """End it, unless a spawner took it (then it is the spawner's to end)."""
        zygote = self.take()
        if zygote is not None:
            zygote.kill()
            _subreaper(False)


def start_zygote(interp: Interpreter, cwd: Path, env: dict[str, str]) -> ZygoteStart | None:
    """A zygote for ``interp`` started now, or None where zygotes are off for this process or it cannot start."""
    if not (supported() and _dedicated):
        return None
    try:
        return ZygoteStart(interp, cwd, env)
    except OSError as exc:
        log.debug("no early zygote for %s: %s", interp.shown, exc)
        return None


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has something to read within ``timeout`` s (``poll``: ``select`` refuses fds over 1023)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


class ForkedWorker:
    """A worker forked by a zygote and adopted by this process, handled as a ``subprocess.Popen``."""

    stdin: IO[bytes] | None = None

    def __init__(self, pid: int, stderr: IO[bytes] | None, args: list[str]) -> None:
        self.pid = pid
        self.stderr: IO[bytes] | None = stderr
        self.args = args
        self.returncode: int | None = None
        self._lock = threading.Lock()
        """Held while reaping or signalling: a signal must never go to the pid once it is reaped (and reusable)."""

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:  # someone else in this process reaped it: the code is lost
                    pid, status = self.pid, 255 << 8
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """As ``Popen.wait``: poll with growing pauses (at most 50 ms)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            remaining = 0.05 if deadline is None else deadline - time.monotonic()
            delay = min(delay * 2, max(remaining, 0.0), 0.05)
            time.sleep(delay)
        return code

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # it ended; not reaped yet
                    os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class LateWorker(NamedTuple):
    """A worker forked for a request its zygote did not answer in time: its spawned stand-in runs in its place."""

    name: str
    """What the request was for, as the caller named it (a service)."""
    process: ForkedWorker


class _Silent(NamedTuple):
    """A zygote given up on while one of its fork requests was unanswered: read until ``until`` for a late answer."""

    zygote: _Zygote
    name: str
    args: list[str]
    until: float


class Spawner:
    """Starts the workers of one supervisor: forked from zygotes where it can (see the module docstring).

    A zygote that leaves a fork request unanswered for :data:`_REPLY_TIMEOUT` is replaced and the worker
    spawned instead, but it may still fork the first one: that worker would then serve, unknown to the
    supervisor. So the silent zygote is read for its answer :data:`_LATE_WINDOW` longer, and :meth:`watch`
    hands the late worker to the supervisor, which reaps it once the broker has retired it
    (``BrokerCore.stop_unowned``).
    """

    def __init__(self, use_zygote: bool) -> None:
        self.use_zygote = use_zygote and supported() and _dedicated
        self._zygotes: dict[Interpreter, _Zygote | None] = {}
        """The zygote of each interpreter, ready or starting; None for one whose zygotes failed (spawned from then
        on)."""
        self._failures: dict[Interpreter, int] = {}
        """Fork requests or starts in a row each interpreter's zygotes failed."""
        self._served: set[Interpreter] = set()
        """Interpreters that had a zygote ready: one that then fails to start again is tried again."""
        self._silent: list[_Silent] = []
        """Zygotes given up on with a fork request unanswered, until their answer (or the time for it) is over."""
        self._subreaper = False

    def spawn(
        self,
        interp: Interpreter,
        args: list[str],
        cwd: Path,
        env: dict[str, str],
        stdin: int,
        *,
        name: str,
        wait: bool = False,
    ) -> WorkerProcess:
        """A worker running ``python -m workers32 ARGS`` in ``interp``, forked if it can be. ``wait``: the pool is
        starting, so a first zygote is waited for (its 0.1 s beats spawning each worker); otherwise nothing waits
        for one that starts, and the worker is spawned. ``name``: what :meth:`watch` calls the worker should it
        come late."""
        zygote = self._zygote(interp, cwd, env, wait) if self.use_zygote else None
        if zygote is not None:
            read, write = os.pipe()
            try:
                pid = zygote.spawn(args, write)
            except ZygoteFailed as exc:
                os.close(read)  # a late worker's output is lost: it is stopped as soon as it is known
                if isinstance(exc, ZygoteSilent):  # it may fork the worker yet: read its answer a while longer
                    self._silent.append(_Silent(zygote, name, args, time.monotonic() + _LATE_WINDOW))
                self._failures[interp] = failures = self._failures.get(interp, 0) + 1
                if failures < _MAX_FAILURES:
                    log.warning("the zygote of %s failed to fork a worker (%s); replacing it", interp.shown, exc)
                    self._replace(zygote)
                else:
                    log.warning(
                        "the zygotes of %s failed %d times in a row (%s); spawning its workers from now on",
                        interp.shown,
                        failures,
                        exc,
                    )
                    self._end(zygote)
                    self._zygotes[interp] = None
            else:
                self._failures.pop(interp, None)
                return ForkedWorker(pid, open(read, "rb"), args)
            finally:
                os.close(write)
        command = [*interp.command, "-s", "-m", "workers32", *args]
        return subprocess.Popen(command, cwd=cwd, env=env, stdin=stdin, stderr=subprocess.PIPE)

    def adopt(self, start: ZygoteStart) -> None:
        """Take over a zygote started early (:func:`start_zygote`) as its interpreter's first; one this spawner does
        not use (zygotes off, or it has one for that interpreter) is ended."""
        if not self.use_zygote or start.interp in self._zygotes:
            start.discard()
            return
        zygote = start.take()
        if zygote is None:  # ended already
            return
        if self._subreaper:
            _subreaper(False)  # the start counted this process in already
        self._subreaper = True
        self._zygotes[zygote.interp] = zygote
        log.debug("took over zygote pid %d of %s, started early", zygote.process.pid, zygote.interp.shown)

    def watch(self) -> list[LateWorker]:
        """Start again each zygote that ended, and take up those that became ready (the supervisor calls this
        as it polls its workers), so that the next crash's replacement is forked too. Returns the workers that
        zygotes given up on forked after all: this process's children, for the caller to stop and reap."""
        for interp, zygote in list(self._zygotes.items()):
            self._usable(interp, zygote)
        late: list[LateWorker] = []
        now = time.monotonic()
        for silent in list(self._silent):
            pid = silent.zygote.late_answer()
            if pid is None and now < silent.until and silent.zygote.alive():
                continue
            self._silent.remove(silent)
            silent.zygote.kill()
            if pid:
                log.warning("a zygote forked worker pid %d after it was given up on; it is retired", pid)
                late.append(LateWorker(silent.name, ForkedWorker(pid, None, silent.args)))
        return late

    def _zygote(self, interp: Interpreter, cwd: Path, env: dict[str, str], wait: bool) -> _Zygote | None:
        """The interpreter's zygote if it is ready (the first one is started here, and waited for with ``wait``).
        None: spawn instead (its zygotes failed, or one is starting)."""
        if interp not in self._zygotes:
            self._launch(interp, cwd, env)
        zygote = self._zygotes[interp]
        if wait and zygote is not None and not zygote.ready:  # a first one, launched now or taken over (adopt)
            return self._ready(interp, zygote, _START_TIMEOUT)
        return self._usable(interp, zygote)

    def _usable(self, interp: Interpreter, zygote: _Zygote | None) -> _Zygote | None:
        """``zygote`` if it is ready and alive; one that became ready is taken up, one that ended is replaced."""
        if zygote is None or not zygote.ready:
            return self._ready(interp, zygote, 0.0)
        if zygote.alive():
            return zygote
        log.warning(
            "the zygote of %s ended (return code %s); starting another", interp.shown, zygote.process.returncode
        )
        self._replace(zygote)
        return None

    def _launch(self, interp: Interpreter, cwd: Path, env: dict[str, str]) -> None:
        """Start a zygote for ``interp`` without waiting for it: the broker loop goes on routing meanwhile."""
        zygote: _Zygote | None = None
        try:
            if not self._subreaper:
                _subreaper(True)
                self._subreaper = True
            zygote = _Zygote(interp, cwd, env)
        except OSError as exc:
            log.warning("cannot start a zygote for %s, so its workers start slower: %s", interp.shown, exc)
        self._zygotes[interp] = zygote

    def _ready(self, interp: Interpreter, zygote: _Zygote | None, timeout: float) -> _Zygote | None:
        """``zygote`` once ready within ``timeout``, else None. One that cannot start is started again if its
        interpreter had one ready before (up to :data:`_MAX_FAILURES` in a row); otherwise ``interp``'s workers are
        spawned from then on."""
        if zygote is None:
            return None
        try:
            if not zygote.wait_ready(timeout):
                return None
        except ZygoteFailed as exc:
            self._failures[interp] = failures = self._failures.get(interp, 0) + 1
            if interp in self._served and failures < _MAX_FAILURES:
                log.warning("the zygote of %s did not start (%s); starting another", interp.shown, exc)
                self._launch(interp, zygote.cwd, zygote.env)
            else:
                log.warning("cannot start a zygote for %s, so its workers start slower: %s", interp.shown, exc)
                self._zygotes[interp] = None
            return None
        self._served.add(interp)
        return zygote

    def _replace(self, old: _Zygote) -> None:
        self._end(old)
        self._launch(old.interp, old.cwd, old.env)

    def _end(self, old: _Zygote) -> None:
        """End a zygote that is dead already or failed a request (its workers are this process's children and live
        on), unless it is left to answer one late (then :meth:`watch` ends it)."""
        if not any(silent.zygote is old for silent in self._silent):
            old.kill()

    def close(self) -> None:
        """Stop the zygotes (their workers are stopped already, or live on as this process's children)."""
        for zygote in self._zygotes.values():
            if zygote is not None and zygote.ready:
                zygote.close()
            elif zygote is not None:
                zygote.kill()  # still importing: it would hear its channel close only once done
        self._zygotes.clear()
        for silent in self._silent:  # a last look for a late worker: the workers are being stopped, so it goes too
            pid = silent.zygote.late_answer()
            silent.zygote.kill()
            if pid:
                late = ForkedWorker(pid, None, silent.args)
                late.kill()
                late.wait()
        self._silent.clear()
        if self._subreaper:
            self._subreaper = False
            _subreaper(False)
