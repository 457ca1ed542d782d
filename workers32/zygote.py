"""The zygote: a process of the service's interpreter that forks ready-to-run workers.

``python -s -m workers32.zygote --control FD --broker-pid PID`` is started by :mod:`broker.zygote`.
It imports the worker's code (pyzmq, msgpack, ctypes, the marshalling) once, then forks one worker
per request, so a worker costs a fork and its library's load instead of an interpreter start and
those imports. No ZeroMQ context exists here before a fork: a context does not survive one; each
worker makes its own.

The control channel is a Unix SOCK_SEQPACKET socket (one JSON message per packet, never pickle):

* zygote -> broker ``{"ready": PID}`` once, when it is ready;
* broker -> zygote ``{"spawn": ARGV}`` with one fd, the write end of the worker's stderr pipe:
  ``ARGV`` is the command line of ``python -m workers32`` (:func:`workers32.__main__.parse`);
* zygote -> broker ``{"spawned": PID}`` or ``{"error": TEXT}``.

A worker is the broker's child, not the zygote's: the zygote forks an intermediate process that
forks the worker and exits at once, and the broker is a child subreaper (PR_SET_CHILD_SUBREAPER),
so the worker is adopted by the broker before the zygote answers. The broker then reaps it and
knows its exit code, signals it without any pid-reuse race, and the worker watches its broker as a
spawned one does (parent-death signal, ``getppid()``): the worker waits to be adopted before it
runs. A zygote that dies takes no worker with it. The zygote itself dies with the broker: its
parent-death signal, and the end of its control channel.
"""

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, NoReturn, Optional

import msgpack  # noqa: F401  imported here once, so a forked worker has it already
import zmq  # noqa: F401  (no context: one made before fork would be unusable in the child)

from . import handles, marshal, signatures  # noqa: F401  the rest of what workers import
from . import worker as worker_module
from .__main__ import parse, serve
from .constants import ADOPTION_TIMEOUT, EXIT_BROKER_GONE, MAX_MESSAGE

log = logging.getLogger("workers32.zygote")

__all__ = ["main"]


def _send(control: socket.socket, message: dict[str, Any]) -> None:
    control.send(json.dumps(message).encode())


def _wait_for_adoption(broker_pid: Optional[int]) -> None:
    """Return once the broker is this process's parent (the intermediate ended and the broker adopted us)."""
    deadline = time.monotonic() + ADOPTION_TIMEOUT
    while broker_pid is not None and os.getppid() != broker_pid:
        if time.monotonic() >= deadline:
            os._exit(EXIT_BROKER_GONE)
        time.sleep(0.0005)


def _worker(argv: list[str], stderr: int, inherited: list[int]) -> NoReturn:
    """In the forked worker: its own stderr and signals, none of the zygote's fds, then the worker."""
    try:
        os.dup2(stderr, 2)
        for fd in (stderr, *inherited):
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a spawned worker has it
        # os.fork() already gave `random` a new seed (os.register_at_fork); nothing else here keeps one.
        sys.argv = [os.path.join(os.path.dirname(__file__), "__main__.py"), *argv]  # as ``-m workers32`` has it
        options = parse(argv)
        _wait_for_adoption(options.parent_pid)
        serve(options, options.parent_pid)
    except BaseException:  # never return into the zygote's loop: this process is a worker now
        logging.exception("a forked worker failed to start")
        logging.shutdown()
        os._exit(1)


def _spawn(control: socket.socket, argv: list[str], stderr: int) -> None:
    """Fork the worker through an intermediate process, and tell the broker its pid once it is adopted."""
    read, write = os.pipe()
    try:
        intermediate = os.fork()
    except OSError as exc:
        for fd in (read, write, stderr):
            os.close(fd)
        _send(control, {"error": f"fork failed: {exc}"})
        return
    if intermediate == 0:
        try:
            pid = os.fork()
            if pid == 0:
                _worker(argv, stderr, [read, write, control.fileno()])
            os.write(write, str(pid).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.close(stderr)
    text = os.read(read, 32)  # one write of a few bytes: all of it, or nothing if the fork failed
    os.close(read)
    os.waitpid(intermediate, 0)  # it has ended: its worker is the broker's child now
    _send(control, {"spawned": int(text)} if text else {"error": "the intermediate process could not fork"})


def _serve(control: socket.socket) -> None:
    _send(control, {"ready": os.getpid()})
    while True:
        data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 1)
        if not data:  # the broker closed the channel, or is gone
            return
        message = json.loads(data)
        if len(fds) == 1 and "spawn" in message:
            _spawn(control, message["spawn"], fds[0])
            continue
        log.error("ignored a malformed request: %r with %d fd(s)", message, len(fds))
        for fd in fds:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m workers32.zygote", description="Forks dllpool workers.")
    parser.add_argument("--control", type=int, required=True, help="fd of the control socket (SOCK_SEQPACKET)")
    parser.add_argument("--broker-pid", type=int, required=True, help="the broker process, this one's parent")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    worker_module._set_parent_death_signal()
    if os.getppid() != options.broker_pid:  # it died before the signal was armed
        sys.exit(EXIT_BROKER_GONE)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the broker to handle, not its zygote
    control = socket.socket(fileno=options.control)
    gc.freeze()  # what is here now stays shared with the workers: no collection touches (copies) its pages
    with contextlib.suppress(ConnectionError):  # the broker went away while we answered it
        _serve(control)
    logging.shutdown()


if __name__ == "__main__":
    main()
