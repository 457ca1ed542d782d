"""Find, provision and describe the 32-bit CPython that runs the workers.

On a 64-bit Debian/Ubuntu machine no 32-bit Python can be installed beside
the system one (the interpreter packages conflict across architectures), so
:func:`setup` builds a private one under a prefix folder:

* Debian's i386 interpreter packages and every shared library they need,
  resolved and downloaded by apt through private package lists
  (:class:`~broker.syspkg.ForeignArchive`) and unpacked into ``<prefix>/root``,
  not installed: no root, no change to the system, and no constraint from the
  versions of this machine's own 64-bit packages;
* i686 wheels of pyzmq and msgpack, downloaded by the 64-bit pip and
  unpacked into a site folder that only the 32-bit interpreter sees.

The interpreter runs through the prefix's own dynamic loader
(``ld-linux.so.2 --library-path ... python3.N``), so it finds those libraries
and needs no i386 package on the machine.

A JSON manifest written last records the result; :func:`load` trusts only
that.  On other systems (Windows with a python.org 32-bit install, say) the
user names the interpreter and :func:`from_executable` wraps it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import RuntimeMissing

from . import locations
from .syspkg import ForeignArchive, locked, run, tail

__all__ = [
    "WORKER_PACKAGES",
    "Interpreter",
    "SetupResult",
    "check_elf_bits",
    "command_env",
    "compile_bytecode",
    "default_prefix",
    "describe",
    "from_executable",
    "interpreter_from_dict",
    "interpreter_to_dict",
    "load",
    "provision",
    "setup",
    "windows_launcher",
]

log = logging.getLogger(__name__)

MANIFEST = "runtime32.json"
MANIFEST_FORMAT = 2
ENV_PREFIX = locations.ENV_RUNTIME32
SETUP_HINT = "run `dllpool runtime32 setup` (or `make setup`)"
CONFIG_HINT = 'or name a 32-bit interpreter in the configuration: [runtime32] python = "/path/to/python"'

#: Variables of the 64-bit side that must not leak into the 32-bit process:
#: each one can make it import the 64-bit venv's compiled extensions.
_SCRUBBED_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONEXECUTABLE",
    "PYTHONPLATLIBDIR",
    "VIRTUAL_ENV",
    "__PYVENV_LAUNCHER__",
)

#: Beyond the interpreter's own dependencies: pyzmq's bundled libzmq is C++.
_EXTRA_I386_PACKAGES = ("libstdc++6",)

_WHEEL_PLATFORMS = (
    "manylinux_2_28_i686",
    "manylinux2014_i686",
    "manylinux_2_17_i686",
    "manylinux_2_5_i686",
    "manylinux1_i686",
)
_WHEELS = ("pyzmq", "msgpack")

_ROOT_DIR = "root"
_SITE_DIR = "site"
_SITE_MARKER = ".dllpool-wheels.json"
_BYTECODE_MARKER = ".bytecode"
"""In ``root/``: a rebuilt or refreshed runtime has none, so it is compiled again."""
WORKER_PACKAGES = ("workers32", "protocol")
"""dllpool's packages a worker imports: all its interpreter sees of dllpool."""

# Run inside the candidate interpreter; it must work on Python 3.9+ and print
# one JSON line even when pyzmq or msgpack is missing, so the caller can say what.
_PROBE = r"""
import json, platform, struct, sys, sysconfig
plat = sysconfig.get_platform()
if struct.calcsize("P") == 4 and plat.endswith("-x86_64"):  # a 32-bit build on a 64-bit kernel
    plat = plat[: -len("x86_64")] + "i686"
info = {
    "executable": sys.executable,
    "version": platform.python_version(),
    "pointer_size": struct.calcsize("P"),
    "bits": 8 * struct.calcsize("P"),
    "platform": plat,
    "pyzmq": None, "libzmq": None, "msgpack": None, "errors": [],
}
try:
    import zmq
    info["pyzmq"] = zmq.pyzmq_version()
    info["libzmq"] = zmq.zmq_version()
except Exception as exc:
    info["errors"].append("import zmq: %s: %s" % (type(exc).__name__, exc))
try:
    import msgpack
    info["msgpack"] = ".".join(str(p) for p in msgpack.version)
except Exception as exc:
    info["errors"].append("import msgpack: %s: %s" % (type(exc).__name__, exc))
print(json.dumps(info))
"""

