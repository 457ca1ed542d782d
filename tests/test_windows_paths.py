"""The code paths a Windows user takes, exercised here on Linux.

What cannot run here (a real WinDLL, the real ``py`` launcher, a python.org interpreter) is replaced only at
the edge: the platform check is switched, and a ``py`` script on PATH stands in for the launcher while it starts
the real 32-bit runtime. ZeroMQ, the broker and the workers are the real ones.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import sys
from pathlib import Path

import pytest

from broker import Pool, inprocess, runtime32, supervisor
from broker.config import load_config
from protocol import ConfigError, LibraryLoadError, RuntimeMissing
from workers32.hosting import load_library

from .conftest import demo_service, library, pid_alive, wait_for


def test_windll_and_oledll_are_refused_off_windows_saying_what_to_use() -> None:
    for kind in ("windll", "oledll"):
        with pytest.raises(LibraryLoadError, match=f"library kind '{kind}' exists only on Windows; use 'cdll'"):
            load_library(library(64), kind)


def test_a_windll_service_off_windows_stops_the_pool_start_with_that_message() -> None:
    with pytest.raises(LibraryLoadError, match="exists only on Windows"):
        Pool.from_config({"services": {"s": demo_service(kind="windll")}})


@pytest.mark.parametrize("kind", ["windll", "oledll"])
def test_windll_and_oledll_load_through_ctypes_own_classes_on_windows(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ctypes names them WinDLL and OleDLL (there is no ctypes.WINDLL): stand-ins of those names load a real
    library, so the names the worker looks up are the ones Windows' ctypes has."""
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "WinDLL", type("WinDLL", (ctypes.CDLL,), {}), raising=False)
    monkeypatch.setattr(ctypes, "OleDLL", type("OleDLL", (ctypes.CDLL,), {}), raising=False)
    lib = load_library(library(64), kind)
    assert type(lib).__name__ == {"windll": "WinDLL", "oledll": "OleDLL"}[kind]
    assert lib.add(2, 3) == 5


def test_default_endpoints_are_loopback_tcp_where_ipc_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert inprocess.ipc_available()  # Linux: ipc:// by default
    monkeypatch.setattr(inprocess, "ipc_available", lambda: False)
    with Pool.from_config({"services": {"s": demo_service(workers=2)}}, broker="thread") as pool:
        assert pool.address.startswith("tcp://127.0.0.1:") and pool.backend_address.startswith("tcp://127.0.0.1:")
        with pool.client(timeout=30) as client:
            assert client.call("s", "add", 2, 3) == 5
            assert client.call("s", "pointer_size") == 4


def test_workers_stop_cleanly_through_stdin_without_posix_signals(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Windows' send_signal(SIGTERM) kills at once; there a worker is asked to stop by the end of its stdin."""
    monkeypatch.setattr(supervisor, "POSIX_SIGNALS", False)
    caplog.set_level(logging.INFO)
    pool = Pool.from_config({"services": {"s": demo_service(workers=2)}}, broker="thread")
    try:
        pids = pool.worker_pids("s")
        with pool.client(timeout=30) as client:
            assert client.call("s", "add", 2, 3) == 5
    finally:
        pool.stop()
    assert not any(pid_alive(pid) for pid in pids)
    stopped = [f"pid {pid}] INFO workers32: stdin closed; stopping" for pid in pids]
    wait_for(lambda: all(line in caplog.text for line in stopped), 10, "each worker to log its stop")
    assert "killing it" not in caplog.text


def fake_launcher(folder: Path, expected: str) -> Path:
    """A ``py`` on PATH that insists on ``expected`` as its first argument, as ``py -3.11-32`` gets it, then runs
    the provisioned 32-bit runtime with the rest."""
    interp = runtime32.load()
    exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in interp.env.items())
    path = os.pathsep.join(interp.path)
    script = folder / "py"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = {shlex.quote(expected)} ] || {{ echo "py: expected {expected}, got $1" >&2; exit 9; }}\n'
        "shift\n"
        f"{exports}"
        f'export PYTHONPATH={shlex.quote(path)}"${{PYTHONPATH:+:$PYTHONPATH}}"\n'
        f'exec {shlex.join(interp.command)} "$@"\n'
    )
    script.chmod(0o755)
    return script


