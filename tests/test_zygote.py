"""Workers forked from a zygote (broker/zygote.py, workers32/zygote.py): real 32-bit processes with their own
library state, replaced when they die, unharmed by the death of their zygote, which is started again; their
stderr reaches the supervisor; and ``[pool] zygote = false`` spawns them as before.

A forked worker keeps its zygote's command line (``-m workers32.zygote``); a spawned one has ``-m workers32``:
that is how these tests tell them apart. Both are children of the broker process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import Pool, runtime32, zygote
from protocol import ConfigError, PoolStartError

from .conftest import demo_service, pid_alive, wait_for
from .test_cli import children_of
from .test_pool_process import parent_of

TIMEOUT = 30.0
MISBEHAVING = Path(__file__).resolve().parent / "wrappers" / "misbehaving.py"


def command_line(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [part.decode() for part in f.read().split(b"\0") if part]


def forked(pid: int) -> bool:
    """Whether ``pid`` came from a zygote (it has the zygote's command line) rather than its own exec."""
    return "workers32.zygote" in command_line(pid)


def spawned(pid: int) -> bool:
    """Whether ``pid`` was started as ``python -m workers32``, not forked (whatever its zygote's command line)."""
    return "workers32" in command_line(pid)


def zygotes_of(broker: int, workers: list[int]) -> list[int]:
    """The broker's children that are zygotes: they have the zygote's command line and are not workers."""
    return [pid for pid in children_of(broker) if pid not in workers and forked(pid)]


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    with Pool.from_config({"services": {"s": demo_service(workers=2), "one": demo_service()}}) as pool:
        yield pool


def test_forked_workers_are_32_bit_children_of_the_broker_with_their_own_library_state(pool: Pool) -> None:
    pids = pool.worker_pids("s")
    assert len(pids) == 2 and all(forked(pid) for pid in pids)
    (broker,) = {parent_of(pid) for pid in pids}
    assert len(zygotes_of(broker, pool.worker_pids())) == 1, "one zygote for the one interpreter"
    assert {w["pointer_size"] for w in pool.workers()} == {4}
    with pool.client(timeout=TIMEOUT) as client:
        assert client.call("s", "pointer_size") == 4
        with client.session("s") as first, client.session("s") as second:
            assert {first.call("worker_pid"), second.call("worker_pid")} == set(pids)
            counts = [first.call("count_calls") for _ in range(5)]
            other = second.call("count_calls")
        assert (counts, other) == ([1, 2, 3, 4, 5], 1), "the workers share (or inherit) the library's state"


def test_a_broker_process_starts_its_first_zygote_before_its_imports_and_forks_from_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """broker.early: the zygote starts while the broker process imports, and the supervisor takes it over."""
    caplog.set_level(logging.DEBUG, logger="broker.zygote")
    with Pool.from_config({"services": {"s": demo_service(workers=2)}}, broker="process") as pool:
        pids = pool.worker_pids("s")
        assert all(forked(pid) for pid in pids)
        (broker,) = {parent_of(pid) for pid in pids}
        (started,) = [r.getMessage() for r in caplog.records if "started early" in r.getMessage()]
        assert zygotes_of(broker, pids) == [int(started.split("zygote pid ")[1].split()[0])]


@pytest.mark.timeout(60)  # the failure it guards against is an owner waiting forever for a mangled answer
def test_a_forked_workers_stdout_stays_out_of_the_broker_processs_answers() -> None:
    """A pool's broker process answers its owner on stdout; a forked worker writing there (a library's printf)
    writes to the broker's stderr instead, so the answers stay whole and the pool stops."""
    wrapper = {"module": str(MISBEHAVING), "class": "Misbehaving", "workers": 1}
    with Pool.from_config({"services": {"w": wrapper}}, broker="process") as pool:
        (pid,) = pool.worker_pids("w")
        assert forked(pid)
        with pool.client(timeout=TIMEOUT) as client:
            assert client.call("w", "scribble", '{"not": "an answer"') == 19
        for _ in range(3):  # each a request on the broker process's channel, answered on its stdout
            assert pool.worker_pids("w") == [pid] and pool.stats()["workers_lost"] == 0


def test_a_killed_worker_is_replaced_by_a_forked_one_that_answers(pool: Pool) -> None:
    (victim,) = pool.worker_pids("one")
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: pool.worker_pids("one") not in ([], [victim]), TIMEOUT, "a replacement worker")
    (replacement,) = pool.worker_pids("one")
    assert forked(replacement)
    with pool.client(timeout=TIMEOUT) as client:
        assert client.call("one", "worker_pid") == replacement
        assert client.call("one", "add", 2, 3) == 5


