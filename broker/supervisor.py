"""Starts, watches, restarts and stops the worker processes of a pool.

Each service has ``workers`` slots; each slot holds at most one process. The
broker loop calls :meth:`Supervisor.poll` on every tick: it reaps processes
that ended, reports them (so the broker can answer the calls they held), and
starts replacements. Slots are added and removed while the pool runs
(:meth:`Supervisor.add`, :meth:`Supervisor.drop_unready`); a retired worker
(recycled, or its slot removed) leaves its slot at once and finishes its
calls as a *leaving* process, reaped and reported like the others. A worker
that dies before it ever got ready is restarted with a growing back-off, so
a wrapper that fails to start does not become a fork bomb; one that served
and then crashed is replaced at once.

A worker whose library can never load as configured (it exits
``EXIT_UNLOADABLE`` and writes why to the status file named on its command
line) is not restarted at all: its slot stays empty, the failure is a
:class:`LibraryLoadError` for whoever waits for the pool to get ready, and
is logged as an error when it happens to a replacement in a running pool.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from protocol import DllPoolError, LibraryLoadError, PoolStartError, RuntimeMissing
from workers32.constants import EXIT_RETIRED, EXIT_STARTUP_FAILED, EXIT_UNLOADABLE

from . import runtime32
from .config import MAX_WORKERS, PoolConfig, ServiceConfig
from .core import WINDOWS_CRASHES
from .rundir import RunDir, make_worker_source
from .zygote import Spawner, WorkerProcess, ZygoteStart

log = logging.getLogger(__name__)

__all__ = [
    "POSIX_SIGNALS",
    "WINDOWS_CRASHES",
    "Exit",
    "Supervisor",
    "how_it_ended",
    "interpreter_for",
    "serve_workers",
]

_STDERR_TAIL = 30
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 10.0
_STARTS_PER_POLL = 8
"""Workers started in one poll at most: the loop that polls serves the sockets, and a spawn can take 50 ms."""
_LEAVING_GRACE = 10.0
"""Seconds a retired worker's process may take to exit once the broker stopped having it; then it is killed."""
_HEALTHY_AFTER = 5.0
"""A worker that ran this long started fine, even if no broker saw it ready: restart it at once."""
POSIX_SIGNALS = os.name == "posix"
"""Whether workers are asked to stop with SIGTERM. Windows has no such signal (``send_signal(SIGTERM)`` kills at
once, and a wrapper's clean-up never runs), so there a worker's stdin is a pipe whose end asks it to stop."""
_PARENT_BROKER_SILENCE = 60.0
"""Seconds a worker whose broker is its parent waits for a word from it before it connects again. It watches that
parent itself (parent-death signal, the parent's pid on every heartbeat), so silence from it means a broker that
is paused (SIGSTOP, a swap storm), not gone: connecting again would only cost the calls the worker runs. Workers
of a broker elsewhere (``dllpool worker``) wait the pool's ``heartbeat_interval * heartbeat_liveness``."""


@dataclass(frozen=True)
class Exit:
    """A worker process that ended."""

    service: str
    pid: int
    returncode: int


@dataclass(eq=False)
class _Leaving:
    """A retired worker's process, out of its slot: it finishes its calls (the broker still has it), then stops."""

    service: str
    process: WorkerProcess
    unregistered_since: float | None = None
    """Since when the broker no longer has it (it was told to STOP, or was never ready): killed past a grace."""


@dataclass(eq=False)
class _Slot:
    service: ServiceConfig
    index: int
    status_file: Path
    process: WorkerProcess | None = None
    starts: int = 0
    started_at: float = 0.0
    ready: bool = False
    failures: int = 0
    next_start: float = 0.0
    stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_STDERR_TAIL))
    stderr_reader: threading.Thread | None = None
    last_failure: DllPoolError | None = None
    recycled: int = 0
    """Processes of this slot retired and replaced on purpose: the rest of its starts after the first are
    restarts after a crash."""


