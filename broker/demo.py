"""``dllpool demo``: the default pool doing its job, with proof that the workers are 32-bit."""

from __future__ import annotations

import os
import sys
import threading
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from protocol import UnknownMethod

from .pool import Pool
from .runtime32 import check_elf_bits

__all__ = ["run_demo"]

_DECLARED = (
    ("a struct by value", "notebook", "add", ({"re": 1.0, "im": 2.0}, {"re": 4.0, "im": 5.0}), {"re": 5.0, "im": 7.0}),
    ("out-parameters", "demo", "divmod", (17, 5), {"return": 0, "q": 3, "r": 2}),
    ("an output array", "demo", "fill_squares", (5,), {"out": array("d", [0.0, 1.0, 4.0, 9.0, 16.0])}),
    ("an array scaled in place", "cpp", "cpp_scale", ([1.0, 2.0, 3.0], 3, 2.0), {"x": [2.0, 4.0, 6.0]}),
    ("text into a buffer", "fortran", "f_upper", ("hello, fortran", 32), {"return": 14, "out": "HELLO, FORTRAN"}),
    (
        "2-D arrays",
        "notebook",
        "mult",
        ([[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]], 2, 2, 2),
        {"c": [[19.0, 22.0], [43.0, 50.0]]},
    ),
)
"""(kind, service, function, arguments, expected result): one call of each kind config/pool.toml declares from
a C prototype; a result is {"return": ..., <out or inout parameter>: ...} (docs/data.md)."""


def _process_bits(pid: int) -> int | None:
    """What the kernel says the process runs, not what the process says."""
    if not sys.platform.startswith("linux"):
        return None
    return check_elf_bits(f"/proc/{pid}/exe")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_demo(config: str | Path | None = None) -> dict[str, Any]:
    """Start the pool, make concurrent calls from several threads, and report what happened."""
    lines: list[str] = []
    checks: dict[str, bool] = {}
    started = time.perf_counter()
    with Pool.from_config(config) as pool, pool.client(timeout=30) as client:
        ready = time.perf_counter() - started
        lines.append(f"pool ready in {ready:.2f} s at {pool.address}")
        workers = pool.workers()
        lines.append("workers:")
        for info in workers:
            bits = _process_bits(info["pid"])
            shown = f"{bits}-bit ELF" if bits else f"{8 * info['pointer_size']}-bit"
            lines.append(
                f"  {info['service']:<14} pid {info['pid']:<7} {shown}, Python {info['python']}, "
                f"{info['threads']} thread(s)"
            )
            checks[f"worker {info['pid']} is 32-bit"] = info["pointer_size"] == 4 and bits in (32, None)

        demo = client.service("demo")
        values = [1.0, 2.0, 3.0, 4.5]
        results = {
            "demo.add(2, 3)": demo.add(2, 3),
            "demo.version()": demo.version(),
            "demo.pointer_size()": demo.pointer_size(),
            f"demo.scale_sum({values}, 4, 2.0)": demo.scale_sum(values, 4, 2.0),
            "demo.greet()": demo.greet(),
            "cpp.cpp_mean([1, 2, 3, 4], 4)": client.call("cpp", "cpp_mean", [1, 2, 3, 4], 4),
            "fortran.f_sum([1.5, 2.5], 2)": client.call("fortran", "f_sum", [1.5, 2.5], 2),
            "wrapped.greet()": client.call("wrapped", "greet"),
        }
        lines.append("calls:")
        lines += [f"  {call} -> {value!r}" for call, value in results.items()]
        lines.append("declared pointers, arrays and structs:")
        for kind, service, function, args, expected in _DECLARED:
            call = f"{service}.{function}({', '.join(map(repr, args))})"
            results[call] = client.call(service, function, *args)
            lines.append(f"  {kind + ':':<26} {call} -> {results[call]!r}")
            checks[f"{kind} is right"] = results[call] == expected
        checks["pointer size is 4"] = results["demo.pointer_size()"] == 4
        checks["add is right"] = results["demo.add(2, 3)"] == 5

        n = len(pool.worker_pids("demo"))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as executor:
            list(executor.map(lambda _: demo.sleep_ms(200), range(n)))
        parallel = time.perf_counter() - t0
        lines.append(
            f"{n} threads x sleep_ms(200) on {n} workers: {parallel * 1000:.0f} ms (serial would be {n * 200} ms)"
        )
        checks["sleeps ran in parallel"] = parallel < n * 0.2 * 0.75

        threads, per_thread = 8, 250
        wrong = []
        lock = threading.Lock()

        def hammer(t: int) -> None:
            for i in range(per_thread):
                if demo.add(t, i) != t + i:
                    with lock:
                        wrong.append((t, i))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as executor:
            list(executor.map(hammer, range(threads)))
        elapsed = time.perf_counter() - t0
        total = threads * per_thread
        lines.append(
            f"{threads} threads x {per_thread} demo.add calls: "
            f"{total - len(wrong)}/{total} right, {total / elapsed:,.0f} calls/s"
        )
        checks["every add answer right"] = not wrong

        try:
            client.call("demo", "no_such_function")
        except UnknownMethod as exc:
            lines.append(f"an unknown method gives UnknownMethod: {exc}")
    left = [w["pid"] for w in workers if _running(w["pid"])]
    checks["no worker left running"] = not left
    lines.append(f"done in {time.perf_counter() - started:.2f} s; worker processes left running: {left or 'none'}")
    ok = all(checks.values())
    lines.append("OK" if ok else "FAILED: " + ", ".join(k for k, v in checks.items() if not v))
    return {
        "ok": ok,
        "checks": checks,
        "workers": workers,
        "results": {k: v for k, v in results.items()},
        "text": "\n".join(lines),
    }
