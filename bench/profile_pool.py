"""Where a call's time goes: CPU time and wake-ups per call, thread by thread, in every process.

    python bench/profile_pool.py [--system dllpool|bare] [--mode sequential|inflight|threads] [--seconds S]

Runs one workload of bench/compare.py for --seconds (after a short warm-up) and reads, before and
after, each thread's /proc/<pid>/task/<tid>/schedstat (CPU time, time spent waiting for a core,
times scheduled in) and voluntary context switches, in this process, the broker's (the bare one
runs in a process of its own; dllpool's runs in this one, as ``Pool`` embeds it) and the 32-bit
workers. Prints them per call, grouped by thread role. Linux only.

Workloads: ``sequential`` (one thread, one call at a time), ``inflight`` (dllpool: ``submit`` with
512 in flight from one thread; bare: a raw DEALER with 64 in flight), ``threads`` (dllpool only: 16
threads calling). Also a target for py-spy::

    py-spy record --threads --nonblocking -f raw -o seq.txt -- python bench/profile_pool.py --seconds 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import zmq
from compare import (
    PIPELINE,
    SUBMIT_WINDOW,
    THREADS,
    bare_pool,
    dealer,
    demo_only,
    process,
    raw_pipelined,
    stop_on_sigterm,
    submit_window,
)

from broker import Pool, runtime32
from broker.inprocess import InProcessBroker
from client import Client


@dataclasses.dataclass
class Task:
    label: str
    cpu_ns: int
    wait_ns: int
    slices: int
    voluntary: int
    user_ticks: int
    system_ticks: int


Labeler = Callable[[int, int, str], str]
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 1e4


def read_task(pid: int, tid: int, labeler: Labeler) -> Task | None:
    base = f"/proc/{pid}/task/{tid}"
    try:
        comm = Path(base, "comm").read_text().strip()
        cpu, wait, slices = (int(x) for x in Path(base, "schedstat").read_text().split())
        status = Path(base, "status").read_text()
        stat = Path(base, "stat").read_text()
    except (OSError, ValueError):
        return None
    voluntary = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_ctxt"))
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; utime and stime are fields 14 and 15
    return Task(labeler(pid, tid, comm), cpu, wait, slices, voluntary, int(fields[11]), int(fields[12]))


Snapshot = dict[tuple[int, int], Task]
Result = tuple[Snapshot, Snapshot, int, float]
"""Snapshots before and after, calls made, wall seconds."""
CALLERS: set[int] = set()
"""Native ids of the threads that ``run_threads`` started."""


def snapshot(pids: dict[int, Labeler]) -> Snapshot:
    tasks = {}
    for pid, labeler in pids.items():
        try:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
        for tid in tids:
            task = read_task(pid, tid, labeler)
            if task is not None:
                tasks[(pid, tid)] = task
    return tasks


COLUMNS = ("threads", "cpu_us", "wait_us", "scheduled_in", "voluntary_switches", "user_us", "kernel_us")
"""What :func:`tabulate` gives per thread role, per call (``threads``: how many threads have the role)."""


def tabulate(before: Snapshot, after: Snapshot, calls: int) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(COLUMNS))
    for key, end in after.items():
        start = before.get(key)
        if start is None:
            continue
        row = rows[end.label]
        cpu = end.cpu_ns - start.cpu_ns
        if cpu == 0 and end.slices == start.slices:
            continue  # idle all along (stderr readers, reapers)
        row[0] += 1
        row[1] += cpu / 1e3 / calls
        row[2] += (end.wait_ns - start.wait_ns) / 1e3 / calls
        row[3] += (end.slices - start.slices) / calls
        row[4] += (end.voluntary - start.voluntary) / calls
        row[5] += (end.user_ticks - start.user_ticks) * TICK_US / calls
        row[6] += (end.system_ticks - start.system_ticks) * TICK_US / calls
    return dict(rows)


def report(rows: dict[str, list[float]], calls: int, wall: float) -> str:
    lines = [
        f"{calls:,} calls in {wall:.1f} s: {calls / wall:,.0f} calls/s, "
        f"{wall / calls * 1e6:,.0f} us of wall time per call",
        "",
        "| thread (role) | threads | CPU us/call | user | kernel | waiting for a core us/call | scheduled in /call "
        "| voluntary switches /call |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    total = [0.0] * 7
    for label, values in sorted(rows.items()):
        lines.append(_line(label, values))
        total = [a + b for a, b in zip(total, values)]
    lines.append(_line("all", total))
    return "\n".join(lines)


def _line(label: str, values: list[float]) -> str:
    n, cpu, wait, slices, voluntary, user, system = values
    return (
        f"| {label} | {n:.0f} | {cpu:.1f} | {user:.0f} | {system:.0f} | {wait:.1f} | {slices:.2f} | {voluntary:.2f} |"
    )


def zmq_label(comm: str, owner: str) -> str | None:
    if comm.startswith("ZMQbg/IO"):
        return f"{owner}: libzmq I/O thread"
    if comm.startswith("ZMQbg"):
        return f"{owner}: libzmq reaper"
    return None


def worker_labeler(pid: int, tid: int, comm: str) -> str:
    return zmq_label(comm, "32-bit workers") or (
        "32-bit workers: main thread" if tid == pid else "32-bit workers: watchdog thread"
    )


def run_threads(call: Callable[[int, int], Any], threads: int, seconds: float, pids: dict[int, Labeler]) -> Result:
    """``threads`` threads call in a loop; they stay alive until the second snapshot is taken."""
    counts = [0] * threads
    started_barrier = threading.Barrier(threads + 1)
    done_barrier = threading.Barrier(threads + 1)
    release = threading.Event()
    end = 0.0

    def run(t: int) -> None:
        CALLERS.add(threading.get_native_id())
        started_barrier.wait()
        n, clock = 0, time.perf_counter
        while clock() < end:
            call(t, n)
            n += 1
        counts[t] = n
        done_barrier.wait()
        release.wait()

    pool = [threading.Thread(target=run, args=(t,), name=f"caller-{t}") for t in range(threads)]
    for thread in pool:
        thread.start()
    time.sleep(0.2)
    before = snapshot(pids)
    started = time.perf_counter()
    end = started + seconds
    started_barrier.wait()
    done_barrier.wait()
    wall = time.perf_counter() - started
    after = snapshot(pids)
    release.set()
    for thread in pool:
        thread.join()
    return before, after, sum(counts), wall


def run_one_thread(work: Callable[[], int], pids: dict[int, Labeler]) -> Result:
    before = snapshot(pids)
    started = time.perf_counter()
    calls = work()
    wall = time.perf_counter() - started
    return before, snapshot(pids), calls, wall


def serve_pool() -> int:
    """``--serve-pool``: the Pool in a process of its own; prints its address, runs until SIGTERM."""
    with Pool(demo_only(), broker="thread").start() as pool:
        info = {"address": pool.address, "workers": pool.worker_pids(), "broker_tid": broker_thread_id(pool)}
        print(json.dumps(info), flush=True)
        while True:
            time.sleep(3600)


def broker_thread_id(pool: Pool) -> int | None:
    """The native id of a thread-mode pool's broker loop thread."""
    broker = pool._broker
    assert isinstance(broker, InProcessBroker) and broker.thread is not None
    return broker.thread.native_id


