"""A pool's status (``Client.status()``) as tables for people: ``dllpool status`` prints them, ``--watch`` redraws."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

__all__ = ["render", "seconds", "size"]


def seconds(value: float | None) -> str:
    """A duration as people read it: ``850 us``, ``1.2 ms``, ``3.40 s``, ``2m05s``, ``3h12m``."""
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    if value < 60:
        return f"{value:.2f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def size(value: int | None) -> str:
    """Bytes in MiB or GiB; ``-`` when the worker did not report the figure."""
    if value is None:
        return "-"
    if value >= 10 << 30:
        return f"{value / (1 << 30):.1f} GiB"
    return f"{value / (1 << 20):.1f} MiB"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(errors.items(), key=lambda e: -e[1])) or "none"


def _service(name: str, service: dict[str, Any]) -> Table:
    latency = service["latency"]
    scaling = f"target {service.get('target', '?')}"
    if service.get("autoscaled"):
        scaling += f", autoscaled {service['min_workers']}-{service['max_workers']}"
    if service.get("starting"):
        scaling += f", {service['starting']} starting"
    title = (
        f"[bold]{escape(name)}[/]: {len(service['workers'])} workers ({scaling}) · queued {service['queued']} "
        f"(oldest {seconds(service['queue_wait'] if service['queued'] else None)}) · running {service['running']} · "
        f"{service['calls_per_s']:.1f} calls/s"
    )
    caption = (
        f"latency p50 {seconds(latency['p50'])} · p90 {seconds(latency['p90'])} · p99 {seconds(latency['p99'])} · "
        f"max {seconds(latency['max'])} (last 5-10 s) · {service['calls']:,} calls · errors: "
        f"{_errors(service['errors'])} · recycled {service['recycled']} · restarts {service['restarts']}"
    )
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left", expand=False)
    for column, justify in [
        ("pid", "right"),
        ("bits", "right"),
        ("host", "left"),
        ("state", "left"),
        ("running", "right"),
        ("calls", "right"),
        ("uptime", "right"),
        ("restarts", "right"),
        ("rss", "right"),
        ("free VM", "right"),
    ]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for worker in service["workers"]:
        state = worker["state"]
        style = {"idle": "green", "busy": "yellow", "held": "cyan"}.get(state, "red")
        table.add_row(
            str(worker["pid"]),
            str(worker["bits"] or "-"),
            Text(str(worker["host"] or "-")),  # a worker's own words: never read as markup
            Text(state, style=style),
            str(worker["running"]),
            f"{worker['calls']:,}",
            seconds(worker["uptime"]),
            "-" if worker["restarts"] is None else str(worker["restarts"]),
            size(worker["rss"]),
            size(worker["address_space_free"]),
        )
    return table


def render(status: dict[str, Any], address: str) -> Group:
    """The whole pool: a line of totals, then a table per service."""
    totals, broker = status["totals"], status["broker"]
    head = Text.from_markup(
        f"[bold]dllpool[/] at {address} · broker pid {broker.get('pid', '?')}, up {seconds(broker.get('uptime'))} · "
        f"{totals['workers']} workers · {totals['calls']:,} calls ({totals['calls_per_s']:.1f}/s) · "
        f"{totals['errors']:,} errors · queued {totals['queued']} · running {totals['running']}"
    )
    return Group(head, *(_service(name, service) for name, service in status["services"].items()))
