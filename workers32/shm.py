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
"""

import errno
import logging
import mmap
import os
import stat
import sys
from collections.abc import Mapping
from typing import Any

from protocol.codec import SHARED_NAME, NDArray
from protocol.errors import SharedMemoryError

log = logging.getLogger("workers32")

__all__ = ["DEFAULT_LIMIT", "SHM_DIR", "SharedArguments", "limit_of"]

SHM_DIR = "/dev/shm"
DEFAULT_LIMIT = sys.maxsize
"""Bytes of shared memory one call may map: the most one mapping can hold in this process (2 GiB - 1 in a
32-bit worker, whose whole address space is 4 GiB at best). Less may fit in practice: a mapping the address
space has no room for is refused too, naming this limit."""
_OPEN_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
"""No symlink (another user could plant one named like a segment), and no blocking on a FIFO."""
_OPEN_FLAGS |= getattr(os, "O_NOCTTY", 0)
_BITS = sys.maxsize.bit_length() + 1


class SharedArguments:
    """The shared arrays of one call: collected while its arguments are unpacked, mapped, then released."""

    __slots__ = ("_maps", "arrays", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self.arrays: list[NDArray] = []
        self._maps: list[tuple[NDArray, mmap.mmap, memoryview]] = []

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
            try:
                mapping = mmap.mmap(fd, array.nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
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
        finally:
            os.close(fd)
        view = memoryview(mapping)
        self._maps.append((array, mapping, view))
        array.data = view

    def release(self) -> None:
        """Let go of every view and mapping of the call. A mapping something still exports (a ctypes array
        made with ``from_buffer`` and kept) is left to the garbage collector, which unmaps it once unused."""
        maps, self._maps = self._maps, []
        self.arrays = []
        for array, mapping, view in maps:
            if array.data is view:
                array.data = None
            try:
                view.release()
                mapping.close()
            except BufferError:
                log.debug("a shared-memory mapping is still in use after its call; it goes when that use ends")


def limit_of(spec: Mapping[str, Any]) -> int:
    """The spec's ``shared_memory_max``, or :data:`DEFAULT_LIMIT`."""
    value = spec.get("shared_memory_max")
    return DEFAULT_LIMIT if value is None else int(value)
