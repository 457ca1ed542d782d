"""When a service with ``min_workers < max_workers`` grows or shrinks: a policy on what callers wait, no sockets.

It grows when a call has waited in the queue for ``autoscale_wait`` seconds and no worker it asked for is still
starting: by as many workers as the queue needs (its length over the threads a worker runs), up to
``max_workers``. It shrinks when, for a whole ``autoscale_cooldown``, nothing waited and at least one worker's
worth of run slots always had nothing to do: by the fewest whole workers that were idle throughout, down to
``min_workers``, and never sooner than ``autoscale_cooldown`` after its last change. Growing answers a queue at
once; shrinking waits out a burst's tail, so the next burst finds its workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Autoscaler", "Load"]


@dataclass(frozen=True)
class Load:
    """What the broker sees of one service at one tick."""

    workers: int
    """Workers the service runs or is starting (the supervisor's target)."""
    starting: int
    """Of those, workers not ready yet."""
    queued: int
    """Calls waiting in the queue, for any worker (calls pinned to a worker of a session are not: a new worker
    cannot run them)."""
    queue_wait: float
    """Seconds the oldest queued call, or session waiting for a worker, has waited."""
    free_slots: int
    """Run slots of ready workers with nothing to do."""
    threads: int
    """Run slots per worker."""
    leases: int = 0
    """Sessions waiting for a worker of their own: one worker each."""


@dataclass
class Autoscaler:
    low: int
    high: int
    wait: float
    cooldown: float
    _changed: float = -math.inf
    _quiet_since: float | None = None
    """Since when nothing has waited and a worker's worth of slots stayed free."""
    _spare: int = field(default=0)
    """The fewest whole idle workers seen since ``_quiet_since``."""

    def target(self, now: float, load: Load) -> int:
        """How many workers the service should have now (``load.workers`` when nothing should change)."""
        if load.queue_wait >= self.wait and load.workers < self.high:
            self._quiet_since = None
            if load.starting:
                return load.workers  # those asked for already are on their way
            self._changed = now
            return min(self.high, load.workers + max(1, math.ceil(load.queued / load.threads) + load.leases))
        spare = load.free_slots // load.threads if not (load.queued or load.leases) else 0
        if not spare:
            self._quiet_since = None
            return load.workers
        if self._quiet_since is None:
            self._quiet_since, self._spare = now, spare
            return load.workers
        self._spare = min(self._spare, spare)
        if now - self._quiet_since < self.cooldown or now - self._changed < self.cooldown or load.workers <= self.low:
            return load.workers
        self._changed, self._quiet_since = now, None
        return max(self.low, load.workers - self._spare)
