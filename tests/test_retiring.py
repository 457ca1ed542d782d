"""Sans-io tests of retiring workers (recycling, scaling down), the autoscaling policy, status figures."""

from __future__ import annotations

import pytest

from broker.autoscale import Autoscaler, Load
from broker.core import Action, BrokerCore, KillWorker, Retire, Scale, ServicePolicy
from broker.metrics import MAX_ERROR_TYPES, OTHER_ERRORS, Latencies, ServiceMeter
from protocol import frames as wire
from protocol import pack_call, unpack_value
from protocol.errors import BadRequest, ProtocolError, error_from_wire

from .test_core import answers, make_core, only_work, ready, reply, request, work, worker_commands


def retires(actions: list[Action]) -> list[Retire]:
    return [a for a in actions if isinstance(a, Retire)]


def heartbeat(core: BrokerCore, ident: bytes, now: float, **figures: int) -> list[Action]:
    return core.worker_message(ident, wire.worker_heartbeat(figures), now)


# ============================================================ recycling


def test_a_worker_past_max_calls_finishes_its_call_is_replaced_and_stopped() -> None:
    core = make_core(ServicePolicy("s", max_calls_per_worker=2))
    ready(core, b"w", 10)
    for n in (1, 2):
        job = only_work(request(core, b"c", n, now=n))[1].job
        actions = reply(core, b"w", job, now=n)
        assert [a.corr for _, a in answers(actions)] == [n]  # every call answered, the last one too
    assert retires(actions) == [Retire(10, None, "it served 2 calls (max_calls_per_worker)", True)]
    assert worker_commands(actions, b"w") == [wire.StopToWorker]
    assert core.worker_pids() == []
    assert core.stats["workers_retired"] == 1 and core.stats["workers_lost"] == 0
    assert core.status(3.0)["services"]["s"]["recycled"] == 1
    assert core.worker_message(b"w", wire.worker_disconnect(), 3.0) == []  # its goodbye is expected, not a stranger's


def test_a_retiring_worker_takes_no_new_call_and_stops_once_its_calls_are_done() -> None:
    core = make_core(ServicePolicy("s", max_worker_rss=100 << 20))
    ready(core, b"w", 10, threads=2)
    job = only_work(request(core, b"c", 1))[1].job
    actions = heartbeat(core, b"w", 1.0, rss=200 << 20)
    assert [r.pid for r in retires(actions)] == [10] and worker_commands(actions, b"w") == []
    assert work(request(core, b"c", 2, now=1.0)) == []  # queued: the free slot of a retiring worker is not used
    ready(core, b"new", 11, now=1.1)  # its successor registers
    actions = reply(core, b"w", job, now=1.2)
    assert worker_commands(actions, b"w") == [wire.StopToWorker]
    assert core.worker_pids() == [11]


def test_a_floor_on_free_address_space_retires_a_worker() -> None:
    core = make_core(ServicePolicy("s", min_free_address_space=64 << 20))
    ready(core, b"w", 10)
    reply(core, b"w", only_work(request(core, b"c", 1))[1].job)
    assert retires(heartbeat(core, b"w", 1.0, rss=1, address_space_free=65 << 20)) == []
    assert core.status(1.0)["services"]["s"]["workers"][0]["address_space_free"] == 65 << 20
    assert [r.replace for r in retires(heartbeat(core, b"w", 2.0, address_space_free=63 << 20))] == [True]


def test_a_fresh_worker_already_past_a_limit_is_not_recycled_forever(caplog: pytest.LogCaptureFixture) -> None:
    core = make_core(ServicePolicy("s", max_worker_rss=1 << 20))
    for n in range(2):
        ready(core, bytes([n]), 10 + n)
        assert retires(heartbeat(core, bytes([n]), 1.0, rss=20 << 20)) == []
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1  # said once, loudly
    assert "fix the limit" in caplog.records[0].message and caplog.records[0].levelname == "ERROR"


def test_a_call_pinned_to_a_worker_before_it_retires_still_runs_there() -> None:
    core = make_core(ServicePolicy("s", max_calls_per_worker=1))
    ready(core, b"w", 10)
    first = only_work(request(core, b"c", 1))[1].job
    pinned = wire.client_request(2, "s", "m", None, pack_call([], {}), pin=10)
    assert work(core.client_message(b"c", pinned, 0.1)) == []  # waits for the worker's one run slot
    actions = reply(core, b"w", first, now=0.2)  # its last call: it retires, and its pinned call runs
    assert retires(actions) and [w for w, _ in work(actions)] == [b"w"]
    actions = reply(core, b"w", work(actions)[0][1].job, now=0.3)
    assert [a.corr for _, a in answers(actions)] == [2] and worker_commands(actions, b"w") == [wire.StopToWorker]


