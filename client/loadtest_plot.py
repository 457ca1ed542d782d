"""A load test's picture: latency percentiles and throughput per second, and the whole run's latency by
percentile, in one PNG. matplotlib is optional (``pip install 'dllpool[plot]'``) and drawn off-screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocol.errors import DllPoolError

from .loadtest_result import PERCENTILES, LoadResult, summary

__all__ = ["PlotUnavailable", "plot_result"]

_CURVE = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999]
"""Percentiles of the whole-run curve, spread on the log scale of 1 / (1 - q)."""


class PlotUnavailable(DllPoolError, ImportError):
    """matplotlib is not installed; the message says how to install it."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("plots need matplotlib: pip install 'dllpool[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_numbers(axis: Any) -> None:
    """Ticks of a log axis at 1, 2, 5, 10, ..., labelled 0.5, 2, 30 rather than 5x10^-1, 2x10^0, 3x10^1."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def plot_result(result: LoadResult, path: str | Path) -> None:
    """Write ``path`` (a PNG): p50/p90/p99/max latency per second, calls and errors per second, and the
    whole run's latency by percentile. Raises PlotUnavailable without matplotlib."""
    plt = _pyplot()
    seconds = result.seconds
    # A second's rate is its answers over the part of it the run lasted; a last part shorter than a quarter
    # second (the answers still draining after the run) is too short to give a rate and is left out.
    spans = [min(1.0, result.wall_seconds - s.second) for s in seconds]
    rated = [(s.second + span / 2, s, span) for s, span in zip(seconds, spans) if span >= 0.25]
    x = [s.second + span / 2 for s, span in zip(seconds, spans)]
    figure, (latency, throughput, curve) = plt.subplots(3, 1, figsize=(9, 10), layout="constrained")
    title = result.settings.get("scenario", "load test")
    figure.suptitle(
        f"dllpool loadtest: {title}\n{result.describe()}: {result.calls:,} calls, "
        f"{result.calls_per_second:,.0f} calls/s, {result.error_count:,} errors",
        fontsize=11,
    )
    for name in ("p50", "p90", "p99", "max"):
        values = [s.latency_us[name] / 1000 if s.calls > s.errors else float("nan") for s in seconds]
        latency.plot(x, values, marker=".", label=name)
    latency.set_yscale("log")
    _plain_numbers(latency.yaxis)
    latency.set_ylabel("latency (ms)")
    latency.set_xlabel("seconds from start")
    latency.set_title("latency per second (successful calls)", fontsize=10)
    latency.legend(loc="best", fontsize=8)
    latency.grid(True, which="both", alpha=0.3)

    at = [t for t, _, _ in rated]
    throughput.plot(at, [s.calls / span for _, s, span in rated], marker=".", label="calls/s")
    if result.error_count:
        throughput.plot(at, [s.errors / span for _, s, span in rated], marker=".", label="errors/s")
    rate = result.settings.get("rate")
    if rate:
        throughput.axhline(rate, linestyle="--", color="grey", label=f"target {rate:g}/s")
    highest = max([s.calls / span for _, s, span in rated] + [rate or 0.0, 1.0])
    throughput.set_ylim(0, highest * 1.15)
    for axes in (latency, throughput):
        axes.set_xlim(0, max(1.0, result.wall_seconds))
    throughput.set_ylabel("calls per second")
    throughput.set_xlabel("seconds from start")
    throughput.set_title("throughput per second (answers)", fontsize=10)
    throughput.legend(loc="lower center", fontsize=8)
    throughput.grid(True, alpha=0.3)

    if result.histogram.get_total_count():
        odds = [1 / (1 - q / 100) for q in _CURVE]
        values = [result.histogram.get_value_at_percentile(q) / 1000 for q in _CURVE]
        curve.plot(odds, values, marker=".")
        curve.set_xscale("log")
        curve.set_yscale("log")
        _plain_numbers(curve.yaxis)
        curve.set_xticks(odds, [f"{q:g}" for q in _CURVE], fontsize=7)
        curve.minorticks_off()
    figures = summary(result.histogram)
    label = ", ".join(f"{n} {figures[n] / 1000:.3g}" for n in [*PERCENTILES, "max"])
    curve.set_title(f"latency by percentile, whole run (ms): {label}", fontsize=10)
    curve.set_xlabel("percentile")
    curve.set_ylabel("latency (ms)")
    curve.grid(True, which="both", alpha=0.3)
    figure.savefig(path, dpi=80)
    plt.close(figure)
