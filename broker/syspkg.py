"""System packages through apt: the one path every set-up step installs with.

The 32-bit runtime's i386 libraries and the demo libraries' compilers both
come from here, with the same tolerance: nothing runs when nothing is
missing; ``apt-get update`` runs at most once, and its failure (a mirror in
mid-sync, one unreachable extra repository) is only a warning, since the
lists apt already has are usually enough; an install that still fails names
the packages and the command to run by hand.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import RuntimeMissing

__all__ = ["Apt", "CommandFailed", "ForeignArchive", "Requirement", "locked", "provide", "run", "tail"]

log = logging.getLogger(__name__)

_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
APT_OPTIONS = ("-o", "DPkg::Lock::Timeout=600")
"""Wait for another apt/dpkg run (unattended upgrades, a colleague) instead of failing."""


@dataclass(frozen=True)
class Requirement:
    """A Debian package and how to tell that what it provides is there."""

    package: str
    present: Callable[[], bool]


class CommandFailed(RuntimeMissing):
    """A set-up command failed; ``output`` keeps all it printed, for the callers that parse it."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def tail(text: str, lines: int = 8) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


def run(cmd: Sequence[str], *, timeout: float, cwd: Path | None = None, what: str = "") -> str:
    """Run a set-up command; its output goes to DEBUG, its failure into a :class:`CommandFailed`."""
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            list(cmd),
            env={**os.environ, **_APT_ENV},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeMissing(f"{what or cmd[0]} failed: {exc}") from exc
    if proc.stdout.strip():
        log.debug("%s", proc.stdout.rstrip())
    if proc.returncode != 0:
        raise CommandFailed(
            f"{what or cmd[0]} failed (`{' '.join(cmd)}`, exit code {proc.returncode}): "
            f"{tail(proc.stderr or proc.stdout)}",
            proc.stdout + proc.stderr,
        )
    return proc.stdout


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise set-up steps that write one folder (two set-ups at once, parallel test sessions)."""
    import fcntl  # Unix only, like the rest of set-up

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Apt:
    """apt operations that need root, with ``apt-get update`` run at most once per set-up."""

    def __init__(self, hint: str = "") -> None:
        self.hint = hint
        """Appended to errors: another way out, such as naming an interpreter in the configuration."""
        self.updated = False
        self.update_error = ""

    def require_root(self, doing: str, commands: str) -> None:
        if os.geteuid() != 0:
            raise RuntimeMissing(
                f"dllpool needs root to {doing}: run the set-up as root (`sudo dllpool setup`), "
                f"or have an administrator run `{commands}` first{self.hint}"
            )

    def update(self) -> list[str]:
        """Refresh the package lists once; a partly failed refresh is only a warning.

        What is really missing shows up, with :meth:`note`, when apt is used.
        """
        if self.updated:
            return []
        self.require_root("refresh the package lists", "apt-get update")
        log.info("apt-get update")
        self.update_error = _refresh(["apt-get", "update", *APT_OPTIONS], "apt-get update")
        self.updated = True
        return ["apt-get update"]

    def note(self) -> str:
        return _after(self.update_error)

    def install(self, packages: Sequence[str]) -> None:
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *APT_OPTIONS, *packages]
        run(cmd, timeout=1800, what="apt-get install" + self.note())


def provide(requirements: Sequence[Requirement], apt: Apt, *, purpose: str) -> list[str]:
    """Install the packages of the requirements not yet met; the actions taken (none when all are met).

    Raises :class:`RuntimeMissing` naming the packages and the command to run
    by hand when apt cannot be used or the requirements are still unmet after it.
    """
    missing = list(dict.fromkeys(r.package for r in requirements if not r.present()))
    if not missing:
        return []
    by_hand = f"apt-get update; apt-get install -y --no-install-recommends {' '.join(missing)}"
    if not _has_apt():
        raise RuntimeMissing(
            f"to {purpose} dllpool needs these Debian/Ubuntu packages: {' '.join(missing)}; this system has no "
            f"apt-get, so install their equivalents with its package manager{apt.hint}"
        )
    apt.require_root(f"install {' '.join(missing)} (to {purpose})", by_hand)
    actions = apt.update()
    log.info("installing %s (to %s)", " ".join(missing), purpose)
    try:
        apt.install(missing)
    except RuntimeMissing as exc:
        raise RuntimeMissing(
            f"could not install {' '.join(missing)} (to {purpose}): {exc}. "
            f"Run `{by_hand}` by hand, then run the set-up again{apt.hint}"
        ) from exc
    actions.append("apt-get install " + " ".join(missing))
    still = [r.package for r in requirements if not r.present()]
    if still:
        raise RuntimeMissing(
            f"after `apt-get install {' '.join(missing)}`, {' '.join(still)} still do(es) not work (to {purpose}); "
            f"check the apt output above, or run `{by_hand}` by hand{apt.hint}"
        )
    return actions


def _has_apt() -> bool:
    return all(shutil.which(tool) for tool in ("apt-get", "dpkg-query"))


class ForeignArchive:
    """The Debian archive as seen for another architecture, through apt lists kept in a private folder.

    Packages of ``arch`` are resolved and downloaded with apt's own signature
    checks, but nothing is installed and no system file changes, so it needs
    no root and is independent of which versions this machine's own packages
    have (``Multi-Arch: same`` packages installed system-wide must match their
    native twins exactly, which a machine with newer security updates than the
    foreign index cannot satisfy).  A failed refresh of one index (a mirror in
    mid-sync) is a warning, as for :meth:`Apt.update`.
    """

    def __init__(self, folder: Path, arch: str) -> None:
        self.folder = folder
        self.arch = arch
        self.update_error = ""
        for sub in ("lists/partial", "cache/archives/partial"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "status").touch()
        self.options = [
            *("-o", f"Dir::State::Lists={folder / 'lists'}"),
            *("-o", f"Dir::State::status={folder / 'status'}"),
            *("-o", f"Dir::Cache={folder / 'cache'}"),
            *("-o", f"APT::Architecture={arch}"),
            *("-o", f"APT::Architectures::={arch}"),
        ]
        _let_apt_write(folder / "lists" / "partial")

    def update(self) -> None:
        log.info("reading the archive's %s package lists (apt-get update into %s)", self.arch, self.folder)
        self.update_error = _refresh(["apt-get", *self.options, "update"], f"apt-get update ({self.arch} lists)")

    def depends(self, packages: Sequence[str]) -> dict[str, list[str]]:
        """Each package's Depends and Pre-Depends (of an ``a | b`` group, the first); virtual names left out."""
        out = run(
            ["apt-cache", *self.options, "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
             "--no-breaks", "--no-replaces", "--no-enhances", *packages],
            timeout=300,
            what="apt-cache depends" + self.note(),
        )  # fmt: skip
        result: dict[str, list[str]] = {}
        current: list[str] = []
        in_alternatives = False
        for line in out.splitlines():
            if line and not line[0].isspace():
                current = result.setdefault(line.split(":")[0], [])
                in_alternatives = False
                continue
            match = re.match(r"\s*(\|?)(?:Pre)?Depends:\s*(\S+)", line)
            taken = in_alternatives
            in_alternatives = bool(match and match.group(1))
            if match and not taken and not match.group(2).startswith("<"):
                current.append(match.group(2).split(":")[0])
        return result

    def download(self, packages: Sequence[str], dest: Path) -> list[Path]:
        _let_apt_write(dest)
        run(
            ["apt-get", *self.options, "download", *packages],
            cwd=dest,
            timeout=900,
            what="apt-get download" + self.note(),
        )
        return sorted(dest.glob("*.deb"))

    def note(self) -> str:
        return _after(self.update_error)


def _refresh(command: list[str], what: str) -> str:
    """Run an ``apt-get update``; its failure (a mirror in mid-sync) is returned and logged, not raised."""
    try:
        run(command, timeout=900, what=what)
    except RuntimeMissing as exc:
        log.warning("%s; carrying on with the package lists that did arrive", exc)
        return str(exc)
    return ""


def _after(update_error: str) -> str:
    """What to add to a later apt error: the lists it worked from may be stale."""
    return f" (after a failed refresh: {update_error})" if update_error else ""


def _let_apt_write(folder: Path) -> None:
    """Give a download folder to the ``_apt`` user, so apt need not download unsandboxed as root."""
    if os.geteuid() != 0:
        return
    try:
        import pwd

        os.chown(folder, pwd.getpwnam("_apt").pw_uid, -1)
    except (KeyError, OSError):
        pass  # apt then only warns