@contextmanager
def dllpool_client(separate: bool) -> Iterator[tuple[Client, dict[int, Labeler]]]:
    """A Client of a demo-only pool, embedded in this process or (``separate``) in a child process."""
    main_tid = threading.main_thread().native_id
    zmq_threads: list[int] = []

    def zmq_owner(tid: int) -> str:
        """This process's libzmq I/O threads: the Pool's context starts before the Client's."""
        if tid not in zmq_threads:
            zmq_threads.append(tid)
            zmq_threads.sort()
        return "broker" if tid == zmq_threads[0] and not separate else "client"

    def labeler(pid: int, tid: int, comm: str) -> str:
        if comm.startswith("ZMQbg/IO"):
            return f"libzmq I/O thread of the {zmq_owner(tid)}"
        if tid == broker_tid:
            return "broker loop thread"
        if tid == client._conn._thread.native_id:
            return "client I/O thread"
        if tid == main_tid or tid in CALLERS:
            return "calling thread(s)"
        return zmq_label(comm, "client process") or f"other ({comm})"

    def broker_labeler(pid: int, tid: int, comm: str) -> str:
        if tid == broker_tid:
            return "broker loop thread (own process)"
        return zmq_label(comm, "broker process") or f"broker process: other ({comm})"

    if not separate:
        with Pool(demo_only(), broker="thread").start() as pool, pool.client(timeout=60) as client:
            broker_tid = broker_thread_id(pool)
            pids: dict[int, Labeler] = {os.getpid(): labeler}
            pids.update(dict.fromkeys(pool.worker_pids(), worker_labeler))
            yield client, pids
        return
    with process([sys.executable, __file__, "--serve-pool"]) as child:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        broker_tid = info["broker_tid"]
        with Client(info["address"], 60) as client:
            pids = {os.getpid(): labeler, child.pid: broker_labeler}
            pids.update(dict.fromkeys(info["workers"], worker_labeler))
            yield client, pids


