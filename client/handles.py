"""Handles on the caller's side: a pointer a worker holds, and the route back to that worker.

A call given a :class:`Handle` goes to the worker that made it (and only there: if that worker is gone the
call fails with HandleLost, never runs elsewhere). When the last reference to a Handle goes, its worker is
told to let go of it (and to close it with the service's declared close function for its kind).
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from protocol.codec import HandleRef
from protocol.errors import ArgumentError, HandleLost, WorkerCrashed

__all__ = ["Drops", "Handle", "lost", "pin_of"]

Dropper = Callable[[str, int, int], None]
"""What a Handle calls when it goes: ``(service, worker pid, handle id)``."""


class Handle(HandleRef):
    """A handle a declared function returned (``params = { return = "handle" }``): pass it back to the
    service's functions that take it. ``service``: where it came from; ``pid``: the worker holding it."""

    __slots__ = ("__weakref__", "service")

    def __init__(self, ref: HandleRef, service: str, dropper: Dropper | None) -> None:
        super().__init__(ref.pid, ref.id, ref.kind)
        self.service = service
        if dropper is not None:
            weakref.finalize(self, dropper, service, ref.pid, ref.id)


class Drops:
    """The Handles a client's callers let go of, for its I/O loop to send as ``$drop`` calls. A Handle's
    finalizer may run on any thread at any point, so it only appends here; once ``closed``, nothing is kept."""

    def __init__(self) -> None:
        self.pending: deque[tuple[str, int, int]] = deque()
        """``(service, worker pid, handle id)`` of each Handle let go of."""
        self.closed = False

    def handle(self, service: str, ref: HandleRef) -> Handle:
        """What a handle in an answer to a call of ``service`` becomes: a Handle that reports its end here."""
        return Handle(ref, service, self._let_go)

    def _let_go(self, service: str, pid: int, handle_id: int) -> None:
        if not self.closed:
            self.pending.append((service, pid, handle_id))


def pin_of(service: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    """The worker a call's handles tie it to (None without handles); ArgumentError for handles of two workers
    or of another service."""
    pids = set()
    for value in [*args, *kwargs.values()]:
        if isinstance(value, HandleRef):
            if isinstance(value, Handle) and value.service != service:
                raise ArgumentError(f"{value!r} belongs to service {value.service!r}, not {service!r}")
            pids.add(value.pid)
    if len(pids) > 1:
        raise ArgumentError(f"a call can take handles of one worker only; these are of workers {sorted(pids)}")
    return pids.pop() if pids else None


def lost(error: BaseException) -> BaseException:
    """A call with handles whose worker is gone fails with HandleLost (a WorkerCrashed)."""
    if isinstance(error, WorkerCrashed) and not isinstance(error, HandleLost):
        return HandleLost(
            f"{error.message}; the handles it was given died with that worker", **{**error.details, "handles": True}
        )
    return error