def test_a_killed_zygote_is_started_again_and_its_workers_keep_serving(pool: Pool) -> None:
    workers = pool.worker_pids()
    (broker,) = {parent_of(pid) for pid in workers}
    (zygote,) = zygotes_of(broker, workers)
    os.kill(zygote, signal.SIGKILL)
    wait_for(lambda: not pid_alive(zygote), TIMEOUT, "the zygote to end")
    with pool.client(timeout=TIMEOUT) as client:
        with client.session("s") as first, client.session("s") as second:
            assert {first.call("worker_pid"), second.call("worker_pid")} == set(pool.worker_pids("s"))
        assert sorted(pool.worker_pids()) == sorted(workers), "a worker ended with its zygote"

        def replaced_by_a_fork() -> bool:
            """Crash the worker of "one": its replacement answers, forked once the new zygote is ready (spawned
            while it starts: the broker does not wait for it)."""
            (victim,) = pool.worker_pids("one")
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: pool.worker_pids("one") not in ([], [victim]), TIMEOUT, "a replacement worker")
            (replacement,) = pool.worker_pids("one")
            assert client.call("one", "worker_pid") == replacement
            return forked(replacement)

        wait_for(replaced_by_a_fork, TIMEOUT, "a replacement forked by the new zygote")
    (restarted,) = zygotes_of(broker, pool.worker_pids())
    assert restarted != zygote


def test_a_forked_workers_stderr_reaches_the_start_error(tmp_path: Path) -> None:
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(
        "import sys\n"
        "class W:\n"
        "    def __init__(self):\n"
        "        print('the device says: not today', file=sys.stderr, flush=True)\n"
        "        raise RuntimeError('device busy')\n"
    )
    config = {"services": {"w": {"module": str(wrapper), "class": "W"}}}
    with pytest.raises(PoolStartError, match=r"(?s)not today.*device busy"):
        Pool.from_config(config)


def test_zygote_false_spawns_each_worker() -> None:
    config = {"pool": {"zygote": False}, "services": {"s": demo_service(workers=2)}}
    with Pool.from_config(config) as pool, pool.client(timeout=TIMEOUT) as client:
        pids = pool.worker_pids()
        assert not any(forked(pid) for pid in pids)
        (broker,) = {parent_of(pid) for pid in pids}
        assert zygotes_of(broker, pids) == []
        assert client.call("s", "pointer_size") == 4


def test_a_pool_inside_an_application_spawns_its_workers() -> None:
    """In the application's own process (``broker="thread"``) no zygote is used: being a child subreaper would
    leave the application's orphaned grandchildren as zombies there."""
    with Pool.from_config({"services": {"s": demo_service()}}, broker="thread") as pool:
        assert not any(forked(pid) for pid in pool.worker_pids())
        is_subreaper = ctypes.c_int(-1)
        assert ctypes.CDLL(None).prctl(37, ctypes.byref(is_subreaper), 0, 0, 0) == 0  # PR_GET_CHILD_SUBREAPER
        assert is_subreaper.value == 0


def test_zygote_must_be_true_or_false() -> None:
    with pytest.raises(ConfigError, match="zygote must be true or false"):
        Pool.from_config({"pool": {"zygote": "yes"}, "services": {"s": demo_service()}}, start=False)


