"""What :class:`~client.client.Client` and :class:`~client.aio.AsyncClient` share, with no I/O: checking a
caller's arguments, turning them into a :class:`~client.core.Call` (shared memory included), and cutting a
map into batches and its answers back into items.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from itertools import count, islice
from typing import Any, Final

import zmq

from protocol import frames as wire
from protocol.codec import pack_batch, pack_call, pack_value, plain_arguments
from protocol.errors import ArgumentError, ConfigError, DllPoolError, ProtocolError, Timeout

from . import shm
from .core import Call, remote_error
from .handles import pin_of
from .keys import CurveKeys

log = logging.getLogger(__name__)

__all__ = [
    "FramesOnly",
    "MAP_CHUNKSIZE",
    "MAP_WINDOW",
    "UNSET",
    "Chunk",
    "MapWindow",
    "Unset",
    "check_chunksize",
    "check_name",
    "check_settings",
    "check_timeout",
    "drop_calls",
    "chunk_outcomes",
    "new_call",
    "next_chunk",
]


class Unset(enum.Enum):
    UNSET = enum.auto()


UNSET: Final = Unset.UNSET
"""``timeout=`` not given: the client's default applies."""

MAP_CHUNKSIZE = 512
"""Default calls per message of a map. ``demo.add`` on 4 workers (2 cores, 8 in flight): about 75k calls/s
with 64, 150k with 256, 205k with 512, 200-270k with 1024. Bigger chunks gain little, and a worker that dies
fails every call of its chunk."""
MAP_WINDOW = 16
"""Chunks of one map in flight: two per worker for services of up to 8 workers, so each has the next at hand
(with 4 workers, 8 and 16 measure the same); the broker queues the rest."""


def check_settings(
    address: str,
    curve: CurveKeys | Mapping[str, str] | None,
    heartbeat_interval: float,
    heartbeat_liveness: int,
    shared_memory_min: int,
) -> CurveKeys | None:
    """A client's constructor arguments checked; its CURVE keys."""
    if not isinstance(address, str) or not address:
        raise ConfigError(f"the broker address must be a non-empty string like 'tcp://127.0.0.1:5555', got {address!r}")
    if not heartbeat_interval > 0:
        raise ValueError(f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval!r}")
    if isinstance(heartbeat_liveness, bool) or not isinstance(heartbeat_liveness, int) or heartbeat_liveness < 1:
        raise ValueError(f"heartbeat_liveness must be an integer >= 1, got {heartbeat_liveness!r}")
    if isinstance(shared_memory_min, bool) or not isinstance(shared_memory_min, int) or shared_memory_min < 0:
        raise ValueError(f"shared_memory_min must be an integer >= 0 (0: off), got {shared_memory_min!r}")
    keys = None if curve is None else CurveKeys.coerce(curve)
    if keys is not None and not zmq.has("curve"):
        raise DllPoolError("CURVE keys were given but this pyzmq/libzmq was built without CURVE support")
    return keys


def share_from(address: str, shared_memory_min: int) -> int:
    """Bytes from which arrays go through shared memory to the broker at ``address``; 0: never."""
    minimum = shared_memory_min if shm.available() and shm.on_this_host(address) else 0
    if minimum:
        shm.sweep_once()
    return minimum


def check_name(name: str, what: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a str, not {type(name).__name__}")
    wire.encoded_name(name, what)


def check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    value = float(timeout)
    if math.isnan(value) or value < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    return None if math.isinf(value) else value


def check_chunksize(chunksize: int | None) -> int:
    if chunksize is None:
        return MAP_CHUNKSIZE
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int or None, not {type(chunksize).__name__}")
    if chunksize < 1:
        raise ValueError(f"chunksize must be >= 1, got {chunksize}")
    return chunksize


def unsendable(
    service: str, method: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], error: Exception
) -> ArgumentError:
    """An ArgumentError naming the first argument that cannot be packed (the error path only)."""
    named = [(f"argument {i}", value) for i, value in enumerate(args, 1)]
    named += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
    for label, value in named:
        try:
            pack_value(value)
        except (TypeError, ValueError, OverflowError) as exc:
            return ArgumentError(
                f"{service}.{method}: {label} ({value!r:.60}) cannot be sent: {exc}",
                service=service,
                method=method,
            )
    return ArgumentError(f"the arguments of {service}.{method} cannot be sent: {error}", service=service, method=method)


