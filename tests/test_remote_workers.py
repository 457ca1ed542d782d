"""Workers on another machine: `dllpool worker` registers with a broker's TCP backend over CURVE.

The broker and the workers run on loopback here, each in processes of their own: the worker side knows only
the backend's address and the keys its configuration names, exactly as on another host.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from broker import Pool
from broker.cli import main
from broker.security import create_keys
from client import Client, CurveKeys, Timeout

from .conftest import ROOT, demo_service, library, pid_alive, wait_for

DLLPOOL = [sys.executable, "-m", "broker.cli"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("pool", "alice", "station", "mallory"):
        create_keys(folder, name)
    return folder


@pytest.fixture()
def broker(keys: Path) -> Iterator[Pool]:
    """A broker with no workers of its own: its service is served only by `dllpool worker` processes."""
    config = {
        "pool": {
            "frontend": "tcp://127.0.0.1:*",
            "backend": "tcp://127.0.0.1:*",
            "curve_secret_key": str(keys / "pool.key_secret"),
            "curve_clients": [str(keys / "alice.key")],
            "curve_workers": [str(keys / "station.key")],
        },
        "services": {"remote": demo_service(workers=0)},
    }
    with Pool.from_config(config, broker="thread") as pool:
        yield pool


def worker_config(folder: Path, keys: Path, own: str | None) -> Path:
    """The worker host's configuration: its service, and (unless ``own`` is None) its CURVE keys under [worker]."""
    folder.mkdir(exist_ok=True)
    text = f'[services.remote]\nworkers = 1\nlibrary = "{library(32)}"\n'
    text += 'functions = { add = { args = ["int", "int"] }, worker_pid = {} }\n'
    if own is not None:
        text += f'[worker]\ncurve_key = "{keys / own}.key_secret"\ncurve_server_key = "{keys / "pool.key"}"\n'
    path = folder / "worker.toml"
    path.write_text(text)
    return path