def test_a_zygote_that_cannot_start_leaves_the_workers_spawned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interpreter that runs workers but fails as a zygote: a warning, and a pool of spawned workers. (A
    thread-mode pool, to see its log; this process stands in for a dedicated one while the test runs.)"""
    monkeypatch.setattr(zygote, "_dedicated", True)
    real = runtime32.load()
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" workers32.zygote "*) echo "no zygote from this interpreter" >&2; exit 7;; esac\n'
        + "".join(f"export {name}={shlex.quote(value)}\n" for name, value in real.env.items())
        + f"export PYTHONPATH={shlex.quote(os.pathsep.join(real.path))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        + f'exec {shlex.join(real.command)} "$@"\n'
    )
    python.chmod(0o755)
    caplog.set_level(logging.WARNING, logger="broker.zygote")
    config = {"services": {"s": demo_service(workers=2, python=str(python))}}
    with Pool.from_config(config, broker="thread") as pool, pool.client(timeout=TIMEOUT) as client:
        assert not any(forked(pid) for pid in pool.worker_pids())
        assert client.call("s", "pointer_size") == 4
    (warning,) = [r.getMessage() for r in caplog.records if "cannot start a zygote" in r.getMessage()]
    assert "no zygote from this interpreter" in warning


def test_a_worker_its_zygote_forks_after_it_was_given_up_on_is_stopped_and_reaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zygote that forks a worker but answers too late is replaced and the worker spawned instead. The worker it
    forked is this process's child all the same: it must not serve unknown to the supervisor (before, it did: the
    slot had two workers), so it is stopped and reaped, and the slot keeps its one spawned worker. (A thread-mode
    pool, to see its log and shorten the wait for an answer; this process stands in for a dedicated one.)"""
    monkeypatch.setattr(zygote, "_dedicated", True)
    monkeypatch.setattr(zygote, "_REPLY_TIMEOUT", 1.0)
    monkeypatch.setattr(zygote, "_LATE_WINDOW", TIMEOUT)  # its answer, 1.5 s after the fork, comes well within
    slow = tmp_path / "slow"  # once it exists, the zygote answers each fork request 1.5 s after forking
    real = runtime32.load()
    code = (
        "import os, sys, time, workers32.zygote as z\n"
        "send = z._send\n"
        "def late(control, message):\n"
        f"    if 'spawned' in message and os.path.exists({str(slow)!r}):\n"
        "        time.sleep(1.5)\n"
        "    send(control, message)\n"
        "z._send = late\n"
        "z.main()\n"
    )
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        + "".join(f"export {name}={shlex.quote(value)}\n" for name, value in real.env.items())
        + f"export PYTHONPATH={shlex.quote(os.pathsep.join(real.path))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        + 'case " $* " in *" workers32.zygote "*) shift 3; '
        + f'exec {shlex.join(real.command)} -s -c {shlex.quote(code)} "$@";; esac\n'
        + f'exec {shlex.join(real.command)} "$@"\n'
    )
    python.chmod(0o755)
    caplog.set_level(logging.WARNING, logger="broker.zygote")
    with Pool.from_config({"services": {"one": demo_service(python=str(python))}}, broker="thread") as pool:
        (victim,) = pool.worker_pids("one")
        assert not spawned(victim)
        slow.touch()
        os.kill(victim, signal.SIGKILL)

        def said(text: str) -> list[str]:
            return [r.getMessage() for r in caplog.records if text in r.getMessage()]

        wait_for(lambda: bool(said("failed to fork a worker")), TIMEOUT, "the fork request to go unanswered")
        wait_for(lambda: bool(said("after it was given up on")), TIMEOUT, "the late worker to be found")
        (found,) = said("after it was given up on")
        late = int(found.split("worker pid ")[1].split()[0])
        wait_for(lambda: not os.path.exists(f"/proc/{late}"), TIMEOUT, "the late worker to end and be reaped")
        wait_for(lambda: pool.worker_pids("one") not in ([], [victim]), TIMEOUT, "the spawned replacement")
        (replacement,) = pool.worker_pids("one")
        assert spawned(replacement), "the slot's worker is the one spawned in place of the late one"
        with pool.client(timeout=TIMEOUT) as client:
            assert client.call("one", "worker_pid") == replacement
            assert client.call("one", "add", 2, 3) == 5
