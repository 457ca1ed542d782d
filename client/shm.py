"""Shared memory on one host: big arrays reach the 32-bit worker through ``/dev/shm``, written once.

When the broker is on this host (``ipc://``, loopback TCP), each typed array of at least
``shared_memory_min`` bytes in a call's arguments is written once into a segment of its own,
``/dev/shm/dllpool.<pid>.<hex>`` (0600, created exclusively), and the request carries only its name. The
worker maps the segment and hands the mapping to the library, so an array the library changes in place comes
back as its name too: the result is a NumPy array over this process's own mapping of the segment, no copy.

A per-call segment is unlinked when its call ends, however it ends (a result, an error, a timeout, a cancel, a
closed client, a lost broker, a crashed worker); a result array keeps its mapping (not the name) for as long as
it lives. A process that dies without ending its calls (SIGKILL) leaves its segments behind: :func:`sweep`,
run by every client process when it starts and by the broker at start and periodically, removes the segments
whose creator is gone.

:func:`shared_array` gives a NumPy array that lives in a segment from the start: passing it copies nothing at
all, and the library's changes are visible in it. That segment is the caller's: it is unlinked when the array
(with every view of it) is garbage-collected, or by :func:`close_shared_array`, never at the end of a call.

A worker that cannot open a segment (it runs on another host, say) answers SharedMemoryError without calling
the library, and the client sends that call once more with the arrays as frames (see
:func:`wants_frames`), so results never depend on the path the bytes took.
"""

from __future__ import annotations

import atexit
import errno
import logging
import mmap
import os
import secrets
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

from protocol.codec import KEPT_SUFFIX, SHARED_NAME, NDArray, pack_call, slices
from protocol.errors import DllPoolError, ProtocolError, SharedMemoryError
from protocol.frames import Buffer

from .arrays import from_wire

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MIN",
    "SHM_DIR",
    "CallSegments",
    "available",
    "close_shared_array",
    "on_this_host",
    "shared_array",
    "sweep",
    "wants_frames",
]

SHM_DIR = "/dev/shm"
"""Where POSIX shared memory lives on Linux (``shm_open`` names are files here)."""
DEFAULT_MIN = 1 << 20
"""Bytes from which an array goes through shared memory unless ``shared_memory_min`` says otherwise: below
about a megabyte, making a segment costs more than the frame copies it saves."""
UNAVAILABLE = "unavailable"
"""``details["reason"]`` of a SharedMemoryError for a segment the worker could not open (another host, an
unlinked name): the call was not run, and is sent again with frames."""
_LOOPBACK = ("localhost", "::1")

_live: set[str] = set()
"""Per-call segments of this process not yet unlinked: unlinked at interpreter exit if still there."""
_owner_pid = os.getpid()
"""The process whose segments ``_live`` and ``_helpers`` name (a forked child owns none of them)."""
_swept_pid = 0
"""The process that last ran the start-up :func:`sweep` (0: none)."""


class _Helper(NamedTuple):
    """A segment of :func:`shared_array`: its name, size and mapping (weakly: the arrays keep it alive)."""

    name: str
    size: int
    mapping: weakref.ref[mmap.mmap]


_helpers: dict[int, _Helper] = {}
"""The live :func:`shared_array` segments by the address where their mapping starts."""


def _after_fork_in_child() -> None:
    """A forked child shares its parent's segments but owns none: it must never unlink them."""
    global _owner_pid, _swept_pid
    _owner_pid = os.getpid()
    _swept_pid = 0
    _live.clear()
    _helpers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _unlink_live() -> None:
    if os.getpid() == _owner_pid:
        for name in list(_live):
            _unlink(name)


def available() -> bool:
    """Whether this host has POSIX shared memory as files (Linux)."""
    return os.path.isdir(SHM_DIR)


def on_this_host(address: str) -> bool:
    """Whether a broker at ``address`` runs on this host (``ipc://``, ``inproc://``, loopback TCP).

    Only then may its workers be here too; a worker elsewhere still gets every call, by the frames fallback.
    """
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rpartition(":")[0].strip("[]")
    return host in _LOOPBACK or host.startswith("127.")


def wants_frames(error: BaseException | None) -> bool:
    """Whether a call that failed with ``error`` should be sent again with its arrays as frames: its worker
    could not open a segment, so it never called the library."""
    return isinstance(error, SharedMemoryError) and error.details.get("reason") == UNAVAILABLE


# --- segments ------------------------------------------------------------------------


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def _unlink(name: str) -> None:
    _live.discard(name)
    try:
        os.unlink(_path(name))
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove the shared-memory segment %s: %s", _path(name), exc)