# The setup's acceptance test: everything a worker relies on, exercised once.
_SELFTEST = r"""
import asyncio, ctypes, json, struct, sys, threading
import multiprocessing.shared_memory
import msgpack, zmq
assert struct.calcsize("P") == 4, "not a 32-bit interpreter"
assert ctypes.sizeof(ctypes.c_void_p) == 4
assert ctypes.CDLL(None).strlen(b"dllpool") == 7, "ctypes cannot call libc"
assert msgpack.unpackb(msgpack.packb({"a": [1, 2.5, b"x"]})) == {"a": [1, 2.5, b"x"]}
ctx = zmq.Context()
router = ctx.socket(zmq.ROUTER)
dealer = ctx.socket(zmq.DEALER)
port = router.bind_to_random_port("tcp://127.0.0.1")
dealer.connect("tcp://127.0.0.1:%d" % port)
dealer.send(b"ping")
assert router.poll(5000), "no message through a DEALER socket"
ident, body = router.recv_multipart()
router.send_multipart([ident, body + b"-pong"])
assert dealer.poll(5000) and dealer.recv() == b"ping-pong"
dealer.close(0); router.close(0); ctx.term()
print(json.dumps({"zmq_file": zmq.__file__, "msgpack_file": msgpack.__file__}))
"""


@dataclass(frozen=True)
class Interpreter:
    """How to start a 32-bit (or any) Python that has pyzmq and msgpack."""

    executable: str
    """Absolute path of the python binary (symlinks kept: a venv needs its own), or of the
    dynamic loader that starts it (the provisioned runtime: ``args`` then name the binary)."""
    env: dict[str, str] = field(default_factory=dict, hash=False)
    """Extra environment variables: PYTHONHOME for the unpacked Debian one."""
    path: tuple[str, ...] = ()
    """``sys.path`` entries to put first: the folder holding the i686 wheels."""
    args: tuple[str, ...] = ()
    """Arguments the interpreter needs before ours, e.g. ``-3.11-32`` for Windows' ``py`` launcher."""

    @property
    def command(self) -> list[str]:
        return [self.executable, *self.args]

    @property
    def shown(self) -> str:
        """How messages name it: the python binary, not the loader in front of it."""
        if os.path.basename(self.executable).startswith("ld-linux") and self.args:
            return self.args[-1]
        return shlex.join(self.command)


@dataclass(frozen=True)
class SetupResult:
    """What :func:`provision` did, so callers and tests can tell a no-op from work."""

    interpreter: Interpreter
    actions: tuple[str, ...]
    """The steps that changed something (empty when everything was in place)."""
    seconds: float


# --------------------------------------------------------------------------- paths


def default_prefix() -> Path:
    """Where :func:`setup` provisions by default; see :func:`locations.runtime32_prefix`."""
    return locations.runtime32_prefix()


# --------------------------------------------------------------------------- binaries


def check_elf_bits(path: str | os.PathLike[str]) -> int:
    """32 or 64, read from an ELF or PE header, to prove what a process really runs.

    Reading the header (e.g. of ``/proc/<pid>/exe``) cannot be fooled by what
    the program says about itself.  Raises :class:`ValueError` for anything else.
    """
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] == b"\x7fELF":
            if len(head) > 4 and head[4] in (1, 2):
                return 32 if head[4] == 1 else 64
            raise ValueError(f"{os.fspath(path)}: ELF file with unknown class {head[4:5]!r}")
        if head[:2] == b"MZ" and len(head) >= 64:
            (pe_offset,) = struct.unpack_from("<I", head, 0x3C)
            f.seek(pe_offset)
            pe = f.read(6)
            if len(pe) == 6 and pe[:4] == b"PE\0\0":
                (machine,) = struct.unpack_from("<H", pe, 4)
                bits = {0x14C: 32, 0x1C4: 32, 0x8664: 64, 0xAA64: 64}.get(machine)
                if bits is not None:
                    return bits
                raise ValueError(f"{os.fspath(path)}: PE file for unknown machine {machine:#x}")
    raise ValueError(f"{os.fspath(path)}: neither an ELF nor a PE executable")


