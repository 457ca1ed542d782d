"""``Pool(broker="process")``: the broker in a child process, with a thread-mode pool's API and guarantees.

Real processes throughout: the broker process is found as the parent of the
pool's workers, and killed or signalled for real.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import Pool, PoolConfig, load_config
from broker.pool import BrokerKind
from client import BrokerUnavailable
from protocol import ConfigError, DllPoolError, LibraryLoadError, PoolStartError, RuntimeMissing

from .conftest import assert_no_children_left, demo_service, in_nanosleep, pid_alive, wait_for
from .test_ownership import Child

CONFIG = {"services": {"s": demo_service(workers=2)}}


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def broker_processes() -> list[int]:
    """This process's broker processes still running."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and pid_alive(int(entry)):
            try:
                if parent_of(int(entry)) == os.getpid():
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if b"broker.hosted" in f.read():
                            found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


@pytest.fixture()
def pool() -> Iterator[Pool]:
    with Pool.from_config(CONFIG, broker="process") as running:
        yield running


def test_the_configuration_crosses_to_the_broker_process_as_json_unchanged(tmp_path: Path) -> None:
    keys = tmp_path / "pool.key_secret"
    configs = [
        load_config(),
        load_config(
            {
                "pool": {"curve_secret_key": str(keys), "curve_clients": [str(tmp_path)], "heartbeat_interval": 0.3},
                "runtime32": {"python": "/opt/py32 -X utf8"},
                "services": {"s": demo_service(idempotent=["add", "worker_pid"], queue_limit=7, bits=64)},
            }
        ),
    ]
    for config in configs:
        assert PoolConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_the_broker_process_imports_only_what_it_runs() -> None:
    """Each import is paid on every pool's start: the broker process gets parsed data (no C parser), uses no
    client but its shared-memory sweep, no asyncio, and never hosts a library. What it imports before starting
    its zygote (broker.early) is less still: none of the broker's sockets, configuration or loop."""
    unwanted = ("pycparser", "broker.declarations", "client.client", "asyncio", "workers32.worker", "hdrh")
    before_zygote = ("zmq", "broker.config", "broker.supervisor", "broker.inprocess", "broker.loop", "broker.core")
    for first, modules in (("from broker.hosted import serve", unwanted), ("import broker.early", before_zygote)):
        code = f"import sys; {first}; print([m for m in {modules!r} if m in sys.modules])"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
        assert done.stdout.strip() == "[]", (first, done.stdout)


def test_the_broker_runs_in_a_child_process_with_the_same_api(pool: Pool) -> None:
    pids = pool.worker_pids("s")
    assert len(pids) == 2
    (broker,) = {parent_of(pid) for pid in pids}
    assert broker != os.getpid() and parent_of(broker) == os.getpid()
    with pool.client(timeout=30) as client:
        assert [client.call("s", "add", i, 1) for i in range(10)] == list(range(1, 11))
    assert pool.stats()["replies"] == 10
    assert sorted(w["pid"] for w in pool.workers()) == pids and {w["pointer_size"] for w in pool.workers()} == {4}
    assert pool.address.startswith("ipc://") and pool.backend_address.startswith("ipc://")

    os.kill(broker, signal.SIGINT)  # what Ctrl-C sends the whole process group: the pool's owner decides
    pool.kill_worker(pids[0])
    wait_for(lambda: pids[0] not in pool.worker_pids("s"), 30, "the killed worker to be noticed")
    pool.wait_ready(30)
    after = pool.worker_pids("s")
    assert len(after) == 2 and pids[0] not in after and pids[1] in after
    assert pool.stats()["workers_lost"] == 1
    assert pid_alive(broker)


def test_the_control_channel_serves_many_threads_at_once(pool: Pool) -> None:
    pids = pool.worker_pids()
    wrong: list[object] = []

    def ask(n: int) -> None:
        for _ in range(50):
            answers = (pool.worker_pids(), pool.stats()["workers_lost"], len(pool.workers()))
            if answers != (pids, 0, 2):
                wrong.append(answers)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_the_broker_processs_log_records_reach_this_processs_loggers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="broker.supervisor")
    with Pool.from_config(CONFIG, broker="process") as pool:
        (broker,) = {parent_of(pid) for pid in pool.worker_pids()}
        starts = [r for r in caplog.records if r.getMessage().startswith("started worker pid ")]
        assert len(starts) == 2
        assert all(r.name == "broker.supervisor" and r.levelno == logging.DEBUG for r in starts)
        assert {r.process for r in starts} == {broker}, "the record should say which process made it"
        pool.kill_worker(pool.worker_pids()[0])
        wait_for(lambda: any("killing worker pid" in m for m in caplog.messages), 30, "the kill to be logged")
    assert not any("ready for 's'" in m for m in caplog.messages), "broker.core's INFO records came through"


def _unbindable(tmp_path: Path) -> dict[str, Any]:
    return {"pool": {"frontend": f"ipc://{tmp_path}/no/such/folder/frontend"}, "services": {"s": demo_service()}}


