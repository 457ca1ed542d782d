"""How calls/s grow with the worker count: a slow GIL-free call and a fast one, 1 to 32 workers.

    python bench/scaling.py [--workers 1,2,4,8,16,32] [--threads 64] [--processes 1] [--seconds 3]
                            [--repeat 3] [--passes 1] [--calls sleep_ms,add] [--worker-threads 1]
                            [--system dllpool|bare] [--floor] [--cpu] [--max-steal 5 [--retakes 10]]
                            [--json FILE] [--png FILE]

For each worker count, a pool of the default configuration's ``demo`` service (config/pool.toml,
with ``workers = N`` and the other services left out) is started, and ``--threads`` calling threads
call in a loop: ``demo.sleep_ms(10)`` (the library sleeps without the GIL: ideally N workers answer
N x 100 calls/s) and ``demo.add(1, 2)`` (the per-call overhead alone). Each figure is calls answered
in a window of ``--seconds`` after a warm-up, every thread calling before the window opens and after
it closes; with ``--repeat`` the median of several windows, and with ``--passes`` of several sweeps
(on a shared machine, passes spread a noisy spell over every worker count instead of one). The
speed-up is against the smallest worker count of the sweep.

``--processes P`` spreads the threads over P client processes (threads / P each, one Client each)
instead of one: the client side's Python then runs on more than one GIL. Their windows open and
close together (wall clock), and their counts are summed. ``--worker-threads K`` gives the service
``threads = K`` (K calls at once in each worker; the ideal line counts workers x K).

``--system bare`` measures the floor the same way, and ``--floor`` measures it too, right after each
worker count (DESIGN.md: measure against the floor in the same run): bench/compare.py's bare zguide
LRU broker with bench/bare_worker.py workers (credit 1) calling the same functions, each calling
thread on a raw DEALER of its own.

Each window's CPU steal (/proc/stat: the time the hypervisor gave the machine's cores to someone else)
is reported with it: on a shared VM the pool's figures follow it. ``--max-steal PERCENT`` measures a
window again when the steal during it was above PERCENT, up to ``--retakes`` (10) times per figure
and pass (then it counts as it is); the windows retaken are in ``--json``'s ``retaken``. Which
windows count then depends on what the host left, not on the figure.

``--cpu`` also reads every thread's CPU time and times scheduled in (/proc schedstat, as
bench/profile_pool.py does) at the start and end of each window, in the client, the broker and the
workers, and prints them per call by thread role: where the per-call overhead goes.

Prints a Markdown table; ``--json`` writes every figure with the machine's description; ``--png``
plots calls/s against workers (log2 axis; bars from the slowest to the fastest window), with the ideal
line for ``sleep_ms`` (``--replot JSON --png FILE`` plots a saved run again). Progress goes to
stderr. Keep the machine otherwise idle while it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import msgpack
import zmq
from compare import bare_pool, cpu_ticks, dealer, loadavg, machine, steal_percent, stop_on_sigterm, wait_for_line
from profile_pool import COLUMNS, Labeler, Snapshot, snapshot, tabulate, zmq_label

from broker import Pool, load_config, runtime32
from broker.hosted import HostedBroker
from broker.locations import default_config_path
from broker.pool import DEFAULT_BROKER, BrokerKind
from client import Client

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

log = logging.getLogger("scaling")

WORKERS = (1, 2, 4, 8, 16, 32)
SLEEP_MS = 10
CALLS: dict[str, tuple[Any, ...]] = {"sleep_ms": (SLEEP_MS,), "add": (1, 2)}
"""The calls swept, with their arguments."""
WARMUP = 0.5
"""Seconds every thread calls before the window opens."""
RETAKES = 10
"""``--max-steal``'s default: windows measured again per figure and pass, at most."""
START_SLACK = 0.3
"""Seconds from telling client processes the window's start to that start: they all hear of it in time."""


