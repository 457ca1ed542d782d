"""Who owns a pool's workers and its run folder: a process, not a thread; nothing outlives the process.

Real processes throughout: a child Python runs a pool and reports its worker
pids and run folder on stdout; the test then kills it or stops it and looks
at /proc and the temp directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import Pool
from broker.pool import DEFAULT_BROKER, BrokerKind
from broker.rundir import LOCK_NAME, RunDir, sweep
from client import Client

from .conftest import ROOT, assert_no_children_left, demo_service, pid_alive, wait_for
from .test_cli import children_of

CONFIG = {"services": {"s": demo_service(workers=2)}}

# The handler writes with os.write: a print() there could re-enter a print() the signal interrupted.
_CHILD = """
import json, os, signal, sys, threading
from broker import Pool

if sys.argv[2] == "own-handler":
    signal.signal(signal.SIGTERM, lambda *_: os.write(1, b"handled\\n"))
with Pool.from_config(json.loads(sys.argv[1]), broker=sys.argv[3]) as pool:
    run_dir = pool.address.removeprefix("ipc://").rsplit("/", 1)[0]
    forked = os.fork() if sys.argv[2] == "fork" else -1  # a fork without exec holds every inherited pipe
    if forked == 0:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        sys.stdin.readline()
        os._exit(0)
    report = {"pids": pool.worker_pids(), "run_dir": run_dir, "address": pool.address, "forked": forked}
    print(json.dumps(report), flush=True)
    sys.stdin.readline()
print("stopped", flush=True)
"""


class Child:
    """A Python process running a pool until its stdin closes; its report on stdout."""

    def __init__(self, mode: str = "", broker: BrokerKind = DEFAULT_BROKER) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(CONFIG), mode, broker],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the child exited with {self.process.wait()} before its pool was ready"
        report: dict[str, Any] = json.loads(line)
        self.pids: list[int] = report["pids"]
        self.run_dir = Path(report["run_dir"])
        self.address: str = report["address"]
        self.forked: int = report["forked"]

    def output(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.read()


@pytest.fixture(params=["thread", "process"])
def child(request: pytest.FixtureRequest) -> Iterator[Child]:
    running = Child(broker=request.param)
    yield running
    running.process.kill()
    running.process.wait()


# --- a pool belongs to its process, not to the thread that started it ---------------------------


@pytest.mark.parametrize("broker", ["thread", "process"])
def test_a_pool_started_by_a_thread_that_ended_keeps_its_workers(broker: BrokerKind) -> None:
    started: list[Pool] = []
    starter = threading.Thread(target=lambda: started.append(Pool.from_config(CONFIG, broker=broker)))
    starter.start()
    starter.join()
    assert started, "Pool.from_config failed in the thread"
    pool = started[0]
    try:
        pids = sorted(pool.worker_pids("s"))
        with pool.client(timeout=30) as client:
            calls = 0
            until = time.monotonic() + 5.0
            while time.monotonic() < until:
                assert client.call("s", "add", calls, 1) == calls + 1
                calls += 1
        assert sorted(pool.worker_pids("s")) == pids, "workers were replaced"
        assert all(pid_alive(pid) for pid in pids)
        assert pool.stats()["workers_lost"] == 0
        assert pool.stats()["replies"] == calls
    finally:
        pool.stop()
    assert_no_children_left(pids)


_EXITS = """
import json, sys
from broker import Pool

