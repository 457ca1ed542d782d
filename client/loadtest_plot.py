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


def plot_result(result: LoadResult, path: str | Path) -> None:
    """Write ``path`` (a PNG): p50/p90/p99/max latency per second, calls and errors per second, and the
    whole run's latency by percentile. Raises PlotUnavailable without matplotlib."""
    plt = _pyplot()
    seconds = result.seconds
    # The last second is usually partial: its rate is its calls over the part of it the run lasted.
    spans = [max(1e-3, min(1.0, result.wall_seconds - s.second)) for s in seconds]
    x = [s.second + 0.5 for s in seconds]
    figure, (latency, throughput, curve) = plt.subplots(3, 1, figsize=(9, 10), layout="constrained")
    title = result.settings.get("scenario", "load test")
    figure.suptitle(
        f"dllpool loadtest: {title}\n{result.calls:,} calls in {result.wall_seconds:.1f} s, "
        f"{result.calls_per_second:,.0f} calls/s, {result.error_count:,} errors",
        fontsize=11,
    )
    for name in ("p50", "p90", "p99", "max"):
        values = [s.latency_us[name] / 1000 if s.calls > s.errors else float("nan") for s in seconds]
        latency.plot(x, values, marker=".", label=name)
    latency.set_yscale("log")
    latency.set_ylabel("latency (ms)")
    latency.set_xlabel("seconds from start")
    latency.set_title("latency per second (successful calls)", fontsize=10)
    latency.legend(loc="upper right", fontsize=8)
    latency.grid(True, which="both", alpha=0.3)

    throughput.plot(x, [s.calls / w for s, w in zip(seconds, spans)], marker=".", label="calls/s")
    if result.error_count:
        throughput.plot(x, [s.errors / w for s, w in zip(seconds, spans)], marker=".", label="errors/s")
    rate = result.settings.get("rate")
    if rate:
        throughput.axhline(rate, linestyle="--", color="grey", label=f"target {rate:g}/s")
    throughput.set_ylim(bottom=0)
    throughput.set_ylabel("calls per second")
    throughput.set_xlabel("seconds from start")
    throughput.set_title("throughput per second (answers)", fontsize=10)
    throughput.legend(loc="lower right", fontsize=8)
    throughput.grid(True, alpha=0.3)

    if result.histogram.get_total_count():
        odds = [1 / (1 - q / 100) for q in _CURVE]
        values = [result.histogram.get_value_at_percentile(q) / 1000 for q in _CURVE]
        curve.plot(odds, values, marker=".")
        curve.set_xscale("log")
        curve.set_yscale("log")
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
