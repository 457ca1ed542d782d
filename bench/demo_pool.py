"""What the bench scripts share: the demo library as a pool configuration, and watching what its workers do.

Standard library only: a script may run it against another checkout of dllpool (``PYTHONPATH``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

FUNCTIONS: dict[str, dict[str, Any]] = {
    "add": {"args": ["int", "int"], "returns": "int"},
    "sleep_ms": {"args": ["int"], "returns": "void"},
    "count_calls": {"returns": "int"},
    "scale_sum": {
        "args": ["const double *values", "int n", "double factor"],
        "returns": "double",
        "params": {"values": "in[n]"},
    },
    "str_len": {"args": ["char*"], "returns": "int"},
    "scalar_multiply": {
        "c": "void scalar_multiply(double a, const double *xin, int n, double *xout)",
        "params": {"xin": "in[n]", "xout": "out[n]"},
    },
}
"""Declarations of the demo library's functions the scripts call."""


def demo_service(*functions: str, workers: int = 1, threads: int = 1, bits: int = 32, **extra: Any) -> dict[str, Any]:
    """A service of the demo library declaring ``functions`` (names of :data:`FUNCTIONS`), with ``extra`` keys."""
    return {
        "bits": bits,
        "workers": workers,
        "threads": threads,
        "library": str(ROOT / "examples" / "build" / str(bits) / "libdemo.so"),
        "functions": {name: FUNCTIONS[name] for name in functions},
        **extra,
    }


def sleeping_threads(pid: int) -> int:
    """Threads of ``pid`` blocked in nanosleep: calls inside demo's ``sleep_ms`` (a worker's own threads wait in
    poll, epoll and futex)."""
    count = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            count += (task / "wchan").read_text() == "hrtimer_nanosleep"
        except OSError:  # the thread or the process just ended
            continue
    return count


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def status_mib(pid: int, field: str) -> float:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} for pid {pid}")