@dataclasses.dataclass
class Point:
    call: str
    workers: int
    runs: list[float]
    """Calls/s of each window."""
    calls_per_s: float = 0.0
    """The median of ``runs``."""
    speedup: float | None = None
    """``calls_per_s`` over the smallest worker count's."""
    ideal: float | None = None
    """calls/s if every worker were always busy and a call cost nothing beyond its own run (``sleep_ms`` only)."""
    cpu: dict[str, dict[str, float]] | None = None
    """``--cpu``: per thread role, CPU time and wake-ups per call in the last window (profile_pool's columns)."""
    system: str = "dllpool"
    """``dllpool``, or ``bare``: the floor."""
    steal: list[float | None] = dataclasses.field(default_factory=list)
    """The host's CPU steal (%) during each window of ``runs``: on a shared host, a window at 20 % steal ran on
    1.6 cores, not 2."""
    retaken: list[list[float]] = dataclasses.field(default_factory=list)
    """``--max-steal``: ``[calls/s, steal %]`` of each window measured again because the host stole more."""


@dataclasses.dataclass(frozen=True)
class Sweep:
    """How each figure is measured (the command line's options)."""

    calls: list[str]
    threads: int
    """Calling threads in all."""
    processes: int
    """Client processes the calling threads are spread over (1: this one)."""
    seconds: float
    repeat: int
    broker: BrokerKind
    worker_threads: int
    """The service's ``threads``: calls one worker runs at once."""
    cpu: bool
    system: str
    """``dllpool``, or ``bare``: the floor (bench/compare.py's bare broker and workers)."""
    max_steal: float | None = None
    """Windows during which the host stole more CPU than this (%) are measured again, up to ``retakes`` times
    per figure and pass; None: every window counts."""
    retakes: int = RETAKES
    """With ``max_steal``: windows measured again per figure and pass, at most."""


def demo_config(workers: int, worker_threads: int = 1) -> dict[str, Any]:
    """The default configuration's ``demo`` service alone, with ``workers`` workers of ``worker_threads``
    threads each, as a dict."""
    path = default_config_path()
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    service = dict(data["services"]["demo"], workers=workers, threads=worker_threads)
    service["library"] = str((path.parent / service["library"]).resolve())
    return {"pool": data.get("pool", {}), "services": {"demo": service}}


class Watch:
    """The machine's CPU time (/proc/stat, for the steal) at the window's start and end, and with ``--cpu``
    every thread's CPU time and wake-ups (/proc schedstat)."""

    def __init__(self, pids: dict[int, str] | None) -> None:
        self.pids = pids
        """Process ids and their roles (client, broker, workers); None: no thread's figures (no ``--cpu``)."""
        self.ticks: tuple[list[int], list[int]] = ([], [])
        self.before: Snapshot = {}
        self.after: Snapshot = {}

    def window(self, start: float, seconds: float) -> None:
        """Take the two readings; returns at the window's end."""
        pids = self.pids or {}
        labelers: dict[int, Labeler] = {pid: functools.partial(_label, role) for pid, role in pids.items()}
        time.sleep(max(0.0, start - time.time()))
        first = cpu_ticks()
        self.before = snapshot(labelers) if labelers else {}
        time.sleep(max(0.0, start + seconds - time.time()))
        self.ticks = first, cpu_ticks()
        self.after = snapshot(labelers) if labelers else {}

    def steal(self) -> float | None:
        """The host's CPU steal during the window (%), or None where /proc/stat cannot say."""
        return steal_percent(*self.ticks)

    def per_call(self, calls: int) -> dict[str, dict[str, float]]:
        rows = tabulate(self.before, self.after, max(1, calls))
        return {label: dict(zip(COLUMNS, values)) for label, values in sorted(rows.items())}


def _label(role: str, pid: int, tid: int, comm: str) -> str:
    return zmq_label(comm, role) or f"{role}: {'main thread' if tid == pid else 'other threads'}"


SYSTEMS = {
    "dllpool": "dllpool (median; bars: slowest to fastest window)",
    "bare": "floor: bare LRU broker and workers, raw DEALERs",
}
"""What was measured, as the plot's legend names it."""
Roles = Callable[[], dict[int, str]]
"""The processes ``--cpu`` watches, by pid, with their roles (client, broker, workers)."""
Caller = Callable[[], Callable[[], object]]
"""Run in each calling thread: makes what that thread calls to make one call."""


def dllpool_caller(client: Client, call: str) -> Caller:
    """One call of ``call`` through ``client`` (a Client is shared by threads)."""
    invoke = functools.partial(client.call, "demo", call, *CALLS[call])
    return lambda: invoke