def test_a_retiring_worker_whose_call_hangs_is_killed() -> None:
    core = make_core(ServicePolicy("s", max_calls_per_worker=1), kill_grace=1.0)
    ready(core, b"w", 10, threads=2)
    reply(core, b"w", only_work(request(core, b"c", 1))[1].job)
    assert core.worker_pids() == []  # retiring: it had nothing else, so it was stopped already
    ready(core, b"v", 11, threads=2)
    only_work(request(core, b"c", 2, timeout=1.0))
    done = only_work(request(core, b"c", 3))[1].job
    assert retires(reply(core, b"v", done, now=0.5))  # past its limit, one call still running
    assert core.tick(1.5) and core.worker_message(b"v", wire.worker_heartbeat(), 1.5) == []  # deadline seen
    assert [a.pid for a in core.tick(2.6) if isinstance(a, KillWorker)] == [11]  # and kill_grace is over


def test_a_session_worker_is_retired_only_when_its_session_ends() -> None:
    core = make_core(ServicePolicy("s", max_calls_per_worker=1))
    ready(core, b"w", 10)
    lease = core.client_message(b"c", wire.client_request(1, "s", wire.LEASE, None, pack_call([], {})), 0.0)
    assert unpack_value(answers(lease)[0][1].payload) == {"pid": 10}
    pinned = wire.client_request(2, "s", "m", None, pack_call([], {}), pin=10)
    job = only_work(core.client_message(b"c", pinned, 0.1))[1].job
    actions = reply(core, b"w", job, now=0.2)
    assert retires(actions) and worker_commands(actions, b"w") == []  # the session goes on on this worker
    pinned = wire.client_request(3, "s", "m", None, pack_call([], {}), pin=10)
    job = only_work(core.client_message(b"c", pinned, 0.3))[1].job
    reply(core, b"w", job, now=0.4)
    release = wire.client_request(4, "s", wire.RELEASE, None, pack_call([], {}), pin=10)
    assert worker_commands(core.client_message(b"c", release, 0.5), b"w") == [wire.StopToWorker]


# ============================================================ scaling down


def test_scaling_down_retires_idle_workers_first_and_never_a_call() -> None:
    core = make_core()
    for n in range(3):
        ready(core, bytes([n]), 10 + n)
    busy = only_work(request(core, b"c", 1))[0]
    actions = core.retire("s", 2, {10, 11, 12}, 1.0)
    assert sorted(r.pid for r in retires(actions)) == sorted({10, 11, 12} - {10 + busy[0]})
    assert all(not r.replace for r in retires(actions))
    assert core.worker_pids() == [10 + busy[0]]


def test_a_busy_worker_scaled_away_answers_first() -> None:
    core = make_core()
    ready(core, b"w", 10)
    job = only_work(request(core, b"c", 1))[1].job
    actions = core.retire("s", 1, {10}, 1.0)
    assert worker_commands(actions, b"w") == []
    actions = reply(core, b"w", job, now=2.0)
    assert [a.corr for _, a in answers(actions)] == [1]
    assert worker_commands(actions, b"w") == [wire.StopToWorker]


def test_a_worker_still_starting_when_scaled_away_is_stopped_when_it_registers() -> None:
    core = make_core()
    core.unwanted.add(("here", 10))
    elsewhere = {"service": "s", "threads": 1, "pid": 10, "host": "there"}
    assert worker_commands(core.worker_message(b"x", wire.worker_ready(elsewhere), 0.0), b"x") == []  # not ours
    core.worker_message(b"x", wire.worker_disconnect(), 0.0)
    mine = {"service": "s", "threads": 1, "pid": 10, "host": "here"}
    assert worker_commands(core.worker_message(b"w", wire.worker_ready(mine), 0.0), b"w") == [wire.StopToWorker]
    assert core.worker_pids() == []
    assert work(request(core, b"c", 1)) == []


