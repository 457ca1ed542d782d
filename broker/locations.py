"""Where dllpool keeps its files, in a checkout and when installed as a package.

A checkout keeps everything beside its sources: ``config/pool.toml``,
``examples/build/`` and ``.runtime32/``.  An installed package cannot write
beside itself, so it keeps a per-user home (``$DLLPOOL_HOME``, else
``$XDG_DATA_HOME/dllpool``, else ``~/.local/share/dllpool``) holding the
32-bit runtime and a *demo tree*: a copy of the default configuration and the
demo sources shipped in the package, laid out as in the checkout, so the
configuration's relative paths (``../examples/build/...``) mean the same in both.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

from protocol.errors import ConfigError

__all__ = [
    "ENV_HOME",
    "ENV_RUNTIME32",
    "checkout_root",
    "default_config_path",
    "demo_tree",
    "runtime32_prefix",
    "user_home",
]

ENV_HOME = "DLLPOOL_HOME"
ENV_RUNTIME32 = "DLLPOOL_RUNTIME32"

_PACKAGES_DIR = Path(__file__).resolve().parent.parent
_BUNDLED = Path(__file__).resolve().parent / "bundled"
"""Where the wheel puts ``config/`` and the demo sources (see ``package-dir`` in pyproject.toml)."""
_DEFAULT_CONFIG = Path("config") / "pool.toml"


def checkout_root() -> Path | None:
    """The source checkout these packages run from, or None for an installed package."""
    if (_PACKAGES_DIR / "pyproject.toml").is_file() and (_PACKAGES_DIR / _DEFAULT_CONFIG).is_file():
        return _PACKAGES_DIR
    return None


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser().resolve() if value else None


def user_home() -> Path:
    """The per-user folder of an installed dllpool."""
    home = _env_path(ENV_HOME)
    if home is not None:
        return home
    xdg = _env_path("XDG_DATA_HOME")
    return (xdg if xdg is not None else Path.home() / ".local" / "share") / "dllpool"


def runtime32_prefix() -> Path:
    """``$DLLPOOL_RUNTIME32``, else the checkout's ``.runtime32``, else ``<user home>/runtime32``."""
    prefix = _env_path(ENV_RUNTIME32)
    if prefix is not None:
        return prefix
    root = checkout_root()
    return root / ".runtime32" if root is not None else user_home() / "runtime32"


def demo_tree() -> Path:
    """The folder holding ``config/pool.toml`` and ``examples/``: the checkout, or the user's copy.

    The copy is refreshed from the package whenever a shipped file differs,
    so an upgraded package never runs an old configuration.
    """
    root = checkout_root()
    if root is not None:
        return root
    tree = user_home() / "demo"
    if not _BUNDLED.is_dir():
        raise ConfigError(f"{_BUNDLED} is missing: this dllpool installation is incomplete; reinstall it")
    try:
        for source in sorted(_BUNDLED.rglob("*")):
            if not source.is_file() or "__pycache__" in source.parts:
                continue
            target = tree / source.relative_to(_BUNDLED)
            if not target.is_file() or not filecmp.cmp(source, target, shallow=False):
                target.parent.mkdir(parents=True, exist_ok=True)
                staged = target.with_name(f".{target.name}.{os.getpid()}")
                shutil.copyfile(source, staged)
                os.replace(staged, target)  # another process never reads a half-written file
    except OSError as exc:
        raise ConfigError(
            f"cannot prepare the default configuration in {tree} ({exc}): set {ENV_HOME} to a writable folder"
        ) from exc
    return tree


def default_config_path() -> Path:
    """The embedded default configuration: what ``dllpool up`` and ``Pool.from_config()`` run."""
    return demo_tree() / _DEFAULT_CONFIG
