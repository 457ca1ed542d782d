"""Starting worker processes: forked from a zygote of their interpreter, or spawned.

A spawned worker (``subprocess.Popen`` of ``python -m workers32``) pays an interpreter start and the
imports of pyzmq, msgpack and the worker's code: about 0.4 s on a 2-core machine, for every start,
crash and recycle. A :mod:`zygote <workers32.zygote>` pays that once per interpreter and forks each
worker in milliseconds. :class:`Spawner` gives the supervisor the same Popen-like handle
(:class:`WorkerProcess`) either way:

* the zygote is used on Linux (pidfds, ``fork``) unless ``[pool] zygote = false``; elsewhere (Windows,
  macOS) and when a zygote cannot start, workers are spawned, with a warning in the latter case;
* one zygote per interpreter, started on the first worker that needs it; one that died is started
  again on the next worker to start, and one that fails a request is replaced;
* the workers a dead zygote forked keep serving. Each handle holds a pidfd of its worker, which the
  zygote opened before the worker could end, so exits are seen and signals reach that very process
  without pid reuse; while the zygote lives it reaps its workers and reports their exit codes. A
  worker that ends after its zygote was reaped by init instead: nobody can know its exit code,
  which is reported as :data:`UNKNOWN_EXIT`;
* workers still end with the broker process (see ``workers32/zygote.py``): they watch a pipe whose
  only write end this process holds, which the spawner closes when the pool stops.
"""

from __future__ import annotations

import contextlib
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
from collections import deque
from pathlib import Path
from typing import IO, Protocol

from workers32.zygote import MAX_MESSAGE

from .runtime32 import Interpreter

log = logging.getLogger(__name__)

__all__ = ["UNKNOWN_EXIT", "ForkedWorker", "Spawner", "WorkerProcess", "supported"]

UNKNOWN_EXIT = 255
"""The return code of a forked worker that ended after its zygote died: init reaped it, so its code is lost."""
_START_TIMEOUT = 10.0
"""Seconds a new zygote has to import the worker's code and say it is ready; past it, workers are spawned."""
_REPLY_TIMEOUT = 5.0
"""Seconds a zygote has to answer a fork request before it counts as broken (and is replaced)."""
_STOP_TIMEOUT = 2.0


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


def supported() -> bool:
    """Whether this platform can fork workers from a zygote: Linux, with pidfds."""
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