def test_a_worker_forked_late_is_retired_after_its_calls_or_stopped_when_it_registers() -> None:
    """``stop_unowned``: a registered one finishes its call, is not replaced, then gets STOP, and again should it
    come back on a new socket; one not registered yet gets STOP when it does; another host's pid is not touched."""
    core = make_core()
    mine = {"service": "s", "threads": 1, "pid": 10, "host": "here"}
    core.worker_message(b"w", wire.worker_ready(mine), 0.0)
    job = only_work(request(core, b"c", 1))[1].job
    actions = core.stop_unowned("here", 10, 1.0)
    assert [(r.pid, r.replace) for r in retires(actions)] == [(10, False)] and worker_commands(actions, b"w") == []
    actions = reply(core, b"w", job, now=2.0)
    assert [a.corr for _, a in answers(actions)] == [1]
    assert worker_commands(actions, b"w") == [wire.StopToWorker]
    again = core.worker_message(b"w2", wire.worker_ready(mine), 2.5)  # back on a new socket, before it exited
    assert worker_commands(again, b"w2") == [wire.StopToWorker] and core.worker_pids() == []
    assert core.stop_unowned("here", 11, 3.0) == []
    late = {"service": "s", "threads": 1, "pid": 11, "host": "here"}
    assert worker_commands(core.worker_message(b"late", wire.worker_ready(late), 3.1), b"late") == [wire.StopToWorker]
    theirs = {"service": "s", "threads": 1, "pid": 12, "host": "there"}
    core.worker_message(b"x", wire.worker_ready(theirs), 4.0)
    assert core.stop_unowned("here", 12, 4.1) == [] and core.worker_pids() == [12]


def test_scale_requests_become_actions_and_bad_ones_errors() -> None:
    core = make_core()
    actions = core.client_message(b"c", wire.client_request(1, "s", wire.SCALE, None, pack_call([3], {})), 0.0)
    assert actions == [Scale("s", 3, b"c", 1)]
    for bad in ([-1], ["3"], [True], [], [1, 2]):
        actions = core.client_message(b"c", wire.client_request(2, "s", wire.SCALE, None, pack_call(bad, {})), 0.0)
        assert isinstance(error_from_wire(answers(actions)[0][1].error), BadRequest)
    garbage = core.client_message(b"c", wire.client_request(3, "s", wire.SCALE, None, [b"\xc1"]), 0.0)
    assert isinstance(error_from_wire(answers(garbage)[0][1].error), BadRequest)


# ============================================================ status


def test_status_counts_calls_errors_and_latency_per_service() -> None:
    core = make_core()
    ready(core, b"w", 10)
    for n, now in ((1, 1.0), (2, 2.0)):
        job = only_work(request(core, b"c", n, now=now))[1].job
        reply(core, b"w", job, now=now + 0.01)
    job = only_work(request(core, b"c", 3, now=3.0))[1].job
    error = wire.worker_error(job, {"type": "RemoteError", "message": "no", "details": {}})
    core.worker_message(b"w", error, 3.5)
    request(core, b"c", 4, service="nope")
    status = core.status(4.0)
    service = status["services"]["s"]
    assert service["calls"] == 3 and service["errors"] == {"RemoteError": 1}
    assert service["latency_since_start"]["max"] == pytest.approx(0.5)
    assert 0.0099 <= service["latency_since_start"]["p50"] <= 0.012
    assert service["workers"][0] | {"uptime": 0} == {
        "pid": 10,
        "host": None,
        "bits": 32,
        "threads": 1,
        "state": "idle",
        "running": 0,
        "calls": 3,
        "uptime": 0,
        "restarts": None,
        "rss": None,
        "address_space_free": None,
        "retiring": None,
    }
    assert status["totals"]["workers"] == 1 and status["totals"]["errors"] == 1


def test_status_answers_a_client_for_any_service_name() -> None:
    core = make_core()
    actions = core.client_message(b"c", wire.client_request(1, "*", wire.STATUS, None, pack_call([], {})), 0.0)
    assert set(unpack_value(answers(actions)[0][1].payload)) == {"broker", "services", "totals", "counters"}


def test_heartbeat_figures_are_checked() -> None:
    assert wire.parse_worker(wire.worker_heartbeat({"rss": 5})) == wire.WorkerHeartbeat({"rss": 5})
    assert wire.parse_worker(wire.worker_heartbeat()) == wire.WorkerHeartbeat(None)
    unknown = [*wire.worker_heartbeat(), wire.pack_header({"rss": 1, "color": "red"})]
    assert wire.parse_worker(unknown) == wire.WorkerHeartbeat({"rss": 1})
    for bad in (-1, "1", True, 2.5):
        frames = [*wire.worker_heartbeat(), wire.pack_header({"rss": bad})]
        with pytest.raises(ProtocolError):
            wire.parse_worker(frames)
    assert isinstance(wire.parse_for_worker(wire.stop_to_worker()), wire.StopToWorker)