def test_a_configured_launcher_command_line_runs_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``[runtime32] python = "py -3.11-32"``: found on PATH, its argument kept, its bitness checked first."""
    launcher = fake_launcher(tmp_path, "-3.11-32")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    interp = runtime32.from_executable("py -3.11-32")
    assert interp.command == [str(launcher), "-3.11-32"]
    config = {"runtime32": {"python": "py -3.11-32"}, "services": {"s": demo_service()}}
    with Pool.from_config(config, broker="thread") as pool, pool.client(timeout=30) as client:
        assert client.call("s", "pointer_size") == 4


def test_without_a_provisioned_runtime_windows_asks_the_launcher_for_a_32_bit_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = fake_launcher(tmp_path, "-3-32")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(runtime32, "_WINDOWS", True)
    found = runtime32.load(tmp_path / "no-runtime")
    assert found.command == [str(launcher), "-3-32"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeMissing, match=r"\[runtime32\] python"):
        runtime32.load(tmp_path / "no-runtime")
    monkeypatch.undo()
    assert runtime32.describe(found)["bits"] == 32  # that command line starts a 32-bit Python


def test_a_quoted_windows_path_with_spaces_and_arguments_is_split_as_windows_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "name", "nt")
    command = r'"C:\Program Files (x86)\Python311-32\python.exe" -X utf8'
    assert runtime32._split_command(command) == [r"C:\Program Files (x86)\Python311-32\python.exe", "-X", "utf8"]
    assert runtime32._split_command(r"C:\Python311-32\python.exe") == [r"C:\Python311-32\python.exe"]
    assert runtime32._split_command("py -3.11-32") == ["py", "-3.11-32"]


def test_a_crash_on_windows_is_named_from_its_exit_code() -> None:
    """Windows ends a crashed process with an NTSTATUS exit code, not a signal."""
    assert supervisor.how_it_ended(0xC0000005) == "exit code 0xC0000005 (access violation)"
    assert supervisor.how_it_ended(0xC00000FD) == "exit code 0xC00000FD (stack overflow)"
    assert supervisor.how_it_ended(1) == "exit code 1"
    assert supervisor.how_it_ended(-11) == "signal SIGSEGV"


def windows_service(kind: str, prototype: str) -> dict[str, object]:
    return {"services": {"s": {"library": library(32), "kind": kind, "functions": {"add": prototype}}}}


@pytest.mark.parametrize(
    "prototype",
    [
        "int WINAPI add(int a, int b);",
        "int __stdcall add(int a, int b)",
        "__declspec(dllexport) int CALLBACK add(int a, int b)",
        'extern "C" int APIENTRY add(int a, int b)',
    ],
)
def test_prototypes_pasted_from_a_windows_header_parse_with_their_conventions(prototype: str) -> None:
    add = load_config(windows_service("windll", prototype)).service("s").hosting["functions"]["add"]
    assert add["symbol"] == "add" and [p["name"] for p in add["params"]] == ["a", "b"]
    assert add["signature"] == prototype.rstrip(";")  # as written, for messages


def test_a_prototype_whose_convention_contradicts_the_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"declared stdcall but kind = 'cdll': set kind = 'windll'"):
        load_config(windows_service("cdll", "int WINAPI add(int a, int b)"))
    with pytest.raises(ConfigError, match=r"declared cdecl but kind = 'windll': set kind = 'cdll'"):
        load_config(windows_service("windll", "int __cdecl add(int a, int b)"))
    assert load_config(windows_service("cdll", "int __cdecl add(int a, int b)")).service("s").hosting["kind"] == "cdll"
