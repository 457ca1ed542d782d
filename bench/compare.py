"""dllpool against its floor and against msl-loadlib, measured side by side in one run.

    python bench/compare.py [--quick] [--json FILE] [--no-msl] [--broker thread|process]

Four systems do the same ``add`` call, one after the other, on this machine:

1. a direct pyzmq DEALER <-> ROUTER ping-pong between two 64-bit processes (no broker, no
   32-bit process): sequential p50 round trip, and throughput with 64 messages in flight;
2. the floor: a bare zguide LRU broker (bench/bare_broker.py, a process of its own) with four
   32-bit workers (bench/bare_worker.py on the project's 32-bit runtime, calling the demo
   library's ``add`` through ctypes, credit 1), driven by a raw DEALER: sequential p50/p99,
   and throughput with 64 in flight;
3. dllpool: ``demo.add`` through ``Pool`` with the default configuration's ``demo`` service
   (4 workers; the other services left out): ``call`` p50/p99 from one thread, ``submit``
   throughput with 512 in flight from one thread, throughput of 16 threads calling, and ``Client.map``
   over an endless input with its default chunk size and window; the broker in a thread of this
   process or in a process of its own (``--broker``, default Pool's own default);
4. msl-loadlib 's own ``Cpp64().add`` example (bench/msl_loadlib_compare.py), run in a
   virtualenv of its own that this script creates the first time (bench/.venv-msl).

It prints one Markdown table (each dllpool figure also as a ratio to the bare broker's figure
of the same kind, and its sequential p50 against msl-loadlib's) and, with --json, writes every
figure with the machine's description. Progress goes to stderr. --quick takes a few seconds
per row; the default takes about 5 s per row. Keep the machine otherwise idle while it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import msgpack
import zmq

from broker import Pool, PoolConfig, load_config, runtime32
from broker.pool import DEFAULT_BROKER, BrokerKind
from client import Client

BENCH = Path(__file__).resolve().parent
MSL_VENV = BENCH / ".venv-msl"
MSL_PACKAGE = "msl-loadlib"
WORKERS = 4
PIPELINE = 64
"""Requests in flight for the raw DEALER throughput rows (ping-pong and bare broker)."""
SUBMIT_WINDOW = 512
"""Futures in flight for dllpool's submit row."""
THREADS = 16
READY_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class Settings:
    calls: int
    """Sequential calls timed for each latency row (after ``warmup`` untimed ones)."""
    seconds: float
    """Length of each throughput row."""
    warmup: int


QUICK = Settings(calls=1_000, seconds=1.5, warmup=100)
DEFAULT = Settings(calls=5_000, seconds=5.0, warmup=300)


@dataclasses.dataclass
class Row:
    system: str
    figure: str
    kind: str
    """``p50`` or ``p99`` (value in microseconds), or ``throughput`` (calls per second)."""
    value: float | None
    detail: str = ""
    vs_bare: float | None = None
    """This value divided by the bare broker's figure of the same kind."""
    vs_msl: float | None = None
    """msl-loadlib's sequential p50 divided by this p50: how many times faster."""
    target: str = ""
    met: bool | None = None


