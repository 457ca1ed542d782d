"""Where a running ``dllpool up`` can be found: a small file per configuration in the user's dllpool home.

A pool's default endpoints are ``ipc://`` sockets in a per-run folder with a random name, so the tools that
talk to a running pool (``dllpool status``, ``scale``, ``loadtest``) would otherwise need its address typed
in. ``dllpool up`` writes ``<user home>/running/<key>.json`` (its address and pid) while it serves, ``key``
naming the configuration file (or the embedded default), and removes it when it stops. A file whose pid is
gone (the server was killed) counts as absent. The home is the user's own (mode 0700), so no other user can
plant an address there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from protocol import ConfigError

from .locations import user_home

__all__ = ["announced", "find_running"]


def _file(config: Path | None) -> Path:
    key = "default" if config is None else hashlib.sha256(str(config.resolve()).encode()).hexdigest()[:16]
    return user_home() / "running" / f"{key}.json"


@contextlib.contextmanager
def announced(config: Path | None, address: str) -> Iterator[Path]:
    """Say, for as long as the block runs, that the pool of ``config`` serves at ``address``."""
    path = _file(config)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"address": address, "pid": os.getpid(), "config": str(config or "")}))
    temporary.replace(path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if json.loads(path.read_text()).get("pid") == os.getpid():  # not a later server's
                path.unlink()


def find_running(config: Path | None) -> str:
    """The address of the ``dllpool up`` serving ``config`` (None: the embedded default); ConfigError if none."""
    path = _file(config)
    which = f"-c {config}" if config is not None else "the default configuration"
    try:
        found = json.loads(path.read_text())
        pid, address = int(found["pid"]), str(found["address"])
    except FileNotFoundError:
        pid, address = 0, ""
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); remove it, or give --address") from None
    if not pid or not _alive(pid):
        raise ConfigError(
            f"no `dllpool up` is serving {which} (start one, or give --address ENDPOINT of a running pool)"
        )
    return address


def _alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) would send CTRL_C_EVENT there: trust the file's removal
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process now holds the pid: not our server
        return False
    return True
