"""Operating a running pool: status, scaling up and down under load, autoscaling, recycling workers.

Real pools of real 32-bit workers; every test waits for a state it can observe (the status, the pids).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import Pool
from client import BadRequest, CallError, Client

from .conftest import ROOT, demo_service, pid_alive, wait_for


def config(**service: Any) -> dict[str, Any]:
    functions = demo_service()["functions"]
    assert isinstance(functions, dict)
    functions["leak"] = "int leak(int mib, int touch)"
    options = {"workers": 2, **service}
    return {"pool": {"heartbeat_interval": 0.2}, "services": {"s": {**demo_service(**options), "functions": functions}}}


@pytest.fixture()
def pool() -> Iterator[Pool]:
    with Pool.from_config(config()) as running:
        yield running


def service_status(client: Client) -> dict[str, Any]:
    status: dict[str, Any] = client.status()["services"]["s"]
    return status


class Load:
    """Threads calling ``sleep_ms`` (not idempotent: never sent twice) until stopped; every failure is kept."""

    def __init__(self, client: Client, threads: int = 6) -> None:
        self.client = client
        self.done = 0
        self.failures: list[CallError] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.call("s", "sleep_ms", 5)
            except CallError as exc:
                self.failures.append(exc)
            with self._lock:
                self.done += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_status_shows_the_workers_and_follows_a_scale(pool: Pool) -> None:
    with pool.client(timeout=30) as client:
        assert client.call("s", "add", 2, 3) == 5
        wait_for(lambda: all(w["rss"] for w in service_status(client)["workers"]), 10, "a heartbeat's figures")
        status = service_status(client)
        workers = status["workers"]
        assert sorted(w["pid"] for w in workers) == pool.worker_pids("s")
        assert {(w["bits"], w["threads"], w["restarts"]) for w in workers} == {(32, 1, 0)}
        assert all(w["state"] == "idle" and 1 << 20 < w["rss"] < 1 << 30 for w in workers)
        assert all(1 << 30 < w["address_space_free"] <= 1 << 32 for w in workers)  # a 32-bit process's room
        assert sum(w["calls"] for w in workers) == status["calls"] == 1
        assert (status["target"], status["starting"], status["autoscaled"]) == (2, 0, False)
        assert status["latency_since_start"]["p50"] > 0

        assert pool.scale("s", 4) == 4
        status = service_status(client)
        assert len(status["workers"]) == status["target"] == 4
        assert sorted(w["pid"] for w in status["workers"]) == pool.worker_pids("s")
        before = set(pool.worker_pids("s"))
        assert pool.scale("s", 1) == 1
        assert len(service_status(client)["workers"]) == 1 and set(pool.worker_pids("s")) < before
        with pytest.raises(BadRequest, match="0 to 256"):
            client.scale("s", 1000)


def test_scaling_up_and_down_under_load_loses_no_call(pool: Pool) -> None:
    with pool.client(timeout=30) as client, Load(client) as load:
        for workers in (5, 1, 3, 0, 2):
            done = load.done
            assert pool.scale("s", workers, wait=workers > 0) == workers
            if workers:
                wait_for(lambda: load.done > done + 10, 30, "calls answered at this size")  # noqa: B023
    assert load.failures == []
    assert load.done > 50
    with pool.client() as client:
        assert service_status(client)["errors"] == {}


def test_retired_workers_exit_and_leave_no_process(pool: Pool) -> None:
    pids = pool.worker_pids("s")
    pool.scale("s", 0, wait=False)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30, "the scaled-away workers to exit")
    assert pool.worker_pids("s") == []
    assert pool.scale("s", 1) == 1


def test_autoscaling_grows_under_a_queue_and_shrinks_after_the_cooldown() -> None:
    options = {"workers": 1, "min_workers": 1, "max_workers": 4, "autoscale_wait": 0.05, "autoscale_cooldown": 0.5}
    with Pool.from_config(config(**options)) as pool, pool.client(timeout=60) as client:
        futures = [client.submit("s", "sleep_ms", 300) for _ in range(12)]
        wait_for(lambda: service_status(client)["target"] == 4, 30, "the pool to grow to max_workers")
        wait_for(lambda: len(pool.worker_pids("s")) == 4, 30, "four ready workers")
        assert [f.result() for f in futures] == [None] * 12
        wait_for(lambda: service_status(client)["target"] == 1, 30, "the pool to shrink back to min_workers")
        assert service_status(client)["autoscaled"]
        with pytest.raises(BadRequest, match="min_workers and max_workers"):
            client.scale("s", 5)


def test_autoscaling_grows_the_pool_for_a_session_waiting_for_a_worker_of_its_own() -> None:
    """Every worker is leased: a second session waits like a queued call, and the pool grows for it."""
    options = {"workers": 1, "min_workers": 1, "max_workers": 2, "autoscale_wait": 0.05, "autoscale_cooldown": 60}
    with Pool.from_config(config(**options)) as pool, pool.client(timeout=60) as client:
        with client.session("s") as first, client.session("s") as second:
            assert first.pid != second.pid
            assert second.call("worker_pid") == second.pid
        assert service_status(client)["target"] == 2


def test_a_worker_past_max_calls_per_worker_is_replaced_without_a_failed_call() -> None:
    with Pool.from_config(config(workers=1, max_calls_per_worker=3)) as pool, pool.client(timeout=30) as client:
        first = pool.worker_pids("s")
        # each process serves three calls with its own copy of the library's counter, then a fresh one takes over
        assert [client.call("s", "count_calls") for _ in range(9)] == [1, 2, 3] * 3
        wait_for(lambda: service_status(client)["recycled"] == 3, 10, "three recycled workers in the status")
        status = service_status(client)
        assert status["errors"] == {} and status["restarts"] == 0 and status["calls"] == 9
        assert pool.worker_pids("s") != first and not pid_alive(first[0])


def test_a_worker_past_max_worker_rss_is_replaced() -> None:
    with Pool.from_config(config(workers=1, max_worker_rss=150 << 20)) as pool, pool.client(timeout=30) as client:
        leaking = client.call("s", "worker_pid")
        assert client.call("s", "leak", 200, 1) == 200
        wait_for(lambda: service_status(client)["recycled"] == 1, 10, "the leaking worker to be recycled")
        wait_for(lambda: not pid_alive(leaking), 10, "the leaking worker to exit")
        assert client.call("s", "worker_pid") != leaking
        assert client.call("s", "leak", 1, 1) == 1  # a fresh process, with nothing leaked


def test_a_32_bit_worker_short_of_address_space_is_replaced() -> None:
    # 1.2 GiB reserved and never touched: resident memory barely moves, but the address space shrinks.
    with Pool.from_config(config(workers=1, min_free_address_space=3 << 30)) as pool, pool.client(timeout=30) as c:
        wait_for(lambda: service_status(c)["workers"][0]["address_space_free"], 10, "a heartbeat's figures")
        first = service_status(c)["workers"][0]
        assert first["address_space_free"] > 3 << 30
        assert c.call("s", "leak", 1200, 0) == 1200
        wait_for(lambda: service_status(c)["recycled"] == 1, 10, "the worker short of address space to be recycled")
        assert c.call("s", "worker_pid") != first["pid"]


def dllpool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if env is None else env
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_status_and_scale_commands_against_a_running_pool(pool: Pool) -> None:
    shown = dllpool("status", "--json", "--address", pool.address)
    assert shown.returncode == 0, shown.stderr
    assert sorted(w["pid"] for w in json.loads(shown.stdout)["services"]["s"]["workers"]) == pool.worker_pids("s")
    scaled = dllpool("scale", "s", "3", "--json", "--address", pool.address)
    assert scaled.returncode == 0, scaled.stderr
    assert json.loads(scaled.stdout) | {"seconds": 0} == {"service": "s", "workers": 3, "ready": 3, "seconds": 0}
    table = dllpool("status", "--address", pool.address)
    assert table.returncode == 0 and all(str(pid) in table.stdout for pid in pool.worker_pids("s"))
    refused = dllpool("scale", "s", "999", "--address", pool.address)
    assert refused.returncode == 1 and "0 to 256" in refused.stderr
    unknown = dllpool("scale", "nope", "1", "--address", pool.address)
    assert unknown.returncode == 1 and "UnknownService" in unknown.stderr


def test_status_finds_the_pool_dllpool_up_serves(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    service = demo_service()
    path.write_text(
        f"[services.s]\nlibrary = {json.dumps(service['library'])}\n[services.s.functions]\n"
        'add = "int add(int a, int b)"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DLLPOOL_HOME": str(tmp_path / "home")}
    up = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "up", "-c", str(path), "--json"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert up.stdout is not None
        address = json.loads(up.stdout.readline())["address"]
        shown = dllpool("status", "--json", "-c", str(path), env=env)
        assert shown.returncode == 0, shown.stderr
        assert len(json.loads(shown.stdout)["services"]["s"]["workers"]) == 1
        assert address.startswith("ipc://")
    finally:
        up.terminate()
        assert up.wait(30) == 0
    gone = dllpool("status", "-c", str(path), env=env)
    assert gone.returncode == 2 and "no `dllpool up` is serving" in gone.stderr


def test_the_async_client_reads_status_and_scales(pool: Pool) -> None:
    async def scenario() -> tuple[list[int], int]:
        async with pool.async_client(timeout=30) as client:
            pids = [w["pid"] for w in (await client.status())["services"]["s"]["workers"]]
            return pids, await client.scale("s", 3)

    pids, workers = asyncio.run(scenario())
    assert sorted(pids) == pool.worker_pids("s") and workers == 3


def test_scaling_down_under_sessions_waits_for_them_and_reports_success(pool: Pool) -> None:
    with pool.client(timeout=30) as client, client.session("s") as first, client.session("s") as second:
        held = {first.pid, second.pid}
        scaling = threading.Thread(target=pool.scale, args=("s", 1))
        scaling.start()
        wait_for(lambda: service_status(client)["target"] == 1, 30, "the scale to be taken")
        assert first.call("add", 1, 2) == 3 and second.call("add", 2, 2) == 4  # the sessions go on
        states = {w["pid"]: w for w in service_status(client)["workers"]}
        assert {states[pid]["state"] for pid in held} == {"held"}
        assert sum(1 for pid in held if states[pid]["retiring"]) == 1
    scaling.join(30)
    assert not scaling.is_alive()
    wait_for(lambda: len(pool.worker_pids("s")) == 1, 30, "the retired session worker to go")
