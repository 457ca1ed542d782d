"""The dllpool command, run as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker import Pool
from broker.cli import main

from .conftest import ROOT, assert_no_children_left, library, pid_alive, wait_for

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


def test_demo_reports_32bit_workers() -> None:
    result = run("demo", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    demo_workers = [w for w in report["workers"] if w["service"] == "demo"]
    assert len(demo_workers) == 4 and {w["pointer_size"] for w in demo_workers} == {4}
    assert_no_children_left([w["pid"] for w in report["workers"]])


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``dllpool ARGS`` in this process, with the result ``run`` gives for a real process."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert "Traceback" not in line
    for fragment in fragments:
        assert fragment in line, line
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["call", "--timeout", "-1", "demo", "add", "1", "2"], "--timeout: must be > 0 seconds, got -1"),
        (["call", "--timeout", "0", "demo", "add", "1", "2"], "--timeout: must be > 0"),
        (["call", "--timeout", "nan", "demo", "add", "1", "2"], "--timeout: must be > 0"),
        (["call", "--timeout", "soon", "demo", "add", "1", "2"], "'soon' is not a number"),
        (["call", "--address"], "--address: expected one argument"),
        (["up", "--grace", "-1"], "--grace: must be >= 0 seconds, got -1"),
        (["worker", "--workers", "-1", "--connect", "tcp://127.0.0.1:5555"], "--workers: must be >= 1, got -1"),
        (["worker", "--workers", "2.5", "--connect", "tcp://127.0.0.1:5555"], "'2.5' is not an integer"),
        (["worker", "--connect", "localhost"], "--connect: 'localhost' is not an endpoint"),
        (["worker"], "--connect"),
        (["frobnicate"], "invalid choice"),
        ([], "COMMAND"),
    ],
)
def test_bad_options_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    assert_one_line_usage_error(cli(capsys, *args), fragment)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["call"], ["name the SERVICE and METHOD", "dllpool call demo add 2 3", "demo, demo_threaded"]),
        (["call", "--address", "tcp://127.0.0.1:5555"], ["name the SERVICE and METHOD"]),
        (["call", "demo"], ["name the METHOD of 'demo'", "add, add_i64"]),
        (["call", "add", "2", "3"], ["no service 'add'", "did you mean `dllpool call demo add ...`?"]),
        (["call", "dmeo", "add"], ["no service 'dmeo'", "has: demo, demo_threaded"]),
        (["call", "demo", "ad", "2", "3"], ["service 'demo' has no function 'ad'", "add, add_i64"]),
        (["call", "demo", "add", "two", "3"], ["argument 1 ('two') is not a JSON literal", "'\"text\"'"]),
    ],
)
def test_call_usage_errors_name_what_is_missing(
    capsys: pytest.CaptureFixture[str], args: list[str], fragments: list[str]
) -> None:
    """Found from the configuration alone: no pool is started for a typo."""
    assert_one_line_usage_error(cli(capsys, *args), *fragments)


def test_bad_configuration_files_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.toml").write_text("[services.s\nworkers = 1\n")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "typo.toml").write_text('[services.s]\nworker = 4\nlibrary = "x.so"\n')
    (tmp_path / "missing.toml").write_text('[services.s]\nlibrary = "nothere.so"\nfunctions = { f = {} }\n')
    cases = {
        "nothere.toml": "does not exist",
        ".": "cannot read configuration file",
        "bad.toml": "is not valid TOML",
        "binary.toml": "cannot read configuration file",
        "typo.toml": "unknown key(s) worker; allowed:",
        "missing.toml": f"library '{tmp_path / 'nothere.so'}' does not exist",
    }
    for name, fragment in cases.items():
        assert_one_line_usage_error(cli(capsys, "call", "-c", str(tmp_path / name), "s", "f"), fragment)


def test_bad_curve_key_files_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "keys", "pool", "--dir", str(tmp_path)).returncode == 0
    (tmp_path / "garbage.key").write_text("not a certificate\n")
    public, secret = str(tmp_path / "pool.key"), str(tmp_path / "pool.key_secret")
    cases = [
        (["--curve-key", secret], "needs both --curve-server-key and --curve-key"),
        (["--curve-server-key", str(tmp_path / "none.key"), "--curve-key", secret], "none.key"),
        (["--curve-server-key", public, "--curve-key", public], "holds no secret key"),
        (["--curve-server-key", str(tmp_path / "garbage.key"), "--curve-key", secret], "garbage.key"),
    ]
    for options, fragment in cases:
        args = ["call", "--address", "tcp://127.0.0.1:5555", *options, "demo", "add", "1", "2"]
        assert_one_line_usage_error(cli(capsys, *args), fragment)


def test_keys_refuses_to_overwrite_a_pair_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(tmp_path / "keys")
    first = json.loads(cli(capsys, "keys", "pool", "--dir", folder, "--json").stdout)
    assert Path(first["secret_file"]).stat().st_mode & 0o777 == 0o600
    assert_one_line_usage_error(cli(capsys, "keys", "pool", "--dir", folder), "already exist", "--force")
    assert first["public_key"] in Path(first["public_file"]).read_text(), "the pair was changed"
    second = json.loads(cli(capsys, "keys", "pool", "--dir", folder, "--json", "--force").stdout)
    assert second["public_key"] != first["public_key"]
    assert Path(second["secret_file"]).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("name", "folder", "fragment"),
    [
        ("../pool", "keys", "not '../pool'"),
        ("sub/pool", "keys", "not 'sub/pool'"),
        ("..", "keys", "not '..'"),
        ("", "keys", "not ''"),
        ("pool", "no/such/dir", "its parent folder does not exist"),
        ("pool", "a-file", "is not a folder"),
    ],
)
def test_keys_refuses_bad_names_and_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, folder: str, fragment: str
) -> None:
    (tmp_path / "a-file").write_text("")
    before = sorted(tmp_path.rglob("*"))
    assert_one_line_usage_error(cli(capsys, "keys", name, "--dir", str(tmp_path / folder)), fragment)
    assert sorted(tmp_path.rglob("*")) == before, "nothing may be written"


def unloadable_config(tmp_path: Path) -> Path:
    """A configuration whose only service names the 64-bit demo library for a 32-bit worker."""
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[services.bad]\nlibrary = "{library(64)}"\nfunctions = {{ add = {{ args = ["int", "int"] }} }}\n'
    )
    return config


def test_up_with_a_library_that_cannot_load_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run("up", "-c", str(unloadable_config(tmp_path)), timeout=60)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert "service 'bad'" in line and "64/libdemo.so" in line and "wrong ELF class" in line


def test_worker_with_a_library_that_cannot_load_exits_2_without_retrying(tmp_path: Path) -> None:
    result = run("worker", "-c", str(unloadable_config(tmp_path)), "--connect", "tcp://127.0.0.1:9", timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert "wrong ELF class" in lines[-1] and "Traceback" not in result.stderr
    assert sum("started worker pid" in line for line in lines) == 1, result.stderr


def test_up_announces_the_backend_that_dllpool_worker_connects_to(tmp_path: Path) -> None:
    """A service with no workers of its own, served by `dllpool worker --connect <backend from up --json>`."""
    config = tmp_path / "remote.toml"
    config.write_text(
        f'[services.remote]\nworkers = 0\nlibrary = "{library(32)}"\n'
        'functions = { add = { args = ["int", "int"] }, worker_pid = {} }\n'
    )
    up = subprocess.Popen(
        [*DLLPOOL, "up", "-c", str(config), "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        assert up.stdout is not None
        announced = json.loads(up.stdout.readline())
        assert set(announced) == {"address", "backend", "workers"} and announced["workers"] == []
        assert announced["backend"].startswith("ipc://") and announced["backend"] != announced["address"]
        worker = subprocess.Popen(
            [*DLLPOOL, "worker", "-c", str(config), "--workers", "1", "--connect", announced["backend"]],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        result = run("call", "--address", announced["address"], "remote", "worker_pid")
        assert result.returncode == 0, result.stderr
        pid = json.loads(result.stdout)
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
        assert worker.returncode == 0
        log = stderr.decode()
        assert f"connecting workers to the broker backend at {announced['backend']}: remote x1" in log, log
        assert f"started worker pid {pid} for service 'remote'" in log, log
    finally:
        for process in (worker, up):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)


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


_HOLDING_THE_STOP_EVENT = """
import time
from broker.cli import _stop_on_signals
stop = _stop_on_signals()
with stop._cond:  # as the main thread is, inside stop.wait(), before and after each timed wait
    print("ready", flush=True)
    busy_until = time.monotonic() + 1.0
    while time.monotonic() < busy_until:  # a signal's handler runs here, between two bytecodes
        pass
while not stop.wait(0.5):
    pass
"""


def test_a_signal_that_lands_while_the_stop_event_is_held_still_stops() -> None:
    """The handler used to set the event itself: landing while the main thread held the event's lock (inside
    wait(), whose 0.5 s timeout had just expired), it waited for that lock forever. A `dllpool up` given
    SIGTERM right after SIGCONT hung so in a fresh-clone run."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDING_THE_STOP_EVENT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