def progress(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


def latency_rows(system: str, figure: str, samples: list[float], detail: str) -> list[Row]:
    samples = sorted(samples)
    return [
        Row(system, f"{figure} p50", "p50", percentile(samples, 50) * 1e6, detail),
        Row(system, f"{figure} p99", "p99", percentile(samples, 99) * 1e6, detail),
    ]


def throughput_row(system: str, figure: str, calls: int, seconds: float, detail: str) -> Row:
    return Row(system, figure, "throughput", calls / seconds, f"{detail}; {calls:,} calls in {seconds:.1f} s")


# --------------------------------------------------------------------------- processes


@contextmanager
def process(command: list[str], **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """A child process that is stopped (SIGTERM, then SIGKILL) when the block ends."""
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def wait_for_line(proc: subprocess.Popen[str], expected: str, timeout: float, what: str) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"{what} did not say {expected!r} within {timeout:.0f} s")
        readable, _, _ = select.select([proc.stdout], [], [], remaining)
        if readable:
            line = proc.stdout.readline()
            if line.strip() == expected:
                return
            if not line:
                raise RuntimeError(f"{what} ended (exit code {proc.wait()}) before it said {expected!r}")


def serve_echo(endpoint: str) -> int:
    """The ping-pong's other process: a ROUTER that sends every message straight back."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(endpoint)
    print("ready", flush=True)
    recv_multipart, send_multipart = sock.recv_multipart, sock.send_multipart
    try:
        while True:
            send_multipart(recv_multipart())
    except KeyboardInterrupt:
        return 0


# --------------------------------------------------------------------------- raw DEALER measurements


def dealer(context: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    return sock


def raw_sequential(sock: zmq.Socket[Any], settings: Settings, expect: Callable[[int, bytes], bool]) -> list[float]:
    """Round trips of one request at a time; ``expect(i, reply)`` checks each answer (outside the timing)."""
    send, recv, packb, clock = sock.send, sock.recv, msgpack.packb, time.perf_counter
    samples = []
    for i in range(-settings.warmup, settings.calls):
        body = packb([i, 1])
        started = clock()
        send(body)
        reply = recv()
        elapsed = clock() - started
        if not expect(i, reply):
            raise RuntimeError(f"wrong answer for request {i}: {reply!r}")
        if i >= 0:
            samples.append(elapsed)
    return samples


def raw_pipelined(sock: zmq.Socket[Any], depth: int, seconds: float) -> tuple[int, float]:
    """Keep ``depth`` requests in flight for ``seconds``: (answers received, seconds taken)."""
    send, recv, clock = sock.send, sock.recv, time.perf_counter
    body = msgpack.packb([20, 22])
    for _ in range(depth):
        send(body)
    done = 0
    started = clock()
    end = started + seconds
    while True:
        recv()
        done += 1
        if clock() >= end:
            break
        send(body)
    elapsed = clock() - started
    for _ in range(depth - 1):
        recv()
    return done, elapsed


def measure_pingpong(context: zmq.Context[Any], folder: Path, settings: Settings) -> list[Row]:
    endpoint = f"ipc://{folder}/echo"
    system = "pyzmq ping-pong"
    with process([sys.executable, __file__, "--serve-echo", endpoint]) as echo:
        wait_for_line(echo, "ready", READY_TIMEOUT, "the echo process")
        sock = dealer(context, endpoint)
        try:
            progress(f"ping-pong: {settings.calls:,} sequential round trips ...")
            samples = raw_sequential(sock, settings, lambda i, reply: reply == msgpack.packb([i, 1]))
            progress(f"ping-pong: {PIPELINE} in flight for {settings.seconds:g} s ...")
            raw_pipelined(sock, PIPELINE, min(0.5, settings.seconds))  # warm-up
            calls, seconds = raw_pipelined(sock, PIPELINE, settings.seconds)
        finally:
            sock.close()
    return [
        latency_rows(system, "round trip", samples, f"{len(samples):,} sequential, DEALER -> ROUTER echo")[0],
        throughput_row(system, f"throughput, {PIPELINE} in flight", calls, seconds, "raw DEALER"),
    ]


def libz32_folder(interp: runtime32.Interpreter) -> Path | None:
    """A folder holding only the 32-bit runtime's libz, for msl-loadlib's frozen server32-linux.

    That server needs a 32-bit ``libz.so.1``. When the system has none (the project's runtime is private,
    no i386 package is installed), the runtime's own is linked into bench/.venv-msl/lib32 and that
    folder alone goes on LD_LIBRARY_PATH.
    """
    if not sys.platform.startswith("linux"):
        return None
    system = ("/lib32", "/usr/lib32", "/lib/i386-linux-gnu", "/usr/lib/i386-linux-gnu")
    if any(Path(folder, "libz.so.1").exists() for folder in system):
        return None
    args = list(interp.args)
    library_path = args[args.index("--library-path") + 1] if "--library-path" in args[:-1] else ""
    for folder in library_path.split(os.pathsep):
        candidate = Path(folder, "libz.so.1")
        if folder and candidate.exists():
            target = MSL_VENV / "lib32"
            target.mkdir(parents=True, exist_ok=True)
            link = target / "libz.so.1"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(candidate.resolve())
            return target
    return None


@dataclasses.dataclass(frozen=True)
class BarePool:
    frontend: str
    broker: subprocess.Popen[str]
    workers: list[subprocess.Popen[str]]


@contextmanager
def bare_pool(
    folder: Path,
    interp: runtime32.Interpreter,
    library: str,
    workers: int = WORKERS,
    credit: int = 1,
    function: str = "add",
) -> Iterator[BarePool]:
    """The bare broker and its 32-bit workers (calling ``function``), running and ready; all stopped when the
    block ends."""
    frontend, backend = f"ipc://{folder}/bare-frontend", f"ipc://{folder}/bare-backend"
    broker_command = [sys.executable, str(BENCH / "bare_broker.py"), "--frontend", frontend, "--backend", backend]
    worker_command = [*interp.command, "-s", str(BENCH / "bare_worker.py"), "--connect", backend]
    with ExitStack() as stack:
        broker = stack.enter_context(process([*broker_command, "--workers", str(workers)]))
        procs = [
            stack.enter_context(
                process(
                    [*worker_command, "--library", library, "--credit", str(credit), "--function", function],
                    env=runtime32.command_env(interp, []),
                    cwd=folder,
                )
            )
            for _ in range(workers)
        ]
        wait_for_line(broker, "ready", READY_TIMEOUT, f"the bare broker (waiting for its {workers} workers)")
        bits = sorted({runtime32.check_elf_bits(f"/proc/{w.pid}/exe") for w in procs})
        if bits != [32]:
            raise RuntimeError(f"the bare workers are {bits}-bit processes, not 32-bit")
        yield BarePool(frontend, broker, procs)


def measure_bare(
    context: zmq.Context[Any], folder: Path, settings: Settings, interp: runtime32.Interpreter, library: str
) -> tuple[list[Row], dict[str, Any]]:
    system = "bare LRU broker"
    with bare_pool(folder, interp, library) as bare:
        sock = dealer(context, bare.frontend)
        try:
            progress(f"bare broker: {settings.calls:,} sequential calls ...")
            samples = raw_sequential(sock, settings, lambda i, reply: msgpack.unpackb(reply) == i + 1)
            progress(f"bare broker: {PIPELINE} in flight for {settings.seconds:g} s ...")
            raw_pipelined(sock, PIPELINE, min(0.5, settings.seconds))
            calls, seconds = raw_pipelined(sock, PIPELINE, settings.seconds)
        finally:
            sock.close()
    rows = latency_rows(system, "add, sequential", samples, f"{len(samples):,} calls, raw DEALER, credit 1")
    rows.append(throughput_row(system, f"add, {PIPELINE} in flight", calls, seconds, "raw DEALER, credit 1"))
    return rows, {"worker_bits": 32, "workers": WORKERS}


# --------------------------------------------------------------------------- dllpool


def demo_only() -> PoolConfig:
    config = load_config()
    return dataclasses.replace(config, services=(config.service("demo"),))


def submit_window(client: Client, depth: int, seconds: float) -> tuple[int, float]:
    """One thread keeps ``depth`` submitted calls in flight: (calls answered, seconds taken)."""
    clock = time.perf_counter
    window: deque[Future[Any]] = deque(client.submit("demo", "add", i, 1) for i in range(depth))
    done = 0
    started = clock()
    end = started + seconds
    while True:
        window.popleft().result()
        done += 1
        if clock() >= end:
            break
        window.append(client.submit("demo", "add", done, 1))
    elapsed = clock() - started
    for future in window:
        future.result()
    return done, elapsed


def threads_calling(client: Client, threads: int, seconds: float) -> tuple[int, float]:
    """``threads`` threads call in a loop on one Client: (calls answered before the end, seconds)."""
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    end = 0.0

    def run(t: int) -> None:
        barrier.wait()
        calls, clock = 0, time.perf_counter
        while True:
            client.call("demo", "add", t, calls)
            if clock() >= end:
                break
            calls += 1
        counts[t] = calls

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    started = time.perf_counter()
    end = started + seconds
    barrier.wait()
    for thread in pool:
        thread.join()
    return sum(counts), seconds


def map_for(client: Client, seconds: float) -> tuple[int, float]:
    """One ``Client.map`` over an endless input, read for ``seconds``: (results, seconds taken).

    Leaving the loop closes the map, which cancels the chunks still in flight.
    """
    clock = time.perf_counter
    inputs = ((i, 1) for i in itertools.count())
    started = clock()
    end = started + seconds
    done = 0
    for i, result in enumerate(client.map("demo", "add", inputs)):
        if result != i + 1:
            raise RuntimeError(f"map: demo.add({i}, 1) answered {result!r}")
        done = i + 1
        if not done % 1024 and clock() >= end:
            break
    return done, clock() - started


def measure_dllpool(settings: Settings, broker: BrokerKind) -> tuple[list[Row], dict[str, Any]]:
    system = "dllpool"
    config = demo_only()
    progress(f"dllpool: starting the pool (demo service, {config.service('demo').workers} workers, {broker=}) ...")
    with Pool(config, broker).start() as pool, pool.client(timeout=60) as client:
        workers = pool.workers()
        if {w["pointer_size"] for w in workers} != {4}:
            raise RuntimeError(f"dllpool's workers are not all 32-bit: {workers}")
        progress(f"dllpool: {settings.calls:,} sequential calls ...")
        samples = []
        clock = time.perf_counter
        for i in range(-settings.warmup, settings.calls):
            started = clock()
            result = client.call("demo", "add", i, 1)
            elapsed = clock() - started
            if result != i + 1:
                raise RuntimeError(f"demo.add({i}, 1) answered {result!r}")
            if i >= 0:
                samples.append(elapsed)
        progress(f"dllpool: submit, {SUBMIT_WINDOW} in flight for {settings.seconds:g} s ...")
        submit_window(client, SUBMIT_WINDOW, min(0.5, settings.seconds))
        submitted, submit_seconds = submit_window(client, SUBMIT_WINDOW, settings.seconds)
        progress(f"dllpool: {THREADS} threads calling for {settings.seconds:g} s ...")
        threaded, thread_seconds = threads_calling(client, THREADS, settings.seconds)
        progress(f"dllpool: map for {settings.seconds:g} s ...")
        map_for(client, min(0.5, settings.seconds))
        mapped, map_seconds = map_for(client, settings.seconds)
        stats = pool.stats()
    rows = latency_rows(system, "call, one thread", samples, f"{len(samples):,} calls, Pool({broker=}) + Client.call")
    rows.append(throughput_row(system, f"submit, {SUBMIT_WINDOW} in flight", submitted, submit_seconds, "one thread"))
    rows.append(throughput_row(system, f"call from {THREADS} threads", threaded, thread_seconds, "one Client"))
    rows.append(throughput_row(system, "map", mapped, map_seconds, "one thread, Client.map defaults"))
    details = {"broker": broker, "workers": len(workers), "worker_python": workers[0].get("python")}
    return rows, {**details, "broker_stats": stats}


# --------------------------------------------------------------------------- msl-loadlib


def msl_python() -> Path:
    return MSL_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_msl_venv() -> str:
    """Create bench/.venv-msl with msl-loadlib the first time; its msl-loadlib version."""
    python = msl_python()
    probe = [str(python), "-c", f"import importlib.metadata as m; print(m.version({MSL_PACKAGE!r}))"]
    if python.exists():
        found = subprocess.run(probe, capture_output=True, text=True, check=False)
        if found.returncode == 0:
            return found.stdout.strip()
    progress(f"msl-loadlib: creating {MSL_VENV} and installing {MSL_PACKAGE} (first run only) ...")
    subprocess.run([sys.executable, "-m", "venv", str(MSL_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", MSL_PACKAGE],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()


def measure_msl(settings: Settings, interp: runtime32.Interpreter) -> tuple[list[Row], dict[str, Any]]:
    system = "msl-loadlib"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    libz = libz32_folder(interp)
    if libz is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libz), env.get("LD_LIBRARY_PATH")]))
    progress(f"msl-loadlib: {settings.calls:,} sequential Cpp64().add calls ...")
    command = [str(msl_python()), str(BENCH / "msl_loadlib_compare.py"), "--json", "--calls", str(settings.calls)]
    done = subprocess.run(
        [*command, "--size", "1000"], env=env, cwd=BENCH, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench/msl_loadlib_compare.py failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    detail = f"{settings.calls:,} calls, one Client64 (its own 32-bit server)"
    rows = [
        Row(system, "Cpp64().add p50", "p50", result["p50_us"], detail),
        Row(system, "Cpp64().add p99", "p99", result["p99_us"], detail),
    ]
    return rows, {"result": result, "libz_from_runtime32": libz is not None}


# --------------------------------------------------------------------------- the table


def add_ratios(rows: list[Row]) -> None:
    """Ratios to the bare broker's figure of the same kind, msl-loadlib's p50, and the issue's targets."""
    bare = {row.kind: row.value for row in rows if row.system == "bare LRU broker"}
    msl_p50 = next((r.value for r in rows if r.system == "msl-loadlib" and r.kind == "p50"), None)
    for row in rows:
        if row.system not in ("dllpool", "msl-loadlib") or row.value is None:
            continue
        reference = bare.get(row.kind)
        if reference:
            row.vs_bare = row.value / reference
        if row.system == "dllpool" and row.kind == "p50" and msl_p50:
            row.vs_msl = msl_p50 / row.value
    for row in rows:
        if row.system != "dllpool":
            continue
        if row.kind == "p50":
            row.target = "<= 1.25x bare; >= 3x faster than msl-loadlib"
            if row.vs_bare is not None and row.vs_msl is not None:
                row.met = row.vs_bare <= 1.25 and row.vs_msl >= 3
        elif row.figure.startswith("submit"):
            row.target = ">= 1.5x bare and >= 20,000 calls/s"
            if row.vs_bare is not None and row.value is not None:
                row.met = row.vs_bare >= 1.5 and row.value >= 20_000
        elif row.figure == "map":
            row.target = ">= 100,000 calls/s"
            if row.value is not None:
                row.met = row.value >= 100_000


def fmt_value(row: Row) -> str:
    if row.value is None:
        return "-"
    return f"{row.value:,.0f} us" if row.kind in ("p50", "p99") else f"{row.value:,.0f} calls/s"


def table(rows: list[Row]) -> str:
    lines = [
        "| system | figure | value | vs bare broker | vs msl-loadlib | target |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        vs_bare = "" if row.vs_bare is None else f"{row.vs_bare:.2f}x"
        vs_msl = "" if row.vs_msl is None else f"{row.vs_msl:.2f}x faster"
        target = row.target + ("" if row.met is None else (": met" if row.met else ": missed"))
        value = fmt_value(row) if row.value is not None else row.detail
        lines.append(f"| {row.system} | {row.figure} | {value} | {vs_bare} | {vs_msl} | {target} |")
    return "\n".join(lines)


def machine(interp: runtime32.Interpreter) -> dict[str, Any]:
    def cpu_model() -> str:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        except OSError:
            return ""

    info32 = runtime32.describe(interp)
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python64": platform.python_version(),
        "python32": info32["version"],
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "pyzmq32": info32["pyzmq"],
        "loadavg_before": loadavg(),
    }


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far (/proc/stat: user nice system idle iowait irq softirq steal), in ticks."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return []


def steal_percent(before: list[int], after: list[int]) -> float | None:
    """Share of the CPU time the hypervisor gave to someone else (steal) between two ``cpu_ticks``."""
    if len(before) < 8 or len(after) < 8:
        return None
    delta = [b - a for a, b in zip(before, after)]
    return 100 * delta[7] / sum(delta) if sum(delta) else None


def stop_on_sigterm() -> None:
    """SIGTERM ends a run as Ctrl-C does: the blocks that started processes end, and stop them. The bare
    workers have no parent-death signal, so a bench killed outright would leave them running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per row instead of about 5 s")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write every figure to FILE as JSON")
    parser.add_argument("--no-msl", action="store_true", help="leave msl-loadlib out (no virtualenv, no PyPI)")
    parser.add_argument(
        "--broker", choices=["thread", "process"], default=DEFAULT_BROKER, help="where dllpool's Pool runs its broker"
    )
    parser.add_argument("--serve-echo", metavar="ENDPOINT", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve_echo:
        return serve_echo(options.serve_echo)

    settings = QUICK if options.quick else DEFAULT
    interp = runtime32.load()
    info = machine(interp)
    progress(f"{'quick' if options.quick else 'default'} mode; load average {info['loadavg_before']}")
    library = str(demo_only().service("demo").hosting["library"])
    extra: dict[str, Any] = {}
    if not options.no_msl:
        info["msl_loadlib"] = ensure_msl_venv()

    rows: list[Row] = []
    ticks = cpu_ticks()
    context: zmq.Context[Any] = zmq.Context()
    try:
        with tempfile.TemporaryDirectory(prefix="dllpool-compare-") as tmp:
            folder = Path(tmp)
            rows += measure_pingpong(context, folder, settings)
            bare_rows, extra["bare"] = measure_bare(context, folder, settings, interp, library)
            rows += bare_rows
    finally:
        context.term()
    dllpool_rows, extra["dllpool"] = measure_dllpool(settings, options.broker)
    rows += dllpool_rows
    if not options.no_msl:
        try:
            msl_rows, extra["msl"] = measure_msl(settings, interp)
        except (RuntimeError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            progress(f"msl-loadlib: not measured: {exc}")
            msl_rows = [Row("msl-loadlib", "Cpp64().add p50", "p50", None, f"not measured: {exc}"[:200])]
        rows += msl_rows
    info["loadavg_after"] = loadavg()
    info["steal_percent"] = steal_percent(ticks, cpu_ticks())
    add_ratios(rows)

    print(table(rows))
    print(
        f"\n{info['cpus']} CPUs ({info['cpu_model']}), {info['platform']}; Python {info['python64']} (64-bit), "
        f"{info['python32']} (32-bit workers); pyzmq {info['pyzmq']}, libzmq {info['libzmq']}"
        + (f"; msl-loadlib {info['msl_loadlib']}" if "msl_loadlib" in info else "")
        + f"; load average before {info['loadavg_before'].split()[0]}, after {info['loadavg_after'].split()[0]}"
        + ("" if info["steal_percent"] is None else f"; CPU steal {info['steal_percent']:.1f} %")
    )
    if options.json is not None:
        document = {
            "mode": "quick" if options.quick else "default",
            "settings": dataclasses.asdict(settings),
            "machine": info,
            "rows": [dataclasses.asdict(row) for row in rows],
            "details": extra,
        }
        options.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        progress(f"wrote {options.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