def _create(size: int, suffix: str = "") -> tuple[str, int]:
    """A new segment of ``size`` bytes (zeros), only this user's: its name and an open descriptor.

    Its memory is allocated now: a sparse segment on a full /dev/shm would kill with SIGBUS whichever process
    first touched a page that has no memory behind it (the library in the worker, say).
    """
    for _ in range(8):
        name = f"dllpool.{os.getpid()}.{secrets.token_hex(8)}{suffix}"
        try:
            fd = os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        _live.add(name)
        try:
            os.ftruncate(fd, size)
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
        except BaseException:
            os.close(fd)
            _unlink(name)
            raise
        return name, fd
    raise FileExistsError(errno.EEXIST, "no free segment name", _path(name))


def _write_segment(data: memoryview) -> tuple[str, mmap.mmap]:
    """A new segment holding ``data``, and this process's mapping of it.

    The bytes go in with ``pwrite``, a slice at a time: the GIL is free during each, so the I/O thread and
    the other callers keep running while a big array is written.
    """
    name, fd = _create(len(data))
    try:
        offset = 0
        for piece in slices(data):
            while piece:
                written = os.pwrite(fd, piece, offset)
                offset += written
                piece = piece[written:]
        mapping = mmap.mmap(fd, len(data), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        _unlink(name)
        raise
    finally:
        os.close(fd)
    return name, mapping


# --- the caller's own shared arrays -------------------------------------------------


def shared_array(shape: int | Sequence[int], dtype: Any = "float64") -> Any:
    """A zero-filled NumPy array that lives in shared memory: passing it to a call copies nothing at all.

    The worker maps the array's own segment and the library works in it, so what the library writes is
    visible in this array (and in the result, which shares its memory). That holds when the broker is on
    this host and the client's ``shared_memory_min`` is not 0; otherwise the array travels as frames like
    any other and is not changed. An array that starts where the segment starts (the array itself, or a
    leading slice of it) is passed without a copy; other views are copied as usual.

    The segment is this caller's: it is unlinked when the array and every view of it are garbage-collected,
    or at once by :func:`close_shared_array`. Needs NumPy.
    """
    try:
        import numpy
    except ImportError:
        raise DllPoolError("shared_array needs NumPy: pip install 'dllpool[numpy]'") from None
    if not available():
        raise SharedMemoryError(f"this system has no POSIX shared memory in {SHM_DIR}: pass a plain NumPy array")
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    kind = numpy.dtype(dtype)
    if not all(isinstance(dim, int) and dim >= 0 for dim in dims):
        raise ValueError(f"a shape is whole numbers of 0 or more, not {shape!r}")
    count = 1
    for dim in dims:
        count *= dim
    nbytes = count * kind.itemsize
    size = max(nbytes, 1)  # mmap cannot map 0 bytes
    try:
        name, fd = _create(size, KEPT_SUFFIX)
    except OSError as exc:
        raise SharedMemoryError(
            f"cannot create a shared-memory segment of {size:,} bytes in {SHM_DIR}: {exc}", size=size
        ) from None
    try:
        mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        _unlink(name)
        raise
    finally:
        os.close(fd)
    _live.discard(name)  # the caller's now: the finalizer below unlinks it, not the end of a call
    array = numpy.frombuffer(mapping, dtype=kind, count=count).reshape(dims)
    address = _address(array)
    _helpers[address] = _Helper(name, size, weakref.ref(mapping))
    weakref.finalize(mapping, _release_helper, address, name, os.getpid())
    return array


def close_shared_array(array: Any) -> None:
    """Unlink the segment of a :func:`shared_array` now. The array stays usable here, but is no longer shared:
    later calls copy it like any other array. Does nothing for any other array, or a second time."""
    helper = _helper_at(array)
    if helper is not None:
        _release_helper(_address(array), helper.name, os.getpid())


def _release_helper(address: int, name: str, creator: int) -> None:
    if os.getpid() != creator:  # a forked child's finalizer: the segment is its parent's
        return
    helper = _helpers.get(address)
    if helper is not None and helper.name == name:
        del _helpers[address]
    _unlink(name)


def _address(array: Any) -> int:
    return int(array.__array_interface__["data"][0])


def _helper_at(value: Any) -> _Helper | None:
    """The :func:`shared_array` segment ``value`` starts at, if it is a C-contiguous array that does."""
    if not _helpers:
        return None
    interface = getattr(value, "__array_interface__", None)
    if not isinstance(interface, dict) or interface.get("strides") is not None:  # strides None: C order
        return None
    return _helpers.get(int(interface["data"][0]))


# --- one call's segments ------------------------------------------------------------


class CallSegments:
    """The shared memory of one call: the ``share`` hook that packs its arguments, its segments, and the hook
    that turns results naming them into NumPy arrays over this process's mappings.

    :meth:`release` unlinks the segments made for the call (idempotent, any thread); a :func:`shared_array`
    used by the call is only kept mapped while the call runs.
    """

    __slots__ = ("_maps", "_owned", "args", "kwargs", "minimum")

    def __init__(self, minimum: int, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        self.minimum = minimum
        self.args = args
        self.kwargs = kwargs
        """What to pack again, with frames, should the worker not open the segments."""
        self._maps: dict[str, mmap.mmap] = {}
        """Every segment the call names, with this process's mapping of it."""
        self._owned: list[str] = []
        """The segments made for this call, unlinked when it ends: one per array argument, so an array passed
        twice is two arrays to the library, as it is with frames."""

    @property
    def used(self) -> bool:
        return bool(self._maps)

    def share(self, value: Any, data: memoryview) -> str | None:
        """The ``share`` hook of :func:`protocol.codec.pack_call`: a segment's name for ``value``, or None."""
        helper = _helper_at(value)
        if helper is not None and len(data) <= helper.size:
            mapping = helper.mapping()
            if mapping is not None:
                self._maps[helper.name] = mapping
                return helper.name
        if len(data) < self.minimum:
            return None
        try:
            name, mapping = _write_segment(data)
        except OSError as exc:  # /dev/shm full, out of descriptors: the frames still work
            log.warning("cannot put %d bytes in shared memory (%s); sending them as a frame", len(data), exc)
            return None
        self._owned.append(name)
        self._maps[name] = mapping
        return name

    def from_wire(self, received: NDArray) -> Any:
        """The ``arrays`` hook for the call's answer: an array naming one of its segments becomes a NumPy
        array over this process's mapping (no copy), any other as :func:`client.arrays.from_wire` makes it."""
        if received.shared is None:
            return from_wire(received)
        mapping = self._maps.get(received.shared)
        if mapping is None:
            raise ProtocolError(f"the answer names shared memory {received.shared!r}, which the call did not send")
        if received.nbytes > len(mapping):
            raise ProtocolError(
                f"the answer's array of {received.nbytes:,} bytes does not fit its segment of {len(mapping):,} bytes"
            )
        try:
            import numpy
        except ImportError:
            return NDArray(received.typestr, received.shape, memoryview(mapping)[: received.nbytes])
        return numpy.frombuffer(mapping, dtype=received.typestr, count=received.size).reshape(received.shape)

    def frames(self) -> list[Buffer]:
        """The call's arguments packed again, every array as a frame."""
        return pack_call(self.args, self.kwargs)

    def release(self) -> None:
        """Unlink the call's own segments and let go of the mappings (arrays over them keep theirs)."""
        owned, self._owned = self._owned, []
        self._maps = {}
        for name in owned:
            _unlink(name)


# --- what dead processes left --------------------------------------------------------


def sweep(directory: str = SHM_DIR) -> int:
    """Remove this user's ``dllpool.<pid>.*`` segments whose process is gone (killed before it could unlink
    them); the number removed. Cheap: one directory listing, one look at ``/proc`` per pid named."""
    uid = os.geteuid()
    verdicts: dict[int, bool] = {}
    removed = 0
    try:
        entries = os.scandir(directory)
    except OSError:
        return 0
    with entries:
        for entry in entries:
            name = entry.name
            if not name.startswith("dllpool.") or not SHARED_NAME.fullmatch(name):
                continue
            pid = int(name.split(".")[1])
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
            except OSError:
                continue
            alive = verdicts.get(pid)
            if alive is None:
                alive = verdicts[pid] = _alive(pid)
            if alive:
                continue
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed += 1
    if removed:
        log.info("removed %d shared-memory segment(s) of processes that are gone", removed)
    return removed


def sweep_once() -> None:
    """The sweep a client process runs when it starts (once per process)."""
    global _swept_pid
    if _swept_pid != os.getpid():
        _swept_pid = os.getpid()
        sweep()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a killed child its parent has not reaped)."""
    if pid == os.getpid():
        return True
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rpartition(b")")[2].split()[:1] != [b"Z"]
        except FileNotFoundError:
            return False
        except OSError:
            pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        return True
    return True