def profile_dllpool(mode: str, seconds: float, separate: bool) -> Result:
    with dllpool_client(separate) as (client, pids):
        for i in range(300):
            client.call("demo", "add", i, 1)
        if mode == "threads":
            before, after, calls, wall = run_threads(
                lambda t, i: client.call("demo", "add", t, i), THREADS, seconds, pids
            )
        elif mode == "inflight":
            submit_window(client, SUBMIT_WINDOW, 0.5)
            before, after, calls, wall = run_one_thread(lambda: submit_window(client, SUBMIT_WINDOW, seconds)[0], pids)
        else:

            def sequential() -> int:
                n, end = 0, time.perf_counter() + seconds
                while time.perf_counter() < end:
                    client.call("demo", "add", n, 1)
                    n += 1
                return n

            before, after, calls, wall = run_one_thread(sequential, pids)
    return before, after, calls, wall


def profile_bare(mode: str, seconds: float) -> Result:
    interp = runtime32.load()
    library = str(demo_only().service("demo").hosting["library"])
    context: zmq.Context[Any] = zmq.Context()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="dllpool-profile-") as tmp,
            bare_pool(Path(tmp), interp, library) as bare,
        ):
            sock = dealer(context, bare.frontend)
            main_tid = threading.main_thread().native_id

            def client_labeler(pid: int, tid: int, comm: str) -> str:
                return "raw DEALER client" if tid == main_tid else zmq_label(comm, "client") or f"other ({comm})"

            def broker_labeler(pid: int, tid: int, comm: str) -> str:
                return "bare broker loop" if tid == pid else zmq_label(comm, "bare broker") or f"other ({comm})"

            pids: dict[int, Labeler] = {os.getpid(): client_labeler, bare.broker.pid: broker_labeler}
            pids.update(dict.fromkeys((w.pid for w in bare.workers), worker_labeler))
            if mode == "inflight":
                raw_pipelined(sock, PIPELINE, 0.5)
                result = run_one_thread(lambda: raw_pipelined(sock, PIPELINE, seconds)[0], pids)
            else:

                def sequential() -> int:
                    send, recv, packb = sock.send, sock.recv, msgpack.packb
                    n, end = 0, time.perf_counter() + seconds
                    while time.perf_counter() < end:
                        send(packb([n, 1]))
                        recv()
                        n += 1
                    return n

                result = run_one_thread(sequential, pids)
            sock.close()
    finally:
        context.term()
    return result


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=("dllpool", "bare"), default="dllpool")
    parser.add_argument("--mode", choices=("sequential", "inflight", "threads"), default="sequential")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--broker-process", action="store_true", help="dllpool: run the Pool in a child process, not in this one"
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures to FILE")
    parser.add_argument("--serve-pool", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve_pool:
        return serve_pool()
    if not sys.platform.startswith("linux"):
        print("profile_pool.py reads /proc: Linux only", file=sys.stderr)
        return 2
    if options.system == "bare" and options.mode == "threads":
        parser.error("the bare broker has no threads mode (a raw DEALER is one thread)")
    where = ", broker in its own process" if options.broker_process else ""
    print(f"{options.system}, {options.mode}{where}:")
    if options.system == "dllpool":
        before, after, calls, wall = profile_dllpool(options.mode, options.seconds, options.broker_process)
    else:
        before, after, calls, wall = profile_bare(options.mode, options.seconds)
    rows = tabulate(before, after, calls)
    print(report(rows, calls, wall))
    if options.json is not None:
        figures = {label: dict(zip(COLUMNS, values)) for label, values in rows.items()}
        document = {"system": options.system, "mode": options.mode, "broker_process": options.broker_process}
        document.update({"calls": calls, "seconds": wall, "threads": figures})
        options.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