class _Zygote:
    """One zygote process and this end of its control socket."""

    def __init__(self, interp: Interpreter, cwd: Path, env: dict[str, str], lifeline: int) -> None:
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        self.lock = threading.Lock()
        """Held while the control socket is used: a spawn's request and reply must not interleave."""
        self.exits: dict[int, int] = {}
        """Exit codes the zygote reported, by pid, until their handle takes them."""
        self.replies: deque[tuple[int, int] | str] = deque()
        self.dead = False
        """The control socket ended: the zygote is gone, and reports no more exits."""
        fds = (theirs.fileno(), lifeline)
        command = [*interp.command, "-s", "-m", "workers32.zygote", "--control", str(fds[0]), "--lifeline"]
        command += [str(lifeline), "--broker-pid", str(os.getpid())]
        with theirs:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=fds
            )
        try:
            self._wait_ready()
        except ZygoteFailed as exc:
            self.close()
            assert self.process.stderr is not None
            with self.process.stderr as stream:  # it has ended: the pipe ends too
                output = stream.read().decode("utf-8", "replace").strip()
            raise ZygoteFailed(f"{exc}; it printed: {output or 'nothing'}") from None
        threading.Thread(target=self._forward_stderr, name=f"stderr zygote {self.process.pid}", daemon=True).start()

    def _wait_ready(self) -> None:
        if not _readable(self.control.fileno(), _START_TIMEOUT):
            raise ZygoteFailed(f"not ready after {_START_TIMEOUT:.0f} s")
        data = self.control.recv(MAX_MESSAGE)
        if not data or "ready" not in json.loads(data):
            raise ZygoteFailed(f"it ended ({self.process.wait(_STOP_TIMEOUT)})")

    def _forward_stderr(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr as stream:
            for raw in stream:
                log.info("[zygote pid %d] %s", self.process.pid, raw.decode("utf-8", "replace").rstrip())

    def spawn(self, argv: list[str], stderr: int) -> tuple[int, int]:
        """Fork a worker with ``argv`` (``python -m workers32``'s) and ``stderr``: its pid and a pidfd of it."""
        with self.lock:
            try:
                socket.send_fds(self.control, [json.dumps({"spawn": argv}).encode()], [stderr])
            except OSError as exc:
                raise ZygoteFailed(f"cannot send it the request: {exc}") from None
            deadline = time.monotonic() + _REPLY_TIMEOUT
            while not self.replies:
                remaining = deadline - time.monotonic()
                if self.dead or remaining <= 0 or not _readable(self.control.fileno(), remaining):
                    raise ZygoteFailed("it ended" if self.dead else f"no answer in {_REPLY_TIMEOUT:.0f} s")
                self._receive()
            reply = self.replies.popleft()
        if isinstance(reply, str):
            raise ZygoteFailed(reply)
        return reply

    def collect(self) -> None:
        """Take in every message waiting (exit reports) without blocking."""
        with self.lock:
            # socket.recv_fds ignores its flags (MSG_DONTWAIT): ask first whether a message is there
            while not self.dead and _readable(self.control.fileno(), 0):
                self._receive()

    def _receive(self) -> None:
        """One message from the zygote (blocks until there is one). Caller holds the lock."""
        try:
            data, fds, _, _ = socket.recv_fds(self.control, MAX_MESSAGE, 1)
        except OSError:  # reset: the zygote died
            data, fds = b"", []
        if not data:
            self.dead = True
            return
        message = json.loads(data)
        if "exit" in message:
            self.exits[int(message["exit"])] = int(message["code"])
        elif "spawned" in message and len(fds) == 1:
            self.replies.append((int(message["spawned"]), fds[0]))
        else:
            for fd in fds:
                os.close(fd)
            self.replies.append(str(message.get("error", f"an unexpected answer: {message!r}")))

    def wait_message(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a message (an exit report), and take in what came."""
        if not self.dead and _readable(self.control.fileno(), timeout):
            self.collect()

    def alive(self) -> bool:
        if not self.dead and self.process.poll() is not None:
            self.collect()  # what it said before it died still counts
            self.dead = True
        return not self.dead

    def close(self) -> None:
        """End the zygote: the end of its control socket tells it to exit. Its workers live on."""
        self.control.close()
        try:
            self.process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ForkedWorker:
    """A worker forked by a zygote, handled as a ``subprocess.Popen``."""

    stdin: IO[bytes] | None = None

    def __init__(self, zygote: _Zygote, pid: int, pidfd: int, stderr: IO[bytes], args: list[str]) -> None:
        self.pid = pid
        self.stderr: IO[bytes] | None = stderr
        self.args = args
        self.returncode: int | None = None
        self._zygote = zygote
        self._pidfd = pidfd
        self._lock = threading.Lock()
        """Held while the pidfd is used: a signal must never go to an fd closed (and reused) meanwhile."""

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                self._zygote.collect()
                code = self._zygote.exits.pop(self.pid, None)
                if code is None and not self._zygote.alive() and _readable(self._pidfd, 0):
                    log.info("worker pid %d ended after its zygote: its exit code is unknown", self.pid)
                    code = self._zygote.exits.pop(self.pid, UNKNOWN_EXIT)
                if code is not None:
                    self.returncode = code
                    os.close(self._pidfd)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            step = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if step <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            with self._lock:
                ended = self.returncode is not None or _readable(self._pidfd, step)
            if ended:  # its zygote reports the code in a moment
                self._zygote.wait_message(step)
        return code

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # it ended; not reaped yet
                    signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Spawner:
    """Starts the workers of one supervisor: forked from zygotes where it can (see the module docstring)."""

    def __init__(self, use_zygote: bool) -> None:
        self.use_zygote = use_zygote and supported()
        self._zygotes: dict[Interpreter, _Zygote | None] = {}
        """The zygote of each interpreter; None for one whose zygote failed to start (spawned from then on)."""
        self._lifeline: tuple[int, int] | None = None
        """The pipe forked workers watch: read end (theirs), write end (only this process holds it)."""

    def spawn(self, interp: Interpreter, args: list[str], cwd: Path, env: dict[str, str], stdin: int) -> WorkerProcess:
        """A worker running ``python -m workers32 ARGS`` in ``interp``, forked if it can be."""
        zygote = self._zygote(interp, cwd, env) if self.use_zygote else None
        if zygote is not None:
            read, write = os.pipe()
            try:
                pid, pidfd = zygote.spawn(args, write)
            except ZygoteFailed as exc:
                os.close(read)
                log.warning("the zygote of %s failed to fork a worker (%s); replacing it", interp.shown, exc)
                zygote.close()
                del self._zygotes[interp]
            else:
                return ForkedWorker(zygote, pid, pidfd, open(read, "rb"), args)
            finally:
                os.close(write)
        command = [*interp.command, "-s", "-m", "workers32", *args]
        return subprocess.Popen(command, cwd=cwd, env=env, stdin=stdin, stderr=subprocess.PIPE)

    def _zygote(self, interp: Interpreter, cwd: Path, env: dict[str, str]) -> _Zygote | None:
        """The interpreter's running zygote, started (again) if it has none."""
        zygote = self._zygotes.get(interp)
        if zygote is not None and zygote.alive():
            return zygote
        if interp in self._zygotes and zygote is None:
            return None
        if zygote is not None:
            log.warning("the zygote of %s died (%s); starting another", interp.shown, zygote.process.returncode)
            zygote.close()
        if self._lifeline is None:
            self._lifeline = os.pipe()
        try:
            zygote = _Zygote(interp, cwd, env, self._lifeline[0])
        except (ZygoteFailed, OSError) as exc:
            log.warning("cannot start a zygote for %s, so its workers start slower: %s", interp.shown, exc)
            zygote = None
        self._zygotes[interp] = zygote
        return zygote

    def close(self) -> None:
        """Stop the zygotes and cut the lifeline: a forked worker still running exits."""
        for zygote in self._zygotes.values():
            if zygote is not None:
                zygote.close()
        self._zygotes.clear()
        if self._lifeline is not None:
            for fd in self._lifeline:
                os.close(fd)
            self._lifeline = None