def test_error_types_a_worker_names_are_counted_within_a_bound() -> None:
    """A worker (a library raising ever new exception types, or a hostile peer) cannot grow the counts."""
    core = make_core()
    ready(core, b"w", 10)
    for n in range(1, MAX_ERROR_TYPES + 11):
        job = only_work(request(core, b"c", n, now=float(n)))[1].job
        error = {"type": f"Error{n}", "message": "no", "details": {}}
        core.worker_message(b"w", wire.worker_error(job, error), float(n))
    errors = core.status(100.0)["services"]["s"]["errors"]
    assert len(errors) == MAX_ERROR_TYPES + 1 and errors[OTHER_ERRORS] == 10
    assert sum(errors.values()) == MAX_ERROR_TYPES + 10


def test_a_meter_reports_the_recent_windows_only() -> None:
    meter = ServiceMeter()
    meter.rotate(0.0)
    for _ in range(10):
        meter.record(1.0)
    meter.rotate(6.0)
    meter.rotate(12.0)  # the second rotation drops the slow calls from the recent figures
    meter.record(0.001)
    snapshot = meter.snapshot(13.0)
    assert snapshot["latency"]["max"] == 0.001 and snapshot["latency_since_start"]["max"] == 1.0
    assert snapshot["calls_per_s"] == pytest.approx(1 / 7)


def test_latency_percentiles_are_within_a_bucket() -> None:
    latencies = Latencies()
    for ms in range(1, 1001):
        latencies.record(ms / 1000)
    for percent in (50, 90, 99):
        found = latencies.percentile(percent)
        assert found is not None and percent / 100 <= found <= percent / 100 * 1.19
    assert latencies.percentile(100) == 1.0 and Latencies().percentile(50) is None


# ============================================================ autoscaling


def load(workers: int, queued: int = 0, wait: float = 0.0, free: int = 0, starting: int = 0) -> Load:
    return Load(workers=workers, starting=starting, queued=queued, queue_wait=wait, free_slots=free, threads=1)


def test_autoscaler_grows_by_what_the_queue_needs_up_to_max() -> None:
    scaler = Autoscaler(low=1, high=8, wait=0.1, cooldown=10.0)
    assert scaler.target(0.0, load(1, queued=3, wait=0.05)) == 1  # not waited long enough
    assert scaler.target(0.1, load(1, queued=3, wait=0.1)) == 4
    assert scaler.target(0.2, load(4, queued=3, wait=0.2, starting=3)) == 4  # the new ones are on their way
    assert scaler.target(0.5, load(4, queued=100, wait=0.5)) == 8


def test_autoscaler_grows_by_a_whole_worker_for_each_session_waiting_for_one() -> None:
    scaler = Autoscaler(low=1, high=8, wait=0.1, cooldown=10.0)
    sessions = Load(workers=1, starting=0, queued=2, queue_wait=0.2, free_slots=0, threads=4, leases=3)
    assert scaler.target(0.0, sessions) == 5, "a worker for each of the 3 sessions, one for the 2 queued calls"
    waiting = Load(workers=2, starting=0, queued=0, queue_wait=0.0, free_slots=4, threads=4, leases=1)
    assert scaler.target(20.0, waiting) == 2 and scaler.target(40.0, waiting) == 2, "not quiet while one waits"


def test_autoscaler_shrinks_after_a_quiet_cooldown_by_the_workers_idle_throughout() -> None:
    scaler = Autoscaler(low=2, high=8, wait=0.1, cooldown=10.0)
    assert scaler.target(0.0, load(8, free=6)) == 8
    assert scaler.target(5.0, load(8, free=3)) == 8
    assert scaler.target(9.9, load(8, free=6)) == 8
    assert scaler.target(10.0, load(8, free=6)) == 5  # three workers were idle throughout
    assert scaler.target(11.0, load(5, free=5)) == 5  # the next change waits for another cooldown
    assert scaler.target(25.0, load(5, free=5)) == 2  # never below min_workers


def test_autoscaler_forgets_a_quiet_spell_broken_by_a_queue() -> None:
    scaler = Autoscaler(low=1, high=4, wait=0.1, cooldown=10.0)
    scaler.target(0.0, load(4, free=4))
    scaler.target(5.0, load(4, queued=1, wait=0.01))
    assert scaler.target(10.0, load(4, free=4)) == 4
    assert scaler.target(20.0, load(4, free=4)) == 1
