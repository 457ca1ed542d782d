"""Load tests against a running pool, from Python: what ``dllpool loadtest`` runs, for scripts of one's own.

    from client.loadtest import LoadTest, Scenario

    test = LoadTest(address, Scenario.single("demo", "add", 1, 2), clients=8, in_flight=4, duration=10)
    result = test.run()
    print(result.calls_per_second, result.latency_us["p99"])

Closed loop (the default): each of ``clients`` threads keeps ``in_flight`` calls outstanding, sending the
next as one is answered. Open loop (``rate=R``): calls are sent on a fixed schedule, R per second in all,
and each call's latency counts from the time it was meant to be sent, so a pool that falls behind shows
its queueing in the latencies instead of slowing the sender down (no coordinated omission).

``processes=P`` runs the threads in P child processes (``python -m client.loadtest``, spoken to in JSON
lines on its standard input and output: nothing is pickled), started together and merged into one
result. A load generator needs CPU of its own: one process's threads share one GIL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

from hdrh.histogram import HdrHistogram

from protocol import errors
from protocol.errors import DllPoolError

from .calls import check_timeout
from .client import Client
from .loadtest_result import LoadResult, SecondStats, decode_histogram, encode_histogram, new_histogram, record, summary
from .loadtest_scenario import CallSpec, Scenario

__all__ = ["CallSpec", "LoadResult", "LoadTest", "LoadProgress", "Scenario", "SecondStats"]


DEFAULT_DURATION = 10.0
DEFAULT_TIMEOUT = 10.0
PROGRESS_INTERVAL = 0.5
"""Seconds between progress reports (and between a child process's progress lines)."""
_START_LEAD = 0.05
"""Seconds between starting the senders and the run's start, so that every thread is waiting for it."""
_CHILDREN_LEAD = 0.25
"""The same for child processes, which make their clients and threads once told the start time."""


@dataclasses.dataclass(frozen=True)
class LoadProgress:
    """A running test's figures so far, given to ``run(progress=...)`` every half second."""

    elapsed: float
    calls: int
    """Calls answered so far, with a result or an error."""
    errors: dict[str, int]
    calls_per_second: float
    """Over the last interval."""
    histogram: HdrHistogram
    """Latencies of the successful calls so far, in microseconds."""
    duration: float | None
    requests: int | None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def latency_us(self) -> dict[str, int]:
        return summary(self.histogram)

    @property
    def fraction(self) -> float:
        """How far the run is, from 0 to 1."""
        done = self.calls / self.requests if self.requests else self.elapsed / (self.duration or math.inf)
        return min(1.0, done)


ProgressCallback = Callable[[LoadProgress], None]


def _share(total: int, parts: int, index: int) -> int:
    """Part ``index`` of ``total`` cut into ``parts`` as evenly as possible."""
    return total // parts + (index < total % parts)


class _InFlight:
    """Calls a sender has outstanding: waits for room under ``limit`` (None: no limit), and for none left."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._count = 0
        self._changed = threading.Condition()

    def acquire(self) -> None:
        with self._changed:
            while self._limit is not None and self._count >= self._limit:
                self._changed.wait()
            self._count += 1

    def release(self) -> None:
        with self._changed:
            self._count -= 1
            self._changed.notify_all()

    def drain(self) -> None:
        with self._changed:
            while self._count:
                self._changed.wait()


@dataclasses.dataclass
class _Second:
    calls: int = 0
    errors: int = 0
    histogram: HdrHistogram = dataclasses.field(default_factory=new_histogram)


class _Recorder:
    """Every answer of one process's run, in one histogram per second: recording a latency costs one
    histogram update (hdrh's is Python, a few microseconds). A second is sealed into a SecondStats, and
    added to the whole run's histogram, once no more answers can fall into it."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self._lock = threading.Lock()
        self.histogram = new_histogram()
        """The sealed seconds' latencies."""
        self.calls = 0
        self.errors: Counter[str] = Counter()
        self.last = t0
        self._live: dict[int, _Second] = {}
        self._sealed: list[SecondStats] = []

    def record(self, start: float, error: BaseException | None) -> None:
        done = time.monotonic()
        microseconds = int((done - start) * 1e6)
        index = max(0, int(done - self.t0))
        with self._lock:
            self.calls += 1
            self.last = max(self.last, done)
            second = self._live.get(index)
            if second is None:  # not setdefault: a _Second's histogram is 190 KB to make
                second = self._live[index] = _Second()
            second.calls += 1
            if error is None:
                record(second.histogram, microseconds)
            else:
                self.errors[type(error).__name__] += 1
                second.errors += 1

    def seal(self, final: bool = False) -> None:
        """Seal the seconds no answer can fall into any more (all of them, when ``final``)."""
        current = int(time.monotonic() - self.t0)
        with self._lock:
            done = [s for s in self._live if final or s < current - 1]
            seconds = [(s, self._live.pop(s)) for s in sorted(done)]
            for _, live in seconds:
                self.histogram.add(live.histogram)
        self._sealed += [SecondStats.of(s, live.calls, live.errors, live.histogram) for s, live in seconds]

    def snapshot(self) -> tuple[int, dict[str, int], HdrHistogram]:
        """Calls, errors and the latency histogram so far (a copy), as they are now."""
        copy = new_histogram()
        with self._lock:
            for histogram in [self.histogram, *(live.histogram for live in self._live.values())]:
                copy.add(histogram)
            return self.calls, dict(self.errors), copy

    def result(self, started_at: float, settings: dict[str, Any], interrupted: bool) -> LoadResult:
        self.seal(final=True)
        by_second = {s.second: s for s in self._sealed}
        last = max(by_second, default=-1)
        empty = encode_histogram(new_histogram())
        seconds = [by_second.get(i) or SecondStats(i, 0, 0, summary(new_histogram()), empty) for i in range(last + 1)]
        return LoadResult(
            calls=self.calls,
            errors=dict(self.errors),
            wall_seconds=self.last - self.t0,
            started_at=started_at,
            histogram=self.histogram,
            seconds=seconds,
            settings=settings,
            interrupted=interrupted,
        )


class _Rate:
    """Calls per second between consecutive progress reports."""

    def __init__(self, t0: float) -> None:
        self._at, self._calls = t0, 0

    def __call__(self, now: float, calls: int) -> float:
        span = now - self._at
        rate = (calls - self._calls) / span if span > 0 else 0.0
        self._at, self._calls = now, calls
        return rate


class LoadTest:
    """A load test of the pool at ``address``; :meth:`run` makes the calls and returns a :class:`LoadResult`.

    ``calls``: a :class:`Scenario`, one :class:`CallSpec`, or a ``(service, method, args)`` tuple.
    ``clients``: sending threads in all (shared out over ``processes``). ``in_flight``: calls each keeps
    outstanding (closed loop, default 1), or in the open loop the most each may have outstanding (default:
    no limit). ``rate``: calls per second in all (the open loop). ``duration`` seconds (default 10) or
    ``requests`` calls in all. ``timeout``: each call's limit in seconds; a call past it counts as a
    ``Timeout`` error. ``curve``: the client's CURVE keys, as :class:`client.Client` takes them.

    Errors a call is answered with are counted by type, not raised. Bad settings raise ValueError here;
    :meth:`run` raises a DllPoolError when a child process fails.
    """

    def __init__(
        self,
        address: str,
        calls: Scenario | CallSpec | tuple[str, str, Sequence[Any]],
        *,
        clients: int = 1,
        in_flight: int | None = None,
        rate: float | None = None,
        duration: float | None = None,
        requests: int | None = None,
        processes: int = 1,
        timeout: float | None = DEFAULT_TIMEOUT,
        curve: Mapping[str, str] | None = None,
        seed: int = 0,
    ) -> None:
        self.address = address
        self.scenario = Scenario.of(calls)
        if duration is not None and requests is not None:
            raise ValueError("give duration or requests, not both")
        if duration is None and requests is None:
            duration = DEFAULT_DURATION
        _check_positive("clients", clients, int)
        _check_positive("processes", processes, int)
        if processes > clients:
            raise ValueError(f"{processes} processes need at least as many clients, got {clients}")
        if processes > 1:
            try:  # the children get the calls as JSON
                json.dumps(self.scenario.to_list())
            except (TypeError, ValueError):
                raise ValueError("with processes > 1 the calls' arguments must be JSON values") from None
        for name, value, kind in [("in_flight", in_flight, int), ("requests", requests, int)]:
            if value is not None:
                _check_positive(name, value, kind)
        for name, number in [("rate", rate), ("duration", duration)]:
            if number is not None:
                _check_positive(name, number, float)
        self.clients, self.processes, self.in_flight = clients, processes, in_flight
        self.rate, self.duration, self.requests = rate, duration, requests
        self.timeout = check_timeout(timeout)
        self.curve = dict(curve) if curve is not None else None
        self.seed = seed
        self._senders = range(clients)
        """The global indices of this process's senders: they place its calls in the schedule and quota."""
        self._total_senders = clients
        self._stop = threading.Event()
        self._failure: BaseException | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """What this test runs, as JSON-able values (kept in its result)."""
        return {
            "address": self.address,
            "scenario": self.scenario.describe(),
            "clients": self._total_senders,
            "processes": self.processes,
            "in_flight": self.in_flight,
            "rate": self.rate,
            "duration": self.duration,
            "requests": self.requests,
            "timeout": self.timeout,
            "mode": "open" if self.rate else "closed",
        }

    def stop(self) -> None:
        """End the run early (from another thread or a progress callback): no more calls are sent, the
        outstanding ones are waited for, and :meth:`run` returns a result marked ``interrupted``."""
        self._stop.set()

    def run(self, progress: ProgressCallback | None = None) -> LoadResult:
        """Make the calls; ``progress`` gets a :class:`LoadProgress` every half second. Ctrl-C stops early, as
        :meth:`stop` does."""
        self._stop.clear()
        self._failure = None
        if self.processes > 1:
            return _Children(self).run(progress)
        return self._run_here(progress, None)

    # --- this process's senders --------------------------------------------------------

    def _run_here(self, progress: ProgressCallback | None, start_at: float | None) -> LoadResult:
        """Run this process's senders, starting at Unix time ``start_at`` (default: at once)."""
        lead = _START_LEAD if start_at is None else start_at - time.time()
        t0 = time.monotonic() + lead
        started_at = time.time() + lead
        recorder = _Recorder(t0)
        clients = [Client(self.address, self.timeout, curve=self.curve) for _ in self._senders]
        threads = [
            threading.Thread(target=self._send, args=(c, recorder, g, t0), name=f"loadtest-{g}", daemon=True)
            for c, g in zip(clients, self._senders)
        ]
        rate = _Rate(t0)
        try:
            for thread in threads:
                thread.start()
            while any(t.is_alive() for t in threads):
                try:
                    _join_any(threads, PROGRESS_INTERVAL)
                    recorder.seal()
                    if progress is not None and time.monotonic() >= t0:
                        calls, errors, histogram = recorder.snapshot()
                        now = time.monotonic()
                        progress(LoadProgress(now - t0, calls, errors, rate(now, calls), histogram, *self._span()))
                except KeyboardInterrupt:
                    self._stop.set()
            interrupted = self._stop.is_set()  # by stop() or Ctrl-C (or a failing sender: raised below)
        finally:
            self._stop.set()
            for thread in threads:
                thread.join()
            for c in clients:
                c.close()
        if self._failure is not None:
            raise self._failure
        return recorder.result(started_at, self.settings, interrupted)

    def _span(self) -> tuple[float | None, int | None]:
        return self.duration, self.requests

    def _send(self, client: Client, recorder: _Recorder, sender: int, t0: float) -> None:
        """One client thread: its share of the calls, closed or open loop, then waiting for its answers."""
        total = self._total_senders
        quota = _share(self.requests, total, sender) if self.requests is not None else None
        deadline = t0 + self.duration if self.duration is not None else math.inf
        pick = self.scenario.picker(self.seed * 1_000_003 + sender)
        blocking = self.rate is None and (self.in_flight or 1) == 1
        outstanding = _InFlight(self.in_flight if self.rate else (self.in_flight or 1))
        try:
            if self._stop.wait(max(0.0, t0 - time.monotonic())):
                return
            for n in itertools.count() if quota is None else range(quota):
                if self.rate is not None:
                    start = t0 + (sender + n * total) / self.rate  # the intended send time
                    if start >= deadline or self._stop.wait(max(0.0, start - time.monotonic())):
                        break
                elif time.monotonic() >= deadline or self._stop.is_set():
                    break
                call = pick()
                if blocking:
                    self._call(client, call, recorder)
                    continue
                outstanding.acquire()
                if self.rate is None:
                    start = time.monotonic()
                self._submit(client, call, recorder, start, outstanding)
        except BaseException as exc:  # a defect, not a call's error: end the run and raise it from run()
            self._failure = exc
            self._stop.set()
        finally:
            outstanding.drain()

    @staticmethod
    def _call(client: Client, call: CallSpec, recorder: _Recorder) -> None:
        start = time.monotonic()
        try:
            client.call(call.service, call.method, *call.args)
        except DllPoolError as exc:
            recorder.record(start, exc)
        else:
            recorder.record(start, None)

    @staticmethod
    def _submit(client: Client, call: CallSpec, recorder: _Recorder, start: float, outstanding: _InFlight) -> None:
        def done(future: Future[Any]) -> None:
            recorder.record(start, future.exception())
            outstanding.release()

        try:
            future = client.submit(call.service, call.method, *call.args)
        except DllPoolError as exc:  # arguments that cannot be sent: an error of this call
            recorder.record(start, exc)
            outstanding.release()
        else:
            future.add_done_callback(done)

    # --- as a child process ------------------------------------------------------------

    def _child_spec(self, senders: range) -> dict[str, Any]:
        return {
            "address": self.address,
            "scenario": self.scenario.to_list(),
            "first_sender": senders.start,
            "senders": len(senders),
            "total_senders": self._total_senders,
            "in_flight": self.in_flight,
            "rate": self.rate,
            "duration": self.duration,
            "requests": self.requests,
            "timeout": self.timeout,
            "curve": self.curve,
            "seed": self.seed,
            "processes": self.processes,
        }

    @classmethod
    def _from_child_spec(cls, spec: Mapping[str, Any]) -> LoadTest:
        total = int(spec["total_senders"])
        test = cls(
            spec["address"],
            Scenario.from_list(spec["scenario"]),
            clients=total,
            in_flight=spec["in_flight"],
            rate=spec["rate"],
            duration=spec["duration"],
            requests=spec["requests"],
            timeout=spec["timeout"],
            curve=spec["curve"],
            seed=int(spec["seed"]),
        )
        first = int(spec["first_sender"])
        test._senders = range(first, first + int(spec["senders"]))
        test.processes = int(spec["processes"])
        return test


def _join_any(threads: Sequence[threading.Thread], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for the first thread still running to end."""
    alive = [t for t in threads if t.is_alive()]
    if alive:
        alive[0].join(timeout)


def _check_positive(name: str, value: object, kind: type[int] | type[float]) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (kind is int and not isinstance(value, int)) or not 0 < value < math.inf:  # type: ignore[operator]
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'} above 0, got {value!r}")


class _Children:
    """``processes`` child processes running one LoadTest's senders between them, started at one instant.

    Each child reads its settings as one JSON line, answers ``{"ready": true}``, reads ``{"start_at":
    UNIX_TIME}``, writes ``{"progress": ...}`` lines as it runs and ``{"result": ...}`` (or ``{"error":
    ...}``) at the end. A line ``{"stop": true}`` on its input ends its run early.
    """

    def __init__(self, test: LoadTest) -> None:
        self.test = test
        self._children: list[subprocess.Popen[str]] = []
        self._logs: list[IO[str]] = []
        """Each child's standard error, in a file: a pipe nobody reads could fill up and block it."""
        self._start_at = 0.0
        self._lock = threading.Lock()
        self._latest: dict[int, LoadProgress] = {}
        """Each child's last progress line."""
        self._results: dict[int, LoadResult] = {}
        self._failures: dict[int, str] = {}

    def run(self, progress: ProgressCallback | None) -> LoadResult:
        test = self.test
        shares = [_share(test.clients, test.processes, p) for p in range(test.processes)]
        firsts = [0, *itertools.accumulate(shares)]
        specs = [test._child_spec(range(first, first + share)) for first, share in zip(firsts, shares)]
        with contextlib.ExitStack() as files:
            self._logs = [files.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8")) for _ in specs]
            try:
                self._children = [_spawn_child(log_file) for log_file in self._logs]
                interrupted = self._drive(specs, progress)
            finally:
                for child in self._children:
                    _end_child(child)
        if self._failures:
            raise _child_error(self._failures, len(self._children))
        result = LoadResult.merged(self._results[n] for n in range(len(specs)))
        result.settings = test.settings
        result.interrupted = result.interrupted or interrupted
        return result

    def _drive(self, specs: list[dict[str, Any]], progress: ProgressCallback | None) -> bool:
        """Hand each child its settings, start them all at one instant, follow them to the end."""
        for child, spec in zip(self._children, specs):
            _write_line(child, spec)
        for n, child in enumerate(self._children):
            self._expect_ready(n, child)
        self._start_at = time.time() + _CHILDREN_LEAD
        for child in self._children:
            _write_line(child, {"start_at": self._start_at})
        readers = [
            threading.Thread(target=self._read, args=(n, child), daemon=True) for n, child in enumerate(self._children)
        ]
        for reader in readers:
            reader.start()
        return self._watch(readers, progress)

    def _watch(self, readers: list[threading.Thread], progress: ProgressCallback | None) -> bool:
        """Report progress until every child has answered; True if stopped early (the children stop too)."""
        interrupted = False
        while any(r.is_alive() for r in readers):
            try:
                _join_any(readers, PROGRESS_INTERVAL)
                if self.test._stop.is_set() and not interrupted:
                    interrupted = True
                    self._tell_stop()
                if progress is not None and time.time() >= self._start_at:
                    progress(self._progress())
            except KeyboardInterrupt:  # the children got the terminal's SIGINT too; make sure of the others
                interrupted = True
                self._tell_stop()
        return interrupted

    def _progress(self) -> LoadProgress:
        """The children's last progress lines added up (each child's rate is over its own last interval)."""
        histogram = new_histogram()
        errors: Counter[str] = Counter()
        with self._lock:
            latest = list(self._latest.values())
        for child in latest:
            histogram.add(child.histogram)
            errors.update(child.errors)
        calls, rate = sum(c.calls for c in latest), sum(c.calls_per_second for c in latest)
        return LoadProgress(time.time() - self._start_at, calls, dict(errors), rate, histogram, *self.test._span())

    def _expect_ready(self, n: int, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        line = child.stdout.readline()
        message = _parse_line(line)
        if message.get("ready") is not True:
            child.wait()
            self._failures[n] = str(message.get("error") or self._stderr_of(n) or f"it said {line!r}")
            raise _child_error(self._failures, len(self._children))

    def _read(self, n: int, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            message = _parse_line(line)
            if "progress" in message:
                figures = message["progress"]
                latest = LoadProgress(
                    float(figures["elapsed"]),
                    int(figures["calls"]),
                    dict(figures["errors"]),
                    float(figures["calls_per_second"]),
                    decode_histogram(figures["histogram"]),
                    *self.test._span(),
                )
                with self._lock:
                    self._latest[n] = latest
            elif "result" in message:
                self._results[n] = LoadResult.from_dict(message["result"])
            elif "error" in message:
                self._failures[n] = str(message["error"])
        if n not in self._results and n not in self._failures:
            child.wait()
            self._failures[n] = self._stderr_of(n) or f"it ended (exit status {child.returncode}) without a result"

    def _stderr_of(self, n: int) -> str:
        """The last lines child ``n`` wrote to its standard error (it has ended)."""
        self._logs[n].seek(0)
        return " | ".join(self._logs[n].read().strip().splitlines()[-3:])

    def _tell_stop(self) -> None:
        for child in self._children:
            try:
                _write_line(child, {"stop": True})
            except (OSError, ValueError):  # that child has ended and its input is closed
                continue


def _spawn_child(stderr: IO[str]) -> subprocess.Popen[str]:
    """``python -m client.loadtest`` with this checkout (or installation) first on its path."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "client.loadtest"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )


def _end_child(child: subprocess.Popen[str]) -> None:
    """Close a child's input (one still waiting for its settings or start then ends), wait a little for it
    to end on its own, then kill it."""
    with contextlib.suppress(OSError):  # it has ended and the pipe is broken
        if child.stdin is not None:
            child.stdin.close()
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    if child.stdout is not None:
        child.stdout.close()


def _write_line(child: subprocess.Popen[str], message: Mapping[str, Any]) -> None:
    assert child.stdin is not None
    child.stdin.write(json.dumps(message) + "\n")
    child.stdin.flush()


def _parse_line(line: str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _child_error(failures: Mapping[int, str], processes: int) -> DllPoolError:
    """The first child's failure, as the DllPoolError type it named (``"Timeout: ..."``), else a DllPoolError."""
    n, text = min(failures.items())
    name, _, message = text.partition(": ")
    kind = getattr(errors, name, None)
    where = f"load-test process {n + 1} of {processes} failed"
    if isinstance(kind, type) and issubclass(kind, DllPoolError) and message:
        return kind(f"{where}: {message}")
    return DllPoolError(f"{where}: {text}")


# --- the child's side ------------------------------------------------------------------


def _child_main(stdin: IO[str], stdout: IO[str]) -> int:
    """Run one child's share of a load test, as :class:`_Children` asks (JSON lines both ways)."""
    lock = threading.Lock()

    def say(message: Mapping[str, Any]) -> None:
        with lock:
            stdout.write(json.dumps(message) + "\n")
            stdout.flush()

    try:
        test = LoadTest._from_child_spec(json.loads(stdin.readline()))
        say({"ready": True})
        start_at = float(json.loads(stdin.readline())["start_at"])
        threading.Thread(target=_stop_on_request, args=(test, stdin), daemon=True).start()

        def report(progress: LoadProgress) -> None:
            figures = {"elapsed": progress.elapsed, "calls": progress.calls, "errors": progress.errors}
            rate, histogram = progress.calls_per_second, encode_histogram(progress.histogram)
            say({"progress": {**figures, "calls_per_second": rate, "histogram": histogram}})

        result = test._run_here(report, start_at)
    except Exception as exc:  # the process's boundary: the parent raises it, with its type if it is ours
        say({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    say({"result": result.to_dict()})
    return 0


def _stop_on_request(test: LoadTest, stdin: IO[str]) -> None:
    """Stop when the parent asks, or when it is gone (its end of the pipe closed: killed, or interrupted)."""
    for line in stdin:
        if _parse_line(line).get("stop"):
            break
    test.stop()


if __name__ == "__main__":
    sys.exit(_child_main(sys.stdin, sys.stdout))
