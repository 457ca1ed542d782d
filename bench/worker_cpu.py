"""What one call costs a real 32-bit worker: its CPU per call, driven in lockstep by a ROUTER here.

    python bench/worker_cpu.py [--calls 10000] [--method add|sleep_ms] [--json]

One worker process (``python -m workers32`` in the 32-bit runtime, the default configuration's demo
library) registers with a ROUTER of this process, which sends it one request at a time and waits for the
answer, as a broker with one call in flight per worker does. The worker's CPU (user + system, all its
threads, from ``/proc/PID/stat``) over the calls, divided by the calls, is its cost per call: its Python,
libzmq's work and the system calls and wake-ups of receiving and answering. A warm-up of 200 calls comes
first. Compare two trees by running this script with ``PYTHONPATH`` set to each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from broker import load_config, runtime32
from protocol import frames as wire
from protocol import pack_call

ARGS = {"add": (2, 3), "sleep_ms": (1,)}
_WARM_UP = 200


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(calls: int, method: str) -> dict[str, float]:
    root = str(Path(wire.__file__).resolve().parent.parent)  # the tree whose worker code runs
    spec = {"service": "demo", "threads": 1, **load_config().service("demo").hosting}
    router: zmq.Socket[Any] = zmq.Context().socket(zmq.ROUTER)
    address = f"ipc:///tmp/dllpool-bench-{os.getpid()}"
    router.bind(address)
    interp = runtime32.load()
    command = [*interp.command, "-s", "-m", "workers32", "--connect", address, "--spec", json.dumps(spec)]
    worker = subprocess.Popen(command, env=runtime32.command_env(interp, [root]), cwd=root, stderr=subprocess.DEVNULL)
    try:
        ident = router.recv_multipart()[0]  # its READY
        payload = pack_call(ARGS[method], {})
        jobs = itertools.count(1)
        for count in (_WARM_UP, calls):
            cpu, started = cpu_seconds(worker.pid), time.perf_counter()
            for job in itertools.islice(jobs, count):
                router.send_multipart([ident, *wire.request_to_worker(job, method, 30.0, payload)])
                while not isinstance(wire.parse_worker(router.recv_multipart()[1:]), wire.WorkerReply):
                    pass  # a heartbeat
            cpu, elapsed = cpu_seconds(worker.pid) - cpu, time.perf_counter() - started
    finally:
        worker.kill()
        worker.wait()
    return {"worker_cpu_us_per_call": 1e6 * cpu / calls, "round_trip_us": 1e6 * elapsed / calls}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--method", choices=sorted(ARGS), default="add")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    figures = measure(options.calls, options.method)
    if options.json:
        print(json.dumps({"method": options.method, "calls": options.calls, **figures}))
    else:
        print(
            f"{options.method}, {options.calls:,} calls: the worker used {figures['worker_cpu_us_per_call']:.1f} us "
            f"of CPU per call; round trip {figures['round_trip_us']:.1f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