def bare_caller(context: zmq.Context[Any], address: str, call: str, sockets: list[zmq.Socket[Any]]) -> Caller:
    """One call of ``call`` on a DEALER of the calling thread's own (kept in ``sockets`` for closing), to the
    bare broker at ``address``."""
    body = msgpack.packb(list(CALLS[call]))

    def make() -> Callable[[], object]:
        sock = dealer(context, address)
        sockets.append(sock)
        send, recv = sock.send, sock.recv

        def invoke() -> object:
            send(body)
            return recv()

        return invoke

    return make


def drive(
    caller: Caller,
    threads: int,
    start: float,
    seconds: float,
    watch: Watch | None = None,
    hold: Callable[[], object] | None = None,
) -> int:
    """``threads`` threads call in a loop from now until the window ``[start, start + seconds)`` (wall
    clock) has closed, ``watch`` has looked and ``hold`` has returned: how many answers came within the
    window. The load stays on until then, so whoever looks at the window's end sees it running."""
    end = start + seconds
    counts = [0] * threads
    stop = threading.Event()

    def run(t: int) -> None:
        invoke, clock, n = caller(), time.time, 0
        while not stop.is_set():
            invoke()
            n += start <= clock() < end
        counts[t] = n

    pool = [threading.Thread(target=run, args=(t,), name=f"caller-{t}") for t in range(threads)]
    for thread in pool:
        thread.start()
    try:
        if watch is not None:
            watch.window(start, seconds)
        time.sleep(max(0.0, end - time.time()))
        if hold is not None:
            hold()
    finally:
        stop.set()
        for thread in pool:
            thread.join()
    return sum(counts)


def serve_drive(address: str, call: str, threads: int, seconds: float) -> int:
    """``--drive``: a client process. Says ``ready`` once connected, reads the window's start (wall clock)
    from stdin, drives until told (a second line) to stop, and prints its count."""
    with Client(address, 60) as client:
        client.call("demo", call, *CALLS[call])
        print("ready", flush=True)
        start = float(sys.stdin.readline())
        print(drive(dllpool_caller(client, call), threads, start, seconds, hold=sys.stdin.readline), flush=True)
    return 0


def split(threads: int, processes: int) -> list[int]:
    """``threads`` spread as evenly as can be over ``processes``."""
    share, extra = divmod(threads, processes)
    return [share + (i < extra) for i in range(processes)]