def _unloadable(tmp_path: Path) -> dict[str, Any]:
    return {"services": {"s": demo_service(library=str(tmp_path / "libnothere.so"))}}


def _wrong_interpreter(tmp_path: Path) -> dict[str, Any]:
    return {"runtime32": {"python": sys.executable}, "services": {"s": demo_service()}}


def _not_ready_in_time(tmp_path: Path) -> dict[str, Any]:
    return {"pool": {"ready_timeout": 0.001}, "services": {"s": demo_service()}}


@pytest.mark.parametrize(
    ("case", "error"),
    [
        (_unbindable, ConfigError),
        (_unloadable, LibraryLoadError),
        (_wrong_interpreter, RuntimeMissing),
        (_not_ready_in_time, PoolStartError),
    ],
)
def test_a_start_fails_with_the_same_error_in_both_modes(case: Any, error: type[DllPoolError], tmp_path: Path) -> None:
    brokers = broker_processes()
    raised: dict[BrokerKind, DllPoolError] = {}
    for kind in ("thread", "process"):
        with pytest.raises(DllPoolError) as info:
            Pool.from_config(case(tmp_path), broker=kind)
        raised[kind] = info.value
    assert type(raised["thread"]) is type(raised["process"]) is error
    assert str(raised["thread"]) == str(raised["process"])
    assert broker_processes() == brokers, "a broker process outlived its failed start"


def test_an_unknown_broker_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'thread' or 'process'"):
        Pool.from_config(CONFIG, start=False, broker="fork")  # type: ignore[arg-type]


def test_a_killed_owner_takes_the_broker_process_and_its_workers_down_and_their_folder() -> None:
    child = Child(broker="process")
    try:
        (broker,) = {parent_of(pid) for pid in child.pids}
        assert parent_of(broker) == child.process.pid
        child.process.kill()
        child.process.wait()
        wait_for(lambda: not pid_alive(broker), 20, "the broker process to exit")
        wait_for(lambda: not any(pid_alive(pid) for pid in child.pids), 20, "its workers to exit")
        wait_for(lambda: not child.run_dir.exists(), 20, "the broker process to remove its folder")
    finally:
        child.process.kill()
        child.process.wait()


def test_a_killed_owner_takes_its_broker_process_down_even_while_a_fork_of_it_lives_on() -> None:
    """The fork holds a copy of the broker's stdin pipe, so end of input never comes: the parent pid tells."""
    child = Child("fork", broker="process")
    try:
        (broker,) = {parent_of(pid) for pid in child.pids}
        child.process.kill()
        child.process.wait()
        assert pid_alive(child.forked), "the fork is what keeps the pipe open"
        wait_for(lambda: not pid_alive(broker), 20, "the broker process to exit")
        wait_for(lambda: not any(pid_alive(pid) for pid in child.pids), 20, "its workers to exit")
    finally:
        child.process.kill()
        child.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.forked, signal.SIGKILL)


def test_a_killed_broker_process_is_reported_to_the_pool_and_its_clients(pool: Pool) -> None:
    pids = pool.worker_pids()
    (broker,) = {parent_of(pid) for pid in pids}
    with pool.client(timeout=30, heartbeat_interval=0.2) as client:
        assert client.call("s", "add", 1, 1) == 2
        os.kill(broker, signal.SIGKILL)
        with pytest.raises(BrokerUnavailable, match=rf"broker process \(pid {broker}\) ended.*SIGKILL"):
            pool.stats()
        with pytest.raises(BrokerUnavailable):
            pool.worker_pids()
        with pytest.raises(BrokerUnavailable):
            client.call("s", "add", 2, 2)
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), 20, "the workers to follow their broker")
    pool.stop()
    with pytest.raises(RuntimeError, match="not running"):
        pool.stats()


def test_sigterm_stops_the_broker_process_cleanly_after_its_running_calls() -> None:
    config = {"services": {"s": demo_service()}}
    with Pool.from_config(config, broker="process") as pool, pool.client(timeout=30) as client:
        (worker,) = pool.worker_pids()
        broker = parent_of(worker)
        running = client.submit("s", "sleep_ms", 500)
        wait_for(lambda: in_nanosleep(worker), 20, "the call to be running")
        os.kill(broker, signal.SIGTERM)
        assert running.result(timeout=30) is None, "the running call was not allowed to finish"
        wait_for(lambda: not pid_alive(broker), 20, "the broker process to exit")
        with pytest.raises(BrokerUnavailable, match="exit code 143"):
            pool.wait_ready()
    assert_no_children_left([worker, broker])


def test_stop_lets_running_calls_finish_within_its_grace() -> None:
    config = {"services": {"s": demo_service()}}
    with Pool.from_config(config, start=False, broker="process") as pool, pool.client(timeout=30) as client:
        (worker,) = pool.worker_pids()
        broker = parent_of(worker)
        running = client.submit("s", "sleep_ms", 500)
        wait_for(lambda: in_nanosleep(worker), 20, "the call to be running")
        pool.stop(grace=20)
        assert running.done() and running.result() is None
    assert_no_children_left([worker, broker])
