"""Python bytecodes run per call, by thread and function: a count of work that, unlike this host's timings,
comes out the same on every run.

    python bench/bytecodes.py [--calls 300] [--method sleep_ms|add] [--top 12] [--json FILE]

Two parts, each after a warm-up of 50 calls:

* a pool with ``broker="thread"`` (the default configuration's ``demo`` service, one worker) and one
  calling thread in this process: every thread here (the calling thread, the broker's loop, the client's
  I/O thread) has the bytecodes it runs counted with ``sys.settrace`` opcode events;
* one worker in the project's 32-bit runtime: this script again (``--worker-side``), whose socket thread
  serves a ROUTER in its own process one request at a time, counted the same way.

Each count divided by the calls is per call. The calling thread's and the worker's counts are the same on
every run; the broker's loop and the client's I/O thread move by a few percent, with the polls that find
nothing and the timers that fire. One calling thread is a worst case for the broker's loop, which batches
messages under load. Compare two trees by running the script with ``PYTHONPATH`` set to
each. (Instructions, with C code included, can be counted the same way under valgrind's callgrind: N and 3N
calls, the difference divided by 2N; docs/performance.md has the figures.)

The worker side must run on Python 3.9: it imports nothing from ``broker``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

ARGS = {"add": (2, 3), "sleep_ms": (0,)}
_WARM_UP = 50
Counts = dict[str, "collections.Counter[str]"]


def _counting(counts: Counts, on: Callable[[], bool]) -> Callable[..., Any]:
    """A trace function that counts each opcode event under its thread's name and its function."""

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode" and on():
            code = frame.f_code
            name = getattr(code, "co_qualname", code.co_name)
            counts[threading.current_thread().name][f"{os.path.basename(code.co_filename)}:{name}"] += 1
        return tracer

    return tracer


def _per_call(counts: Counts, calls: int, top: int) -> dict[str, Any]:
    return {
        thread: {
            "per_call": round(sum(counter.values()) / calls),
            "functions": {name: round(n / calls, 1) for name, n in counter.most_common(top)},
        }
        for thread, counter in sorted(counts.items())
        if sum(counter.values()) >= calls
    }


def client_and_broker(calls: int, method: str, top: int) -> dict[str, Any]:
    from scaling import demo_config

    from broker import Pool

    counts: Counts = collections.defaultdict(collections.Counter)
    counting = threading.Event()
    tracer = _counting(counts, counting.is_set)
    threading.settrace(tracer)  # the broker's and the client's threads, started below
    try:
        with Pool(demo_config(1), "thread").start() as pool, pool.client(timeout=60) as client:
            for _ in range(_WARM_UP):
                client.call("demo", method, *ARGS[method])
            sys.settrace(tracer)
            counting.set()
            for _ in range(calls):
                client.call("demo", method, *ARGS[method])
            counting.clear()
            sys.settrace(None)
    finally:
        threading.settrace(None)
    return _per_call(counts, calls, top)


def worker(calls: int, method: str, top: int) -> dict[str, Any]:
    """Run :func:`worker_side` in the 32-bit runtime, and read its counts."""
    from broker import load_config, runtime32

    root = str(Path(__file__).resolve().parent.parent)
    spec = {"service": "demo", "threads": 1, **load_config().service("demo").hosting}
    interp = runtime32.load()
    command = [*interp.command, "-s", __file__, "--worker-side", json.dumps(spec)]
    command += ["--calls", str(calls), "--method", method, "--top", str(top)]
    done = subprocess.run(
        command, env=runtime32.command_env(interp, [root]), cwd=root, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the 32-bit worker side failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def worker_side(spec: dict[str, Any], calls: int, method: str, top: int) -> dict[str, Any]:
    """In the 32-bit runtime: a real Worker on a ROUTER of this process; its socket thread is counted."""
    import zmq

    from protocol import frames as wire
    from protocol import pack_call
    from workers32.hosting import build
    from workers32.worker import Worker

    router: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.ROUTER)
    address = f"ipc:///tmp/dllpool-bytecodes-{os.getpid()}"
    router.bind(address)
    served = Worker(address, spec, build(spec).methods)
    counts: Counts = collections.defaultdict(collections.Counter)
    counting = threading.Event()

    def feed() -> None:
        ident = router.recv_multipart()[0]  # its READY
        payload = pack_call(ARGS[method], {})
        for job in range(1, _WARM_UP + calls + 1):
            if job == _WARM_UP + 1:
                counting.set()
            router.send_multipart([ident, *wire.request_to_worker(job, method, 30.0, payload)])
            while getattr(wire.parse_worker(router.recv_multipart()[1:]), "job", None) != job:
                pass  # a heartbeat
        counting.clear()
        router.send_multipart([ident, *wire.stop_to_worker()])

    threading.Thread(target=feed, name="router", daemon=True).start()
    main = threading.main_thread()
    sys.settrace(_counting(counts, lambda: counting.is_set() and threading.current_thread() is main))
    try:
        served.serve()
    finally:
        sys.settrace(None)
        router.close(0)
    return _per_call(counts, calls, top)


def _print(title: str, figures: dict[str, Any]) -> None:
    print(f"\n{title}\n")
    for thread, found in figures.items():
        print(f"{thread}: {found['per_call']:,} bytecodes per call")
        for name, n in found["functions"].items():
            print(f"  {n:8.1f}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls counted, after a warm-up (default 300)")
    parser.add_argument("--method", choices=sorted(ARGS), default="sleep_ms", help="sleep_ms(0) or add(2, 3)")
    parser.add_argument("--top", type=int, default=12, help="functions listed per thread (default 12)")
    parser.add_argument("--json", metavar="FILE", help="also write the counts as JSON")
    parser.add_argument("--worker-side", metavar="SPEC", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker_side is not None:
        spec = json.loads(options.worker_side)
        print(json.dumps(worker_side(spec, options.calls, options.method, options.top)))
        return 0
    figures = {
        "client_and_broker": client_and_broker(options.calls, options.method, options.top),
        "worker": worker(options.calls, options.method, options.top),
    }
    _print(f"Client and broker (broker='thread', one calling thread, {options.method}):", figures["client_and_broker"])
    _print("Worker (32-bit, its socket thread):", figures["worker"])
    if options.json:
        Path(options.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
