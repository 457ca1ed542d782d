"""A library that cannot load fails the start at once with a LibraryLoadError, and is never retried.

Real 32-bit workers throughout: the worker finds the problem, reports it
through its status file, and the supervisor gives up on that slot.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import Pool, Supervisor, load_config
from broker.rundir import make_worker_source
from protocol import ConfigError, LibraryLoadError, PoolStartError

from .conftest import demo_service, library, wait_for

READY_TIMEOUT = 60.0
FAST = 20.0
"""Seconds a failed start may take on a loaded machine: well under READY_TIMEOUT, which it must not wait for."""


def _starts(caplog: pytest.LogCaptureFixture, service: str) -> int:
    """Worker processes the supervisor started for ``service``, from its log."""
    return sum(m.startswith("started worker pid ") and f"for service {service!r} " in m for m in caplog.messages)


def _wrapper(folder: Path, source: str) -> str:
    path = folder / "wrapper.py"
    path.write_text(source)
    return str(path)


_Case = tuple[dict[str, object], list[str]]
"""An unloadable service, with the fragments its error message must name."""


def _missing_file(tmp_path: Path) -> _Case:
    missing = tmp_path / "libnothere.so"
    return demo_service(library=str(missing)), [str(missing), "does not exist"]


def _path(bits: int) -> str:
    """The demo library's path as the configuration resolves it (symlinks followed)."""
    return str(Path(library(bits)).resolve())


def _wrong_elf_class(tmp_path: Path) -> _Case:
    return demo_service(library=library(64)), [_path(64), "32-bit", "wrong ELF class"]


def _missing_symbol(tmp_path: Path) -> _Case:
    service = {**demo_service(), "functions": {"not_in_the_library": {"returns": "int"}}}
    return service, [_path(32), "not_in_the_library"]


def _kind_not_on_this_platform(tmp_path: Path) -> _Case:
    return demo_service(kind="windll"), [_path(32), "windll", "only on Windows"]


def _wrapper_module_does_not_import(tmp_path: Path) -> _Case:
    service: dict[str, object] = {"module": _wrapper(tmp_path, "import no_such_module_here\n"), "class": "W"}
    return service, ["wrapper.py", "no_such_module_here"]


def _wrapper_class_does_not_exist(tmp_path: Path) -> _Case:
    service: dict[str, object] = {"module": _wrapper(tmp_path, "class Other:\n    pass\n"), "class": "W"}
    return service, ["wrapper.py", "no class 'W'"]


@pytest.mark.parametrize(
    "case",
    [
        _missing_file,
        _wrong_elf_class,
        _missing_symbol,
        _kind_not_on_this_platform,
        _wrapper_module_does_not_import,
        _wrapper_class_does_not_exist,
    ],
)
def test_a_library_that_cannot_load_fails_the_start_at_once_and_is_not_retried(
    case: Callable[[Path], _Case], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service, fragments = case(tmp_path)
    config = {"pool": {"ready_timeout": READY_TIMEOUT}, "services": {"bad": service}}
    caplog.set_level(logging.DEBUG, logger="broker.supervisor")
    started = time.monotonic()
    with pytest.raises(LibraryLoadError) as info:
        Pool.from_config(config)
    assert time.monotonic() - started < FAST, "an unloadable library must fail the start, not wait for ready_timeout"
    assert isinstance(info.value, ConfigError)
    message = str(info.value)
    assert "'bad'" in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert _starts(caplog, "bad") == 1


def test_an_unknown_kind_is_a_config_error_before_any_worker_starts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="broker.supervisor")
    config = {"services": {"bad": demo_service(kind="stdcall")}}
    with pytest.raises(ConfigError, match=r"\[services\.bad\]\.kind.*cdll, windll, oledll.*'stdcall'"):
        load_config(config)
    with pytest.raises(ConfigError, match="stdcall"):
        Pool.from_config(config)
    assert _starts(caplog, "bad") == 0


def _supervisor(tmp_path: Path, service: dict[str, object]) -> Supervisor:
    return Supervisor(
        load_config({"services": {"s": service}}), f"ipc://{tmp_path}/backend", make_worker_source(tmp_path)
    )


def _first_exit(supervisor: Supervisor) -> None:
    supervisor.start_all()
    wait_for(lambda: bool(supervisor.poll(time.monotonic())), 30, "the worker to exit")


def test_the_supervisor_never_restarts_a_slot_whose_library_cannot_load(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, demo_service(library=str(tmp_path / "gone.so")))
    try:
        _first_exit(supervisor)
        assert isinstance(supervisor.startup_failure(), LibraryLoadError)
        assert isinstance(supervisor.unloadable_at_start(), LibraryLoadError)
        supervisor.poll(time.monotonic() + 3600)  # far past any back-off
        assert supervisor.running() == {}
    finally:
        supervisor.stop_all()


def test_a_wrapper_whose_constructor_raises_is_retried_with_backoff(tmp_path: Path) -> None:
    """A constructor's own exception may be transient (a device still busy): PoolStartError, and a retry."""
    source = "class W:\n    def __init__(self):\n        raise RuntimeError('device busy')\n"
    supervisor = _supervisor(tmp_path, {"module": _wrapper(tmp_path, source), "class": "W"})
    try:
        _first_exit(supervisor)
        failure = supervisor.startup_failure()
        assert isinstance(failure, PoolStartError) and "device busy" in str(failure)
        assert supervisor.unloadable_at_start() is None
        supervisor.poll(time.monotonic())
        assert supervisor.running() == {}, "retried at once instead of after a back-off"
        supervisor.poll(time.monotonic() + 3600)
        assert len(supervisor.running()) == 1
    finally:
        supervisor.stop_all()


def test_a_library_that_stops_loading_in_a_running_pool_is_logged_and_the_rest_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = tmp_path / "libdemo.so"
    shutil.copy(library(32), copy)
    config = {"services": {"a": demo_service(library=str(copy), workers=2), "b": demo_service()}}
    caplog.set_level(logging.DEBUG, logger="broker.supervisor")
    with Pool.from_config(config) as pool, pool.client(timeout=30) as client:
        survivor, victim = pool.worker_pids("a")
        shutil.copy(library(64), tmp_path / "new.so")
        os.replace(tmp_path / "new.so", copy)  # a new file, as an update would: the survivor keeps its mapping
        pool.kill_worker(victim)

        def gave_up() -> bool:
            return any(r.levelno == logging.ERROR and "cannot be replaced" in r.getMessage() for r in caplog.records)

        wait_for(gave_up, 30, "the supervisor to give up on the replacement")
        (error,) = [r.getMessage() for r in caplog.records if "cannot be replaced" in r.getMessage()]
        assert str(copy) in error and "wrong ELF class" in error
        with pytest.raises(LibraryLoadError, match="wrong ELF class"):
            pool.wait_ready(timeout=READY_TIMEOUT)

        # Serve on for longer than the first two back-off delays (0.5 s, 1 s): no restart in a loop.
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            assert client.call("a", "worker_pid") == survivor
            assert client.call("b", "add", 2, 3) == 5
        assert _starts(caplog, "a") == 3, "two at start, one replacement that failed, no more"
