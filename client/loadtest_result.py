"""What a load test measured: :class:`LoadResult`, mergeable across threads, processes and machines.

Latencies are kept in HDR histograms (microseconds, 3 significant figures, up to an hour), so percentiles
are exact to 0.1 % however many calls were made, and two results merge by adding their histograms. A
result travels as JSON with each histogram in its standard compressed, base64 form (``HISTFAAA...``, the
form HdrHistogram's other implementations read too): never pickled.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = ["PERCENTILES", "LoadResult", "SecondStats", "decode_histogram", "encode_histogram", "new_histogram"]

FORMAT = 1
"""The JSON layout's version, written as ``"format"``; :meth:`LoadResult.from_dict` refuses others."""

HIGHEST_US = 3_600_000_000
"""The longest latency a histogram tells apart (an hour); longer ones are recorded as an hour."""

PERCENTILES: dict[str, float] = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
"""The percentiles every summary reports (with ``max``): their names and values."""


def new_histogram() -> HdrHistogram:
    """An empty latency histogram: 1 us to an hour, 3 significant figures."""
    return HdrHistogram(1, HIGHEST_US, 3)


def encode_histogram(histogram: HdrHistogram) -> str:
    """The histogram's standard compressed base64 form, as text for JSON."""
    encoded: bytes = histogram.encode()
    return encoded.decode("ascii")


def decode_histogram(text: str) -> HdrHistogram:
    """A histogram from :func:`encode_histogram`'s text (an empty one from ``""``)."""
    histogram = new_histogram()
    if text:
        histogram.decode_and_add(text.encode("ascii"))
    return histogram


def record(histogram: HdrHistogram, microseconds: int) -> None:
    """Record one latency, clamped into the histogram's range (1 us to an hour)."""
    histogram.record_value(min(max(1, microseconds), HIGHEST_US))


def summary(histogram: HdrHistogram) -> dict[str, int]:
    """``p50``, ``p90``, ``p99``, ``p99.9`` and ``max`` in microseconds (all 0 for an empty histogram)."""
    if histogram.get_total_count() == 0:
        return {**dict.fromkeys(PERCENTILES, 0), "max": 0}
    values = histogram.get_percentile_to_value_dict(list(PERCENTILES.values()))  # one pass over the counts
    figures = {name: int(values[q]) for name, q in PERCENTILES.items()}
    figures["max"] = int(histogram.get_max_value())
    return figures


@dataclasses.dataclass
class SecondStats:
    """One second of a run, counted by when calls completed: calls answered, errors among them, and the
    latency of the successful ones (for the plot's percentiles over time).

    The histogram is kept encoded (a few hundred bytes, where a live one takes 190 KB), so an hour's run
    keeps 3,600 of them cheaply; :attr:`latency_us` is computed once, when the second is sealed.
    """

    second: int
    """Whole seconds from the run's start."""
    calls: int
    errors: int
    latency_us: dict[str, int]
    histogram: str
    """The successful calls' latencies, as :func:`encode_histogram` gives them."""

    @classmethod
    def of(cls, second: int, calls: int, errors: int, histogram: HdrHistogram) -> SecondStats:
        return cls(second, calls, errors, summary(histogram), encode_histogram(histogram))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SecondStats:
        latency = {str(k): int(v) for k, v in data["latency_us"].items()}
        return cls(int(data["second"]), int(data["calls"]), int(data["errors"]), latency, str(data["histogram"]))