def interpreter_for(config: PoolConfig, service: ServiceConfig) -> runtime32.Interpreter:
    """The Python that runs ``service``'s workers; RuntimeMissing if it is the provisioned one and that is missing."""
    if service.python:
        return runtime32.from_executable(service.python)
    if service.bits == 64:
        return runtime32.Interpreter(sys.executable, {}, ())
    if config.python32:
        return runtime32.from_executable(config.python32)
    return runtime32.load()


class Supervisor:
    """The worker processes of one pool."""

    def __init__(
        self,
        config: PoolConfig,
        backend: str,
        source_dir: Path,
        curve: dict[str, str] | None = None,
        start_log_level: int = logging.DEBUG,
        parent_broker: bool = True,
    ) -> None:
        self.config = config
        self.backend = backend
        self.source_dir = source_dir
        self.curve = curve
        self.start_log_level = start_log_level
        """``dllpool worker`` announces each worker it starts; a Pool keeps that to DEBUG."""
        self.parent_broker = parent_broker
        """The workers' broker runs in this process (a Pool's), not elsewhere (``dllpool worker``)."""
        self._slots: list[_Slot] = []
        self._slot_numbers = itertools.count()
        for service in config.services:
            self._add_slots(service, service.workers)
        self._leaving: list[_Leaving] = []
        """Retired workers' processes, out of their slots, finishing their calls."""
        self._interpreters: dict[str, runtime32.Interpreter] = {}
        self._stopping = False
        self._spawner = Spawner(config.zygote)
        self._late: list[int] = []
        """Pids of workers a zygote forked after it was given up on (their slots' spawned workers serve instead),
        for the broker of this process to retire (see :meth:`take_late`)."""

    def _add_slots(self, service: ServiceConfig, count: int) -> list[_Slot]:
        first = max((slot.index + 1 for slot in self._slots if slot.service is service), default=0)
        slots = [
            _Slot(service, first + i, self.source_dir.parent / f"status-{next(self._slot_numbers)}")
            for i in range(count)
        ]
        self._slots += slots
        return slots

    # --- interpreters ---------------------------------------------------------------

    def _interpreter(self, service: ServiceConfig) -> runtime32.Interpreter:
        if service.name not in self._interpreters:
            self._interpreters[service.name] = interpreter_for(self.config, service)
        return self._interpreters[service.name]

    def adopt_zygote(self, start: ZygoteStart) -> None:
        """Take over a zygote started before this supervisor (:mod:`broker.early`) as its interpreter's first."""
        self._spawner.adopt(start)

    def check_interpreters(self) -> None:
        """Fail before anything starts when a service's interpreter is missing or of the wrong bitness."""
        for service in self.config.services:
            interp = self._interpreter(service)
            if not Path(interp.executable).exists():
                raise RuntimeMissing(
                    f"service {service.name!r} needs the interpreter {interp.executable}, which does not exist"
                )
            if service.python or (service.bits == 32 and self.config.python32):
                bits = runtime32.describe(interp)["bits"]
                if bits != service.bits:
                    raise RuntimeMissing(
                        f"service {service.name!r} has bits = {service.bits}, but {' '.join(interp.command)} "
                        f"is a {bits}-bit Python; name a {service.bits}-bit interpreter"
                    )

    # --- processes --------------------------------------------------------------------

    def _spec(self, service: ServiceConfig) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "service": service.name,
            "threads": service.threads,
            "heartbeat_interval": self.config.heartbeat_interval,
            "heartbeat_liveness": self._broker_liveness(),
            "max_message_size": self.config.max_message_size,
            **service.hosting,
        }
        if self.curve:
            spec["curve"] = self.curve
        return spec

    def _broker_liveness(self) -> int:
        """Heartbeat intervals a worker waits for a word from its broker before it connects again."""
        liveness = self.config.heartbeat_liveness
        if not self.parent_broker:
            return liveness
        return max(liveness, math.ceil(_PARENT_BROKER_SILENCE / self.config.heartbeat_interval))

    def _start(self, slot: _Slot, now: float, starting: bool = False) -> None:
        """Start ``slot``'s worker; ``starting``: the pool's own start, which may wait for a first zygote."""
        interp = self._interpreter(slot.service)
        command = [
            "--connect",
            self.backend,
            "--spec",
            json.dumps(self._spec(slot.service)),
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            logging.getLevelName(min(logging.getLogger().getEffectiveLevel(), logging.INFO)),
            "--status-file",
            str(slot.status_file),
        ]
        if not POSIX_SIGNALS:
            command.append("--stop-on-eof")
        slot.status_file.unlink(missing_ok=True)
        slot.starts += 1
        try:
            slot.process = self._spawner.spawn(
                interp,
                command,
                self.source_dir,
                runtime32.command_env(interp, [str(self.source_dir)]),
                subprocess.DEVNULL if POSIX_SIGNALS else subprocess.PIPE,
                wait=starting,
                name=slot.service.name,
            )
        except OSError as exc:  # out of processes, memory or file descriptors: try again later, never crash
            slot.next_start = now + _back_off(slot)
            slot.last_failure = PoolStartError(f"cannot start a worker of service {slot.service.name!r}: {exc}")
            log.error(
                "cannot start a worker of %r (%s); retrying in %.1f s", slot.service.name, exc, slot.next_start - now
            )
            return
        slot.started_at = now
        slot.ready = False
        slot.stderr_tail.clear()
        name = f"{slot.service.name}[{slot.index}] pid {slot.process.pid}"
        slot.stderr_reader = threading.Thread(
            target=_forward_stderr,
            args=(slot.process.stderr, slot.stderr_tail, name),
            name=f"stderr {name}",
            daemon=True,
        )
        slot.stderr_reader.start()
        log.log(
            self.start_log_level,
            "started worker pid %d for service %r (slot %d): %s",
            slot.process.pid,
            slot.service.name,
            slot.index,
            interp.shown,
        )

    def start_all(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            self._start(slot, now, starting=True)

    def mark_ready(self, pids: set[int]) -> None:
        """Record which workers reached READY, which decides how a later exit is handled."""
        for slot in self._slots:
            if slot.process is not None and slot.process.pid in pids and not slot.ready:
                slot.ready = True
                slot.failures = 0
                slot.last_failure = None

    def poll(self, now: float) -> list[Exit]:
        """Reap ended workers and start replacements that are due."""
        if not self._stopping:
            for late in self._spawner.watch():
                self._leaving.append(_Leaving(late.name, late.process))
                if self.parent_broker:  # the broker retires it: it finishes what it took (see take_late)
                    self._late.append(late.process.pid)
                else:  # a broker elsewhere does not know it came late: it stops as on Ctrl-C
                    _ask_to_stop(late.process)
        exits: list[Exit] = []
        for leaving in list(self._leaving):
            code = leaving.process.poll()
            if code is not None:
                self._leaving.remove(leaving)
                exits.append(Exit(leaving.service, leaving.process.pid, code))
                level = logging.DEBUG if code in (0, EXIT_RETIRED) else logging.WARNING
                log.log(
                    level, "retired worker pid %d of %r ended (%s)", leaving.process.pid, leaving.service, _how(code)
                )
        starts = 0
        for slot in self._slots:
            process = slot.process
            if process is not None:
                code = process.poll()
                if code is None:
                    continue
                exits.append(Exit(slot.service.name, process.pid, code))
                slot.process = None
                self._after_exit(slot, code, now)
            if self._stopping or slot.process is not None or now < slot.next_start:
                continue
            if starts < _STARTS_PER_POLL and self._live(slot.service.name) < MAX_WORKERS:
                starts += 1
                self._start(slot, now)
        return exits

    def take_late(self) -> list[int]:
        """The pids of the workers zygotes forked late since the last call, for the broker to retire: they finish
        what they took (a SIGTERM would drop it), and leave as retired workers do (reaped here)."""
        late, self._late = self._late, []
        return late

    def _live(self, service: str) -> int:
        """Processes of ``service`` not yet reaped, leaving ones included: what the host is running for it."""
        return sum(1 for name, _ in self._owned() if name == service)

    def reap_leaving(self, registered: Callable[[int], bool], now: float) -> None:
        """Kill the leaving processes the broker has not had (``registered``: the pids it has) for ``_LEAVING_GRACE``:
        one told to STOP whose close hook hangs, one dropped while it was still loading its library."""
        for leaving in self._leaving:
            if registered(leaving.process.pid):
                leaving.unregistered_since = None
            elif leaving.unregistered_since is None:
                leaving.unregistered_since = now
            elif now - leaving.unregistered_since >= _LEAVING_GRACE and leaving.process.poll() is None:
                log.warning(
                    "retired worker pid %d of %r did not exit %.0f s after it stopped serving; killing it",
                    leaving.process.pid,
                    leaving.service,
                    _LEAVING_GRACE,
                )
                leaving.process.kill()

    def _after_exit(self, slot: _Slot, code: int, now: float) -> None:
        if self._stopping:
            return
        if code == EXIT_RETIRED:  # a broker elsewhere retired it (``dllpool worker``): its successor is due now
            log.info("worker %s[%d] was retired by the broker; starting its successor", slot.service.name, slot.index)
            slot.next_start = now
            return
        if code == EXIT_UNLOADABLE and slot.status_file.is_file():  # not a library's own exit(5)
            self._give_up(slot)
            return
        # SIGKILL comes from outside (us, a person, the OOM killer): it says nothing about the library.
        if slot.ready or code == -signal.SIGKILL or now - slot.started_at >= _HEALTHY_AFTER:
            log.warning("worker %s[%d] ended (%s); starting a replacement", slot.service.name, slot.index, _how(code))
            slot.next_start = now
            return
        slot.last_failure = PoolStartError(
            f"a worker of service {slot.service.name!r} ended before it was ready ({_how(code)}); "
            f"its last output:\n{self._tail(slot)}"
        )
        delay = _back_off(slot)
        slot.next_start = now + delay
        log.error(
            "worker %s[%d] ended before it was ready (%s); retrying in %.1f s",
            slot.service.name,
            slot.index,
            _how(code),
            delay,
        )

    def _give_up(self, slot: _Slot) -> None:
        """The slot's library can never load: leave the slot empty instead of retrying."""
        try:
            reason = slot.status_file.read_text(encoding="utf-8").strip()
        except OSError:
            reason = ""
        if not reason:
            reason = f"a worker of service {slot.service.name!r} cannot load what it hosts; its last output:\n"
            reason += self._tail(slot)
        slot.last_failure = LibraryLoadError(reason)
        slot.next_start = math.inf
        if slot.starts > 1:  # a first start's failure is the start-up error itself, raised to whoever waits
            log.error(
                "worker %s[%d] cannot be replaced, its library no longer loads (%s); "
                "the service runs with one worker less until the pool restarts",
                slot.service.name,
                slot.index,
                reason,
            )

    @staticmethod
    def _tail(slot: _Slot) -> str:
        if slot.stderr_reader is not None:
            slot.stderr_reader.join(timeout=1.0)
        return "\n".join(slot.stderr_tail) or "(it printed nothing)"

    def startup_failure(self) -> DllPoolError | None:
        """Why the pool cannot get ready, if a worker failed to start.

        A :class:`LibraryLoadError` (with the worker's own reason) when a library can never load,
        else a :class:`PoolStartError` with the exit and last stderr lines of a worker being retried.
        """
        return next((slot.last_failure for slot in self._slots if slot.last_failure and not slot.ready), None)

    def unloadable_at_start(self) -> LibraryLoadError | None:
        """A library that failed to load in its slot's first worker: a start-up error, not a runtime one."""
        return next(
            (s.last_failure for s in self._slots if s.starts == 1 and isinstance(s.last_failure, LibraryLoadError)),
            None,
        )

    def running(self) -> dict[int, str]:
        """The pid and service of each worker process started and not yet reaped."""
        return {process.pid: service for service, process in self._owned()}

    def kill(self, pid: int, reason: str) -> None:
        for _, process in self._owned():
            if process.pid == pid and process.poll() is None:
                log.warning("killing worker pid %d: %s", pid, reason)
                process.kill()

    def _owned(self) -> Iterator[tuple[str, WorkerProcess]]:
        """Every process started and not yet reaped, in a slot or leaving, with its service's name."""
        yield from ((slot.service.name, slot.process) for slot in self._slots if slot.process is not None)
        yield from ((leaving.service, leaving.process) for leaving in self._leaving)

    def _processes(self) -> Iterator[WorkerProcess]:
        return (process for _, process in self._owned())

    # --- scaling and retiring ---------------------------------------------------------

    def service(self, name: str) -> ServiceConfig:
        """The configuration of service ``name`` (KeyError if it has none)."""
        return self.config.service(name)

    def target(self, service: str) -> int:
        """The workers ``service`` runs or is starting: its slots."""
        return sum(1 for slot in self._slots if slot.service.name == service)

    def starting(self, service: str) -> int:
        """Slots of ``service`` whose worker is on its way: started and not ready yet, or due to start (not those
        backing off after failed starts, nor those whose library cannot load)."""
        return sum(
            1
            for slot in self._slots
            if slot.service.name == service
            and not slot.ready
            and (slot.process is not None or slot.next_start <= time.monotonic())
        )

    def pids(self, service: str) -> set[int]:
        """The workers of ``service`` in its slots: those a scale-down may retire."""
        return {s.process.pid for s in self._slots if s.service.name == service and s.process is not None}

    def add(self, service: str, count: int, now: float) -> None:
        """``count`` more workers for ``service``: :meth:`poll` starts them, a few per tick, so that the broker
        loop goes on serving while they start."""
        for slot in self._add_slots(self.config.service(service), count):
            slot.next_start = now

    def drop_unready(self, service: str, count: int, registered: set[int]) -> tuple[int, list[int]]:
        """Remove up to ``count`` slots of ``service`` whose worker has not registered with the broker (the pids
        in ``registered`` have), those waiting to start again first: how many went, and the pids of their
        processes, which the broker must retire when they register (asked to stop now, one could register
        and take a call before it heard). They are reaped as leaving processes."""
        unready = [
            s
            for s in self._slots
            if s.service.name == service and (s.process is None or s.process.pid not in registered)
        ]
        unready.sort(key=lambda s: s.process is not None)
        pids = []
        for slot in unready[:count]:
            self._slots.remove(slot)
            if slot.process is not None:
                pids.append(slot.process.pid)
                _ask_to_stop(slot.process)
                self._leaving.append(_Leaving(service, slot.process))
        return min(count, len(unready)), pids

    def retire(self, pid: int, replace: bool, now: float) -> None:
        """The broker retired worker ``pid``: it leaves its slot and finishes its calls, and the slot either starts
        its successor now (``replace``) or goes (the pool was scaled down). Not one of ours (a worker started
        elsewhere): nothing to do, its own supervisor replaces it once it stops."""
        slot = next((s for s in self._slots if s.process is not None and s.process.pid == pid), None)
        if slot is None or slot.process is None:
            return
        self._leaving.append(_Leaving(slot.service.name, slot.process))
        slot.process = None
        if replace:
            slot.recycled += 1
            slot.ready = False
            slot.next_start = now
        else:
            self._slots.remove(slot)

    def describe(self) -> dict[str, Any]:
        """Per service: workers wanted and starting, autoscaling bounds, and each worker's restarts after
        crashes (by pid), for the broker's status."""
        services: dict[str, Any] = {}
        for service in self.config.services:
            slots = [s for s in self._slots if s.service is service]
            services[service.name] = {
                "target": len(slots),
                "ready": sum(1 for s in slots if s.ready),
                "starting": self.starting(service.name),
                "autoscaled": service.autoscaled,
                "min_workers": service.min_workers if service.autoscaled else None,
                "max_workers": service.max_workers if service.autoscaled else None,
                "restarts": {
                    s.process.pid: s.starts - 1 - s.recycled for s in slots if s.process is not None and s.ready
                },
            }
        return {"services": services}

    def stop_all(self, timeout: float = 5.0, wake: Callable[[], None] | None = None) -> None:
        """Ask every worker to stop, then kill what is left: no orphans.

        ``wake`` is called once every worker has its SIGTERM: an idle worker sees it only when its poll ends (at
        its next heartbeat), and a message from the broker ends that poll now.
        """
        self._stopping = True
        for process in self._processes():
            if process.poll() is None:
                _ask_to_stop(process)
        if wake is not None:
            wake()
        deadline = time.monotonic() + timeout
        for process in self._processes():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %.1f s; killing it", process.pid, timeout)
                process.kill()
                process.wait()
        for slot in self._slots:
            slot.process = None
        self._leaving.clear()
        self._spawner.close()


def serve_workers(config: PoolConfig, backend: str, stop: threading.Event, curve: dict[str, str] | None = None) -> None:
    """Run ``config``'s workers against a broker elsewhere until ``stop`` is set, replacing any that die.

    Raises :class:`LibraryLoadError` when a library cannot load in its first worker: as for a Pool,
    that is a start-up error. Later (a replacement that no longer loads) it is logged, and the
    other workers keep serving.
    """
    with RunDir("dllpool-workers-") as folder:
        supervisor = Supervisor(config, backend, make_worker_source(folder), curve, logging.INFO, parent_broker=False)
        supervisor.check_interpreters()
        log.info(
            "connecting workers to the broker backend at %s%s: %s",
            backend,
            " with CURVE" if curve else "",
            ", ".join(f"{s.name} x{s.workers}" for s in config.services),
        )
        supervisor.start_all()
        try:
            while True:
                failure = supervisor.unloadable_at_start()
                if failure is not None:
                    raise failure
                if stop.wait(0.1):
                    return
                supervisor.poll(time.monotonic())
        finally:
            supervisor.stop_all()


def _back_off(slot: _Slot) -> float:
    """Count one more failed start of ``slot``: seconds until it is tried again, doubling each time."""
    slot.failures += 1
    return min(_BACKOFF_FIRST * 2.0 ** (slot.failures - 1), _BACKOFF_MAX)


def _ask_to_stop(process: WorkerProcess) -> None:
    """SIGTERM, or where there are no POSIX signals the end of the worker's stdin (see ``--stop-on-eof``)."""
    if POSIX_SIGNALS:
        process.send_signal(signal.SIGTERM)
    elif process.stdin is not None:
        with contextlib.suppress(OSError):  # it is exiting already
            process.stdin.close()


def how_it_ended(code: int) -> str:
    """A process's return code in words: ``signal SIGKILL``, ``exit code 1``, ``exit code 0xC0000005 (access
    violation)`` (Windows reports a crash as an exit code, not a signal)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    if code in WINDOWS_CRASHES:
        return f"exit code {code:#X} ({WINDOWS_CRASHES[code]})".replace("0X", "0x")
    return f"exit code {code}"


def _how(code: int) -> str:
    """A worker's return code in words, naming the exit codes a worker gives on purpose."""
    if code == EXIT_STARTUP_FAILED:
        return "the wrapper's constructor failed"
    return "cannot load its library" if code == EXIT_UNLOADABLE else how_it_ended(code)


def _forward_stderr(stream: IO[bytes] | None, tail: collections.deque[str], name: str) -> None:
    """Relay a worker's stderr into this process's logging, keeping the last lines for error messages."""
    if stream is None:
        return
    worker_log = logging.getLogger("dllpool.worker")
    with stream:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            tail.append(line)
            worker_log.info("[%s] %s", name, line)