class RemoteWorker:
    """A `dllpool worker` process, its stderr in a file (a pipe nobody reads could fill and block it)."""

    def __init__(self, config: Path, backend: str) -> None:
        self.log = config.parent / "stderr.log"
        with self.log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [*DLLPOOL, "worker", "-c", str(config), "--connect", backend], cwd=ROOT, stderr=stderr
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def serving_pid(self) -> int | None:
        """The pid of its worker once that worker has connected (it logs "worker pid N serving")."""
        for line in self.text().splitlines():
            if "serving 'remote'" in line:
                return int(line.split("worker pid ")[1].split()[0])
        return None

    def stop(self) -> int:
        """SIGTERM, as an operator stops it; its exit code (0: it stopped cleanly)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture()
def remote_workers() -> Iterator[list[RemoteWorker]]:
    started: list[RemoteWorker] = []
    yield started
    for worker in started:
        worker.stop()


def alice(keys: Path) -> CurveKeys:
    return CurveKeys.from_files(keys / "pool.key", keys / "alice.key_secret")


def test_a_worker_with_an_allowed_key_serves_calls_and_shows_its_host(
    broker: Pool, keys: Path, tmp_path: Path, remote_workers: list[RemoteWorker]
) -> None:
    worker = RemoteWorker(worker_config(tmp_path / "station", keys, "station"), broker.backend_address)
    remote_workers.append(worker)
    wait_for(lambda: bool(broker.workers()), 60, "the remote worker to register")
    (info,) = broker.workers()
    assert info["service"] == "remote" and info["pointer_size"] == 4
    assert info["host"] == socket.gethostname()
    with Client(broker.address, timeout=30, curve=alice(keys)) as client:
        assert client.call("remote", "add", 2, 3) == 5
        assert client.call("remote", "worker_pid") == info["pid"] == worker.serving_pid()
    assert broker.stats()["workers_refused"] == 0
    assert worker.stop() == 0, worker.text()
    assert "with CURVE" in worker.text()


@pytest.mark.parametrize("own", ["mallory", "alice"], ids=["unknown key", "a client's key"])
def test_a_worker_without_an_allowed_key_is_refused_and_counted(
    broker: Pool,
    keys: Path,
    tmp_path: Path,
    remote_workers: list[RemoteWorker],
    caplog: pytest.LogCaptureFixture,
    own: str,
) -> None:
    """A key the backend does not list never registers: its calls go nowhere, and the broker says why."""
    caplog.set_level(logging.WARNING, logger="broker.security")
    refused = RemoteWorker(worker_config(tmp_path / own, keys, own), broker.backend_address)
    remote_workers.append(refused)
    wait_for(lambda: broker.stats()["workers_refused"] >= 1, 60, "the broker to refuse the worker's key")
    assert broker.workers() == []
    public = (keys / f"{own}.key").read_text().split('public-key = "')[1].split('"')[0]
    (warning,) = [r.getMessage() for r in caplog.records if public in r.getMessage()]  # once, not per retry
    assert "to the backend" in warning and "curve_workers" in warning
    with Client(broker.address, timeout=1, curve=alice(keys)) as client, pytest.raises(Timeout):
        client.call("remote", "add", 2, 3)
    pid = refused.serving_pid()
    assert refused.process.poll() is None and pid is not None and pid_alive(pid), "the refused worker crashed"
    assert broker.stats()["clients_refused"] == 0
    assert refused.stop() == 0, refused.text()


def test_a_worker_without_keys_is_refused_and_counted_while_one_with_keys_serves(
    broker: Pool, keys: Path, tmp_path: Path, remote_workers: list[RemoteWorker], caplog: pytest.LogCaptureFixture
) -> None:
    """No keys at all: the handshake fails before any key is checked (only the socket's monitor sees it)."""
    caplog.set_level(logging.WARNING, logger="broker.security")
    bare = RemoteWorker(worker_config(tmp_path / "bare", keys, None), broker.backend_address)
    remote_workers.append(bare)
    wait_for(lambda: broker.stats()["workers_refused"] >= 1, 60, "the broker to refuse the keyless worker")
    assert "refused a connection to the backend" in caplog.text
    good = RemoteWorker(worker_config(tmp_path / "station", keys, "station"), broker.backend_address)
    remote_workers.append(good)
    wait_for(lambda: bool(broker.workers()), 60, "the worker with keys to register")
    with Client(broker.address, timeout=30, curve=alice(keys)) as client:
        pids = {client.call("remote", "worker_pid") for _ in range(20)}
    assert pids == {good.serving_pid()} and [w["pid"] for w in broker.workers()] == [good.serving_pid()]
    assert bare.process.poll() is None, bare.text()


def test_checking_the_connect_endpoint_starts_no_handshake_at_the_broker(
    broker: Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dllpool worker` checks --connect before it reads its configuration; that check must not look like a
    refused peer to the broker (this one exits 2 at the missing configuration file, after the check)."""
    for _ in range(20):
        assert main(["worker", "-c", "/nonexistent.toml", "--connect", broker.backend_address]) == 2
    capsys.readouterr()
    # A peer that really is refused, after those checks: once it is counted, the checks would have been too.
    with zmq.Context() as context, context.socket(zmq.DEALER) as keyless:
        keyless.linger = 0
        keyless.connect(broker.backend_address)
        wait_for(lambda: broker.stats()["workers_refused"] >= 1, 60, "the keyless peer to be refused")
    assert broker.stats()["workers_refused"] == 1


def test_a_port_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--connect", "tcp://127.0.0.1:99999"]) == 2
    assert "the port must be 1-65535" in capsys.readouterr().err


def test_half_a_worker_key_pair_in_the_configuration_exits_2_with_one_line(
    keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = worker_config(tmp_path, keys, "station")
    config.write_text(config.read_text().replace("curve_key =", "# curve_key ="))
    assert main(["worker", "-c", str(config), "--connect", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "dllpool worker: error: CURVE needs both curve_server_key and curve_key under [worker]"


@pytest.fixture()
def network_namespace() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: (its name, this side's address, its address).

    Needs root and iproute2; skipped otherwise (the loopback tests above cover the behaviour)."""
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("ip", "unshare", "hostname")):
        pytest.skip("needs root, iproute2, unshare and hostname for a network namespace")
    tag = f"{os.getpid() % 100000}"
    name, outer, inner = f"dllpool{tag}", f"dpo{tag}", f"dpi{tag}"
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    here, there = f"{subnet}.1", f"{subnet}.2"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
        ["ip", "link", "set", inner, "netns", name],
        ["ip", "addr", "add", f"{here}/30", "dev", outer],
        ["ip", "link", "set", outer, "up"],
        ["ip", "netns", "exec", name, "ip", "addr", "add", f"{there}/30", "dev", inner],
        ["ip", "netns", "exec", name, "ip", "link", "set", inner, "up"],
        ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                pytest.skip(f"cannot set up a network namespace ({' '.join(step)}: {result.stderr.strip()})")
        yield name, here, there
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_a_worker_in_another_network_namespace_serves_over_a_real_network_path(
    keys: Path, tmp_path: Path, network_namespace: tuple[str, str, str]
) -> None:
    """The broker listens on a veth address (not loopback: CURVE is then required), the worker runs in another
    network namespace with a hostname of its own, and the broker's status says where it runs."""
    namespace, here, _ = network_namespace
    config = {
        "pool": {
            "frontend": "tcp://127.0.0.1:*",
            "backend": f"tcp://{here}:*",
            "curve_secret_key": str(keys / "pool.key_secret"),
            "curve_clients": [str(keys / "alice.key")],
            "curve_workers": [str(keys / "station.key")],
        },
        "services": {"remote": demo_service(workers=0)},
    }
    worker_toml = worker_config(tmp_path / "station", keys, "station")
    log = tmp_path / "station" / "stderr.log"
    with Pool.from_config(config, broker="thread") as broker, log.open("wb") as stderr:
        assert broker.backend_address.startswith(f"tcp://{here}:")
        command = shlex.join([*DLLPOOL, "worker", "-c", str(worker_toml), "--connect", broker.backend_address])
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "unshare", "--uts", "sh", "-c", f"hostname station1 && exec {command}"],
            cwd=ROOT,
            stderr=stderr,
        )
        try:
            wait_for(lambda: bool(broker.workers()), 60, "the worker in the other namespace to register")
            (info,) = broker.workers()
            assert info["host"] == "station1" != socket.gethostname()
            with Client(broker.address, timeout=30, curve=alice(keys)) as client:
                assert client.call("remote", "add", 20, 22) == 42
                assert client.call("remote", "worker_pid") == info["pid"]
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text(errors="replace")