def new_call(
    corr_ids: Iterator[int],
    service: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seconds: float | None,
    share_min: int,
    pin: int | None = None,
) -> Call:
    """The call ``service.method(*args, **kwargs)``, its arrays of ``share_min`` bytes or more (0: none) in
    shared memory, for worker ``pin`` only (a session's) or, given handles, for theirs; ValueError or
    TypeError for bad names, ArgumentError for arguments that cannot be sent."""
    check_name(service, "service")
    check_name(method, "method")
    plain = plain_arguments(args, kwargs)  # no handle, no array: nothing to pin, nothing to share
    bound = None if plain else pin_of(service, args, kwargs)
    if bound is not None and pin not in (None, bound):
        raise ArgumentError(f"{service}.{method}: handles of worker pid {bound} in a session on worker pid {pin}")
    segments = shm.CallSegments(share_min, args, kwargs) if share_min and not plain else None
    try:
        payload = pack_call(args, kwargs, None if segments is None else segments.share, plain=plain)
    except BaseException as exc:
        if segments is not None:
            segments.release()
        if isinstance(exc, (TypeError, ValueError, OverflowError)):
            raise unsendable(service, method, args, kwargs, exc) from None
        raise
    if segments is not None and not segments.used:
        segments = None
    call = Call(next(corr_ids), service, method, seconds, payload, time.monotonic(), shm=segments, pin=pin)
    if bound is not None:
        call.pin, call.via_handle = bound, True
    return call


class Chunk:
    """Some items of a map: the request of their batch (None when none of them could go), the items that
    failed before sending, and ``handle``, whatever the driver waits on for the batch's answer."""

    __slots__ = ("call", "count", "handle", "local")

    def __init__(self, count: int, call: Call | None, local: dict[int, Exception]) -> None:
        self.count = count
        self.call = call
        self.local = local
        self.handle: Any = None


def next_chunk(
    corr_ids: count[int],
    service: str,
    method: str,
    chunk: list[Any],
    seconds: float | None,
    deadline: float | None,
    who: str,
) -> Chunk:
    """One batch of a map, to send; items that cannot go (not argument tuples, unsendable, out of time) fail
    here. ``who`` names the map (``Client.map``) in the errors."""
    local: dict[int, Exception] = {}
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        error = Timeout(
            f"{service}.{method}: the map's {seconds:g} s ran out before this item was sent",
            service=service,
            method=method,
            timeout=seconds,
        )
        return Chunk(len(chunk), None, dict.fromkeys(range(len(chunk)), error))
    try:
        if not all(isinstance(args, (tuple, list)) for args in chunk):
            raise TypeError("not a tuple")
        payload = pack_batch(chunk)
    except (TypeError, ValueError, OverflowError):  # find the culprits; the others still go
        for i, args in enumerate(chunk):
            if not isinstance(args, (tuple, list)):
                local[i] = ArgumentError(
                    f"{service}.{method}: {who} needs a tuple of arguments per item, "
                    f"got {type(args).__name__} ({args!r:.60})",
                    service=service,
                    method=method,
                )
                continue
            try:
                pack_value(list(args))
            except (TypeError, ValueError, OverflowError) as exc:
                local[i] = unsendable(service, method, args, {}, exc)
        chunk = [args for i, args in enumerate(chunk) if i not in local]
        if not chunk:
            return Chunk(len(local), None, local)
        payload = pack_batch(chunk)
    call = Call(next(corr_ids), service, method, left, payload, time.monotonic(), wire.FLAG_BATCH)
    return Chunk(len(chunk) + len(local), call, local)


def chunk_outcomes(service: str, method: str, chunk: Chunk, answer: Any) -> list[list[Any]]:
    """``[ok, result or error]`` for each item of a chunk, in order, from the batch's ``answer`` (a
    DllPoolError when the batch as a whole failed: its worker died, a timeout, ...)."""
    sent = chunk.count - len(chunk.local)
    outcomes: list[list[Any]] = []
    if isinstance(answer, DllPoolError):
        outcomes = [[False, answer]] * sent
    elif chunk.call is not None:
        outcomes = _batch(answer, sent, service, method)
    if not chunk.local:
        return outcomes
    remote = iter(outcomes)
    return [[False, chunk.local[i]] if i in chunk.local else next(remote) for i in range(chunk.count)]


