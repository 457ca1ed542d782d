"""The zygote: a process of the service's interpreter that forks ready-to-run workers.

``python -s -m workers32.zygote --control FD --lifeline FD --broker-pid PID`` is started by
:mod:`broker.zygote`. It imports the worker's code (pyzmq, msgpack, ctypes, the marshalling) once,
then forks one worker per request, so a worker costs a fork and its library's load instead of an
interpreter start and those imports (about 0.4 s each on a 2-core machine). No ZeroMQ context
exists here before a fork: a context does not survive one; each child makes its own.

The control channel is a Unix SOCK_SEQPACKET socket (one JSON message per packet, never pickle):

* broker -> zygote ``{"spawn": ARGV}`` with one fd, the write end of the child's stderr pipe:
  ``ARGV`` is the command line of ``python -m workers32`` (:func:`workers32.__main__.parse`);
* zygote -> broker ``{"spawned": PID}`` with one fd, a pidfd of the child, or ``{"error": TEXT}``;
* zygote -> broker ``{"exit": PID, "code": CODE}`` once it reaped a child (``CODE`` as ``Popen``
  gives it: negative for a signal); ``{"ready": PID}`` once, when it is ready.

Lifetimes. The zygote dies with the broker: parent-death signal on the thread that started it, and
the end of the control channel. A worker's parent is the zygote, yet it must outlive a zygote that
dies (killed by hand, the OOM killer) and must not outlive the broker: instead of a parent-death
signal it watches the *lifeline*, a pipe whose only write end is in the broker process; the end of
that pipe (the broker exited, however it died, or stopped the pool) ends the worker.
"""

import argparse
import contextlib
import gc
import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
from typing import Any, NoReturn

import msgpack  # noqa: F401  imported here once, so a forked worker has it already
import zmq  # noqa: F401  (no context: one made before fork would be unusable in the child)

from . import handles, marshal, signatures  # noqa: F401  the rest of what workers import
from . import worker as worker_module
from .__main__ import parse, serve
from .worker import EXIT_BROKER_GONE

log = logging.getLogger("workers32.zygote")

__all__ = ["MAX_MESSAGE", "main"]

MAX_MESSAGE = 1 << 20
"""Bytes of one control message: more than a command line may hold (128 KiB per argument on Linux)."""


def _send(control: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
    socket.send_fds(control, [json.dumps(message).encode()], fds)


def _watch_lifeline(lifeline: int) -> None:
    """Exit once the lifeline ends: the broker process is gone (or its pool stopped)."""

    def watch() -> None:
        while os.read(lifeline, 1):
            pass
        log.warning("the broker process is gone; exiting")
        logging.shutdown()
        os._exit(EXIT_BROKER_GONE)  # a call may be stuck in the library: do not wait for it

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def _child(argv: list[str], stderr: int, lifeline: int, inherited: list[int]) -> NoReturn:
    """In the forked worker: its own stderr and signals, none of the zygote's fds, then the worker."""
    try:
        os.dup2(stderr, 2)
        for fd in (stderr, *inherited):
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a spawned worker has it
        # os.fork() already gave `random` a new seed (os.register_at_fork); nothing else here keeps one.
        # run() ties a worker to its parent with a parent-death signal: here the parent is the zygote,
        # whose death must not take its workers along, so the worker ties itself to the broker instead.
        worker_module._set_parent_death_signal = lambda: _watch_lifeline(lifeline)
        serve(parse(argv), None)
    except BaseException:  # never return into the zygote's loop: this process is a worker now
        logging.exception("a forked worker failed to start")
        logging.shutdown()
        os._exit(1)


class _Zygote:
    def __init__(self, control: socket.socket, lifeline: int) -> None:
        self.control = control
        self.lifeline = lifeline
        self.children: dict[int, int] = {}
        """pidfd -> pid of each child not yet reaped."""
        self.selector = selectors.EpollSelector()  # Linux only, as pidfds are
        self.selector.register(control, selectors.EVENT_READ)

    def serve(self) -> None:
        _send(self.control, {"ready": os.getpid()}, [])
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.control:
                    if not self._request():
                        return
                else:
                    self._reap(int(key.fd))

    def _request(self) -> bool:
        """Handle one message from the broker; False once the broker is gone."""
        try:
            data, fds, _, _ = socket.recv_fds(self.control, MAX_MESSAGE, 1)
        except ConnectionError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        message = json.loads(data)
        if len(fds) != 1 or "spawn" not in message:
            log.error("ignored a malformed request: %r with %d fd(s)", message, len(fds))
            for fd in fds:
                os.close(fd)
            return True
        self._spawn(message["spawn"], fds[0])
        return True

    def _spawn(self, argv: list[str], stderr: int) -> None:
        inherited = [self.control.fileno(), self.selector.fileno(), *self.children]
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(stderr)
            _send(self.control, {"error": f"fork failed: {exc}"}, [])
            return
        if pid == 0:
            _child(argv, stderr, self.lifeline, inherited)
        os.close(stderr)
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = pid
        self.selector.register(pidfd, selectors.EVENT_READ)
        _send(self.control, {"spawned": pid}, [pidfd])

    def _reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        _send(self.control, {"exit": pid, "code": os.waitstatus_to_exitcode(status)}, [])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m workers32.zygote", description="Forks dllpool workers.")
    parser.add_argument("--control", type=int, required=True, help="fd of the control socket (SOCK_SEQPACKET)")
    parser.add_argument("--lifeline", type=int, required=True, help="fd of the read end of the broker's lifeline")
    parser.add_argument("--broker-pid", type=int, required=True, help="the broker process, this one's parent")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    worker_module._set_parent_death_signal()
    if os.getppid() != options.broker_pid:  # it died before the signal was armed
        sys.exit(EXIT_BROKER_GONE)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the broker to handle, not its zygote
    control = socket.socket(fileno=options.control)
    gc.freeze()  # what is here now stays shared with the children: no collection touches (copies) its pages
    with contextlib.suppress(ConnectionError):  # the broker went away while we answered it
        _Zygote(control, options.lifeline).serve()
    logging.shutdown()


if __name__ == "__main__":
    main()
