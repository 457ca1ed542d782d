"""What the broker counts of each service's calls for ``status``: cheap enough to do on every answer.

A call costs a few integer operations: one bucket of a log-scale histogram (four buckets per doubling, so a
percentile is within 19 % of the truth: enough to tell 1 ms from 2 ms, and it never allocates) and a counter.
Rates and recent percentiles come from two rotating windows, the last complete one and the current one, so
``status`` shows the last ``WINDOW`` to ``2 * WINDOW`` seconds rather than averages since the start.
"""

from __future__ import annotations

import collections
from typing import Any

__all__ = ["MAX_ERROR_TYPES", "OTHER_ERRORS", "PERCENTILES", "WINDOW", "Latencies", "ServiceMeter"]

WINDOW = 5.0
"""Seconds of one window of recent figures."""
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
MAX_ERROR_TYPES = 64
"""Distinct error type names a service's counts keep; later new names count as :data:`OTHER_ERRORS`."""
OTHER_ERRORS = "other"
_SUB = 4
"""Buckets per doubling of the latency."""
_BUCKETS = _SUB * 42
"""Enough for microseconds up to 2**41 (25 days): the rest share the last bucket."""


def _bucket(micros: int) -> int:
    """The bucket of a latency in microseconds: exact up to 3, then ``_SUB`` per power of two."""
    if micros < _SUB:
        return max(micros, 0)
    bits = micros.bit_length()
    return min(_SUB * (bits - 2) + ((micros >> (bits - 3)) & 3), _BUCKETS - 1)


def _upper(bucket: int) -> int:
    """The largest latency, in microseconds, that falls into ``bucket``."""
    if bucket < _SUB:
        return bucket
    bits, sub = divmod(bucket, _SUB)
    return ((_SUB + 1 + sub) << (bits - 1)) - 1


class Latencies:
    """A histogram of latencies; percentiles are bucket upper bounds, never above the largest latency seen."""

    __slots__ = ("count", "counts", "largest")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.largest = 0.0

    def record(self, seconds: float) -> None:
        micros = int(seconds * 1e6)
        if micros < _SUB:
            bucket = max(micros, 0)
        else:  # _bucket, inlined: this runs once per call
            bits = micros.bit_length()
            bucket = min(_SUB * (bits - 2) + ((micros >> (bits - 3)) & 3), _BUCKETS - 1)
        self.counts[bucket] += 1
        self.count += 1
        if seconds > self.largest:
            self.largest = seconds

    def merged(self, other: Latencies) -> Latencies:
        both = Latencies()
        both.counts = [a + b for a, b in zip(self.counts, other.counts)]
        both.count = self.count + other.count
        both.largest = max(self.largest, other.largest)
        return both

    def percentile(self, percent: float) -> float | None:
        """Seconds under which ``percent`` % of the latencies fall; None when there are none."""
        if not self.count:
            return None
        rank = max(1, -(-self.count * percent // 100))
        seen = 0
        for bucket, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(_upper(bucket) / 1e6, self.largest)
        return self.largest

    def summary(self) -> dict[str, float | None]:
        """``p50``, ``p90``, ``p99``, ``p99.9`` and ``max``, in seconds."""
        figures: dict[str, float | None] = {f"p{p:g}": self.percentile(p) for p in PERCENTILES}
        figures["max"] = self.largest if self.count else None
        return figures


class ServiceMeter:
    """One service's answered calls: counts since the start, and latency and rate over the recent windows."""

    def __init__(self) -> None:
        self.calls = 0
        """Calls a worker answered (results and errors)."""
        self.errors: collections.Counter[str] = collections.Counter()
        """Error answers by type name: the workers' and the broker's own (Timeout, Busy, WorkerCrashed...)."""
        self._past = Latencies()
        """Latencies of the windows rotated out: with the recent ones, those since the start. A latency runs from
        the request's arrival at the broker to its answer, queueing included: what the caller waits."""
        self.recycled = 0
        self.restarts = 0
        """Workers of the service lost (crashed, killed, unreachable), each replaced by the supervisor."""
        self._current = Latencies()
        self._previous = Latencies()
        self._current_since: float | None = None
        """When the current window began: at the first rotation (the broker's first tick)."""
        self._previous_since = 0.0

    def record(self, seconds: float) -> None:
        self.calls += 1
        self._current.record(seconds)

    def error(self, name: str) -> None:
        """Count an error answer of type ``name``; past :data:`MAX_ERROR_TYPES` names, new ones count as
        ``"other"`` (the names come from workers: a library raising ever new exception types, or a hostile
        worker, must not grow the broker's memory or its status without bound)."""
        if name not in self.errors and len(self.errors) >= MAX_ERROR_TYPES:
            name = OTHER_ERRORS
        self.errors[name] += 1

    def rotate(self, now: float) -> None:
        """Start a new window once the current one is ``WINDOW`` seconds old (the loop's tick calls this)."""
        if self._current_since is None:
            self._current_since = self._previous_since = now
        elif now - self._current_since >= WINDOW:
            self._past = self._past.merged(self._previous)
            self._previous, self._current = self._current, Latencies()
            self._previous_since, self._current_since = self._current_since, now

    def snapshot(self, now: float) -> dict[str, Any]:
        recent = self._previous.merged(self._current)
        span = 0.0 if self._current_since is None else now - self._previous_since
        return {
            "calls": self.calls,
            "errors": dict(self.errors),
            "calls_per_s": recent.count / span if span > 0 else 0.0,
            "latency": recent.summary(),
            "latency_since_start": self._past.merged(recent).summary(),
            "recycled": self.recycled,
            "restarts": self.restarts,
        }
