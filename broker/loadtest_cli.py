"""``dllpool loadtest``: drive a pool with many calls and report calls/s and latency percentiles.

The work is :class:`client.loadtest.LoadTest`'s; this module is its command line: the options, the pool to
test (``--address``, ``-c FILE`` or the embedded default, started for the run in a broker process of its
own so that it does not share the load generator's GIL), the live progress line, the final table, and
``--json`` / ``--plot``. ``broker.cli`` adds it with :func:`add_parser` and runs it with :func:`run`.

Exit codes: 0 done, with at most ``--max-errors`` failed calls (default 0); 1 more calls failed than that,
or the pool could not be started or reached; 2 bad usage (one line on stderr); 130 interrupted (the
figures of what ran are still reported).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from client.loadtest import CallSpec, LoadProgress, LoadResult, LoadTest, Scenario

from .cli_args import (
    COUNT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    SECONDS,
    UsageError,
    config_arg,
    curve,
    curve_args,
    json_literals,
    number,
)
from .config import PoolConfig, load_config
from .install import setup
from .pool import Pool

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add ``loadtest`` to ``dllpool``'s subcommands; its ``func`` is :func:`run`."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "loadtest",
        help="load-test a pool: calls/s and latency percentiles, closed or open loop",
        description="Call SERVICE METHOD [ARG ...] (or a --scenario) as fast as N clients x K in flight allow, or "
        "at --rate R calls/s, and report calls/s and latency percentiles.",
    )
    config_arg(parser)
    parser.add_argument(
        "--address", metavar="ADDR", help="a running pool's frontend endpoint (default: start the pool for the run)"
    )
    curve_args(parser)
    parser.add_argument(
        "--scenario",
        type=Path,
        metavar="FILE",
        help="a TOML file of [[call]] tables with weights (or a .py file setting scenario), instead of a call",
    )
    parser.add_argument("--clients", type=COUNT, metavar="N", default=1, help="sending threads in all (default 1)")
    parser.add_argument(
        "--processes", type=COUNT, metavar="P", default=1, help="processes the clients run in (default 1)"
    )
    span = parser.add_mutually_exclusive_group()
    span.add_argument("--duration", type=SECONDS, metavar="S", help="seconds to run (default 10)")
    span.add_argument("--requests", type=COUNT, metavar="N", help="calls to make in all, instead of a duration")
    parser.add_argument(
        "--in-flight",
        type=COUNT,
        metavar="K",
        help="calls each client keeps outstanding (default 1); with --rate, the most it may have outstanding",
    )
    parser.add_argument(
        "--rate", type=number(float, 0, False, " calls/s"), metavar="R", help="open loop: calls per second in all"
    )
    parser.add_argument("--timeout", type=SECONDS, metavar="S", default=10.0, help="seconds per call (default 10)")
    parser.add_argument(
        "--max-errors",
        type=number(int, 0, True, ""),
        metavar="N",
        default=0,
        help="failed calls that still exit 0",
    )
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON to FILE (- for standard output)")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="write latency and throughput over time")
    parser.add_argument("--quiet", action="store_true", help="no progress line and no table")
    parser.add_argument("service", nargs="?", metavar="SERVICE", help="the service to call (e.g. demo)")
    parser.add_argument("method", nargs="?", metavar="METHOD", help="its function (e.g. add)")
    parser.add_argument("args", nargs="*", metavar="ARG", help="JSON literals, as `dllpool call` takes them")
    parser.set_defaults(func=run)
    return parser


def run(options: argparse.Namespace) -> int:
    """Run ``dllpool loadtest`` as ``options`` say; the exit code. Usage errors and the pool's failures are
    raised, for ``dllpool``'s ``main`` to report as every subcommand's are."""
    scenario = _scenario(options)
    if options.plot is not None:
        _check_plotting()
    if options.address and options.config:
        raise UsageError("give --address or -c FILE, not both")
    test = _load_test(options, scenario)
    if options.address:
        return _run_test(options, test)
    config = load_config(options.config)
    _check_against(config, scenario, options.config)
    only = dataclasses.replace(config, services=tuple(config.service(n) for n in _services(scenario)))
    if options.config is None:
        setup()
    with Pool(only, broker="process") as pool:
        test.address = pool.address
        return _run_test(options, test)


def _scenario(options: argparse.Namespace) -> Scenario:
    if options.scenario is not None:
        if options.service is not None:
            raise UsageError("give SERVICE METHOD [ARG ...] or --scenario FILE, not both")
        try:
            return Scenario.from_file(options.scenario)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if options.service is None or options.method is None:
        raise UsageError("name the SERVICE and METHOD to call, then its arguments: dllpool loadtest demo add 2 3")
    try:
        return Scenario([CallSpec(options.service, options.method, tuple(json_literals(options.args)))])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _services(scenario: Scenario) -> list[str]:
    return list(dict.fromkeys(c.service for c in scenario.calls))


def _check_against(config: PoolConfig, scenario: Scenario, path: Path | None) -> None:
    """A service the configuration lacks is a usage error before any pool starts (a method it lacks is an
    error of each call, counted: a load test may measure exactly that)."""
    names = [s.name for s in config.services]
    for service in _services(scenario):
        if service not in names:
            where = path or "the default configuration"
            raise UsageError(f"no service {service!r} in {where}; it has: {', '.join(names)}")


def _check_plotting() -> None:
    """Fail before the run, not after it, when --plot cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'dllpool[plot]'") from None


