"""The dllpool command, run as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from broker import Pool

from .conftest import ROOT, assert_no_children_left, pid_alive, wait_for

DLLPOOL = [sys.executable, "-m", "broker.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DLLPOOL, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_help_and_usage_errors() -> None:
    assert run("--help").returncode == 0
    result = run("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_runtime32_info_reports_a_32bit_interpreter() -> None:
    result = run("runtime32", "info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["pointer_size"] == 4 and info["bits"] == 32


def test_call_against_a_running_pool(pool: Pool) -> None:
    result = run("call", "--address", pool.address, "demo", "add", "2", "3")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == 5
    result = run("call", "--address", pool.address, "demo", "scale_sum", "[1, 2, 3]", "3", "2.5")
    assert json.loads(result.stdout) == 15.0


def test_call_errors_exit_1_with_the_typed_error(pool: Pool) -> None:
    result = run("call", "--address", pool.address, "demo", "nope")
    assert result.returncode == 1
    assert "UnknownMethod" in result.stderr and "nope" in result.stderr
    result = run("call", "--address", pool.address, "demo", "add", "not json")
    assert result.returncode == 2 and "JSON" in result.stderr


def test_an_argument_msgpack_cannot_carry_exits_2_with_one_line(pool: Pool) -> None:
    result = run("call", "--address", pool.address, "demo", "add", "99999999999999999999999", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "ArgumentError" in result.stderr and "argument 1 (99999999999999999999999)" in result.stderr


def test_call_where_nothing_listens_exits_1_with_one_line_at_once(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/no-broker-here"
    started = time.monotonic()
    result = run("call", "--address", address, "--timeout", "30", "demo", "add", "1", "2")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "BrokerUnavailable: nothing answers at " + address in result.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s: the liveness window is 3 s, the call's timeout 30 s"


def test_a_bad_config_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text('[services.s]\nworker = 4\nlibrary = "x.so"\n')
    result = run("call", "-c", str(config), "s", "f")
    assert result.returncode == 2
    assert "worker" in result.stderr and "workers" in result.stderr


def test_demo_reports_32bit_workers() -> None:
    result = run("demo", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    demo_workers = [w for w in report["workers"] if w["service"] == "demo"]
    assert len(demo_workers) == 4 and {w["pointer_size"] for w in demo_workers} == {4}
    assert_no_children_left([w["pid"] for w in report["workers"]])


def test_up_serves_until_sigterm_then_stops_its_workers() -> None:
    process = subprocess.Popen(
        [*DLLPOOL, "up", "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        announced = json.loads(process.stdout.readline())
        address = announced["address"]
        assert {w["pointer_size"] for w in announced["workers"]} == {4}
        result = run("call", "--address", address, "demo", "add", "20", "22")
        assert json.loads(result.stdout) == 42
        children = children_of(process.pid)
        assert len(children) >= 4
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        wait_for(lambda: not any(pid_alive(pid) for pid in children), 5, "the workers to exit")
        assert not Path(address.removeprefix("ipc://")).exists()
    finally:
        if process.poll() is None:
            process.kill()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and pid_alive(int(entry)):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found