@dataclasses.dataclass
class LoadResult:
    """A load test's outcome (see :class:`client.loadtest.LoadTest`).

    ``calls`` counts every call answered, with a result or an error; ``errors`` counts the errors by type
    name (``{"Timeout": 3}``); ``histogram`` holds the latency of the successful calls in microseconds,
    measured in the open loop from each call's intended send time. ``wall_seconds`` runs from the start to
    the last answer; ``started_at`` is the start's Unix time, which aligns results being merged.
    """

    calls: int
    errors: dict[str, int]
    wall_seconds: float
    started_at: float
    histogram: HdrHistogram
    seconds: list[SecondStats]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What was run (scenario, clients, in_flight, rate, ...), for reports: not interpreted here."""
    interrupted: bool = False
    """The run was stopped early (Ctrl-C, :meth:`LoadTest.stop`): the figures cover what ran."""

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def ok(self) -> int:
        return self.calls - self.error_count

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def latency_us(self) -> dict[str, int]:
        """``p50``, ``p90``, ``p99``, ``p99.9`` and ``max`` latency in microseconds, over the whole run."""
        return summary(self.histogram)

    def describe(self) -> str:
        """How the load was made, for people: ``closed loop, 8 clients x 4 in flight; 10.0 s``."""
        settings, span = self.settings, f"{self.wall_seconds:.1f} s"
        if not settings:
            return span
        clients, processes = settings["clients"], settings["processes"]
        where = f"{clients} client{'s' * (clients != 1)}" + (f" in {processes} processes" if processes > 1 else "")
        if settings["rate"]:
            limit = f", at most {settings['in_flight']} in flight each" if settings["in_flight"] else ""
            return f"open loop at {settings['rate']:g} calls/s, {where}{limit}; {span}"
        return f"closed loop, {where} x {settings['in_flight'] or 1} in flight; {span}"

    def merge(self, *others: LoadResult) -> LoadResult:
        """One result for runs made side by side (threads, processes, machines): counts and histograms add
        up, per-second figures are aligned on each run's start time, and the wall time spans them all."""
        results = (self, *others)
        start = min(r.started_at for r in results)
        end = max(r.started_at + r.wall_seconds for r in results)
        histogram = new_histogram()
        errors: Counter[str] = Counter()
        by_second: dict[int, tuple[int, int, HdrHistogram]] = {}
        for result in results:
            histogram.add(result.histogram)
            errors.update(result.errors)
            shift = round(result.started_at - start)
            for second in result.seconds:
                calls, errs, into = by_second.get(second.second + shift) or (0, 0, new_histogram())
                into.add(decode_histogram(second.histogram))
                by_second[second.second + shift] = (calls + second.calls, errs + second.errors, into)
        return LoadResult(
            calls=sum(r.calls for r in results),
            errors=dict(errors),
            wall_seconds=end - start,
            started_at=start,
            histogram=histogram,
            seconds=[SecondStats.of(i, *by_second[i]) for i in sorted(by_second)],
            settings=dict(self.settings),
            interrupted=any(r.interrupted for r in results),
        )

    @classmethod
    def merged(cls, results: Iterable[LoadResult]) -> LoadResult:
        """:meth:`merge` over any number of results (at least one)."""
        first, *rest = results
        return first.merge(*rest)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-able values; the derived figures (``calls_per_second``, ``latency_us``, ...)
        are included for scripts and ignored by :meth:`from_dict`."""
        return {
            "format": FORMAT,
            "settings": self.settings,
            "started_at": self.started_at,
            "wall_seconds": self.wall_seconds,
            "calls": self.calls,
            "ok": self.ok,
            "errors": self.errors,
            "error_count": self.error_count,
            "calls_per_second": self.calls_per_second,
            "latency_us": self.latency_us,
            "interrupted": self.interrupted,
            "histogram": encode_histogram(self.histogram),
            "seconds": [s.to_dict() for s in self.seconds],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadResult:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a dllpool load-test result of format {FORMAT} (format: {data.get('format')!r})")
        return cls(
            calls=int(data["calls"]),
            errors={str(k): int(v) for k, v in data["errors"].items()},
            wall_seconds=float(data["wall_seconds"]),
            started_at=float(data["started_at"]),
            histogram=decode_histogram(data["histogram"]),
            seconds=[SecondStats.from_dict(s) for s in data["seconds"]],
            settings=dict(data.get("settings", {})),
            interrupted=bool(data.get("interrupted", False)),
        )

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        return cls.from_dict(json.loads(text))

    def plot(self, path: str) -> None:
        """Write a PNG of latency percentiles and throughput over time (needs matplotlib: ``dllpool[plot]``)."""
        from .loadtest_plot import plot_result

        plot_result(self, path)
