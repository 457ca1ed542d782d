"""Everything the default configuration needs, in one idempotent step: ``dllpool setup``.

The 32-bit runtime needs no system package (it is unpacked privately); the
demo libraries' compilers come through :mod:`broker.syspkg`.  Run again with
everything in place, it touches neither apt nor the network.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import demolibs, locations, runtime32

__all__ = ["SetupReport", "setup"]

_PACKAGES = ("broker", "client", "protocol", "workers32")
"""dllpool's packages, all of which the 64-bit side imports."""


@dataclass(frozen=True)
class SetupReport:
    runtime: runtime32.SetupResult
    libraries: demolibs.BuildResult
    config: Path
    seconds: float

    @property
    def actions(self) -> tuple[str, ...]:
        return self.runtime.actions + self.libraries.actions + tuple(f"built {b}" for b in self.libraries.built)


def setup(prefix: Path | None = None, *, refresh: bool = False, bytecode: bool = False) -> SetupReport:
    """Provision the 32-bit runtime (under ``prefix``; rebuilt if ``refresh``) and build the demo libraries;
    with ``bytecode`` (``dllpool setup``; not the commands that set up on the way), compile dllpool's own
    packages for both interpreters too (see :func:`runtime32.compile_bytecode`)."""
    started = time.monotonic()
    runtime = runtime32.provision(prefix, refresh=refresh)
    if bytecode:
        root = Path(__file__).resolve().parent.parent
        runtime32.compile_bytecode(runtime.interpreter, [root / package for package in runtime32.WORKER_PACKAGES])
        runtime32.compile_bytecode(runtime32.Interpreter(sys.executable), [root / package for package in _PACKAGES])
    libraries = demolibs.build()
    return SetupReport(runtime, libraries, locations.default_config_path(), time.monotonic() - started)
