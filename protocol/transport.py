"""The one place where dllpool's frames meet ZeroMQ sockets: client, broker and worker all use it.

The rest of :mod:`protocol` is sans-io; this module is the thin boundary
(as httpcore's transport is): it sends and receives multipart messages the
cheap way and maps ZeroMQ's failures into dllpool's error types once.

What makes it cheap, measured (docs/performance.md): plain ``int`` flags
(pyzmq's flag enums cost about 1 us per ``|``), per-frame ``send``/``recv``
rather than ``send_multipart``, sending small frames by copy (a ``zmq.Frame``
made to send costs more than copying a few hundred bytes; pyzmq itself
advises zero-copy only above about 64 KiB), and drains that stop when the socket's
``EVENTS`` say it is empty rather than on a raised ``zmq.Again`` (about
5.6 us each). Frames are received as ``zmq.Frame``, whose ``more`` says
whether another follows: asking ``getsockopt(RCVMORE)`` instead builds an
option enum in Python each time: 0.3-0.4 us more per one-frame message,
about 0.6 us more per frame of a longer one (bench/microcosts.py).
"""

import struct
from collections.abc import Iterator, Sequence
from typing import Any

import zmq

from .errors import ConfigError
from .frames import Buffer

__all__ = ["ZERO_COPY_MIN", "send", "try_send", "recv", "drain", "monitor_events", "bind", "connect"]

ZERO_COPY_MIN = 64 * 1024
"""Frames this big or bigger are sent and received without copying."""

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_GONE = (zmq.EAGAIN, zmq.EHOSTUNREACH)
_send = zmq.backend.Socket.send
"""pyzmq's send below its Python wrapper, which only adds the draft sockets' ``routing_id`` and ``group``: 0.3-0.4 us
less per frame (bench/microcosts.py). It takes plain sockets only: a ``zmq.asyncio`` one would not await it."""
_MONITOR_EVENT = struct.Struct("=HI")
"""A socket monitor's first frame: the event (u16) and its value (u32), native byte order (zmq_socket_monitor(3))."""


def send(sock: "zmq.Socket[Any]", frames: Sequence[Any], flags: int = 0) -> None:
    """Send one multipart message (frames are bytes, views or ``zmq.Frame``).

    A multipart message is atomic: with ``NOBLOCK`` only the first frame can raise ``zmq.Again``.
    """
    more = flags | _SNDMORE
    for frame in frames[:-1]:  # most messages are one or two frames: no per-frame test of which is the last
        _send(sock, frame, more, len(frame) < ZERO_COPY_MIN)
    last = frames[-1]
    _send(sock, last, flags, len(last) < ZERO_COPY_MIN)


def try_send(sock: "zmq.Socket[Any]", frames: Sequence[Any]) -> bool:
    """Send without blocking; False when the peer's pipe is full or (ROUTER_MANDATORY) the peer is gone."""
    try:
        send(sock, frames, _NOBLOCK)
    except zmq.ZMQError as exc:
        if exc.errno in _GONE:
            return False
        raise
    return True


def recv(sock: "zmq.Socket[Any]", copied: int = 2, flags: int = _NOBLOCK) -> list[Buffer]:
    """Receive one whole message; ``zmq.Again`` when there is none (without blocking, by default).

    With ``flags=0`` it waits up to the socket's ``RCVTIMEO``: one call to libzmq per frame, cheaper
    than a poll followed by a drain when one thread waits on one socket. The first ``copied`` frames
    (routing ID, header with its joined body: :data:`~protocol.frames.JOIN_LIMIT`) arrive as ``bytes``;
    later frames are a body too big to join and the out-of-band buffers, big by construction
    (:mod:`protocol.codec`), and arrive as zero-copy views.
    """
    receive = sock.recv
    frame = receive(flags, copy=False)  # a frame says whether more follow: no getsockopt(RCVMORE) per frame
    frames: list[Buffer] = [frame.bytes]
    while frame.more:
        frame = receive(_NOBLOCK, copy=False)
        frames.append(frame.bytes if len(frames) < copied else frame.buffer)
    return frames


def drain(sock: "zmq.Socket[Any]", limit: int, copied: int = 2, ready: bool = True) -> "Iterator[list[Buffer]]":
    """Up to ``limit`` waiting messages, for a caller whose poll found ``sock`` readable (``ready``).

    The first message is taken without asking when ``ready`` (the poll said so); before each further
    one the socket's ``EVENTS`` say whether there is more, so an empty socket ends the drain without a
    raised ``zmq.Again``. (A spurious wake-up still ends it quietly.)
    """
    for i in range(limit):
        if (i or not ready) and not int(sock.getsockopt(_EVENTS)) & _POLLIN:
            return
        try:
            message = recv(sock, copied)
        except zmq.Again:
            return
        yield message


def monitor_events(monitor: "zmq.Socket[Any]") -> "Iterator[tuple[int, int]]":
    """The (event, value) pairs waiting on a socket monitor. (pyzmq's own parser imports ``zmq.asyncio``:
    30 ms of every client's and broker's start.)"""
    while True:
        try:
            frames = monitor.recv_multipart(_NOBLOCK)
        except zmq.Again:
            return
        if len(frames) == 2 and len(frames[0]) == _MONITOR_EVENT.size:  # else not from libzmq: skipped
            yield _MONITOR_EVENT.unpack(frames[0])


def bind(sock: "zmq.Socket[Any]", endpoint: str, what: str) -> None:
    """Bind, or raise ConfigError naming the endpoint."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind the {what} to {endpoint}: {exc}") from None


def connect(sock: "zmq.Socket[Any]", address: str, what: str = "the broker") -> None:
    """Connect, or raise ConfigError saying what a valid address looks like."""
    try:
        sock.connect(address)
    except zmq.ZMQError as exc:
        raise ConfigError(
            f"cannot connect to {what} at {address!r}: {exc} "
            "(expected e.g. 'tcp://127.0.0.1:5555' or 'ipc:///tmp/dllpool.ipc')"
        ) from None