# --------------------------------------------------------------------------- interpreters


def from_executable(executable: str) -> Interpreter:
    """Wrap an interpreter the user named: a path, a command on PATH, or a command line such as ``py -3.11-32``.

    Symlinks are not resolved: a venv's python finds its ``pyvenv.cfg`` through them.
    """
    candidate = os.path.expanduser(executable)
    args: tuple[str, ...] = ()
    if not os.path.isfile(candidate) and len(parts := _split_command(executable)) > 1:
        candidate, args = os.path.expanduser(parts[0]), tuple(parts[1:])
    if not os.path.isfile(candidate):
        found = shutil.which(candidate)
        if found is None:
            raise RuntimeMissing(f"32-bit Python {executable!r} not found: give the full path of the interpreter")
        candidate = found
    return Interpreter(executable=os.path.abspath(candidate), args=args)


def _split_command(command: str) -> list[str]:
    """A command line's words; on Windows backslashes are path separators and quotes are taken off
    (``"C:\\Program Files (x86)\\Python311-32\\python.exe" -X utf8``)."""
    if os.name == "posix":
        return shlex.split(command)
    return [
        word[1:-1] if len(word) > 1 and word[0] == word[-1] == '"' else word
        for word in shlex.split(command, posix=False)
    ]


_WINDOWS = sys.platform == "win32"


def windows_launcher() -> Interpreter | None:
    """``py -3-32``, the newest 32-bit Python 3 that python.org installers registered, where the launcher is."""
    if not _WINDOWS:
        return None
    launcher = shutil.which("py")
    return None if launcher is None else Interpreter(executable=os.path.abspath(launcher), args=("-3-32",))


def command_env(interp: Interpreter, extra_path: Sequence[str]) -> dict[str, str]:
    """The full environment to start ``interp`` with ``extra_path`` importable.

    The 64-bit side's Python variables are dropped so the 32-bit process can
    never pick up the 64-bit venv's compiled pyzmq; ``interp.path`` comes
    first, then ``extra_path`` (the project's own source folder).  An
    ``extra_path`` folder holding a ``zmq`` or ``msgpack`` package would shadow
    the interpreter's own and is refused with :class:`ValueError`.
    """
    for entry in extra_path:
        for pkg in ("zmq", "msgpack"):
            if os.path.isdir(os.path.join(entry, pkg)):
                raise ValueError(
                    f"{entry!r} holds a {pkg!r} package (a 64-bit site-packages?): it must not be on the "
                    "32-bit worker's path; pass only the project's source folder"
                )
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update(interp.env)
    env["PYTHONNOUSERSITE"] = "1"
    entries = [*interp.path, *extra_path]
    if entries:
        env["PYTHONPATH"] = os.pathsep.join(entries)
    else:
        env.pop("PYTHONPATH", None)
    return env


def describe(interp: Interpreter, timeout: float = 30) -> dict[str, object]:
    """Run ``interp`` and report its version, pointer size, platform, pyzmq and msgpack.

    Raises :class:`RuntimeMissing` if it does not start or lacks pyzmq/msgpack.
    """
    info = _run_python(interp, _PROBE, timeout)
    raw_errors = info.pop("errors", None)
    errors = [str(e) for e in raw_errors] if isinstance(raw_errors, list) else []
    if errors or not info.get("pyzmq") or not info.get("msgpack"):
        raise RuntimeMissing(
            f"{interp.shown} cannot import what a worker needs: {'; '.join(errors)}. "
            f"For the managed runtime, {SETUP_HINT}; for your own interpreter, "
            "install pyzmq and msgpack into it (`python -m pip install pyzmq msgpack`)"
        )
    return info


