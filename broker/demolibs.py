"""Build the demo libraries (C, C++, Fortran; 32- and 64-bit) from the demo tree's sources.

``<tree>/examples/build/{32,64}/lib*.so`` are what the default
configuration hosts.  The compilers come through :mod:`broker.syspkg`, like
the 32-bit runtime's libraries: each (compiler, bits) pair is probed by
linking a tiny shared library with the real build's flags, and a failing probe
names the Debian package that fixes it.  Probes run only when something needs
building, and a library is rebuilt only when its source or its command changed
(recorded in ``build/.manifest.json``).

The 32-bit C++ and Fortran libraries link their runtimes statically, so a
bare 32-bit worker process needs only libc6:i386 to load them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from protocol.errors import RuntimeMissing

from . import locations
from .syspkg import Apt, Requirement, locked, provide, tail

__all__ = ["BuildResult", "build", "build_dir"]

log = logging.getLogger(__name__)

_WARN = ("-O3", "-fPIC", "-Wall")
_TARGET = {32: ("-m32", "-msse2", "-mfpmath=sse"), 64: ()}
"""32-bit code with SSE2 floating point, as MSVC builds 32-bit DLLs by default (``/arch:SSE2``): gcc's i386
default is the x87 unit, which made the array loops of the demo library (``scale``, ``scalar_multiply``) 2-3 times
slower than the same code at 64 bits (1M doubles: 0.85 ms against 0.39 ms with SSE2 and -O3)."""
# --exclude-libs,ALL: symbols pulled in from static archives (libstdc++.a,
# libgfortran.a, libgcc.a) stay local, so they cannot interpose on another
# copy of those runtimes in the same process.
_LINK = ("-shared", "-Wl,--no-undefined", "-Wl,--exclude-libs,ALL")


@dataclass(frozen=True, eq=False)
class _Language:
    compiler: str
    flags: tuple[str, ...]
    static: dict[int, tuple[str, ...]]
    """Runtime-linking flags per bitness.  Debian's 64-bit libgfortran.a is not PIC, so
    the 64-bit Fortran library (loaded only by 64-bit test processes) links it dynamically."""
    packages: dict[int, str]
    """The Debian package that makes this compiler work at each bitness."""
    probe: str
    suffix: str


_C = _Language(
    "gcc",
    ("-std=c99", "-fvisibility=hidden", "-Wextra"),
    {32: (), 64: ()},
    {64: "gcc", 32: "gcc-multilib"},
    "int f(void){return 1;}\n",
    ".c",
)
_CXX = _Language(
    "g++",
    ("-std=c++11", "-fvisibility=hidden", "-Wextra"),
    {32: ("-static-libstdc++", "-static-libgcc"), 64: ("-static-libstdc++", "-static-libgcc")},
    {64: "g++", 32: "g++-multilib"},
    '#include <vector>\n#include <numeric>\nextern "C" int f(void)'
    "{std::vector<int> v{1,2};return std::accumulate(v.begin(),v.end(),0);}\n",
    ".cpp",
)
_FORTRAN = _Language(
    "gfortran",
    (),
    {32: ("-static-libgfortran", "-static-libgcc"), 64: ("-static-libgcc",)},
    {64: "gfortran", 32: "gfortran-multilib"},
    "function f() result(r) bind(c)\nuse iso_c_binding\ninteger(c_int) :: r\nr = 1\nend function f\n",
    ".f90",
)

_LIBRARIES = (
    ("libdemo.so", "c/demo.c", _C),
    ("libctest.so", "c/ctest.c", _C),
    ("libdemo_cpp.so", "cpp/demo_cpp.cpp", _CXX),
    ("libdemo_f.so", "fortran/demo_f.f90", _FORTRAN),
)
_BITS = (32, 64)
_MANIFEST = ".manifest.json"


@dataclass(frozen=True)
class BuildResult:
    folder: Path
    built: tuple[str, ...]
    """Libraries compiled by this run (empty when all were up to date)."""
    actions: tuple[str, ...]
    """System changes made for the toolchain (apt)."""


def build_dir(tree: Path | None = None) -> Path:
    return (locations.demo_tree() if tree is None else tree) / "examples" / "build"


def _command(language: _Language, bits: int, source: Path, output: Path, module_dir: Path) -> list[str]:
    command = [language.compiler, *_TARGET[bits], *_WARN, *language.flags]
    if language is _FORTRAN:
        command += ["-J", str(module_dir)]  # keeps the generated .mod file out of the sources
    return [*command, *_LINK, *language.static[bits], "-o", str(output), str(source)]


def _probe(language: _Language, bits: int) -> bool:
    """Whether ``language`` compiles and links a shared library at ``bits`` with the real flags."""
    with tempfile.TemporaryDirectory(prefix="dllpool-probe-") as tmp:
        source = Path(tmp) / f"probe{language.suffix}"
        source.write_text(language.probe, encoding="ascii")
        command = _command(language, bits, source, Path(tmp) / "probe.so", Path(tmp))
        try:
            return subprocess.run(command, capture_output=True, timeout=300, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def _toolchain(languages: Sequence[_Language], bits: Sequence[int]) -> list[Requirement]:
    return [Requirement(lang.packages[b], partial(_probe, lang, b)) for lang in dict.fromkeys(languages) for b in bits]


def _fingerprint(source: Path, command: Sequence[str]) -> str:
    digest = hashlib.sha256(source.read_bytes())
    digest.update("\0".join(command).encode())
    return digest.hexdigest()


def build(tree: Path | None = None) -> BuildResult:
    """Compile whatever is missing or out of date, installing the compilers first if needed.

    Serialised by a lock in the build folder: two set-ups at once (``dllpool up`` and
    ``dllpool demo`` on a fresh machine) build once, the second finds it done.
    """
    tree = locations.demo_tree() if tree is None else tree
    folder = build_dir(tree)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeMissing(f"cannot create the demo library folder {folder}: {exc}") from exc
    with locked(folder / ".build.lock"):
        return _build(tree, folder)


def _build(tree: Path, folder: Path) -> BuildResult:
    manifest_path = folder / _MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    jobs = []
    for name, relative, language in _LIBRARIES:
        source = tree / "examples" / relative
        if not source.is_file():
            raise RuntimeMissing(f"the demo source {source} is missing: this dllpool installation is incomplete")
        for bits in _BITS:
            output = folder / str(bits) / name
            command = _command(language, bits, source, output.with_name(name + ".partial"), output.parent)
            fingerprint = _fingerprint(source, command)
            if not (output.is_file() and manifest.get(f"{bits}/{name}") == fingerprint):
                jobs.append((f"{bits}/{name}", language, bits, command, output, fingerprint))
    if not jobs:
        log.info("demo libraries up to date in %s", folder)
        return BuildResult(folder, (), ())
    requirements = _toolchain([job[1] for job in jobs], sorted({job[2] for job in jobs}))
    actions = provide(requirements, Apt(), purpose="build the demo libraries")
    for key, _language, _bits, command, output, fingerprint in jobs:
        output.parent.mkdir(parents=True, exist_ok=True)
        staged = output.with_name(output.name + ".partial")
        log.info("building %s", output)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            staged.unlink(missing_ok=True)
            raise RuntimeMissing(f"building {output} failed (`{' '.join(command)}`): {tail(proc.stderr)}")
        os.replace(staged, output)
        manifest[key] = fingerprint
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return BuildResult(folder, tuple(job[0] for job in jobs), tuple(actions))
