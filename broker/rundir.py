"""Private per-run folders, and the sweep that removes those whose owner died.

A pool keeps its ipc sockets and the worker sources in a folder of its own
under the temp directory (``mkdtemp``: mode 0700); so does ``dllpool worker``.
The owner holds an exclusive ``flock`` on a lock file inside for the folder's
whole life. The kernel drops that lock when the process ends, however it
ends (SIGKILL included), so a folder whose lock can be taken belongs to no
live process: the next start removes it. A folder without that lock file is
never removed: it may be one being created right now, or not dllpool's at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from .runtime32 import WORKER_PACKAGES

if sys.platform != "win32":
    import fcntl

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "RunDir", "make_worker_source", "sweep"]

LOCK_NAME = ".owner.lock"
_NAME = re.compile(r"dllpool-(?:workers-)?[a-z0-9_]{8}")
"""The names ``mkdtemp`` gives run folders; other dllpool temp folders (downloads, builds) are never touched."""


class RunDir:
    """A fresh private folder, locked until :meth:`remove`; creating one first sweeps stale ones."""

    def __init__(self, prefix: str = "dllpool-") -> None:
        sweep()
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            self._lock: int | None = _hold(self.path)
        except OSError as exc:  # a file system without flock (some NFS /tmp): run unlocked, never swept
            log.warning("cannot lock %s (%s); it will not be cleaned up if this process is killed", self.path, exc)
            self._lock = None
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def remove(self) -> None:
        """Delete the folder, then let go of its lock (in this order, so no sweep races the removal)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> Path:
        return self.path

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


def make_worker_source(folder: Path) -> Path:
    """A folder holding only the packages a worker imports, so no 64-bit package is visible to it."""
    source = folder / "src"
    source.mkdir()
    root = Path(__file__).resolve().parent.parent
    for package in WORKER_PACKAGES:
        if sys.platform == "win32":
            shutil.copytree(root / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (source / package).symlink_to(root / package, target_is_directory=True)
    return source


def sweep(root: Path | None = None) -> list[Path]:
    """Remove this user's run folders in ``root`` (the temp directory) that no live process holds."""
    if sys.platform == "win32":
        return []
    root = Path(tempfile.gettempdir()) if root is None else root
    try:
        entries = [e for e in os.scandir(root) if _NAME.fullmatch(e.name)]
    except OSError:
        return []
    removed: list[Path] = []
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        path = Path(entry.path)
        with _abandoned(path) as stale:
            if stale:
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed %s, left behind by a dllpool process that is gone", path)
                removed.append(path)
    return removed


def _hold(folder: Path) -> int | None:
    """Lock ``folder`` for this process; the lock file appears already locked, so no sweep can take it first."""
    if sys.platform == "win32":
        return None
    staging = folder / f"{LOCK_NAME}.new"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(staging, folder / LOCK_NAME)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _abandoned(folder: Path) -> Iterator[bool]:
    """Whether ``folder`` has an owner lock that no live process holds; holds that lock until the block ends."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EWOULDBLOCK: its owner is alive
            yield False
        else:
            yield True
    finally:
        os.close(fd)