def _load_test(options: argparse.Namespace, scenario: Scenario) -> LoadTest:
    """The test the options describe, checked before any pool starts (its address is set once one runs)."""
    try:
        return LoadTest(
            options.address or "",
            scenario,
            clients=options.clients,
            in_flight=options.in_flight,
            rate=options.rate,
            duration=options.duration,
            requests=options.requests,
            processes=options.processes,
            timeout=options.timeout,
            curve=curve(options),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _run_test(options: argparse.Namespace, test: LoadTest) -> int:
    err = Console(stderr=True)
    if options.quiet or not err.is_terminal:
        result = test.run()
    else:
        with _LiveLine(err, test) as live:
            result = test.run(progress=live.update)
    _report(options, result)
    if result.interrupted:
        return EXIT_INTERRUPTED
    if result.error_count > options.max_errors:
        by_type = ", ".join(f"{name} {count:,}" for name, count in sorted(result.errors.items()))
        print(
            f"dllpool loadtest: {result.error_count:,} of {result.calls:,} calls failed ({by_type}), "
            f"more than --max-errors {options.max_errors}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


class _LiveLine:
    """The progress bar on stderr: elapsed time (or calls) against the total, the running calls/s, p50
    and p99 so far, and the error count."""

    def __init__(self, console: Console, test: LoadTest) -> None:
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[figures]}"),
            console=console,
            transient=True,
        )
        self._total = float(test.requests) if test.requests is not None else float(test.duration or 0)
        self._by_calls = test.requests is not None
        self._task = self._bar.add_task("starting", total=self._total, figures="")

    def __enter__(self) -> _LiveLine:
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    def update(self, progress: LoadProgress) -> None:
        latency = progress.latency_us
        if self._by_calls:
            done, description = float(progress.calls), f"{progress.calls:,}/{self._total:,.0f} calls"
        else:
            done, description = progress.elapsed, f"{progress.elapsed:5.1f}/{self._total:g} s"
        figures = (
            f"{progress.calls_per_second:9,.0f} calls/s  p50 {_ms(latency['p50'])}  p99 {_ms(latency['p99'])} ms"
            f"  errors {progress.error_count:,}"
        )
        self._bar.update(self._task, completed=min(done, self._total), description=description, figures=figures)


def _ms(microseconds: int) -> str:
    """A latency in milliseconds with three significant digits or so: 0.412, 12.3, 1234."""
    ms = microseconds / 1000
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def _table(result: LoadResult) -> Table:
    """The final table: calls, errors, calls/s and the latency percentiles (ms), then errors by type."""
    title = f"dllpool loadtest: {result.settings.get('scenario', '')}"
    caption = result.describe()
    if result.interrupted:
        caption += " (interrupted)"
    if result.errors:
        by_type = sorted(result.errors.items(), key=lambda item: -item[1])
        caption += "\nerrors: " + ", ".join(f"{name} {count:,}" for name, count in by_type)
    grid = Table(title=title, caption=caption)
    latency = result.latency_us
    for header in ["calls", "errors", "calls/s", *(f"{name} ms" for name in latency)]:
        grid.add_column(header, justify="right")
    grid.add_row(
        f"{result.calls:,}",
        f"{result.error_count:,}",
        f"{result.calls_per_second:,.0f}",
        *(_ms(value) for value in latency.values()),
    )
    return grid


def _report(options: argparse.Namespace, result: LoadResult) -> None:
    to_stdout = options.json == "-"
    if options.json is not None:
        text = result.to_json(indent=2)
        if to_stdout:
            print(text)
        else:
            Path(options.json).write_text(text + "\n", encoding="utf-8")
    if options.plot is not None:
        result.plot(str(options.plot))
    if not options.quiet:
        Console(stderr=to_stdout).print(_table(result))