def _run_python(interp: Interpreter, code: str, timeout: float) -> dict[str, object]:
    """Run ``code`` in ``interp`` (from its own folder, away from stray packages) and parse its JSON line."""
    cwd = os.path.dirname(interp.executable) or None
    try:
        proc = subprocess.run(
            [*interp.command, "-c", code],
            env=command_env(interp, ()),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeMissing(f"32-bit Python {interp.shown} did not start: {exc}") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeMissing(f"32-bit Python {interp.shown} failed (exit code {proc.returncode}): {tail(proc.stderr)}")
    try:
        data = json.loads(lines[-1])
    except ValueError as exc:
        raise RuntimeMissing(f"32-bit Python {interp.shown} printed no report: {tail(proc.stdout)}") from exc
    if not isinstance(data, dict):
        raise RuntimeMissing(f"32-bit Python {interp.shown} printed an odd report: {data!r:.200}")
    return data


# --------------------------------------------------------------------------- manifest


def load(prefix: Path | None = None) -> Interpreter:
    """The interpreter recorded by a finished :func:`setup`; without one, on Windows, ``py -3-32``;
    :class:`RuntimeMissing` if neither."""
    prefix = default_prefix() if prefix is None else prefix
    manifest = prefix / MANIFEST
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        launcher = windows_launcher()
        if launcher is not None:
            return launcher
        raise RuntimeMissing(f"no 32-bit Python runtime in {prefix}: {SETUP_HINT}, {CONFIG_HINT}") from None
    except (OSError, ValueError) as exc:
        raise RuntimeMissing(f"unreadable 32-bit runtime manifest {manifest} ({exc}): {SETUP_HINT}") from exc
    try:
        interp = interpreter_from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeMissing(f"broken 32-bit runtime manifest {manifest} ({exc}): {SETUP_HINT}") from exc
    missing = [p for p in (interp.executable, *interp.path) if not os.path.exists(p)]
    if missing:
        raise RuntimeMissing(
            f"the 32-bit runtime in {prefix} is incomplete ({', '.join(missing)} missing): {SETUP_HINT}"
        )
    return interp


def interpreter_to_dict(interp: Interpreter) -> dict[str, Any]:
    """``interp`` as JSON-ready data: the runtime's manifest holds it, and a pool hands it to its broker process."""
    return {
        "format": MANIFEST_FORMAT,
        "executable": interp.executable,
        "env": interp.env,
        "path": list(interp.path),
        "args": list(interp.args),
    }


def interpreter_from_dict(data: object) -> Interpreter:
    """The inverse of :func:`interpreter_to_dict`; ValueError (or KeyError) for anything else."""
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"not a format-{MANIFEST_FORMAT} manifest")
    executable, env, path, args = data["executable"], data["env"], data["path"], data["args"]
    if not isinstance(executable, str) or not os.path.isabs(executable):
        raise ValueError("executable must be an absolute path")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("env must map strings to strings")
    if not isinstance(path, list) or not all(isinstance(p, str) for p in path):
        raise ValueError("path must be a list of strings")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("args must be a list of strings")
    return Interpreter(executable=executable, env=dict(env), path=tuple(path), args=tuple(args))


