"""The worker's side of shared memory: map a call's shared arrays before it runs, unmap them after.

A client on this host sends a big array as the name of a segment in ``/dev/shm`` that it wrote (see
``client/shm.py``). Before the call, every such argument is mapped read-write and its ``data`` set to the
mapping, so the library reads and writes the client's memory in place; after the reply is packed, the
mappings are closed (one that something still exports, a ctypes array the wrapper kept, say, stays until
that is gone: unmapping it under a live buffer would crash).

Nothing named by a peer is trusted: the name must be a dllpool segment's (``dllpool.<pid>.<hex>``, no path),
the file must be a regular file of this user reached without a symlink, at least as big as the array, and
the bytes of one call must fit :data:`DEFAULT_LIMIT` (a spec's ``shared_memory_max``): a 32-bit process has
a few GB of address space. Each failure is a SharedMemoryError and the library is never called; a segment
that cannot be opened at all (the client is on another host, or the segment is gone) says reason
``"unavailable"``, and the client then sends the call again with frames.

The mappings of a caller's own arrays (``shared_array``, whose segment names end in ``.array``) are kept
between calls (:class:`Mappings`): passed again, such an array is neither mapped nor faulted in again. The
profile of ``scalar_multiply`` on two 8 MB segments in the 32-bit worker (bench/arrays.py) showed 6.0 ms in
the call, of which the library's loop is 0.85 ms and the rest page faults on the fresh mappings (about
1.2 us a page on this VM), and 1.1 ms unmapping them after.

A client of the same user can still shrink a segment after the worker checked its size; the library would
then die of SIGBUS touching the missing pages (a crash like any other: the call gets WorkerCrashed).
"""

import contextlib
import errno
import logging
import mmap
import os
import stat
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

from protocol.codec import KEPT_SUFFIX, SHARED_NAME, NDArray
from protocol.errors import SharedMemoryError

log = logging.getLogger("workers32")

__all__ = ["CACHE_BYTES", "DEFAULT_LIMIT", "SHM_DIR", "MAPPINGS", "Mappings", "SharedArguments", "limit_of"]

SHM_DIR = "/dev/shm"
DEFAULT_LIMIT = sys.maxsize
"""Bytes of shared memory one call may map: the most one mapping can hold in this process (2 GiB - 1 in a
32-bit worker, whose whole address space is 4 GiB at best). Less may fit in practice: a mapping the address
space has no room for is refused too, naming this limit."""
_OPEN_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
"""No symlink (another user could plant one named like a segment), and no blocking on a FIFO."""
_OPEN_FLAGS |= getattr(os, "O_NOCTTY", 0)
_BITS = sys.maxsize.bit_length() + 1
CACHE_BYTES = 256 << 20
"""Bytes of segments a worker keeps mapped between calls (least recently used go first): room for a few
caller arrays of tens of MB, a sixteenth of a 32-bit process's address space."""


def _close(mapping: mmap.mmap) -> None:
    """Unmap, unless something still exports the mapping (a ctypes array a wrapper kept): unmapping under a
    live buffer would crash, so that one goes with the garbage collector once unused."""
    try:
        mapping.close()
    except BufferError:
        log.debug("a shared-memory mapping is still in use; it goes when that use ends")


class _Kept(NamedTuple):
    identity: tuple[int, int]
    """The file's (device, inode): a name the client unlinked and made again is another segment."""
    mapping: mmap.mmap


class Mappings:
    """The segments this worker has mapped, kept for the next call that names them.

    A kept segment whose file is gone (its client unlinked it: a call's own segment once the call ended, a
    ``shared_array`` once closed) is dropped at the next :meth:`prune`, which the worker runs with each
    heartbeat: its memory is held at most a heartbeat after the client let go of it.
    """

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def view(self, name: str, info: os.stat_result, nbytes: int) -> Optional[memoryview]:
        """A view of ``nbytes`` of the kept mapping of this very file, if there is one that covers them. Taken
        under the lock: once it exists, no other thread's prune or eviction can unmap the memory under it."""
        with self._lock:
            kept = self._kept.get(name)
            if kept is None or kept.identity != (info.st_dev, info.st_ino) or len(kept.mapping) < nbytes:
                return None
            self._kept.move_to_end(name)
            return memoryview(kept.mapping)[:nbytes]

    def put(self, name: str, info: os.stat_result, mapping: mmap.mmap) -> bool:
        """Keep ``mapping`` (evicting the least recently used beyond the budget); False if it is not one to keep
        (a segment made for one call, which its client unlinks when the call ends) or too big to keep."""
        if not name.endswith(KEPT_SUFFIX) or len(mapping) > self.budget:
            return False
        with self._lock:
            old = self._kept.pop(name, None)
            if old is not None:
                self._drop(old)
            while self._kept and self._bytes + len(mapping) > self.budget:
                self._drop(self._kept.popitem(last=False)[1])
            self._kept[name] = _Kept((info.st_dev, info.st_ino), mapping)
            self._bytes += len(mapping)
        return True

    def _drop(self, kept: _Kept) -> None:
        self._bytes -= len(kept.mapping)
        _close(kept.mapping)

    def prune(self) -> None:
        """Drop what no longer has its file (or has another file under its name)."""
        with self._lock:
            for name, kept in list(self._kept.items()):
                try:
                    info = os.stat(os.path.join(SHM_DIR, name), follow_symlinks=False)
                    alive = (info.st_dev, info.st_ino) == kept.identity
                except OSError:
                    alive = False
                if not alive:
                    del self._kept[name]
                    self._drop(kept)

    def clear(self) -> None:
        """Let every kept mapping go (room for a mapping the address space had none for)."""
        with self._lock:
            while self._kept:
                self._drop(self._kept.popitem()[1])


