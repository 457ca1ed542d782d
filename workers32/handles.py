"""Handles: pointers a library returned, kept in the worker, lent to callers as ids.

A declared function may return ``handle`` (``void *open_device(int n)``, ``struct Device *...``). The pointer
never leaves the worker: the caller gets a :class:`~protocol.codec.HandleRef` (this worker's pid, an id, the
pointer's kind), its calls that pass it back are routed here, and the id is looked up in this table. A caller
can therefore neither forge an address nor use one after it was closed: an id this table does not hold is
refused before the library is called.
"""

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Callable, Optional

from protocol.codec import HandleRef

from .marshal import Refused

__all__ = ["HANDLES", "Handles"]

log = logging.getLogger("workers32")

ANY_KIND = "void"
"""A ``void *`` parameter takes a handle of any kind."""


def _unguessable() -> int:
    """62 random bits from the system's CSPRNG, as ``secrets.randbits`` gives them (its import, OpenSSL's
    hashing included, is 5 ms of every worker's start)."""
    return int.from_bytes(os.urandom(8), "little") >> 2


class Handles:
    """The open handles of this worker process: id -> (pointer, kind)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, tuple[int, str]] = {}
        self._closing: set[int] = set()
        """Handles a call is closing right now: no other call may use them meanwhile."""
        self.closers: dict[str, Callable[[HandleRef], Any]] = {}
        """The declared function that closes a handle of each kind: what a caller dropping one runs."""

    def register(self, pointer: Optional[int], kind: str) -> Optional[HandleRef]:
        """A new handle for ``pointer`` (a NULL pointer is no handle: None)."""
        if not pointer:
            return None
        with self._lock:
            handle_id = _unguessable()  # another caller of the pool cannot name it
            while handle_id in self._open:
                handle_id = _unguessable()
            self._open[handle_id] = (pointer, kind)
        return HandleRef(os.getpid(), handle_id, kind)

    def pointer(self, value: Any, kind: str, closing: bool = False) -> int:
        """The pointer ``value`` stands for, if it is a handle of this worker, still open and of ``kind``.
        ``closing``: the call closes it, so from now on no other call may use it (:meth:`forget` ends it, or
        :meth:`reopen` if the call is refused before the library has it)."""
        if not isinstance(value, HandleRef):
            raise Refused(
                f'expected a handle (what a function declared with params = {{ return = "handle" }} returned), '
                f"got {type(value).__name__}"
            )
        if value.pid != os.getpid():
            raise Refused(f"{value!r} belongs to another worker, not to pid {os.getpid()}")
        with self._lock:
            found = self._open.get(value.id)
            if found is None or found[1] != value.kind or value.id in self._closing:
                raise Refused(f"{value!r} is not open (it was closed or dropped)")
            if kind not in (ANY_KIND, value.kind):
                raise Refused(f"{value!r} is a handle of kind {value.kind}; this parameter takes {kind}")
            if closing:
                self._closing.add(value.id)
        return found[0]

    def reopen(self, value: Any) -> None:
        """A call that was to close ``value`` was refused before the library saw it: it is usable again."""
        if isinstance(value, HandleRef):
            with self._lock:
                self._closing.discard(value.id)

    def forget(self, value: Any) -> None:
        if isinstance(value, HandleRef):
            with self._lock:
                self._open.pop(value.id, None)
                self._closing.discard(value.id)

    def drop(self, ids: Any) -> int:
        """The ``$drop`` method: its callers let go of these handles. Each is closed with its kind's declared
        close function, if there is one, and forgotten; the number dropped."""
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise TypeError("$drop takes a list of handle ids")
        dropped = 0
        for handle_id in ids:
            with self._lock:
                found = self._open.get(handle_id)
            if found is None or handle_id in self._closing:
                continue
            ref = HandleRef(os.getpid(), handle_id, found[1])
            closer = self.closers.get(found[1])
            if closer is not None:
                try:
                    closer(ref)
                except Exception as exc:  # a close that fails still lets go of the id
                    log.warning("closing dropped %r failed: %s", ref, exc)
            self.forget(ref)
            dropped += 1
        return dropped

    def add_closers(self, functions: Mapping[str, Any]) -> None:
        """Note the functions that close a handle of one kind, from their ``closes`` attribute."""
        for function in functions.values():
            kind = getattr(function, "closes", None)
            if kind is not None:
                self.closers.setdefault(kind, function)


HANDLES = Handles()
"""This worker's handles."""