pool = Pool.from_config(json.loads(sys.argv[1]), broker=sys.argv[2])
run_dir = pool.address.removeprefix("ipc://").rsplit("/", 1)[0]
print(json.dumps({"pids": pool.worker_pids(), "run_dir": run_dir}), flush=True)
"""


@pytest.mark.parametrize("broker", ["thread", "process"])
def test_a_pool_left_running_is_stopped_at_interpreter_exit(broker: BrokerKind) -> None:
    script = [sys.executable, "-c", _EXITS, json.dumps(CONFIG), broker]
    done = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(done.stdout)
    assert_no_children_left(report["pids"])
    assert not Path(report["run_dir"]).exists()


def test_a_killed_process_takes_its_workers_down_and_the_next_start_removes_its_folder() -> None:
    """With the broker in a thread of the killed process: a broker process would remove the folder itself."""
    child = Child(broker="thread")
    assert (child.run_dir / LOCK_NAME).is_file()
    child.process.kill()
    child.process.wait()
    wait_for(lambda: not any(pid_alive(pid) for pid in child.pids), 10, "the killed pool's workers to exit")
    assert child.run_dir.is_dir(), "SIGKILL gives no chance to clean up: the folder should still be there"
    with Pool.from_config({"services": {"s": demo_service()}}):
        assert not child.run_dir.exists(), "the next start did not remove the stale run folder"


def test_a_live_pool_keeps_its_folder_when_another_pool_starts(child: Child) -> None:
    with Pool.from_config({"services": {"s": demo_service()}}):
        assert child.run_dir.is_dir()
    assert child.run_dir not in sweep()
    with Client(child.address, timeout=30) as client:
        assert client.call("s", "add", 2, 3) == 5
    assert all(pid_alive(pid) for pid in child.pids)


def test_a_stale_worker_command_folder_is_removed_too(tmp_path: Path) -> None:
    config = tmp_path / "workers.toml"
    service = demo_service()
    config.write_text(
        f'[services.s]\nlibrary = "{service["library"]}"\n[services.s.functions]\nworker_pid = {{ returns = "int" }}\n'
    )
    command = [sys.executable, "-m", "broker.cli", "worker", "-c", str(config), "--connect", f"ipc://{tmp_path}/none"]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _worker_folder(process.pid) is not None, 20, "`dllpool worker` to start its worker")
        folder = _worker_folder(process.pid)
        assert folder is not None
        workers = children_of(process.pid)
        assert folder not in sweep(), "a live `dllpool worker` lost its folder"
    finally:
        process.kill()
        process.wait()
    wait_for(lambda: not any(pid_alive(pid) for pid in workers), 10, "the killed `dllpool worker`'s worker to exit")
    assert folder.is_dir()
    assert folder in sweep()
    assert not folder.exists()


def _worker_folder(pid: int) -> Path | None:
    """The run folder of a `dllpool worker` process: its workers run inside it (once they exec)."""
    for worker in children_of(pid):
        with contextlib.suppress(OSError):
            folder = Path(os.readlink(f"/proc/{worker}/cwd")).parent
            if folder.name.startswith("dllpool-workers-"):
                return folder
    return None


# --- SIGTERM --------------------------------------------------------------------------------------


def test_sigterm_stops_an_in_process_pool_cleanly(child: Child) -> None:
    child.process.send_signal(signal.SIGTERM)
    assert child.process.wait(timeout=30) == 128 + signal.SIGTERM
    assert "stopped" not in child.output(), "SIGTERM should end the program, after the with block unwound"
    assert_no_children_left(child.pids)
    assert not child.run_dir.exists()


def test_an_application_sigterm_handler_is_left_alone() -> None:
    owner = Child("own-handler")
    try:
        owner.process.send_signal(signal.SIGTERM)
        assert owner.process.stdout is not None
        assert owner.process.stdout.readline() == "handled\n"
        assert all(pid_alive(pid) for pid in owner.pids), "the application's handler chose to keep running"
        assert owner.process.stdin is not None
        owner.process.stdin.close()
        assert owner.process.wait(timeout=30) == 0
        assert owner.output() == "stopped\n"
    finally:
        owner.process.kill()
        owner.process.wait()
    assert_no_children_left(owner.pids)
    assert not owner.run_dir.exists()


_HANDLERS = """
import json, signal, sys, threading
from broker import Pool

config = json.loads(sys.argv[1])
default = lambda: signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
seen = {}
in_thread = threading.Thread(target=lambda: seen.update(thread=default(), pool=Pool.from_config(config)))
in_thread.start()
in_thread.join()
seen["after thread start"] = default()
seen.pop("pool").stop()
with Pool.from_config(config):
    seen["one pool"] = default()
    with Pool.from_config(config):
        pass
    seen["after the inner pool stopped"] = default()
seen["after the last pool stopped"] = default()
print(json.dumps(seen))
"""


def test_the_sigterm_handler_is_installed_only_while_a_main_thread_pool_runs() -> None:
    script = [sys.executable, "-c", _HANDLERS, json.dumps({"services": {"s": demo_service()}})]
    seen = json.loads(subprocess.run(script, cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert seen == {
        "thread": True,
        "after thread start": True,
        "one pool": False,
        "after the inner pool stopped": False,
        "after the last pool stopped": True,
    }


# --- with and start=False -------------------------------------------------------------------------


def test_a_pool_made_with_start_false_starts_in_a_with_block_and_only_once() -> None:
    pool = Pool.from_config(CONFIG, start=False)
    with pytest.raises(RuntimeError, match="not running"):
        pool.worker_pids()
    with pool, pool.client(timeout=30) as client:
        assert client.call("s", "add", 1, 2) == 3
        pids = pool.worker_pids()
    assert_no_children_left(pids)
    started = Pool.from_config(CONFIG)
    pids = started.worker_pids()
    with started as same:
        assert same is started and same.worker_pids() == pids, "entering a running pool must not restart it"
    assert_no_children_left(pids)


# --- the sweep, on its own ------------------------------------------------------------------------


@pytest.fixture()
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_the_sweep_removes_only_unheld_run_folders(temp_root: Path) -> None:
    live = RunDir()
    abandoned = temp_root / "dllpool-abandone"
    abandoned.mkdir()
    (abandoned / LOCK_NAME).write_text("1\n")
    unrelated = temp_root / "dllpool-debs-abcdefgh"
    unrelated.mkdir()
    (unrelated / LOCK_NAME).write_text("1\n")
    assert sweep() == [abandoned]
    assert live.path.is_dir() and unrelated.is_dir()
    live.remove()
    assert not live.path.exists()


def test_a_folder_without_a_lock_is_never_removed(temp_root: Path) -> None:
    """No lock file: being created right now, or not dllpool's at all (a user's `dllpool-checkout`), however old."""
    folders = [temp_root / f"dllpool-{name:_<8}" for name in ("young", "checkout")]
    long_ago = time.time() - 30 * 24 * 3600
    for folder in folders:
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
        os.utime(folder, (long_ago, long_ago))
    assert sweep() == []
    assert all((folder / "notes.txt").is_file() for folder in folders)