def _write_manifest(prefix: Path, interp: Interpreter, info: Mapping[str, object]) -> None:
    data = {
        **interpreter_to_dict(interp),
        "version": info.get("version"),
        "platform": info.get("platform"),
        "pyzmq": info.get("pyzmq"),
        "libzmq": info.get("libzmq"),
        "msgpack": info.get("msgpack"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = prefix / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, prefix / MANIFEST)


# --------------------------------------------------------------------------- setup


def setup(prefix: Path | None = None) -> Interpreter:
    """Provision the 32-bit runtime under ``prefix`` if needed; see :func:`provision`."""
    return provision(prefix).interpreter


def provision(prefix: Path | None = None, *, refresh: bool = False) -> SetupResult:
    """Make the 32-bit runtime ready and say what had to be done.

    Idempotent: when the manifest exists and the interpreter passes its
    self-test, nothing else runs (no apt, no network; well under a second).
    Otherwise each missing step is done, and the manifest is written last so
    an interrupted setup is redone rather than trusted.  ``refresh`` rebuilds
    it from the archive's current packages (security updates; stop pools first).
    """
    started = time.monotonic()
    prefix = (default_prefix() if prefix is None else prefix).absolute()
    ready = None if refresh else _ready(prefix)
    if ready is not None:
        return SetupResult(ready, tuple(_ensure_bytecode(prefix, ready)), time.monotonic() - started)

    _check_platform()
    try:
        prefix.mkdir(parents=True, exist_ok=True)
        gitignore = prefix / ".gitignore"  # keeps the runtime out of git wherever the prefix is
        if not gitignore.exists():
            gitignore.write_text("# created by dllpool: the 32-bit runtime is machine-specific\n*\n", encoding="utf-8")
    except OSError as exc:
        raise RuntimeMissing(
            f"cannot create the 32-bit runtime folder {prefix} ({exc}): set {ENV_PREFIX} to a writable folder"
        ) from exc
    with locked(prefix / ".setup.lock"):
        ready = None if refresh else _ready(prefix)  # another process may have finished it while we waited
        if ready is not None:
            return SetupResult(ready, (), time.monotonic() - started)
        (prefix / MANIFEST).unlink(missing_ok=True)
        if refresh:
            for folder in (_ROOT_DIR, _SITE_DIR):
                shutil.rmtree(prefix / folder, ignore_errors=True)
        minor = _debian_python_minor()
        log.info("Debian ships Python 3.%d; building its 32-bit runtime in %s", minor, prefix)
        actions = _ensure_root(prefix, minor) + _ensure_wheels(prefix, minor)
        interp = _private_interpreter(prefix, minor)
        log.info("verifying the 32-bit interpreter (pointer size, ctypes, pyzmq DEALER socket, msgpack)")
        _selftest(interp)
        actions += _ensure_bytecode(prefix, interp)
        info = describe(interp)
        _write_manifest(prefix, interp, info)
        actions.append("manifest")
    log.info(
        "32-bit runtime ready: Python %s (%s), pyzmq %s (libzmq %s), msgpack %s",
        info["version"],
        info["platform"],
        info["pyzmq"],
        info["libzmq"],
        info["msgpack"],
    )
    return SetupResult(interp, tuple(actions), time.monotonic() - started)


def _ready(prefix: Path) -> Interpreter | None:
    """The recorded interpreter if it still passes its self-test, else None."""
    try:
        interp = load(prefix)
        _selftest(interp)
    except RuntimeMissing as exc:
        log.debug("32-bit runtime not ready: %s", exc)
        return None
    log.info("32-bit runtime already set up: %s", interp.shown)
    return interp


def _selftest(interp: Interpreter) -> None:
    """Raise :class:`RuntimeMissing` unless ``interp`` runs everything a worker needs."""
    result = _run_python(interp, _SELFTEST, timeout=60)
    zmq_file = str(result.get("zmq_file", ""))
    if interp.path and not any(zmq_file.startswith(p + os.sep) for p in interp.path):
        raise RuntimeMissing(f"{interp.shown} imported zmq from {zmq_file}, not from its own site folder")


def compile_bytecode(interp: Interpreter, folders: Sequence[Path]) -> bool:
    """Write the ``.pyc`` files of the modules under ``folders`` for ``interp``; False (logged) if it could not.

    Without them every process of ``interp`` compiles what it imports, each time it starts, wherever it
    may not write them (``PYTHONDONTWRITEBYTECODE``, a read-only install): that took a zygote 0.47 s
    instead of 0.12 s, and the default pool's ready time from 0.46 s to 1.1 s. Up-to-date files are
    only looked at, so this is cheap to repeat.
    """
    existing = [str(folder) for folder in folders if folder.is_dir()]
    if not existing:
        return True
    try:
        done = subprocess.run(  # one process: ``-j`` would start others without the runtime's loader in front
            [*interp.command, "-m", "compileall", "-q", *existing],
            env=command_env(interp, ()),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot compile the bytecode of %s with %s: %s", ", ".join(existing), interp.shown, exc)
        return False
    if done.returncode != 0:  # a read-only folder, or a file that does not compile: only those go without
        log.info(
            "compiling the bytecode of %s with %s left files out: %s",
            ", ".join(existing),
            interp.shown,
            tail(done.stdout + done.stderr),
        )
    return "Traceback (most recent call last)" not in done.stderr  # else compileall itself failed


def _ensure_bytecode(prefix: Path, interp: Interpreter) -> list[str]:
    """The private runtime's standard library and wheels, compiled once (Debian compiles them when it installs
    its packages; unpacked here, nothing did). Nothing for another interpreter, nor where nothing can be
    written."""
    library = prefix / _ROOT_DIR / "usr" / "lib"
    marker = prefix / _ROOT_DIR / _BYTECODE_MARKER
    if marker.exists() or not library.is_dir() or not os.access(library, os.W_OK):
        return []
    log.info("compiling the 32-bit runtime's bytecode (once, a few seconds)")
    if not compile_bytecode(interp, [library, prefix / _SITE_DIR]):
        return []
    try:
        marker.write_text("the standard library and wheels of this runtime are compiled\n", encoding="utf-8")
    except OSError as exc:
        log.info("cannot write %s (%s): the runtime's bytecode will be checked again next time", marker, exc)
    return ["bytecode"]


def _check_platform() -> None:
    """Fail early, with directions, where this recipe cannot work."""
    if not sys.platform.startswith("linux"):
        raise RuntimeMissing(
            f"automatic 32-bit runtime setup works on Debian/Ubuntu x86_64 only, not {sys.platform}: "
            "install a 32-bit Python with pyzmq and msgpack (e.g. python.org's 32-bit installer, then "
            f"`python -m pip install pyzmq msgpack`), {CONFIG_HINT}"
        )
    machine = os.uname().machine
    if machine not in ("x86_64", "amd64"):
        raise RuntimeMissing(
            f"automatic 32-bit runtime setup needs an x86_64 machine, this is {machine}; {CONFIG_HINT}"
        )
    missing = [tool for tool in ("dpkg", "apt-get", "apt-cache") if shutil.which(tool) is None]
    if missing:
        raise RuntimeMissing(
            f"automatic 32-bit runtime setup needs a Debian-like system ({', '.join(missing)} not found): "
            f"install a 32-bit Python with pyzmq and msgpack, {CONFIG_HINT}"
        )


def _debian_python_minor() -> int:
    """The Python 3 minor version this release ships, from ``python3-minimal``'s dependency."""
    out = run(["apt-cache", "depends", "python3-minimal"], timeout=120, what="apt-cache depends python3-minimal")
    match = re.search(r"Depends:\s*python3\.(\d+)-minimal\b", out)
    if match is None:
        raise RuntimeMissing(
            "cannot tell which Python version this Debian/Ubuntu release ships "
            f"(`apt-cache depends python3-minimal` names no python3.N-minimal); {CONFIG_HINT}"
        )
    return int(match.group(1))


def _interpreter_packages(minor: int) -> list[str]:
    return [f"python3.{minor}-minimal", f"libpython3.{minor}-minimal", f"libpython3.{minor}-stdlib"]


def _shared_library_closure(archive: ForeignArchive, roots: Sequence[str]) -> list[str]:
    """``roots`` and, transitively, the shared-library packages they depend on.

    Debian names shared-library packages ``lib*`` (``zlib1g`` too); other
    dependencies (perl, media-types, tzdata, readline-common) are programs or
    data an unpacked interpreter does not need, and are not followed.
    """
    wanted = list(dict.fromkeys(roots))
    frontier = wanted
    while frontier:
        new: list[str] = []
        for deps in archive.depends(frontier).values():
            new += [dep for dep in deps if dep.startswith(("lib", "zlib")) and dep not in wanted and dep not in new]
        wanted += new
        frontier = new
    return wanted


def _ensure_root(prefix: Path, minor: int) -> list[str]:
    """Step 1: the interpreter and its libraries, downloaded and unpacked into ``<prefix>/root``."""
    root = prefix / _ROOT_DIR
    if all(p.is_file() for p in _root_files(root, minor)):
        log.info("32-bit Python 3.%d and its libraries already unpacked in %s", minor, root)
        return []
    staging = prefix / (_ROOT_DIR + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="dllpool-debs-", dir=prefix) as tmp:
        archive = ForeignArchive(Path(tmp) / "apt", "i386")
        archive.update()
        if archive.update_error:
            log.warning(
                "the 32-bit runtime gets the newest libraries the lists that did arrive name, which may lack "
                "recent security updates; once the mirror is whole, run `dllpool setup --refresh`"
            )
        packages = _shared_library_closure(archive, [*_interpreter_packages(minor), *_EXTRA_I386_PACKAGES])
        log.info("downloading %d i386 packages: %s", len(packages), " ".join(packages))
        debs = archive.download(packages, Path(tmp))
        if len(debs) != len(packages):
            raise RuntimeMissing(f"apt-get download fetched {len(debs)} of the {len(packages)} packages asked for")
        for deb in debs:
            run(["dpkg", "-x", str(deb), str(staging)], timeout=300, what=f"dpkg -x {deb.name}")
    shutil.rmtree(root, ignore_errors=True)  # another Python version, or damaged
    os.replace(staging, root)
    return [f"unpacked {len(debs)} i386 packages ({' '.join(_interpreter_packages(minor))} and libraries)"]


def _root_files(root: Path, minor: int) -> tuple[Path, Path]:
    """The loader and the interpreter binary: what a complete ``<prefix>/root`` must have."""
    return root / "lib" / "i386-linux-gnu" / "ld-linux.so.2", root / "usr" / "bin" / f"python3.{minor}"


def _private_interpreter(prefix: Path, minor: int) -> Interpreter:
    """The unpacked interpreter, started through its own loader so it finds its own libraries first."""
    root = prefix / _ROOT_DIR
    loader, python = _root_files(root, minor)
    libraries = os.pathsep.join(str(root / sub / "i386-linux-gnu") for sub in ("lib", "usr/lib"))
    return Interpreter(
        executable=str(loader),
        env={"PYTHONHOME": str(root / "usr")},
        path=(str(prefix / _SITE_DIR),),
        args=("--library-path", libraries, str(python)),
    )


def _ensure_wheels(prefix: Path, minor: int) -> list[str]:
    """Step 3: i686 pyzmq and msgpack wheels, fetched by the 64-bit pip and unzipped into ``<prefix>/site``."""
    site = prefix / _SITE_DIR
    marker = site / _SITE_MARKER
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, dict) and recorded.get("python") == f"3.{minor}":
        log.info("i686 wheels already unpacked in %s: %s", site, ", ".join(recorded.get("wheels", [])))
        return []
    staging = prefix / (_SITE_DIR + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="dllpool-wheels-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-input",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            f"3.{minor}",
            *(arg for platform in _WHEEL_PLATFORMS for arg in ("--platform", platform)),
            "--dest",
            tmp,
            *_WHEELS,
        ]
        log.info("downloading i686 wheels for Python 3.%d: %s", minor, " ".join(_WHEELS))
        run(cmd, timeout=900, what="pip download of the i686 wheels")
        wheels = sorted(Path(tmp).glob("*.whl"))
        names = {w.name.split("-")[0].lower() for w in wheels}
        if names != set(_WHEELS):
            raise RuntimeMissing(f"pip found no i686 wheel for {sorted(set(_WHEELS) - names)} on Python 3.{minor}")
        for wheel in wheels:
            log.info("unpacking %s", wheel.name)
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(staging)
    (staging / _SITE_MARKER).write_text(
        json.dumps({"python": f"3.{minor}", "wheels": [w.name for w in wheels]}, indent=2) + "\n", encoding="utf-8"
    )
    shutil.rmtree(site, ignore_errors=True)
    os.replace(staging, site)
    return [f"unpacked {', '.join(w.name for w in wheels)}"]