def _batch(answer: Any, count: int, service: str, method: str) -> list[list[Any]]:
    """A batch answer checked item by item: ``[True, result]`` or ``[False, error]`` each."""
    if not isinstance(answer, list) or len(answer) != count:
        error = ProtocolError(f"the answer to a batch of {count} calls of {service}.{method} is malformed")
        return [[False, error]] * count
    for i, pair in enumerate(answer):
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not bool:
            answer[i] = [False, ProtocolError(f"item {i} of a batch answer of {service}.{method} is malformed")]
        elif not pair[0]:
            pair[1] = remote_error(pair[1], service, method)
    return answer


class MapWindow:
    """The batches of one map in flight, at most :data:`MAP_WINDOW`: read from the items only as far ahead
    as they need, so the items may be endless. ``send`` hands a chunk's request to the driver, setting the
    chunk's ``handle`` (something with ``cancel()``)."""

    __slots__ = ("_chunks", "_deadline", "_items", "_seconds", "_send", "_size", "corr_ids", "method", "service", "who")

    def __init__(
        self,
        corr_ids: count[int],
        service: str,
        method: str,
        items: Iterator[Any],
        size: int,
        seconds: float | None,
        deadline: float | None,
        send: Callable[[Call], Any],
        who: str,
    ) -> None:
        self.corr_ids = corr_ids
        self.service = service
        self.method = method
        self.who = who
        self._items = items
        self._size = size
        self._seconds = seconds
        self._deadline = deadline
        self._send = send
        self._chunks: deque[Chunk] = deque()

    def fill(self) -> None:
        """Send chunks until the window is full or the items run out."""
        chunks = self._chunks
        while len(chunks) < MAP_WINDOW:
            items = list(islice(self._items, self._size))
            if not items:
                return
            chunk = next_chunk(self.corr_ids, self.service, self.method, items, self._seconds, self._deadline, self.who)
            if chunk.call is not None:
                chunk.handle = self._send(chunk.call)
            chunks.append(chunk)

    def next(self) -> Chunk | None:
        """The oldest chunk in flight (its answer is the next to read), or None when the map is done."""
        return self._chunks.popleft() if self._chunks else None

    def outcomes(self, chunk: Chunk, answer: Any) -> list[list[Any]]:
        return chunk_outcomes(self.service, self.method, chunk, answer)

    def cancel(self) -> None:
        """The map ends early (an error, or its reader left): cancel the chunks still in flight."""
        for chunk in self._chunks:
            if chunk.handle is not None:
                chunk.handle.cancel()
        self._chunks.clear()


class FramesOnly:
    """Services whose worker could not open a shared-memory segment (one on another host): their calls go
    with frames for a while, rather than each cost a second round trip."""

    __slots__ = ("_until", "seconds")

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self._until: dict[str, float] = {}

    def shares_with(self, service: str) -> bool:
        """Whether calls to ``service`` may use shared memory now."""
        until = self._until.get(service)
        if until is None:
            return True
        if time.monotonic() < until:
            return False
        self._until.pop(service, None)
        return True

    def with_frames(self, call: Call, error: BaseException | None) -> bool:
        """Turn a call whose worker could not open its shared memory into one with frames, to send again;
        False for any other ending."""
        segments = call.shm
        if segments is None or not shm.wants_frames(error):
            return False
        log.info(
            "a worker of %r could not open a shared-memory segment (%s); sending %s.%s again with frames",
            call.service,
            error,
            call.service,
            call.method,
        )
        self._until[call.service] = time.monotonic() + self.seconds
        call.payload = segments.frames()
        call.shm = None
        call.sent = False
        segments.release()
        return True


def drop_calls(corr_ids: Iterator[int], drops: deque[tuple[str, int, int]]) -> list[Call]:
    """One ``$drop`` call per worker for the Handles let go of (``(service, worker pid, id)`` each, taken
    from ``drops``)."""
    by_worker: dict[tuple[str, int], list[int]] = {}
    while drops:
        service, pid, handle_id = drops.popleft()
        by_worker.setdefault((service, pid), []).append(handle_id)
    now = time.monotonic()
    return [
        Call(next(corr_ids), service, wire.DROP_HANDLES, None, pack_call([ids], {}), now, pin=pid)
        for (service, pid), ids in by_worker.items()
    ]
