"""Starting and stopping pools: readiness, start-up failures, no orphans."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from broker import Pool, runtime32
from broker.runtime32 import check_elf_bits
from protocol import ConfigError, RuntimeMissing

from .conftest import assert_no_children_left, demo_service, pid_alive


def test_from_config_returns_when_every_worker_is_ready_and_stop_leaves_nothing() -> None:
    config = {"services": {"a": demo_service(workers=3), "b": demo_service(workers=1, threads=2)}}
    with Pool.from_config(config) as pool:
        pids = pool.worker_pids()
        assert len(pids) == 4 and all(pid_alive(p) for p in pids)
        run_dir = Path(pool.address.removeprefix("ipc://")).parent
        assert run_dir.is_dir()
    assert_no_children_left(pids)
    assert not run_dir.exists(), "the per-run folder with the ipc sockets was left behind"


def test_a_64bit_service_runs_beside_32bit_ones() -> None:
    config = {"services": {"w32": demo_service(bits=32), "w64": demo_service(bits=64)}}
    with Pool.from_config(config) as pool, pool.client(timeout=10) as client:
        assert client.call("w32", "pointer_size") == 4
        assert client.call("w64", "pointer_size") == 8
        (pid64,) = pool.worker_pids("w64")
        assert check_elf_bits(f"/proc/{pid64}/exe") == 64


def test_binding_beyond_loopback_without_keys_is_refused() -> None:
    config = {"pool": {"frontend": "tcp://0.0.0.0:5999"}, "services": {"s": demo_service()}}
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1"):
        Pool.from_config(config)


def test_loopback_tcp_endpoints_work() -> None:
    config = {
        "pool": {"frontend": "tcp://127.0.0.1:*", "backend": "tcp://127.0.0.1:*"},
        "services": {"s": demo_service()},
    }
    with Pool.from_config(config) as pool, pool.client(timeout=10) as client:
        assert pool.address.startswith("tcp://127.0.0.1:")
        assert client.call("s", "add", 1, 2) == 3


def test_a_named_interpreter_of_the_wrong_bitness_is_refused() -> None:
    config = {"runtime32": {"python": sys.executable}, "services": {"s": demo_service(bits=32)}}
    with pytest.raises(RuntimeMissing, match="64-bit Python"):
        Pool.from_config(config)


def test_a_named_32bit_interpreter_with_launcher_arguments_serves(tmp_path: Path) -> None:
    """Like `py -3.11-32` on Windows: a command line, not just a path, names the interpreter."""
    interp = runtime32.load()
    site = os.pathsep.join(interp.path)
    exports = "".join(f"export {k}='{v}'\n" for k, v in interp.env.items())
    launcher = tmp_path / "py32"
    command = shlex.join(interp.command)
    launcher.write_text(f'#!/bin/sh\n{exports}export PYTHONPATH="{site}:$PYTHONPATH"\nexec {command} "$@"\n')
    launcher.chmod(0o755)
    config = {"runtime32": {"python": f"{launcher} -X utf8"}, "services": {"s": demo_service(bits=32)}}
    with Pool.from_config(config) as pool, pool.client(timeout=10) as client:
        assert client.call("s", "pointer_size") == 4