@contextmanager
def client_process(command: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A ``--drive`` child with pipes both ways, killed if the block ends before it did."""
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        try:
            yield child
        finally:
            if child.poll() is None:
                child.kill()


def window_in_processes(
    address: str, call: str, threads: int, processes: int, seconds: float, watch: Watch | None = None
) -> int:
    """One window with the threads spread over ``processes`` client processes: calls answered in it."""
    command = [sys.executable, __file__, "--drive", address, "--calls", call, "--seconds", str(seconds)]
    with ExitStack() as stack:
        children = [
            stack.enter_context(client_process([*command, "--threads", str(n)])) for n in split(threads, processes)
        ]
        for child in children:
            wait_for_line(child, "ready", 60, "a client process")
        start = time.time() + START_SLACK + WARMUP
        for child in children:
            assert child.stdin is not None
            child.stdin.write(f"{start!r}\n")
            child.stdin.flush()
        if watch is not None:
            if watch.pids is not None:
                watch.pids.update(dict.fromkeys((child.pid for child in children), "client"))
            watch.window(start, seconds)
        time.sleep(max(0.0, start + seconds - time.time()))
        for child in children:
            assert child.stdin is not None
            child.stdin.write("stop\n")
            child.stdin.flush()
        total = 0
        for child in children:
            assert child.stdout is not None
            total += int(child.stdout.readline())
            child.wait(60)
    return total


def figure(call: str, workers: int, sweep: Sweep, window: Callable[[Watch], int], roles: Roles, system: str) -> Point:
    """``sweep.repeat`` windows of ``call`` on ``workers`` workers (``window`` measures one, looked at by the
    watch it is given), each with the host's CPU steal during it; with ``--cpu``, the last window's CPU time
    and wake-ups per call by thread role.

    With ``--max-steal``, a window during which the host stole more is measured again (up to ``retakes``
    times here, that is per figure and pass; then it counts as it is): the steal says how much of the
    machine the hypervisor left, not how fast the pool is, so which windows count does not depend on their
    outcome."""
    runs: list[float] = []
    steal: list[float | None] = []
    retaken: list[list[float]] = []
    watch, counted = Watch(None), 0
    while len(runs) < sweep.repeat:
        watch = Watch(roles() if sweep.cpu else None)
        counted = window(watch)
        rate, stolen = counted / sweep.seconds, watch.steal()
        shown = "" if stolen is None else f" (steal {stolen:.1f} %)"
        limit = sweep.max_steal
        if limit is not None and stolen is not None and stolen > limit and len(retaken) < sweep.retakes:
            retaken.append([rate, stolen])
            log.info("%d worker(s), %s: %.0f calls/s%s, over --max-steal %g: again", workers, call, rate, shown, limit)
            continue
        runs.append(rate)
        steal.append(stolen)
        log.info("%d worker(s), %s: %.0f calls/s%s", workers, call, rate, shown)
    slots = min(workers * (sweep.worker_threads if system == "dllpool" else 1), sweep.threads)
    ideal = slots * 1000 / SLEEP_MS if call == "sleep_ms" else None
    median = statistics.median(runs)
    point = Point(call, workers, runs, median, ideal=ideal, system=system, steal=steal, retaken=retaken)
    if sweep.cpu:
        point.cpu = watch.per_call(counted)
    return point


def measure(workers: int, sweep: Sweep) -> list[Point]:
    """Every call of the sweep on a pool of ``workers`` workers: one Point each."""
    log.info("%d worker(s): starting the pool (broker=%s) ...", workers, sweep.broker)
    config = load_config(demo_config(workers, sweep.worker_threads))
    with Pool(config, sweep.broker).start() as pool, pool.client(timeout=60) as client:
        if len(pool.worker_pids("demo")) != workers:
            raise RuntimeError(f"the pool has {len(pool.worker_pids('demo'))} demo workers, not {workers}")

        def window(call: str, watch: Watch) -> int:
            if sweep.processes == 1:
                return drive(dllpool_caller(client, call), sweep.threads, time.time() + WARMUP, sweep.seconds, watch)
            return window_in_processes(pool.address, call, sweep.threads, sweep.processes, sweep.seconds, watch)

        roles = functools.partial(process_roles, pool, sweep.processes)
        return [figure(call, workers, sweep, functools.partial(window, call), roles, "dllpool") for call in sweep.calls]


def bare_window(caller: Caller, threads: int, seconds: float, watch: Watch) -> int:
    return drive(caller, threads, time.time() + WARMUP, seconds, watch)


def measure_bare(workers: int, sweep: Sweep, interp: runtime32.Interpreter) -> list[Point]:
    """``--system bare``: the same windows through bench/compare.py's floor, a bare zguide LRU broker with
    ``workers`` bare 32-bit workers (credit 1; a pool per call, as a bare worker calls one function), each
    calling thread on a raw DEALER of its own."""
    library = str(load_config(demo_config(1)).service("demo").hosting["library"])
    points = []
    for call in sweep.calls:
        log.info("%d bare worker(s) calling %s: starting ...", workers, call)
        context: zmq.Context[Any] = zmq.Context()
        sockets: list[zmq.Socket[Any]] = []
        try:
            with (
                tempfile.TemporaryDirectory(prefix="dllpool-scaling-") as tmp,
                bare_pool(Path(tmp), interp, library, workers, function=call) as bare,
            ):
                roles = dict.fromkeys((w.pid for w in bare.workers), "workers")
                roles.update({bare.broker.pid: "broker", os.getpid(): "client"})
                window = functools.partial(
                    bare_window, bare_caller(context, bare.frontend, call, sockets), sweep.threads, sweep.seconds
                )
                points.append(figure(call, workers, sweep, window, roles.copy, "bare"))
        finally:
            for sock in sockets:
                sock.close()
            context.term()
    return points


def process_roles(pool: Pool, processes: int) -> dict[int, str]:
    """The processes ``--cpu`` watches: this one (the client, unless the threads run in client processes),
    the broker's (when it has one of its own) and the workers."""
    roles = dict.fromkeys(pool.worker_pids("demo"), "workers")
    hosted = pool._broker
    if isinstance(hosted, HostedBroker) and hosted._process is not None:
        roles[hosted._process.pid] = "broker"
        if processes == 1:
            roles[os.getpid()] = "client"
    elif processes == 1:
        roles[os.getpid()] = "client + broker"
    else:
        roles[os.getpid()] = "broker"
    return roles


def cpu_table(points: list[Point]) -> str:
    """CPU time and wake-ups per call by thread role, for the points that have them."""
    lines = [
        "| system | call | workers | thread (role) | threads | CPU us/call | wake-ups/call |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for p in points:
        for label, row in (p.cpu or {}).items():
            lines.append(
                f"| {p.system} | {p.call} | {p.workers} | {label} | {row['threads']:.0f} | {row['cpu_us']:.1f} "
                f"| {row['scheduled_in']:.2f} |"
            )
        if p.cpu:
            total = sum(row["cpu_us"] for row in p.cpu.values())
            wakes = sum(row["scheduled_in"] for row in p.cpu.values())
            lines.append(f"| {p.system} | {p.call} | {p.workers} | all | | {total:.1f} | {wakes:.2f} |")
    return "\n".join(lines)


def merge(points: list[Point], more: list[Point]) -> list[Point]:
    """``points`` with ``more`` added: the windows of a figure measured again join its runs (and its median);
    the CPU figures are the latest pass's."""
    known = {(p.system, p.call, p.workers): p for p in points}
    for new in more:
        old = known.get((new.system, new.call, new.workers))
        if old is None:
            points.append(new)
            continue
        old.runs += new.runs
        old.steal += new.steal
        old.retaken += new.retaken
        old.calls_per_s = statistics.median(old.runs)
        old.cpu = new.cpu or old.cpu
    return points


def add_speedups(points: list[Point]) -> None:
    for system, call in {(p.system, p.call) for p in points}:
        mine = [p for p in points if p.call == call and p.system == system]
        base = min(mine, key=lambda p: p.workers)
        for p in mine:
            p.speedup = p.calls_per_s / base.calls_per_s if base.calls_per_s else None


def table(points: list[Point]) -> str:
    lines = [
        "| system | call | workers | calls/s (median) | speed-up | ideal calls/s | of ideal | runs | steal % "
        "| retaken |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for p in points:
        speedup = "" if p.speedup is None else f"{p.speedup:.1f}x"
        ideal = "" if p.ideal is None else f"{p.ideal:,.0f}"
        share = "" if p.ideal is None else f"{100 * p.calls_per_s / p.ideal:.0f} %"
        runs = ", ".join(f"{r:,.0f}" for r in p.runs)
        steal = ", ".join("?" if s is None else f"{s:.1f}" for s in p.steal)
        lines.append(
            f"| {p.system} | {p.call} | {p.workers} | {p.calls_per_s:,.0f} | {speedup} | {ideal} | {share} | {runs} "
            f"| {steal} | {len(p.retaken)} |"
        )
    return "\n".join(lines)


def plot(points: list[Point], title: str, path: Path) -> None:
    """calls/s against workers, one panel per call, log2 x axis; the ideal line where there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = list(dict.fromkeys(p.call for p in points))
    fig, axes = plt.subplots(1, len(calls), figsize=(5.5 * len(calls), 4.5), squeeze=False)
    for ax, call in zip(axes[0], calls):
        mine = [p for p in points if p.call == call]
        top = max(max(p.runs, default=p.calls_per_s) for p in mine)
        for system in dict.fromkeys(p.system for p in mine):
            line = [p for p in mine if p.system == system]
            x = [p.workers for p in line]
            y = [p.calls_per_s for p in line]
            spread = [[v - min(p.runs) for v, p in zip(y, line)], [max(p.runs) - v for v, p in zip(y, line)]]
            ax.errorbar(x, y, yerr=spread, fmt="o-", capsize=3, label=SYSTEMS[system])
            for p in line:
                offset = _label_offset(p, mine, top)
                ax.annotate(
                    f"{p.speedup:.1f}x",
                    (p.workers, p.calls_per_s),
                    textcoords="offset points",
                    xytext=offset,
                    ha="left" if offset[0] else "center",
                    fontsize=8,
                )
        x = sorted({p.workers for p in mine})
        mine = [p for p in mine if p.system == mine[0].system]
        if all(p.ideal is not None for p in mine):
            ax.plot(
                x,
                [p.ideal for p in mine],
                "--",
                color="grey",
                label=f"ideal ({1000 // SLEEP_MS} calls/s per call slot)",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(w) for w in x])
        ax.set_xlabel("workers")
        ax.set_ylabel("calls/s")
        args = ", ".join(map(str, CALLS[call]))
        ax.set_title(f"demo.{call}({args})")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    lines = [line for part in title.splitlines() for line in textwrap.wrap(part, 65 * len(calls))]
    fig.suptitle("\n".join(lines), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _label_offset(point: Point, points: list[Point], top: float) -> tuple[int, int]:
    """Where ``point``'s label goes (points from the point): above it, or, when another line's point at the
    same worker count is as high (the first line wins a tie), under it, so the two labels do not overlap; to
    its right instead near the foot of the panel (``top``: its highest value), where under it is the axis."""
    rivals = [p for p in points if p.workers == point.workers and p.system != point.system]
    first = points[0].system
    if not any(
        p.calls_per_s > point.calls_per_s or (p.calls_per_s == point.calls_per_s and p.system == first) for p in rivals
    ):
        return 0, 7
    return (14, -3) if point.calls_per_s < 0.1 * top else (0, -13)


def parse_workers(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers takes counts like 1,2,4, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts must be >= 1")
    return sorted(set(counts))


def parse_calls(text: str) -> list[str]:
    calls = text.split(",")
    unknown = sorted(set(calls) - set(CALLS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown call(s) {', '.join(unknown)}; choose from {', '.join(CALLS)}")
    return calls


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=parse_workers, default=list(WORKERS), help="worker counts (1,2,4,...)")
    parser.add_argument("--calls", type=parse_calls, default=list(CALLS), help="calls to sweep (sleep_ms,add)")
    parser.add_argument("--threads", type=int, default=64, help="calling threads in all")
    parser.add_argument("--processes", type=int, default=1, help="client processes the threads are spread over")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measured window")
    parser.add_argument("--repeat", type=int, default=3, help="windows per figure and pass; the median is reported")
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="sweeps over the worker counts, each with pools of its own; a figure's median is over all its "
        "windows, so a noisy spell on a shared machine spreads over every worker count",
    )
    parser.add_argument(
        "--broker", choices=["thread", "process"], default=DEFAULT_BROKER, help="where the Pool runs its broker"
    )
    parser.add_argument(
        "--system",
        choices=["dllpool", "bare"],
        default="dllpool",
        help="bare: the floor, a bare zguide broker and bare 32-bit workers (bench/compare.py's) on raw DEALERs",
    )
    parser.add_argument(
        "--floor", action="store_true", help="also measure the floor (as --system bare does) in the same run"
    )
    parser.add_argument(
        "--worker-threads", type=int, default=1, help="the service's threads: calls one worker runs at once"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="also report CPU time and wake-ups per call by thread (Linux /proc)"
    )
    parser.add_argument(
        "--max-steal",
        metavar="PERCENT",
        type=float,
        help="measure a window again when the host's CPU steal during it was above PERCENT (a shared VM lent "
        "part of its cores away), up to --retakes times per figure and pass",
    )
    parser.add_argument(
        "--retakes",
        type=int,
        help=f"with --max-steal: windows measured again per figure and pass, at most (default {RETAKES})",
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write every figure to FILE as JSON")
    parser.add_argument("--png", metavar="FILE", type=Path, help="plot calls/s against workers to FILE")
    parser.add_argument("--replot", metavar="JSON", type=Path, help="only plot (--png) what a --json FILE holds")
    parser.add_argument("--drive", metavar="ADDRESS", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[scaling] %(message)s")
    log.setLevel(logging.INFO)
    if options.drive:
        return serve_drive(options.drive, options.calls[0], options.threads, options.seconds)
    if options.replot:
        if options.png is None:
            parser.error("--replot needs --png")
        saved = json.loads(options.replot.read_text(encoding="utf-8"))
        plot([Point(**p) for p in saved["points"]], saved["title"], options.png)
        return 0
    if not 1 <= options.processes <= options.threads:
        parser.error("--processes must be between 1 and --threads")
    if options.repeat < 1 or options.passes < 1 or options.seconds <= 0:
        parser.error("--repeat and --passes must be 1 or more, and --seconds above 0")
    if options.max_steal is not None and not 0 <= options.max_steal < 100:
        parser.error("--max-steal is a percentage, 0 to below 100")
    if options.retakes is not None and (options.max_steal is None or options.retakes < 0):
        parser.error("--retakes takes a count of 0 or more, and goes with --max-steal")
    if options.max_steal is not None and not cpu_ticks():
        log.warning("this machine's /proc/stat cannot be read: --max-steal has no steal to go by")
    sweep = Sweep(
        options.calls,
        options.threads,
        options.processes,
        options.seconds,
        options.repeat,
        options.broker,
        options.worker_threads,
        options.cpu,
        options.system,
        options.max_steal,
        RETAKES if options.retakes is None else options.retakes,
    )
    if sweep.system == "bare" and (sweep.processes > 1 or sweep.worker_threads > 1):
        parser.error("--system bare runs its threads in this process, one call per worker at a time")

    interp = runtime32.load()
    info = machine(interp)
    log.info("load average %s", info["loadavg_before"])
    ticks = cpu_ticks()
    points: list[Point] = []
    for done in range(options.passes):
        if options.passes > 1:
            log.info("pass %d of %d", done + 1, options.passes)
        for workers in options.workers:
            if sweep.system == "dllpool":
                points = merge(points, measure(workers, sweep))
            if sweep.system == "bare" or options.floor:
                points = merge(points, measure_bare(workers, sweep, interp))
    points.sort(key=lambda p: (p.system != "dllpool", options.calls.index(p.call), p.workers))
    add_speedups(points)
    info["loadavg_after"] = loadavg()
    info["steal_percent"] = steal_percent(ticks, cpu_ticks())

    spread = "one process" if options.processes == 1 else f"{options.processes} processes"
    per_worker = "" if options.worker_threads == 1 else f", {options.worker_threads} threads per worker"
    if sweep.system == "bare":
        clients = f"{options.threads} calling threads on raw DEALERs, bare LRU broker"
    else:
        clients = f"{options.threads} calling threads ({spread}), broker={options.broker}{per_worker}"
    setup = f"{clients}, {options.seconds:g} s windows, median of {options.repeat * options.passes}"
    if options.max_steal is not None:
        setup += f" (windows above {options.max_steal:g} % CPU steal measured again, {sweep.retakes} times at most)"
    print(table(points))
    if options.cpu:
        print("\nCPU time and wake-ups (times scheduled in) per call, last window of each figure:\n")
        print(cpu_table(points))
    print(
        f"\n{setup}; {info['cpus']} CPUs ({info['cpu_model']}); load average before "
        f"{info['loadavg_before'].split()[0]}, after {info['loadavg_after'].split()[0]}"
        + ("" if info["steal_percent"] is None else f"; CPU steal {info['steal_percent']:.1f} %")
    )
    load = f"load average {info['loadavg_before'].split()[0]} to {info['loadavg_after'].split()[0]}"
    if info["steal_percent"] is not None:
        load += f", CPU steal {info['steal_percent']:.1f} %"
    what = "the floor (bare broker and workers)" if sweep.system == "bare" else "dllpool, demo service"
    what += " and the floor" if options.floor and sweep.system != "bare" else ""
    title = f"{what}: {setup}\n{info['cpus']} CPUs, {load}"
    if options.json is not None:
        document = {
            "title": title,
            "settings": {
                **dataclasses.asdict(sweep),
                "passes": options.passes,
                "warmup": WARMUP,
                "calls": {call: list(CALLS[call]) for call in options.calls},
            },
            "machine": info,
            "points": [dataclasses.asdict(p) for p in points],
        }
        options.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        log.info("wrote %s", options.json)
    if options.png is not None:
        plot(points, title, options.png)
        log.info("wrote %s", options.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
