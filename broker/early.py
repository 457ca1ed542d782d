"""A broker process's first step: its run folder, and a zygote started while the rest of the broker imports.

A pool's broker process (:mod:`broker.hosted`) takes 150-200 ms to import the broker, and a zygote 100-150 ms
to import the worker's code: one after the other, they were most of a pool's start. The pool's owner knows
which interpreter the first workers need and names it in the process's environment (:data:`ENV`). This module,
imported before the rest of the package (whose ``__init__`` loads nothing until asked), makes the run folder
with its worker source and starts that interpreter's zygote; the broker then takes both over
(:class:`broker.inprocess.InProcessBroker`), and the zygote is usually ready by the time the first worker is
wanted. Without the variable, or where anything here fails, the broker starts them itself, as a pool in a
thread does, and reports what fails.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .rundir import RunDir, make_worker_source
from .runtime32 import command_env, interpreter_from_dict
from .zygote import ZygoteStart, dedicate_process, start_zygote

log = logging.getLogger(__name__)

__all__ = ["ENV", "EarlyStart", "begin"]

ENV = "DLLPOOL_EARLY_ZYGOTE"
"""The interpreter of the zygote to start, as JSON (:func:`broker.runtime32.interpreter_to_dict`)."""


@dataclass
class EarlyStart:
    """What :func:`begin` made, for the broker to take over (or :meth:`discard`)."""

    run_dir: RunDir
    source: Path
    """The run folder's worker source (:func:`broker.rundir.make_worker_source`)."""
    zygote: ZygoteStart | None

    def discard(self) -> None:
        """No broker took them over: end the zygote (unless a spawner took it) and remove the folder."""
        if self.zygote is not None:
            self.zygote.discard()
        self.run_dir.remove()


def begin() -> EarlyStart | None:
    """The run folder and, if :data:`ENV` names an interpreter, its zygote, started now; None if the folder cannot
    be made here (the broker then tries again, and reports why)."""
    dedicate_process()  # this process runs a broker and nothing else
    spec = os.environ.pop(ENV, None)  # not for the broker's own children
    try:
        run_dir = RunDir()
    except OSError as exc:
        log.debug("no early run folder: %s", exc)
        return None
    try:
        source = make_worker_source(run_dir.path)
        zygote = None
        if spec is not None:
            interp = interpreter_from_dict(json.loads(spec))
            zygote = start_zygote(interp, source, command_env(interp, [str(source)]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("no early zygote: %s", exc)
        run_dir.remove()
        return None
    return EarlyStart(run_dir, source, zygote)
