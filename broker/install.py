"""Everything the default configuration needs, in one idempotent step: ``dllpool setup``.

The 32-bit runtime and the demo libraries share one :class:`~broker.syspkg.Apt`,
so a fresh machine refreshes its package lists at most once.  Run again with
everything in place, it touches neither apt nor the network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from . import demolibs, locations, runtime32
from .syspkg import Apt

__all__ = ["SetupReport", "setup"]


@dataclass(frozen=True)
class SetupReport:
    runtime: runtime32.SetupResult
    libraries: demolibs.BuildResult
    config: Path
    seconds: float

    @property
    def actions(self) -> tuple[str, ...]:
        return self.runtime.actions + self.libraries.actions + tuple(f"built {b}" for b in self.libraries.built)


def setup(prefix: Path | None = None) -> SetupReport:
    """Provision the 32-bit runtime (under ``prefix``) and build the demo libraries if needed."""
    started = time.monotonic()
    apt = Apt(f"; {runtime32.CONFIG_HINT}")
    runtime = runtime32.provision(prefix, apt)
    libraries = demolibs.build(apt=apt)
    return SetupReport(runtime, libraries, locations.default_config_path(), time.monotonic() - started)
