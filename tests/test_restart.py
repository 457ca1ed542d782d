"""The broker goes away and comes back; workers and clients find it again on their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker import Pool
from client import BrokerUnavailable, Timeout

from .conftest import ROOT, assert_no_children_left, demo_service, in_nanosleep, pid_alive, wait_for
from .test_cli import children_of

DLLPOOL = [sys.executable, "-m", "broker.cli"]


@pytest.fixture()
def endpoints(tmp_path: Path) -> dict[str, object]:
    """A configuration whose broker serves only workers started elsewhere, at fixed endpoints."""
    config = {
        "pool": {
            "frontend": f"ipc://{tmp_path}/frontend",
            "backend": f"ipc://{tmp_path}/backend",
            "heartbeat_interval": 0.2,
        },
        "services": {"s": demo_service(workers=0)},
    }
    (tmp_path / "pool.json").write_text(json.dumps(config))
    return config


def test_workers_and_clients_survive_a_broker_restart(endpoints: dict[str, object], tmp_path: Path) -> None:
    config_file = tmp_path / "pool.toml"
    service = demo_service(workers=2)
    lines = ["[services.s]", f"workers = {service['workers']}", f'library = "{service["library"]}"']
    lines += ["[services.s.functions]", 'add = { args = ["int", "int"], returns = "int" }']
    config_file.write_text("\n".join(lines) + "\n")
    backend = endpoints["pool"]["backend"]  # type: ignore[index]
    workers = subprocess.Popen(
        [*DLLPOOL, "worker", "-c", str(config_file), "--connect", str(backend)],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        first = Pool.from_config(endpoints)
        wait_for(lambda: len(first.worker_pids("s")) == 2, 20, "2 external workers to register")
        worker_pids = first.worker_pids("s")
        with first.client(timeout=10, heartbeat_interval=0.2) as client:
            assert client.call("s", "add", 1, 2) == 3
            first.stop()
            assert not Path(str(endpoints["pool"]["frontend"]).removeprefix("ipc://")).exists()  # type: ignore[index]
            with pytest.raises((BrokerUnavailable, Timeout)):
                client.call("s", "add", 2, 2, timeout=1.0)
            with Pool.from_config(endpoints) as second:
                wait_for(lambda: len(second.worker_pids("s")) == 2, 20, "the workers to register again")
                assert second.worker_pids("s") == worker_pids, "the same worker processes came back"
                wait_for(lambda: _answers(client), 20, "the client to reach the new broker")
                assert [client.call("s", "add", i, i) for i in range(50)] == [2 * i for i in range(50)]
    finally:
        workers.send_signal(signal.SIGTERM)
        workers.wait(timeout=20)
    assert_no_children_left(worker_pids)


def _answers(client: object) -> bool:
    try:
        return client.call("s", "add", 20, 22, timeout=1.0) == 42  # type: ignore[attr-defined,no-any-return]
    except (BrokerUnavailable, Timeout):
        return False


def test_workers_exit_when_their_broker_process_is_killed() -> None:
    process = subprocess.Popen([*DLLPOOL, "up"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().startswith("dllpool: serving at ")
    workers = children_of(process.pid)
    assert len(workers) >= 4
    process.kill()
    process.wait()
    wait_for(lambda: not any(pid_alive(p) for p in workers), 5, "orphaned workers to exit")


def test_sigint_finishes_running_calls_before_stopping(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    service = demo_service()
    config.write_text(
        "[services.s]\n"
        f'library = "{service["library"]}"\n'
        "[services.s.functions]\n"
        'sleep_ms = { args = ["int"], returns = "void" }\n'
    )
    process = subprocess.Popen(
        [*DLLPOOL, "up", "-c", str(config)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    address = process.stdout.readline().split()[-1]
    call = subprocess.Popen(
        [*DLLPOOL, "call", "--address", address, "s", "sleep_ms", "700"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    wait_for(lambda: any(in_nanosleep(pid) for pid in children_of(process.pid)), 20, "the call to be running")
    os.kill(process.pid, signal.SIGINT)
    assert call.wait(timeout=20) == 0, "the running call was not allowed to finish"
    assert process.wait(timeout=20) == 0
