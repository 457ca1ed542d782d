"""Private per-run folders, and the sweep that removes those whose owner died.

A pool keeps its ipc sockets and the worker sources in a folder of its own
under the temp directory (``mkdtemp``: mode 0700); so does ``dllpool worker``.
The owner holds an exclusive ``flock`` on a lock file inside for the folder's
whole life. The kernel drops that lock when the process ends, however it
ends (SIGKILL included), so a folder whose lock can be taken belongs to no
live process: the next start removes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

if sys.platform != "win32":
    import fcntl

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "RunDir", "sweep"]

LOCK_NAME = ".owner.lock"
_NAME = re.compile(r"dllpool-(?:workers-)?[a-z0-9_]{8}")
"""The names ``mkdtemp`` gives run folders; other dllpool temp folders (downloads, builds) are never touched."""
_UNLOCKED_AGE = 3600.0
"""A folder without a lock file is being created right now (or predates the lock); only this old is it stale."""


class RunDir:
    """A fresh private folder, locked until :meth:`remove`; creating one first sweeps stale ones."""

    def __init__(self, prefix: str = "dllpool-") -> None:
        sweep()
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self._lock: int | None = _hold(self.path)

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
        with _abandoned(path, info.st_mtime) as stale:
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
def _abandoned(folder: Path, mtime: float) -> Iterator[bool]:
    """Whether no live process owns ``folder``; holds its lock (if any) until the block ends."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        yield time.time() - mtime > _UNLOCKED_AGE and not _serving(folder)
        return
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


def _serving(folder: Path) -> bool:
    """True if a process still listens on an ipc socket in ``folder`` (one made before folders were locked)."""
    try:
        sockets = [entry for entry in folder.iterdir() if entry.is_socket()]
    except OSError:
        return False
    for entry in sockets:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(entry))
            except OSError:
                continue
            return True
    return False