MAPPINGS = Mappings()
"""The worker's kept mappings."""


class SharedArguments:
    """The shared arrays of one call: collected while its arguments are unpacked, mapped, then released."""

    __slots__ = ("_own", "_views", "arrays", "kept", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT, kept: Mappings = MAPPINGS) -> None:
        self.limit = limit
        self.kept = kept
        self.arrays: list[NDArray] = []
        self._views: list[tuple[NDArray, memoryview]] = []
        self._own: list[mmap.mmap] = []
        """Mappings too big to keep: unmapped with the call."""

    def collect(self, array: NDArray) -> NDArray:
        """The ``arrays`` hook of the unpacker: notes each array that names a segment."""
        if array.shared is not None:
            self.arrays.append(array)
        return array

    def map(self, service: str, method: str) -> None:
        """Map every collected array (its ``data`` becomes a writable view of the segment), or release what
        was mapped and raise SharedMemoryError."""
        total = 0
        try:
            for array in self.arrays:
                total += array.nbytes
                self._map(array, total, service, method)
        except BaseException:
            self.release()
            raise

    def _map(self, array: NDArray, total: int, service: str, method: str) -> None:
        name = str(array.shared)
        where = f"{service}.{method}: shared-memory segment {name!r}"

        def refuse(message: str, reason: str, **details: Any) -> SharedMemoryError:
            return SharedMemoryError(
                f"{where} {message}; the library was not called",
                service=service,
                method=method,
                segment=name,
                reason=reason,
                **details,
            )

        if not SHARED_NAME.fullmatch(name):
            raise refuse("is not a dllpool segment name", "refused")
        if total > self.limit:
            raise refuse(
                f"takes this call's shared memory to {total:,} bytes, over the limit of {self.limit:,} bytes that "
                f"this {_BITS}-bit worker maps per call: pass less per call",
                "limit",
                limit=self.limit,
                size=total,
            )
        try:
            fd = os.open(os.path.join(SHM_DIR, name), _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise refuse("is a symbolic link", "refused") from None
            raise refuse(f"cannot be opened here ({exc.strerror})", "unavailable") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                raise refuse("is not a regular file of this user", "refused")
            if info.st_size < array.nbytes:
                raise refuse(
                    f"has {info.st_size:,} bytes; the array needs {array.nbytes:,}",
                    "size",
                    size=array.nbytes,
                )
            if not array.nbytes:
                array.data = bytearray()
                return
            view = self.kept.view(name, info, array.nbytes)
            if view is None:
                mapping = self._new_mapping(fd, array, refuse)
                view = memoryview(mapping)
                if not self.kept.put(name, info, mapping):
                    self._own.append(mapping)
        finally:
            os.close(fd)
        self._views.append((array, view))
        array.data = view

    def _new_mapping(self, fd: int, array: NDArray, refuse: Any) -> mmap.mmap:
        """A mapping of the segment; when the address space has no room, once more without the kept ones."""

        def attempt() -> mmap.mmap:
            return mmap.mmap(fd, array.nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

        try:
            try:
                return attempt()
            except OSError as exc:
                if exc.errno != errno.ENOMEM:
                    raise
                self.kept.clear()
                return attempt()
        except (OverflowError, ValueError, MemoryError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.ENOMEM, errno.EOVERFLOW, errno.EFBIG):
                raise refuse(f"cannot be mapped ({exc})", "unavailable") from None
            raise refuse(
                f"of {array.nbytes:,} bytes does not fit in this {_BITS}-bit worker's address space (limit "
                f"{self.limit:,} bytes per call, and less when memory is fragmented): pass less per call",
                "limit",
                limit=self.limit,
                size=array.nbytes,
            ) from None

    def release(self) -> None:
        """Let go of the call's views of its segments, and unmap those not kept for the next call."""
        if not (self.arrays or self._views or self._own):
            return  # most calls: no shared arrays
        views, self._views = self._views, []
        own, self._own = self._own, []
        self.arrays = []
        for array, view in views:
            if array.data is view:
                array.data = None
            with contextlib.suppress(BufferError):  # a ctypes array still exports it; it goes with that array
                view.release()
        for mapping in own:
            _close(mapping)


def limit_of(spec: Mapping[str, Any]) -> int:
    """The spec's ``shared_memory_max``, or :data:`DEFAULT_LIMIT`."""
    value = spec.get("shared_memory_max")
    return DEFAULT_LIMIT if value is None else int(value)
