"""Unit tests of the sans-io broker core: events in, actions out, explicit clock, no sockets."""

from __future__ import annotations

import signal
import struct
from collections import Counter, defaultdict
from typing import Any, ClassVar

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.core import EXIT_REPORT_WAIT, Action, BrokerCore, KillWorker, ServicePolicy, ToClient, ToWorker
from protocol import frames as wire
from protocol.errors import (
    BadRequest,
    BrokerUnavailable,
    Busy,
    CallError,
    RemoteError,
    Timeout,
    UnknownService,
    WorkerCrashed,
    error_from_wire,
)

# ============================================================ helpers


def make_core(*policies: ServicePolicy, **kwargs: Any) -> BrokerCore:
    return BrokerCore(list(policies) or [ServicePolicy("s")], **kwargs)


def ready(
    core: BrokerCore, ident: bytes, pid: int, now: float = 0.0, service: str = "s", threads: int = 1
) -> list[Action]:
    info = {"service": service, "threads": threads, "pid": pid, "pointer_size": 4}
    return core.worker_message(ident, wire.worker_ready(info), now)


def cid(ident: bytes | int) -> int:
    """Correlation and job IDs are u64 on the wire; the tests name them with short byte strings."""
    return ident if isinstance(ident, int) else int.from_bytes(ident, "big")


def request(
    core: BrokerCore,
    client: bytes,
    corr: bytes | int,
    now: float = 0.0,
    service: str = "s",
    method: str = "m",
    timeout: float | None = None,
    body: bytes | None = None,
) -> list[Action]:
    payload = [body if body is not None else client + b"/" + (corr if isinstance(corr, bytes) else str(corr).encode())]
    return core.client_message(client, wire.client_request(cid(corr), service, method, timeout, payload), now)


def reply(core: BrokerCore, worker: bytes, job: bytes | int, now: float = 0.0, body: bytes = b"result") -> list[Action]:
    return core.worker_message(worker, wire.worker_reply(cid(job), [body]), now)


def work(actions: list[Action]) -> list[tuple[bytes, wire.WorkerRequest]]:
    """The requests dispatched to workers, as (worker ident, parsed request)."""
    out = []
    for action in actions:
        if isinstance(action, ToWorker):
            msg = wire.parse_for_worker(action.frames)
            if isinstance(msg, wire.WorkerRequest):
                out.append((action.ident, msg))
    return out


def answers(actions: list[Action]) -> list[tuple[bytes, wire.ReplyToClient]]:
    """Replies and errors sent to clients, as (client ident, parsed answer)."""
    out = []
    for action in actions:
        if isinstance(action, ToClient):
            msg = wire.parse_for_client(action.frames)
            if isinstance(msg, wire.ReplyToClient):
                out.append((action.ident, msg))
    return out


def only_work(actions: list[Action]) -> tuple[bytes, wire.WorkerRequest]:
    dispatched = work(actions)
    assert len(dispatched) == 1, f"expected one dispatch, got {dispatched}"
    return dispatched[0]


def only_answer(actions: list[Action]) -> tuple[bytes, wire.ReplyToClient]:
    sent = answers(actions)
    assert len(sent) == 1, f"expected one answer, got {sent}"
    return sent[0]


def only_error(actions: list[Action], client: bytes, corr: bytes | int) -> CallError:
    ident, msg = only_answer(actions)
    assert (ident, msg.corr) == (client, cid(corr))
    assert msg.error is not None, f"expected an error, got a result {msg.payload}"
    return error_from_wire(msg.error)


def worker_commands(actions: list[Action], ident: bytes) -> list[type]:
    return [type(wire.parse_for_worker(a.frames)) for a in actions if isinstance(a, ToWorker) and a.ident == ident]


def kills(actions: list[Action]) -> list[int]:
    return [a.pid for a in actions if isinstance(a, KillWorker)]


# ============================================================ routing


def test_unknown_service_names_the_existing_services() -> None:
    core = make_core(ServicePolicy("alpha"), ServicePolicy("beta"))
    error = only_error(request(core, b"c", b"1", service="gamma"), b"c", b"1")
    assert isinstance(error, UnknownService)
    assert "gamma" in error.message
    assert "alpha" in error.message
    assert "beta" in error.message
    assert error.details["services"] == ["alpha", "beta"]
    assert core.pending() == 0


def test_client_heartbeat_is_answered() -> None:
    core = make_core()
    actions = core.client_message(b"c", wire.client_heartbeat(), 0.0)
    assert len(actions) == 1
    action = actions[0]
    assert isinstance(action, ToClient)
    assert action.ident == b"c"
    assert isinstance(wire.parse_for_client(action.frames), wire.HeartbeatToClient)


def test_request_is_queued_until_a_worker_is_ready_and_reply_goes_back() -> None:
    core = make_core()
    assert request(core, b"client-1", b"\x01\x02", method="add", body=b"args") == []
    assert core.pending() == 1

    ident, job = only_work(ready(core, b"w1", 101, now=0.5))
    assert ident == b"w1"
    assert job.method == "add"
    assert job.timeout is None
    assert [bytes(p) for p in job.payload] == [b"args"]
    assert core.ready_workers("s") == 1
    assert core.worker_pids("s") == [101]

    client, answer = only_answer(reply(core, b"w1", job.job, now=0.6, body=b"42"))
    assert client == b"client-1"
    assert answer.corr == cid(b"\x01\x02")
    assert answer.error is None
    assert [bytes(p) for p in answer.payload] == [b"42"]
    assert core.pending() == 0
    assert core.stats["replies"] == 1


def test_worker_error_is_forwarded_to_the_caller() -> None:
    core = make_core()
    ready(core, b"w1", 1)
    _, job = only_work(request(core, b"c", b"1"))
    error = {"type": "RemoteError", "message": "boom", "details": {"remote_traceback": "tb"}}
    actions = core.worker_message(b"w1", wire.worker_error(job.job, error), 0.1)
    err = only_error(actions, b"c", b"1")
    assert isinstance(err, RemoteError)
    assert err.message == "boom"
    assert core.stats["errors"] == 1


def test_request_with_timeout_tells_the_worker_the_time_left() -> None:
    core = make_core()
    request(core, b"c", b"1", now=10.0, timeout=2.0)
    _, job = only_work(ready(core, b"w", 1, now=10.5))
    assert job.timeout == pytest.approx(1.5)


def test_lru_least_recently_used_worker_gets_the_next_request() -> None:
    core = make_core()
    for n, ident in enumerate((b"w1", b"w2", b"w3")):
        assert ready(core, ident, 100 + n, now=0.0) == []
    first = [only_work(request(core, b"c", bytes([i]))) for i in range(3)]
    assert [ident for ident, _ in first] == [b"w1", b"w2", b"w3"], "idle workers are used in the order they came"
    jobs = {ident: job.job for ident, job in first}
    # they become idle again in the order w2, w3, w1
    for now, ident in ((1.0, b"w2"), (2.0, b"w3"), (3.0, b"w1")):
        only_answer(reply(core, ident, jobs[ident], now=now))
    second = [only_work(request(core, b"c", bytes([10 + i]), now=4.0))[0] for i in range(3)]
    assert second == [b"w2", b"w3", b"w1"]


def test_worker_with_three_threads_runs_three_requests_at_once() -> None:
    core = make_core()
    ready(core, b"w", 7, threads=3)
    running = [only_work(request(core, b"c", bytes([i])))[1] for i in range(3)]
    assert len({job.job for job in running}) == 3
    assert request(core, b"c", b"\x03") == [], "the fourth request waits"
    assert core.pending() == 4
    actions = reply(core, b"w", running[1].job, now=1.0)
    assert only_answer(actions)[1].corr == cid(b"\x01")
    ident, fourth = only_work(actions)
    assert ident == b"w"
    assert [bytes(p) for p in fourth.payload] == [b"c/\x03"]


def test_slots_of_a_threaded_worker_and_a_single_worker_are_shared_lru() -> None:
    core = make_core()
    ready(core, b"a", 1, threads=2)
    ready(core, b"b", 2, threads=1)
    targets = [only_work(request(core, b"c", bytes([i])))[0] for i in range(3)]
    assert sorted(targets) == [b"a", b"a", b"b"]
    assert request(core, b"c", b"\x09") == []


def test_same_corr_from_many_clients_gets_each_its_own_reply() -> None:
    core = make_core()
    ready(core, b"w", 1, threads=4)
    clients = [b"alice", b"bob", b"carol", b"dave"]
    jobs = {}
    for client in clients:
        _, job = only_work(request(core, client, b"\x00\x01", body=b"from " + client))
        jobs[client] = job
    for client in reversed(clients):
        job = jobs[client]
        ident, answer = only_answer(reply(core, b"w", job.job, body=bytes(job.payload[0])))
        assert ident == client
        assert answer.corr == cid(b"\x00\x01")
        assert [bytes(p) for p in answer.payload] == [b"from " + client]
    assert core.pending() == 0


def test_reply_for_a_job_the_worker_does_not_hold_is_dropped() -> None:
    core = make_core()
    ready(core, b"w1", 1)
    ready(core, b"w2", 2)
    ident, job = only_work(request(core, b"c", b"1"))
    assert ident == b"w1"
    # from another worker
    assert reply(core, b"w2", job.job, body=b"forged") == []
    assert core.stats["bad_worker_messages"] == 1
    # an unknown job ID from the right worker
    assert reply(core, b"w1", 2**64 - 1, body=b"forged") == []
    assert core.stats["bad_worker_messages"] == 2
    assert core.pending() == 1
    # w2's slot was not freed twice: one request only gets one worker
    client, answer = only_answer(reply(core, b"w1", job.job, body=b"real"))
    assert client == b"c"
    assert [bytes(p) for p in answer.payload] == [b"real"]
    # the job is gone: a duplicate reply is dropped
    assert reply(core, b"w1", job.job, body=b"again") == []
    assert core.stats["bad_worker_messages"] == 3
    assert core.stats["replies"] == 1


def test_forged_reply_does_not_free_a_slot() -> None:
    core = make_core()
    ready(core, b"w1", 1)
    only_work(request(core, b"c", b"1"))
    reply(core, b"w1", 999_999)
    assert request(core, b"c", b"2") == [], "w1 is still busy with the real job"


# ============================================================ crashes


def test_worker_crash_answers_its_jobs_and_queued_requests_go_elsewhere() -> None:
    core = make_core()
    ready(core, b"w1", 111, threads=2)
    ready(core, b"w2", 222)
    sent = [only_work(request(core, b"c", bytes([i]), method="compute")) for i in range(3)]
    on_w1 = [job for ident, job in sent if ident == b"w1"]
    on_w2 = [job for ident, job in sent if ident == b"w2"]
    assert len(on_w1) == 2
    assert len(on_w2) == 1
    assert request(core, b"c", b"\x0a") == []
    assert request(core, b"c", b"\x0b") == []

    actions = core.worker_exited(111, -11, now=1.0)
    assert work(actions) == [], "no worker is free yet"
    crashed = answers(actions)
    assert len(crashed) == 2
    corrs = set()
    for client, answer in crashed:
        assert client == b"c"
        corrs.add(answer.corr)
        error = error_from_wire(answer.error)
        assert isinstance(error, WorkerCrashed)
        assert "s.compute" in error.message
        assert "111" in error.message
        assert "signal 11" in error.message
        assert error.details["pid"] == 111
        assert error.details["service"] == "s"
        assert error.details["method"] == "compute"
        assert error.details["returncode"] == -11
    assert len(corrs) == 2
    assert core.worker_pids() == [222]
    assert core.stats["workers_lost"] == 1

    # the queued requests go to the remaining worker, in order
    actions = reply(core, b"w2", on_w2[0].job, now=2.0)
    ident, job = only_work(actions)
    assert ident == b"w2"
    assert [bytes(p) for p in job.payload] == [b"c/\x0a"]
    ident, job = only_work(reply(core, b"w2", job.job, now=3.0))
    assert (ident, bytes(job.payload[0])) == (b"w2", b"c/\x0b")
    # a late message from the dead worker is not trusted
    assert reply(core, b"w1", on_w1[0].job) == [ToWorker(b"w1", wire.disconnect_to_worker())]


def test_worker_exit_code_is_reported() -> None:
    core = make_core()
    ready(core, b"w", 5)
    request(core, b"c", b"1")
    error = only_error(core.worker_exited(5, 3, 1.0), b"c", b"1")
    assert "exit code 3" in error.message
    assert error.details["returncode"] == 3


def test_exit_of_an_unknown_pid_is_ignored() -> None:
    core = make_core()
    ready(core, b"w", 5)
    assert core.worker_exited(99, 0, 1.0) == []
    assert core.worker_pids() == [5]


def test_idempotent_method_is_redispatched_once_then_crashes() -> None:
    core = make_core(ServicePolicy("s", idempotent=frozenset({"safe"})))
    ready(core, b"w1", 1)
    only_work(request(core, b"c", b"1", method="safe", body=b"args"))
    ready(core, b"w2", 2, now=0.5)

    actions = core.worker_exited(1, -9, now=1.0)
    assert answers(actions) == [], "an idempotent call is retried, not answered"
    ident, second = only_work(actions)
    assert ident == b"w2"
    assert second.method == "safe"
    assert [bytes(p) for p in second.payload] == [b"args"]
    assert core.stats["retried"] == 1

    ready(core, b"w3", 3, now=1.5)
    actions = core.worker_exited(2, -9, now=2.0)
    assert work(actions) == [], "a call is retried once only"
    error = only_error(actions, b"c", b"1")
    assert isinstance(error, WorkerCrashed)
    assert error.details["pid"] == 2
    assert core.pending() == 0


def test_idempotent_retry_waits_in_queue_front_when_no_worker_is_free() -> None:
    core = make_core(ServicePolicy("s", idempotent=frozenset({"safe"})))
    ready(core, b"w1", 1)
    only_work(request(core, b"c", b"1", method="safe"))
    request(core, b"c", b"2", method="other")
    assert core.worker_exited(1, -9, now=1.0) == []
    ident, job = only_work(ready(core, b"w2", 2, now=2.0))
    assert ident == b"w2"
    assert job.method == "safe", "the retried call goes first"


def test_non_idempotent_method_is_never_retried() -> None:
    core = make_core(ServicePolicy("s", idempotent=frozenset({"safe"})))
    ready(core, b"w1", 1)
    only_work(request(core, b"c", b"1", method="unsafe"))
    ready(core, b"w2", 2)
    actions = core.worker_exited(1, -9, now=1.0)
    assert work(actions) == []
    assert isinstance(only_error(actions, b"c", b"1"), WorkerCrashed)


def test_worker_disconnect_is_a_loss() -> None:
    core = make_core()
    ready(core, b"w", 9)
    request(core, b"c", b"1")
    error = only_error(core.worker_message(b"w", wire.worker_disconnect(), 1.0), b"c", b"1")
    assert isinstance(error, WorkerCrashed)
    assert "disconnected" in error.message
    assert core.worker_pids() == []


def test_worker_unreachable_is_a_loss_once_its_exit_is_reported() -> None:
    core = make_core()
    ready(core, b"w", 9)
    request(core, b"c", b"1")
    request(core, b"c", b"2")
    assert core.worker_unreachable(b"w", 1.0) == [], "its calls wait for the report of how it ended"
    assert core.worker_unreachable(b"w", 1.0) == []
    assert core.worker_pids() == []
    assert worker_commands(core.tick(1.1), b"w") == [], "nothing more is sent to it, not even heartbeats"
    dispatched = work(ready(core, b"w2", 10, now=1.2))
    assert [bytes(j.payload[0]) for _, j in dispatched] == [b"c/2"], "the queued call, not the one it held"
    error = only_error(core.worker_exited(9, -signal.SIGKILL, 1.3), b"c", b"1")
    assert isinstance(error, WorkerCrashed)
    assert "signal 9" in error.message


def test_worker_unreachable_without_an_exit_report_is_lost_after_a_short_wait() -> None:
    """A worker started elsewhere (``dllpool worker``): no supervisor reports its end."""
    core = make_core(heartbeat_liveness=100)
    ready(core, b"w", 9)
    request(core, b"c", b"1")
    core.worker_unreachable(b"w", 1.0)
    assert core.tick(1.0 + EXIT_REPORT_WAIT / 2) == []
    actions = core.tick(1.0 + EXIT_REPORT_WAIT)
    assert kills(actions) == [9]
    error = only_error(actions, b"c", b"1")
    assert isinstance(error, WorkerCrashed)
    assert "socket went away" in error.message
    assert core.worker_exited(9, -9, 2.0) == []


def test_worker_registering_again_loses_its_old_jobs() -> None:
    core = make_core()
    ready(core, b"w", 9)
    request(core, b"c", b"1")
    actions = ready(core, b"w", 10, now=1.0)
    assert isinstance(only_error(actions, b"c", b"1"), WorkerCrashed)
    assert core.worker_pids() == [10]
    assert only_work(request(core, b"c", b"2"))[0] == b"w"


# ============================================================ time


def test_heartbeats_are_sent_after_the_interval() -> None:
    core = make_core(heartbeat_interval=1.0, heartbeat_liveness=3)
    ready(core, b"w1", 1, now=0.0)
    ready(core, b"w2", 2, now=0.2)
    assert core.tick(0.5) == []
    actions = core.tick(1.0)
    assert worker_commands(actions, b"w1") == [wire.HeartbeatToWorker]
    assert worker_commands(actions, b"w2") == []
    actions = core.tick(1.2)
    assert worker_commands(actions, b"w2") == [wire.HeartbeatToWorker]
    assert worker_commands(actions, b"w1") == []
    assert core.tick(1.5) == []
    assert worker_commands(core.tick(2.0), b"w1") == [wire.HeartbeatToWorker]


def test_silent_worker_is_lost_after_interval_times_liveness() -> None:
    core = make_core(heartbeat_interval=1.0, heartbeat_liveness=3)
    ready(core, b"w", 77, now=0.0)
    request(core, b"c", b"1", now=0.0)
    assert kills(core.tick(2.9)) == []
    assert core.worker_message(b"w", wire.worker_heartbeat(), 2.9) == []  # any traffic counts
    core.client_message(b"c", wire.client_heartbeat(), 2.9)
    assert kills(core.tick(5.8)) == []
    core.client_message(b"c", wire.client_heartbeat(), 5.8)
    actions = core.tick(5.9)
    assert kills(actions) == [77]
    error = only_error(actions, b"c", b"1")
    assert isinstance(error, WorkerCrashed)
    assert "heartbeats" in error.message
    assert core.worker_pids() == []
    assert core.stats["workers_lost"] == 1
    # the worker is forgotten: a late heartbeat asks it to register again
    assert worker_commands(core.worker_message(b"w", wire.worker_heartbeat(), 6.0), b"w") == [wire.DisconnectToWorker]


def test_queued_request_past_deadline_gets_timeout_and_never_runs() -> None:
    core = make_core()
    assert request(core, b"c", b"1", now=0.0, method="slow", timeout=0.05) == []
    assert core.tick(0.04) == []
    error = only_error(core.tick(0.06), b"c", b"1")
    assert isinstance(error, Timeout)
    assert isinstance(error, TimeoutError)
    assert "s.slow" in error.message
    assert "never ran" in error.message
    assert core.stats["expired_in_queue"] == 1
    assert core.pending() == 0
    assert work(ready(core, b"w", 1, now=0.07)) == []
    assert core.tick(0.2) == []


def test_expired_queued_request_is_not_dispatched_even_before_the_next_tick() -> None:
    """A worker becoming ready between two ticks must not be handed a request whose deadline passed."""
    core = make_core()
    request(core, b"c", b"1", now=0.0, timeout=0.05)
    actions = ready(core, b"w", 1, now=0.07)
    assert work(actions) == [], "the request's deadline passed while it was queued"
    error = only_error(actions + core.tick(0.07), b"c", b"1")
    assert isinstance(error, Timeout)


def test_running_request_past_deadline_gets_timeout_then_its_worker_is_killed() -> None:
    core = make_core(kill_grace=1.0)
    ready(core, b"w", 55, now=0.0)
    _, job = only_work(request(core, b"c", b"1", now=0.0, method="hang", timeout=0.05))
    assert job.timeout == pytest.approx(0.05)
    assert answers(core.tick(0.04)) == []
    actions = core.tick(0.06)
    error = only_error(actions, b"c", b"1")
    assert isinstance(error, Timeout)
    assert "s.hang" in error.message
    assert "still running" in error.message
    assert kills(actions) == []
    assert core.stats["timed_out_running"] == 1
    assert core.pending() == 0

    assert kills(core.tick(0.5)) == [], "the call gets kill_grace to finish"
    assert kills(core.tick(1.07)) == [55]
    assert kills(core.tick(1.5)) == [], "killed once"
    # the doomed worker gets no more work
    assert request(core, b"c", b"2", now=1.5) == []
    # its late reply is discarded, never delivered, and frees no slot
    late = reply(core, b"w", job.job, now=1.6, body=b"too late")
    assert answers(late) == []
    assert work(late) == []
    assert core.stats["late_replies"] == 1
    # the exit of the killed worker answers nothing twice
    assert answers(core.worker_exited(55, -9, now=1.7)) == []
    # a fresh worker takes the queued request
    ident, job2 = only_work(ready(core, b"w2", 56, now=1.8))
    assert ident == b"w2"
    assert bytes(job2.payload[0]) == b"c/2"


def test_late_reply_within_grace_is_discarded_and_worker_reused() -> None:
    core = make_core(kill_grace=1.0)
    ready(core, b"w", 55)
    _, job = only_work(request(core, b"c", b"1", timeout=0.05))
    only_error(core.tick(0.06), b"c", b"1")
    request(core, b"c", b"2", now=0.1)
    actions = reply(core, b"w", job.job, now=0.2)
    assert answers(actions) == []
    assert core.stats["late_replies"] == 1
    assert only_work(actions)[0] == b"w"
    assert kills(core.tick(2.0)) == []


def test_client_may_reuse_corr_after_a_timeout() -> None:
    core = make_core()
    ready(core, b"w", 1, threads=2)
    _, old = only_work(request(core, b"c", b"1", timeout=0.05, body=b"old"))
    only_error(core.tick(0.06), b"c", b"1")
    _, new = only_work(request(core, b"c", b"1", now=0.1, body=b"new"))
    assert answers(reply(core, b"w", old.job, now=0.2, body=b"old result")) == []
    client, answer = only_answer(reply(core, b"w", new.job, now=0.3, body=b"new result"))
    assert (client, answer.corr) == (b"c", cid(b"1"))
    assert [bytes(p) for p in answer.payload] == [b"new result"]


# ============================================================ admission


def test_queue_limit_refuses_with_busy() -> None:
    core = make_core(ServicePolicy("s", queue_limit=2))
    ready(core, b"w", 1)
    only_work(request(core, b"c", b"1"))
    assert request(core, b"c", b"2") == []
    assert request(core, b"c", b"3") == []
    error = only_error(request(core, b"c", b"4", method="add"), b"c", b"4")
    assert isinstance(error, Busy)
    assert error.details["queue_limit"] == 2
    assert error.details["service"] == "s"
    assert error.details["method"] == "add"
    assert core.stats["busy"] == 1
    assert core.pending() == 3


def test_cancel_removes_a_queued_request() -> None:
    core = make_core()
    ready(core, b"w", 1)
    _, running = only_work(request(core, b"c", b"1"))
    request(core, b"c", b"2")
    request(core, b"c", b"3")
    assert core.client_message(b"c", wire.client_cancel(cid(b"2")), 0.1) == []
    assert core.pending() == 2
    # cancelling another client's corr, or an unknown one, does nothing
    assert core.client_message(b"other", wire.client_cancel(cid(b"3")), 0.1) == []
    assert core.client_message(b"c", wire.client_cancel(cid(b"9")), 0.1) == []
    assert core.pending() == 2
    actions = reply(core, b"w", running.job, now=0.2)
    _, nxt = only_work(actions)
    assert bytes(nxt.payload[0]) == b"c/3", "the cancelled request is skipped"
    only_answer(reply(core, b"w", nxt.job, now=0.3))
    assert core.pending() == 0


def test_cancel_of_a_running_request_discards_its_answer() -> None:
    """A running call cannot be recalled; its caller gave up, so its answer goes nowhere, and its run slot
    is free again once it ends."""
    core = make_core()
    ready(core, b"w", 1)
    _, running = only_work(request(core, b"c", b"1"))
    assert core.client_message(b"c", wire.client_cancel(cid(b"1")), 0.1) == []
    assert core.pending() == 0
    assert core.clients() == 0
    assert answers(reply(core, b"w", running.job)) == []
    assert core.stats["discarded_replies"] == 1
    assert only_work(request(core, b"c", b"2"))[0] == b"w"


def test_cancelled_request_never_times_out() -> None:
    core = make_core()
    request(core, b"c", b"1", timeout=0.05)
    core.client_message(b"c", wire.client_cancel(cid(b"1")), 0.01)
    assert core.tick(1.0) == []


# ============================================================ credit: idempotent calls held ahead


def credit_core(prefetch: int = 2, queue_limit: int | None = None, **kwargs: Any) -> BrokerCore:
    policy = ServicePolicy("s", idempotent=frozenset({"safe"}), queue_limit=queue_limit, prefetch=prefetch)
    return make_core(policy, **kwargs)


def test_idempotent_calls_are_sent_ahead_up_to_prefetch() -> None:
    core = credit_core(prefetch=2)
    ready(core, b"w", 1)
    sent = [work(request(core, b"c", i, method="safe")) for i in range(4)]
    assert [len(s) for s in sent] == [1, 1, 1, 0], "one runs, two wait in the worker, the fourth in the queue"
    assert {ident for s in sent for ident, _ in s} == {b"w"}
    assert core.held_ahead("s") == 2
    assert core.stats["sent_ahead"] == 2
    actions = reply(core, b"w", sent[0][0][1].job, now=1.0)
    assert only_answer(actions)[1].corr == 0
    ident, fourth = only_work(actions)
    assert (ident, bytes(fourth.payload[0])) == (b"w", b"c/3"), "the freed place goes to the queued call"
    assert core.held_ahead("s") == 2, "one held ahead started, the fourth took its place"


def test_prefetch_zero_sends_nothing_ahead() -> None:
    core = credit_core(prefetch=0)
    ready(core, b"w", 1)
    assert len(work(request(core, b"c", 1, method="safe"))) == 1
    assert work(request(core, b"c", 2, method="safe")) == []
    assert core.held_ahead("s") == 0


def test_a_non_idempotent_call_is_never_sent_ahead_and_nothing_overtakes_it() -> None:
    core = credit_core(prefetch=2)
    ready(core, b"w", 1)
    _, running = only_work(request(core, b"c", 1, method="safe"))
    assert request(core, b"c", 2, method="m") == [], "a non-idempotent call waits for a free run slot"
    assert request(core, b"c", 3, method="safe") == [], "an idempotent call does not overtake it"
    assert core.held_ahead("s") == 0
    actions = reply(core, b"w", running.job, now=1.0)
    dispatched = work(actions)
    assert [(j.method, bytes(j.payload[0])) for _, j in dispatched] == [("m", b"c/2"), ("safe", b"c/3")]
    assert core.held_ahead("s") == 1, "the idempotent one waits behind the non-idempotent one"


def test_a_worker_with_a_free_run_slot_is_preferred_to_sending_ahead() -> None:
    core = credit_core(prefetch=2)
    ready(core, b"w1", 1)
    ready(core, b"w2", 2, threads=2)
    targets = [only_work(request(core, b"c", i, method="safe"))[0] for i in range(3)]
    assert sorted(targets) == [b"w1", b"w2", b"w2"], "every run slot is used before anything is sent ahead"
    assert core.held_ahead("s") == 0
    assert only_work(request(core, b"c", 3, method="safe"))[0] == b"w1", "ahead: w1 holds 1, w2 holds 2"
    assert core.held_ahead("s") == 1


def test_a_worker_that_registers_takes_queued_calls_into_its_run_slots() -> None:
    core = credit_core(prefetch=1)
    ready(core, b"w1", 1)
    for i in range(3):
        request(core, b"c", i, method="safe")
    assert core.held_ahead("s") == 1
    ident, job = only_work(ready(core, b"w2", 2))
    assert (ident, bytes(job.payload[0])) == (b"w2", b"c/2")
    assert core.held_ahead("s") == 1


def test_calls_are_held_ahead_by_the_worker_holding_fewest_then_by_the_one_that_answered_last() -> None:
    core = credit_core(prefetch=3)
    ready(core, b"slow", 1)
    ready(core, b"fast", 2)
    _, long_call = only_work(request(core, b"c", 0, method="m"))
    _, quick = only_work(request(core, b"c", 1, method="safe"))
    actions = reply(core, b"fast", quick.job, now=1.0)
    only_answer(actions)
    assert only_work(request(core, b"c", 2, method="safe", now=1.1))[0] == b"fast", "fast has a free run slot"
    # both hold one call now; fast answered last, slow has not answered at all
    assert only_work(request(core, b"c", 3, method="safe", now=1.2))[0] == b"fast"
    assert only_work(request(core, b"c", 4, method="safe", now=1.3))[0] == b"slow", "fast holds 2, slow 1"
    assert answers(reply(core, b"slow", long_call.job, now=2.0))[0][1].corr == 0


def test_calls_held_ahead_count_toward_the_queue_limit() -> None:
    core = credit_core(prefetch=2, queue_limit=2)
    ready(core, b"w", 1)
    for i in range(3):
        assert len(work(request(core, b"c", i, method="safe"))) == 1
    assert core.held_ahead("s") == 2
    error = only_error(request(core, b"c", 3, method="safe"), b"c", 3)
    assert isinstance(error, Busy)
    assert "held by a busy worker" in error.message
    assert core.stats["busy"] == 1
    assert core.pending() == 3


def test_a_call_held_ahead_past_its_deadline_gets_timeout_and_never_kills_its_worker() -> None:
    core = credit_core(prefetch=1, kill_grace=0.5, heartbeat_liveness=100)
    ready(core, b"w", 55)
    _, long_call = only_work(request(core, b"c", 1, method="m"))
    _, ahead = only_work(request(core, b"c", 2, method="safe", timeout=0.05))
    assert ahead.timeout == pytest.approx(0.05), "the worker gets the time left, to check before it starts"
    actions = core.tick(0.06)
    error = only_error(actions, b"c", 2)
    assert isinstance(error, Timeout)
    assert "waiting in worker pid 55" in error.message
    assert worker_commands(actions, b"w") == [wire.CancelToWorker], "recalled: it no longer counts as waiting"
    assert core.stats["expired_ahead"] == 1
    assert core.stats["timed_out_running"] == 0
    assert core.pending() == 1
    assert kills(core.tick(5.0)) == [], "a call that has not started cannot have hung its worker"
    # the long call ends; the expired one reaches the front of the worker, which answers it Timeout unrun
    only_answer(reply(core, b"w", long_call.job, now=10.0))
    assert kills(core.tick(10.1)) == [], "its kill_grace counts from when it could have started"
    late = core.worker_message(b"w", wire.worker_error(ahead.job, {"type": "Timeout", "message": "unrun"}), 10.2)
    assert answers(late) == []
    assert core.stats["late_replies"] == 1
    assert only_work(request(core, b"c", 3, now=10.3))[0] == b"w", "the worker is free again"


def test_an_expired_call_that_may_have_started_gets_its_worker_killed_after_the_grace() -> None:
    core = credit_core(prefetch=1, kill_grace=0.5)
    ready(core, b"w", 55)
    _, first = only_work(request(core, b"c", 1, method="safe"))
    only_work(request(core, b"c", 2, method="safe", timeout=0.05))
    only_error(core.tick(0.06), b"c", 2)
    only_answer(reply(core, b"w", first.job, now=1.0))
    assert kills(core.tick(1.4)) == []
    assert kills(core.tick(1.6)) == [55], "it may be running (hung) and did not answer within the grace"


def test_a_crash_resends_the_idempotent_calls_held_ahead_and_fails_the_running_non_idempotent_one() -> None:
    core = credit_core(prefetch=2)
    ready(core, b"w1", 1)
    only_work(request(core, b"c", 1, method="m"))
    held = [only_work(request(core, b"c", i, method="safe"))[1] for i in (2, 3)]
    assert core.held_ahead("s") == 2
    actions = core.worker_exited(1, -9, now=1.0)
    error = only_error(actions, b"c", 1)
    assert isinstance(error, WorkerCrashed)
    assert "not sent again" not in error.message
    assert core.stats["retried"] == 2
    assert core.held_ahead("s") == 0
    assert core.pending() == 2
    resent = work(ready(core, b"w2", 2, now=1.5))
    assert [(ident, bytes(j.payload[0])) for ident, j in resent] == [(b"w2", bytes(h.payload[0])) for h in held]


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT])
def test_a_poison_call_is_not_resent_but_the_calls_held_behind_it_are(sig: signal.Signals) -> None:
    core = credit_core(prefetch=2)
    ready(core, b"w1", 1)
    request(core, b"c", 1, method="safe")
    request(core, b"c", 2, method="safe")
    request(core, b"c", 3, method="safe")
    actions = core.worker_exited(1, -sig, now=1.0) + ready(core, b"w2", 2, now=1.1)
    error = only_error(actions, b"c", 1)
    assert isinstance(error, WorkerCrashed)
    assert "not sent again" in error.message
    assert f"signal {int(sig)}" in error.message
    assert core.stats["retried"] == 2
    assert [bytes(j.payload[0]) for _, j in work(actions)] == [b"c/2", b"c/3"]


@pytest.mark.parametrize("returncode", [-signal.SIGKILL, -signal.SIGTERM, 1])
def test_a_running_idempotent_call_is_resent_when_its_worker_was_ended_from_outside(returncode: int) -> None:
    core = credit_core(prefetch=1)
    ready(core, b"w1", 1)
    request(core, b"c", 1, method="safe")
    request(core, b"c", 2, method="safe")
    assert answers(core.worker_exited(1, returncode, 1.0)) == []
    assert core.stats["retried"] == 2


def test_a_poison_call_is_known_when_the_socket_goes_away_before_the_exit_is_reported() -> None:
    """The usual order with calls held ahead: the worker answers one call, crashes in the next at once, and the
    broker's next send to it fails before the supervisor has reaped it."""
    core = credit_core(prefetch=2)
    ready(core, b"w1", 1)
    _, first = only_work(request(core, b"c", 1, method="safe"))
    request(core, b"c", 2, method="safe")
    request(core, b"c", 3, method="safe")
    request(core, b"c", 4, method="safe")
    only_answer(reply(core, b"w1", first.job, now=1.0))
    assert core.worker_unreachable(b"w1", 1.0) == []
    actions = core.worker_exited(1, -signal.SIGSEGV, 1.05)
    assert "not sent again" in only_error(actions, b"c", 2).message
    assert core.stats["retried"] == 2


def test_the_poison_rule_covers_every_run_slot_of_a_threaded_worker() -> None:
    core = credit_core(prefetch=1)
    ready(core, b"w1", 1, threads=2)
    for i in range(3):
        request(core, b"c", i, method="safe")
    actions = core.worker_exited(1, -signal.SIGSEGV, now=1.0)
    assert sorted(answer.corr for _, answer in answers(actions)) == [0, 1], "either running call may be the poison"
    assert core.stats["retried"] == 1


def test_a_call_held_ahead_is_sent_at_most_twice() -> None:
    core = credit_core(prefetch=1)
    ready(core, b"w1", 1)
    ready(core, b"w2", 2)
    request(core, b"c", 1, method="m")
    request(core, b"c", 2, method="m")
    assert only_work(request(core, b"c", 3, method="safe"))[0] == b"w1"
    actions = core.worker_exited(1, -9, now=1.0)
    assert len(answers(actions)) == 1
    assert only_work(actions)[0] == b"w2", "held ahead by w2 now"
    actions = core.worker_exited(2, -9, now=2.0)
    assert sorted(answer.corr for _, answer in answers(actions)) == [2, 3], "the second loss ends it"
    assert core.pending() == 0


def test_cancel_recalls_a_call_held_ahead() -> None:
    """The worker is asked to answer it unrun; whatever it answers is discarded."""
    core = credit_core(prefetch=1)
    ready(core, b"w", 1)
    _, running = only_work(request(core, b"c", 1, method="safe"))
    _, ahead = only_work(request(core, b"c", 2, method="safe"))
    actions = core.client_message(b"c", wire.client_cancel(2), 0.1)
    assert [wire.parse_for_worker(a.frames) for a in actions if isinstance(a, ToWorker)] == [
        wire.CancelToWorker(ahead.job)
    ]
    assert core.pending() == 1
    assert core.held_ahead("s") == 1, "it still waits in the worker until the worker answers it"
    only_answer(reply(core, b"w", running.job, now=0.2))
    recalled = wire.worker_error(ahead.job, {"type": "CallError", "message": "cancelled before it started"})
    assert answers(core.worker_message(b"w", recalled, 0.3)) == []
    assert core.held_ahead("s") == 0
    assert core.stats["discarded_replies"] == 1


def test_a_reply_to_a_call_held_ahead_before_the_running_one_frees_no_run_slot() -> None:
    """Replies from a threaded worker's pool threads may overtake each other on their way to its socket."""
    core = credit_core(prefetch=2)
    ready(core, b"w", 1)
    _, running = only_work(request(core, b"c", 1, method="safe"))
    _, ahead = only_work(request(core, b"c", 2, method="safe"))
    only_answer(reply(core, b"w", ahead.job, now=0.1))
    assert core.held_ahead("s") == 0
    assert only_work(request(core, b"c", 3, method="safe"))[0] == b"w", "sent ahead: the run slot is still taken"
    assert core.held_ahead("s") == 1
    only_answer(reply(core, b"w", running.job, now=0.2))
    assert core.held_ahead("s") == 0


def test_abort_all_answers_calls_held_ahead_once() -> None:
    core = credit_core(prefetch=2)
    ready(core, b"w", 1)
    jobs = [only_work(request(core, b"c", i, method="safe"))[1] for i in range(3)]
    request(core, b"c", 3, method="safe")
    core.stop_accepting()
    assert len(answers(core.abort_all("over", 1.0))) == 4
    for job in jobs:
        assert answers(reply(core, b"w", job.job, now=2.0)) == []
    assert core.stats["late_replies"] == 3
    assert core.held_ahead("s") == 0


# ============================================================ unknown and malformed peers


def test_message_from_unknown_worker_asks_it_to_register() -> None:
    core = make_core()
    for frames in (wire.worker_heartbeat(), wire.worker_reply(1, [b"x"])):
        actions = core.worker_message(b"stranger", frames, 0.0)
        assert actions == [ToWorker(b"stranger", wire.disconnect_to_worker())]
    assert core.worker_pids() == []


def test_ready_for_unknown_service_is_refused() -> None:
    core = make_core()
    request(core, b"c", b"1")
    actions = ready(core, b"w", 5, service="nope")
    assert worker_commands(actions, b"w") == [wire.DisconnectToWorker]
    assert work(actions) == []
    assert core.ready_workers("nope") == 0
    assert core.worker_pids() == []
    assert core.workers() == []


def test_ready_info_is_reported() -> None:
    core = make_core(ServicePolicy("a"), ServicePolicy("b"))
    ready(core, b"w2", 20, service="b")
    ready(core, b"w1", 10, service="a", threads=2)
    assert [(i["service"], i["pid"], i["threads"]) for i in core.workers()] == [("a", 10, 2), ("b", 20, 1)]
    assert core.ready_workers("a") == 1
    assert core.service_names == ["a", "b"]


@pytest.mark.parametrize(
    "info",
    [
        {"pointer_size": "four"},
        {"pointer_size": None},
        {"pointer_size": [4]},
    ],
)
def test_ready_with_odd_optional_info_does_not_raise(info: dict[str, Any]) -> None:
    """READY comes from an untrusted peer: extra keys it reports must not crash the core."""
    core = make_core()
    request(core, b"c", b"1")
    full = {"service": "s", "threads": 1, "pid": 5, **info}
    actions = core.worker_message(b"w", wire.worker_ready(full), 0.0)
    if core.ready_workers("s"):
        assert only_work(actions)[0] == b"w", "a registered worker takes the queued request"
    else:
        assert worker_commands(actions, b"w") == [wire.DisconnectToWorker]


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"junk"],
        [b"junk", b"more"],
        [wire.CLIENT_PROTOCOL],
        [b"DPC\x01\x05"],
        [wire.CLIENT_PROTOCOL + b"\x99"],
        [wire.CLIENT_PROTOCOL + bytes([wire.CANCEL])],
        [wire.CLIENT_PROTOCOL + bytes([wire.REQUEST])],
        [wire.CLIENT_PROTOCOL + bytes([wire.REQUEST]) + bytes(5), b"body"],
        wire.worker_ready({"service": "s", "threads": 1, "pid": 1}),
    ],
)
def test_bad_client_frames_are_counted_and_dropped(frames: list[Any]) -> None:
    core = make_core()
    assert core.client_message(b"c", frames, 0.0) == []
    assert core.stats["bad_client_messages"] == 1
    assert core.pending() == 0


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        (wire.client_request(41, "s", "m", None, [])[:1], "no body frame"),
        ([struct.pack(">4sBBBBQd", wire.CLIENT_PROTOCOL, wire.REQUEST, 1, 1, 1, 41, -1.0) + b"sm", b"b"], "timeout"),
        ([wire.client_request_header(41, b"\xff", b"m", None), b"b"], "UTF-8"),
        ([wire.client_request_header(41, b"s", b"m", None) + b"extra", b"b"], "its fields say"),
    ],
)
def test_malformed_request_with_a_corr_gets_bad_request(frames: list[Any], needle: str) -> None:
    core = make_core()
    error = only_error(core.client_message(b"c", frames, 0.0), b"c", 41)
    assert isinstance(error, BadRequest)
    assert needle in error.message
    assert core.stats["bad_client_messages"] == 1
    assert core.stats["requests"] == 0
    assert core.pending() == 0


def test_bad_worker_frames_are_counted_and_dropped() -> None:
    core = make_core()
    ready(core, b"w", 1)
    bad: list[list[Any]] = [[b"junk"], [wire.WORKER_PROTOCOL + b"\x99"], [wire.WORKER_PROTOCOL + bytes([wire.REPLY])]]
    for frames in bad:
        assert core.worker_message(b"w", frames, 0.0) == []
    assert core.stats["bad_worker_messages"] == 3
    assert core.worker_pids() == [1]


def test_duplicate_corr_while_pending_does_not_break_the_core() -> None:
    """A client (buggy or hostile) reuses a corr that is still pending.

    Whatever the core decides (refuse the second with BadRequest, or serve
    both), it must not raise, and each of the two requests gets one answer.
    """
    core = make_core()
    sent = request(core, b"c", b"dup", body=b"first") + request(core, b"c", b"dup", body=b"second")
    sent += ready(core, b"w", 1)
    answered = len(answers(sent))
    queue = work(sent)
    while queue:
        _, job = queue.pop(0)
        actions = reply(core, b"w", job.job, body=bytes(job.payload[0]))
        answered += len(answers(actions))
        queue += work(actions)
    answered += len(answers(core.abort_all("test over", 10.0)))
    assert answered == 2
    assert core.pending() == 0


# ============================================================ shutdown


def test_stop_accepting_refuses_new_requests() -> None:
    core = make_core()
    ready(core, b"w", 1)
    _, job = only_work(request(core, b"c", b"1"))
    core.stop_accepting()
    error = only_error(request(core, b"c", b"2"), b"c", b"2")
    assert isinstance(error, BrokerUnavailable)
    assert "shutting down" in error.message
    # what was accepted still completes
    assert only_answer(reply(core, b"w", job.job))[1].error is None


def test_abort_all_answers_every_pending_request_once() -> None:
    core = make_core(ServicePolicy("a"), ServicePolicy("b"))
    ready(core, b"w", 1, service="a", threads=2)
    running = [only_work(request(core, b"c1", bytes([i]), service="a"))[1] for i in range(2)]
    request(core, b"c1", b"\x05", service="a")
    request(core, b"c2", b"\x05", service="a")
    request(core, b"c2", b"\x06", service="b")
    assert core.pending() == 5
    core.stop_accepting()
    actions = core.abort_all("the pool shut down first", 2.0)
    got = Counter((client, answer.corr) for client, answer in answers(actions))
    assert got == Counter({(b"c1", 0): 1, (b"c1", 1): 1, (b"c1", 5): 1, (b"c2", 5): 1, (b"c2", 6): 1})
    for _, answer in answers(actions):
        error = error_from_wire(answer.error)
        assert isinstance(error, BrokerUnavailable)
        assert "the pool shut down first" in error.message
    assert core.pending() == 0
    assert core.abort_all("again", 3.0) == []
    # replies still running are discarded, not answered twice
    for job in running:
        assert answers(reply(core, b"w", job.job, now=3.0)) == []
    assert core.stats["late_replies"] == 2
    assert answers(core.worker_exited(1, 0, 4.0)) == []
    assert answers(core.tick(100.0)) == []


# ============================================================ client lifetimes


def test_a_silent_client_is_forgotten_with_its_queued_calls_unrun() -> None:
    """After the liveness window without a word, its queued calls are dropped (never dispatched), the one running
    finishes with its answer discarded, and nothing of the client is kept; it still gets one answer per call."""
    core = make_core(heartbeat_interval=1.0, heartbeat_liveness=3)
    ready(core, b"w", 1)
    _, running = only_work(request(core, b"dead", 1, now=0.0))
    for corr in range(2, 5001):
        assert work(request(core, b"dead", corr, now=0.0)) == []
    request(core, b"alive", 1, now=0.0)
    core.client_message(b"alive", wire.client_heartbeat(), 2.5)
    core.worker_message(b"w", wire.worker_heartbeat(), 2.5)
    assert answers(core.tick(2.9)) == []
    actions = core.tick(3.0)
    errors = [(ident, error_from_wire(msg.error)) for ident, msg in answers(actions) if msg.error is not None]
    assert len(errors) == 5000 and all(ident == b"dead" for ident, _ in errors)
    assert all(isinstance(e, BrokerUnavailable) and "forgot" in e.message for _, e in errors)
    assert core.clients() == 1 and core.pending() == 1
    assert core.stats["clients_forgotten"] == 1 and core.stats["dropped_unrun"] == 4999
    _, job = only_work(reply(core, b"w", running.job, now=3.1))
    assert bytes(job.payload[0]) == b"alive/1", "the running call's answer is discarded, the dead client's queue gone"
    assert core.stats["discarded_replies"] == 1
    assert core.stats["replies"] == 0


def test_a_heartbeating_client_keeps_its_calls_and_a_longer_window_is_honoured() -> None:
    core = make_core(heartbeat_interval=1.0, heartbeat_liveness=3)
    request(core, b"c", 1, now=0.0)
    core.client_message(b"c", wire.client_heartbeat(), 2.0)
    assert answers(core.tick(4.9)) == []
    core.client_message(b"c", wire.client_heartbeat(10.0), 4.9)
    assert answers(core.tick(14.8)) == [], "the client asked for 10 s"
    error = only_error(core.tick(14.9), b"c", 1)
    assert isinstance(error, BrokerUnavailable)
    assert core.clients() == 0


def test_a_longer_window_is_remembered_before_the_first_call() -> None:
    core = make_core(heartbeat_interval=1.0, heartbeat_liveness=3)
    core.client_message(b"c", wire.client_heartbeat(10.0), 0.0)
    request(core, b"c", 1, now=0.0)
    assert answers(core.tick(9.9)) == []
    assert isinstance(only_error(core.tick(10.0), b"c", 1), BrokerUnavailable)
    assert core.clients() == 0


def test_a_window_asked_for_without_calls_is_kept_only_the_broker_s_own_window() -> None:
    """A peer reconnecting over and over with hour-long windows cannot park records at the broker."""
    core = make_core(heartbeat_interval=1.0, heartbeat_liveness=3)
    for n in range(100):
        core.client_message(b"c%d" % n, wire.client_heartbeat(3600.0), 0.0)
    assert core.clients() == 100
    core.client_message(b"c0", wire.client_heartbeat(3600.0), 2.0)
    assert core.tick(3.0) == [] and core.clients() == 1
    assert core.tick(5.0) == [] and core.clients() == 0


def test_a_client_without_calls_leaves_nothing_behind() -> None:
    core = make_core()
    ready(core, b"w", 1)
    core.client_message(b"c", wire.client_heartbeat(), 0.0)
    core.client_message(b"c", wire.client_heartbeat(1.0), 0.0)  # shorter than the broker's own: nothing to keep
    assert core.clients() == 0
    _, job = only_work(request(core, b"c", 1))
    assert core.clients() == 1
    only_answer(reply(core, b"w", job.job))
    assert core.clients() == 0
    assert core.held_bytes == 0


def test_disconnect_drops_queued_calls_recalls_held_ones_and_answers_nothing() -> None:
    core = make_core(ServicePolicy("s", idempotent=frozenset({"safe"}), prefetch=1))
    ready(core, b"w", 1)
    _, running = only_work(request(core, b"c", 1, method="safe"))
    _, ahead = only_work(request(core, b"c", 2, method="safe"))
    request(core, b"c", 3)
    request(core, b"other", 1)
    actions = core.client_message(b"c", wire.client_disconnect(), 0.1)
    assert answers(actions) == []
    assert [wire.parse_for_worker(a.frames) for a in actions if isinstance(a, ToWorker)] == [
        wire.CancelToWorker(ahead.job)
    ]
    assert core.pending() == 1 and core.clients() == 1
    assert answers(reply(core, b"w", running.job, now=0.2)) == []
    recalled = wire.worker_error(ahead.job, {"type": "CallError", "message": "cancelled before it started"})
    ident, job = only_work(core.worker_message(b"w", recalled, 0.3))
    assert (ident, bytes(job.payload[0])) == (b"w", b"other/1"), "the dropped call 3 never ran"


def test_a_cancel_of_many_queued_calls_sweeps_the_queue() -> None:
    core = make_core()
    ready(core, b"w", 1)
    only_work(request(core, b"c", 0))
    for corr in range(1, 1001):
        request(core, b"c", corr)
    for corr in range(1, 1001):
        core.client_message(b"c", wire.client_cancel(corr), 0.1)
    assert core.pending() == 1
    assert core.stats["dropped_unrun"] == 1000
    for corr in range(1001, 1011):  # the queue limit counts live calls only
        request(core, b"c", corr)
    assert core.pending() == 11


def test_a_pause_gives_workers_and_clients_a_fresh_window() -> None:
    core = make_core(heartbeat_interval=1.0, heartbeat_liveness=3)
    ready(core, b"w", 7)
    request(core, b"c", 1, now=0.0)
    core.paused(9.0)
    actions = core.tick(9.0)
    assert kills(actions) == [] and answers(actions) == []
    assert core.worker_pids() == [7]
    assert kills(core.tick(12.0)) == [7], "silent past the fresh window: judged as usual"


# ============================================================ ceilings and limits


def test_a_call_without_timeout_gets_the_service_ceiling() -> None:
    core = make_core(ServicePolicy("s", max_call_seconds=10.0), kill_grace=1.0)
    ready(core, b"w", 7)
    _, job = only_work(request(core, b"c", 1, now=0.0))
    assert job.timeout == 10.0, "the worker knows the deadline too"
    core.client_message(b"c", wire.client_heartbeat(3600.0), 0.0)
    for now in range(1, 10):
        core.worker_message(b"w", wire.worker_heartbeat(), float(now))
        assert answers(core.tick(float(now))) == []
    error = only_error(core.tick(10.0), b"c", 1)
    assert isinstance(error, Timeout)
    assert "max_call_seconds" in error.message
    assert kills(core.tick(11.0)) == [7], "the hung worker is recycled"


def test_a_threaded_worker_killed_for_one_hung_call_says_so_to_the_others() -> None:
    core = make_core(kill_grace=1.0)
    ready(core, b"w", 7, threads=2)
    request(core, b"c", 1, method="hang", timeout=1.0)
    request(core, b"c", 2, method="innocent")
    core.client_message(b"c", wire.client_heartbeat(3600.0), 0.0)
    only_error(core.tick(1.0), b"c", 1)
    assert kills(core.tick(2.0)) == [7]
    error = only_error(core.worker_exited(7, -signal.SIGKILL, 2.1), b"c", 2)
    assert isinstance(error, WorkerCrashed)
    assert "recycled because another call on it (s.hang) ran past its deadline" in error.message


def test_a_request_with_too_many_frames_is_refused_unread() -> None:
    core = make_core(max_request_frames=4)
    frames = wire.client_request(9, "s", "m", None, [b"body", *([b""] * 4)])
    error = only_error(core.client_message(b"c", frames, 0.0), b"c", 9)
    assert isinstance(error, BadRequest)
    assert "max_request_frames" in error.message and error.details["frames"] == len(frames) == 5
    assert core.pending() == 0 and core.stats["refused_too_big"] == 1


def test_a_request_over_max_request_bytes_is_refused() -> None:
    core = make_core(max_request_bytes=100)
    error = only_error(request(core, b"c", 1, body=b"x" * 101), b"c", 1)
    assert isinstance(error, BadRequest)
    assert error.details == {"service": "s", "method": "m", "size": 101, "limit": 100}
    assert core.pending() == 0


def test_queue_limit_bytes_refuses_with_busy_and_the_figures() -> None:
    core = make_core(ServicePolicy("s", queue_limit_bytes=250))
    request(core, b"c", 1, body=b"x" * 100)
    request(core, b"c", 2, body=b"x" * 100)
    error = only_error(request(core, b"c", 3, body=b"x" * 100), b"c", 3)
    assert isinstance(error, Busy)
    assert error.details["queue_limit_bytes"] == 250 and error.details["waiting_bytes"] == 200
    ready(core, b"w", 1)  # one call leaves the queue: room again
    assert answers(request(core, b"c", 4, body=b"x" * 100)) == []


def test_client_bytes_in_flight_bound_one_client_not_the_others() -> None:
    core = make_core(client_bytes_in_flight=150)
    request(core, b"greedy", 1, body=b"x" * 100)
    error = only_error(request(core, b"greedy", 2, body=b"x" * 100), b"greedy", 2)
    assert isinstance(error, Busy) and error.details["in_flight"] == 100
    assert answers(request(core, b"modest", 1, body=b"x" * 100)) == []


def test_the_pool_wide_byte_cap_counts_what_the_broker_holds() -> None:
    """Bytes of a call that will never be sent again are let go once it is sent to a worker."""
    core = make_core(
        ServicePolicy("s", idempotent=frozenset({"safe"})), queue_limit_bytes=250, client_bytes_in_flight=10**6
    )
    ready(core, b"w", 1)
    only_work(request(core, b"c", 1, body=b"x" * 100))
    assert core.held_bytes == 0, "not idempotent: never re-sent, so not kept"
    request(core, b"c", 2, method="safe", body=b"x" * 100)
    request(core, b"c", 3, method="safe", body=b"x" * 100)
    error = only_error(request(core, b"c", 4, method="safe", body=b"x" * 100), b"c", 4)
    assert isinstance(error, Busy)
    assert error.details["pool_queue_limit_bytes"] == 250 and error.details["held_bytes"] == 200


# ============================================================ state machine: exactly one answer


def _body(client: bytes, corr: int) -> bytes:
    """What the state machine sends as a request's body: it names the request, so answers can be checked."""
    return client + b"/" + str(corr).encode()


def _key(body: bytes) -> tuple[bytes, int]:
    client, corr = body.split(b"/", 1)
    return client, int(corr)


class CoreMachine(RuleBasedStateMachine):
    """Random interleavings of requests, replies, crashes, cancels and ticks.

    The fake workers echo the request body (which names the client and corr)
    back, so every answer can be checked against the request it belongs to.
    They answer the calls they hold in any order, as a threaded worker may.
    """

    CLIENTS = (b"c0", b"c1", b"c2")
    PREFETCH: ClassVar[dict[str, int]] = {"s": 1, "q": 2}
    KILL_GRACE = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.core = BrokerCore(
            [
                ServicePolicy("s", idempotent=frozenset({"safe"}), prefetch=self.PREFETCH["s"]),
                ServicePolicy("q", idempotent=frozenset({"safe"}), queue_limit=2, prefetch=self.PREFETCH["q"]),
            ],
            heartbeat_interval=1.0,
            heartbeat_liveness=3,
            kill_grace=self.KILL_GRACE,
        )
        self.now = 0.0
        self.next_corr: dict[bytes, int] = defaultdict(int)
        self.sent: dict[tuple[bytes, int], str] = {}  # (client, corr) -> method
        self.answered: Counter[tuple[bytes, int]] = Counter()
        self.cancelled: set[tuple[bytes, int]] = set()
        self.dispatches: Counter[tuple[bytes, int]] = Counter()
        self.deadlines: dict[tuple[bytes, int], float] = {}
        self.poison: set[tuple[bytes, int]] = set()  # calls whose run may have killed a worker by a fatal signal
        self.workers: dict[bytes, dict[str, Any]] = {}  # ident -> {"pid", "threads", "service", "jobs"}
        # a worker's "jobs" are in dispatch order: it starts them in that order
        self.next_pid = 100
        self.gone: dict[bytes, int] = {}  # ident -> pid of killed workers
        self.unreachable: dict[bytes, dict[str, Any]] = {}  # socket gone, end not reported yet

    # --- plumbing -------------------------------------------------------------------

    def handle(self, actions: list[Action]) -> None:
        killed: list[int] = []
        for action in actions:
            if isinstance(action, ToClient):
                msg = wire.parse_for_client(action.frames)
                if isinstance(msg, wire.HeartbeatToClient):
                    continue
                key = (action.ident, msg.corr)
                assert key in self.sent, f"answer to a request never sent: {key}"
                assert key not in self.cancelled, f"answer to a cancelled request: {key}"
                self.answered[key] += 1
                assert self.answered[key] == 1, f"{key} answered {self.answered[key]} times"
                if msg.error is None:
                    assert [bytes(p) for p in msg.payload] == [_body(action.ident, msg.corr)]
                else:
                    assert isinstance(error_from_wire(msg.error), CallError)
            elif isinstance(action, ToWorker):
                command = wire.parse_for_worker(action.frames)
                if action.ident not in self.workers:
                    # only a worker killed in this very batch may still get a heartbeat
                    assert self.gone.get(action.ident) in killed, "frames sent to a worker that is not registered"
                    assert isinstance(command, wire.HeartbeatToWorker)
                    continue
                if isinstance(command, wire.WorkerRequest):
                    body = bytes(command.payload[0])
                    key = _key(body)
                    assert self.answered[key] == 0, f"{key} dispatched after it was answered"
                    assert key not in self.cancelled
                    assert key not in self.poison, f"{key} may have killed a worker and was sent again"
                    self.dispatches[key] += 1
                    limit = 2 if self.sent[key] == "safe" else 1
                    assert self.dispatches[key] <= limit, f"{key} ran {self.dispatches[key]} times"
                    worker = self.workers[action.ident]
                    if len(worker["jobs"]) >= worker["threads"]:
                        self.check_sent_ahead(key, worker)
                    worker["jobs"][command.job] = body
                elif isinstance(command, wire.DisconnectToWorker):
                    self.workers.pop(action.ident, None)
                elif isinstance(command, wire.CancelToWorker):
                    worker = self.workers[action.ident]
                    held = list(worker["jobs"])
                    assert command.job in held, "CANCEL for a job the worker does not hold"
                    assert held.index(command.job) >= worker["threads"], "CANCEL for a job that may be running"
            elif isinstance(action, KillWorker):
                self.unreachable = {i: w for i, w in self.unreachable.items() if w["pid"] != action.pid}
                ident = next((i for i, w in self.workers.items() if w["pid"] == action.pid), None)
                if ident is not None and "deadline" in action.reason:
                    self.check_hung(self.workers[ident])
                if ident is not None:
                    del self.workers[ident]
                    self.gone[ident] = action.pid
                killed.append(action.pid)
        for pid in killed:  # the supervisor reports the exit of a killed worker later
            self.handle(self.core.worker_exited(pid, -9, self.now))

    def check_sent_ahead(self, key: tuple[bytes, int], worker: dict[str, Any]) -> None:
        """A call beyond a worker's run slots: idempotent, within prefetch, and only when no worker is free."""
        service = worker["service"]
        assert self.sent[key] == "safe", f"non-idempotent {key} sent ahead"
        assert len(worker["jobs"]) < worker["threads"] + self.PREFETCH[service], "worker over capacity"
        free = [i for i, w in self.workers.items() if w["service"] == service and len(w["jobs"]) < w["threads"]]
        assert not free, f"{key} sent ahead while {free} had a free run slot"

    def check_hung(self, worker: dict[str, Any]) -> None:
        """Only a call that may be running (the first ``threads`` held) can get its worker killed."""
        may_run = [_key(body) for body in list(worker["jobs"].values())[: worker["threads"]]]
        assert any(self.deadlines.get(k, float("inf")) + self.KILL_GRACE <= self.now for k in may_run)

    # --- rules ----------------------------------------------------------------------

    @rule(
        client=st.sampled_from(CLIENTS),
        service=st.sampled_from(["s", "s", "q", "missing"]),
        method=st.sampled_from(["m", "safe"]),
        timeout=st.none() | st.floats(min_value=0.0, max_value=3.0),
    )
    def send_request(self, client: bytes, service: str, method: str, timeout: float | None) -> None:
        self.next_corr[client] += 1
        corr = self.next_corr[client]  # the same corrs are used by every client
        key = (client, corr)
        self.sent[key] = method
        if timeout is not None:
            self.deadlines[key] = self.now + timeout
        frames = wire.client_request(corr, service, method, timeout, [_body(client, corr)])
        self.handle(self.core.client_message(client, frames, self.now))
        if service == "missing":
            assert self.answered[key] == 1

    @rule(
        client=st.sampled_from(CLIENTS),
        service=st.sampled_from(["s", "q"]),
        count=st.integers(2, 6),
        timeout=st.none() | st.floats(min_value=0.0, max_value=3.0),
    )
    def send_idempotent_burst(self, client: bytes, service: str, count: int, timeout: float | None) -> None:
        """Enough idempotent calls at once to fill workers' run slots and the places ahead."""
        for _ in range(count):
            self.send_request(client, service, "safe", timeout)

    @rule(service=st.sampled_from(["s", "q"]), threads=st.integers(1, 3))
    def worker_ready(self, service: str, threads: int) -> None:
        self.next_pid += 1
        ident = b"w%d" % self.next_pid
        self.workers[ident] = {"pid": self.next_pid, "threads": threads, "service": service, "jobs": {}}
        info = {"service": service, "threads": threads, "pid": self.next_pid}
        self.handle(self.core.worker_message(ident, wire.worker_ready(info), self.now))

    def busy_workers(self) -> list[bytes]:
        return sorted(i for i, w in self.workers.items() if w["jobs"])

    @precondition(lambda self: any(w["jobs"] for w in self.workers.values()))
    @rule(data=st.data(), error=st.booleans())
    def worker_answers(self, data: st.DataObject, error: bool) -> None:
        ident = data.draw(st.sampled_from(self.busy_workers()))
        jobs = self.workers[ident]["jobs"]
        job = data.draw(st.sampled_from(sorted(jobs)))
        body = jobs.pop(job)
        if error:
            frames = wire.worker_error(job, {"type": "RemoteError", "message": body.decode("latin-1")})
        else:
            frames = wire.worker_reply(job, [body])
        self.handle(self.core.worker_message(ident, frames, self.now))

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), how=st.sampled_from(["segfault", "kill", "disconnect", "unreachable"]))
    def worker_dies(self, data: st.DataObject, how: str) -> None:
        ident = data.draw(st.sampled_from(sorted(self.workers)))
        worker = self.workers.pop(ident)
        if how in ("segfault", "kill"):
            self.exits(worker, segfault=how == "segfault")
        elif how == "disconnect":
            self.handle(self.core.worker_message(ident, wire.worker_disconnect(), self.now))
        else:
            self.unreachable[ident] = worker
            self.handle(self.core.worker_unreachable(ident, self.now))
            assert worker["pid"] not in self.core.worker_pids()

    @precondition(lambda self: self.unreachable)
    @rule(data=st.data(), segfault=st.booleans())
    def supervisor_reports_the_end_of_an_unreachable_worker(self, data: st.DataObject, segfault: bool) -> None:
        ident = data.draw(st.sampled_from(sorted(self.unreachable)))
        self.exits(self.unreachable.pop(ident), segfault)

    def exits(self, worker: dict[str, Any], segfault: bool) -> None:
        """The supervisor reports a worker's end: by SIGSEGV, every call it may have been running is poison."""
        if not segfault:
            self.handle(self.core.worker_exited(worker["pid"], -signal.SIGKILL, self.now))
            return
        may_run = [_key(body) for body in list(worker["jobs"].values())[: worker["threads"]]]
        self.poison.update(may_run)
        self.handle(self.core.worker_exited(worker["pid"], -signal.SIGSEGV, self.now))
        assert all(self.answered[k] == 1 or k in self.cancelled for k in may_run), "a poison call was kept"

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def worker_heartbeat(self, data: st.DataObject) -> None:
        ident = data.draw(st.sampled_from(sorted(self.workers)))
        self.handle(self.core.worker_message(ident, wire.worker_heartbeat(), self.now))

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), job=st.integers(0, 2**64 - 1))
    def worker_sends_bogus_reply(self, data: st.DataObject, job: int) -> None:
        ident = data.draw(st.sampled_from(sorted(self.workers)))
        if job in self.workers[ident]["jobs"]:
            return
        self.handle(self.core.worker_message(ident, wire.worker_reply(job, [b"forged"]), self.now))

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def client_cancels(self, data: st.DataObject) -> None:
        """Whether queued, held ahead or running, a cancelled call gets no answer from then on."""
        key = data.draw(st.sampled_from(sorted(self.sent)))
        before = self.core.pending()
        self.handle(self.core.client_message(key[0], wire.client_cancel(key[1]), self.now))
        if self.answered[key] == 0 and key not in self.cancelled:
            self.cancelled.add(key)
            assert self.core.pending() == before - 1
        else:
            assert self.core.pending() == before

    @rule(client=st.sampled_from(CLIENTS), window=st.none() | st.floats(min_value=0.1, max_value=10.0))
    def client_heartbeat(self, client: bytes, window: float | None) -> None:
        self.handle(self.core.client_message(client, wire.client_heartbeat(window), self.now))

    @rule(client=st.sampled_from(CLIENTS))
    def client_disconnects(self, client: bytes) -> None:
        """A client that says it is gone gets no answers; its queued calls never run."""
        self.handle(self.core.client_message(client, wire.client_disconnect(), self.now))
        self.cancelled.update(k for k in self.sent if k[0] == client and self.answered[k] == 0)

    @rule(dt=st.floats(min_value=0.0, max_value=2.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.handle(self.core.tick(self.now))

    # --- invariants -----------------------------------------------------------------

    @invariant()
    def pending_matches_unanswered_requests(self) -> None:
        unanswered = [k for k in self.sent if self.answered[k] == 0 and k not in self.cancelled]
        assert self.core.pending() == len(unanswered)

    @invariant()
    def registered_workers_match(self) -> None:
        assert sorted(self.core.worker_pids()) == sorted(w["pid"] for w in self.workers.values())

    @invariant()
    def held_ahead_matches_what_workers_hold_beyond_their_threads(self) -> None:
        for service in ("s", "q"):
            held = [w for w in (*self.workers.values(), *self.unreachable.values()) if w["service"] == service]
            assert self.core.held_ahead(service) == sum(max(0, len(w["jobs"]) - w["threads"]) for w in held)

    def teardown(self) -> None:
        self.core.stop_accepting()
        self.handle(self.core.abort_all("test over", self.now))
        assert self.core.pending() == 0
        for key in self.sent:
            expected = 0 if key in self.cancelled else 1
            assert self.answered[key] == expected, f"{key} answered {self.answered[key]} times, expected {expected}"


CoreMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_core_state_machine = CoreMachine.TestCase


def test_stats_counters_are_all_present() -> None:
    core = make_core()
    assert set(core.stats) >= {
        "requests",
        "replies",
        "errors",
        "busy",
        "expired_in_queue",
        "timed_out_running",
        "late_replies",
        "bad_client_messages",
        "bad_worker_messages",
        "workers_lost",
        "retried",
    }
    request(core, b"c", b"1")
    request(core, b"c", b"2", service="nope")
    assert core.stats["requests"] == 2


def test_header_frames_sent_are_valid_msgpack() -> None:
    core = make_core()
    (action,) = request(core, b"c", b"1", service="nope")
    assert isinstance(action, ToClient)
    answer = wire.parse_for_client(action.frames)
    assert isinstance(answer, wire.ReplyToClient) and answer.error is not None
    assert set(answer.error) == {"type", "message", "details"}


def test_a_flood_of_bad_messages_is_logged_as_a_count_not_line_by_line(caplog: pytest.LogCaptureFixture) -> None:
    core = make_core(ServicePolicy("svc"))
    with caplog.at_level("WARNING", logger="broker.core"):
        for i in range(100):
            core.client_message(b"C", [b"garbage", bytes([i])], 1.0)
        lines = [r.getMessage() for r in caplog.records]
        assert 0 < len(lines) <= 20
        core.tick(12.0)
    summary = caplog.records[-1].getMessage()
    assert "and 80 more dropped messages" in summary
    assert core.stats["bad_client_messages"] == 100


# --- pinned requests and leases (sessions, broadcast) ----------------------------------------------------------


def pinned(
    core: BrokerCore, client: bytes, corr: int, pid: int | None, method: str = "m", now: float = 0.0
) -> list[Action]:
    frames = wire.client_request(corr, "s", method, None, [b"args"], pin=pid)
    return core.client_message(client, frames, now)


def answer_body(actions: list[Action], client: bytes) -> Any:
    ((to, answer),) = answers(actions)
    assert to == client and not answer.error
    return msgpack.unpackb(answer.payload[0])


def test_a_pinned_request_runs_on_its_worker_only_and_waits_for_it() -> None:
    core = make_core(ServicePolicy("s"))
    ready(core, b"w1", 101)
    ready(core, b"w2", 102)
    assert only_work(pinned(core, b"c", 1, 102))[0] == b"w2"
    assert work(pinned(core, b"c", 2, 102)) == [], "a pinned request waits for its own worker's free slot"
    assert only_work(request(core, b"c", 3))[0] == b"w1", "unpinned work goes to the other worker"
    (first,) = work(reply(core, b"w2", 1))  # job ids follow dispatch order: w2's first job is 1
    assert first[0] == b"w2"


def test_a_request_pinned_to_a_worker_that_is_gone_is_answered_worker_crashed() -> None:
    core = make_core(ServicePolicy("s"))
    ready(core, b"w1", 101)
    error = only_error(pinned(core, b"c", 1, 999), b"c", 1)
    assert isinstance(error, WorkerCrashed) and error.details["pid"] == 999
    assert work(pinned(core, b"c", 2, 101))  # occupies the worker
    assert work(pinned(core, b"c", 3, 101)) == []
    lost = core.worker_exited(101, -9, 0.0)
    errors = [only_error([a], b"c", corr) for a, corr in zip(lost, (3, 2))]
    assert all(isinstance(e, WorkerCrashed) for e in errors), "neither was sent to another worker"
    assert core.pending() == 0


def test_a_lease_takes_an_idle_worker_from_the_service_until_its_client_is_gone() -> None:
    core = make_core(ServicePolicy("s"))
    ready(core, b"w1", 101)
    ready(core, b"w2", 102)
    assert answer_body(pinned(core, b"holder", 1, None, wire.LEASE), b"holder") == {"pid": 101}
    for corr in range(2, 5):
        to, job = only_work(request(core, b"other", corr))
        assert to == b"w2", "unpinned work never goes to the leased worker"
        reply(core, b"w2", job.job)
    assert only_work(pinned(core, b"holder", 9, 101))[0] == b"w1", "the lease holder's pinned call runs"
    workers = wire.client_request(1, "s", wire.WORKERS, None, [b""])
    listed = answer_body(core.client_message(b"x", workers, 0.0), b"x")
    assert {w["pid"]: w["leased"] for w in listed} == {101: True, 102: False}
    assert answer_body(pinned(core, b"other", 5, 101, wire.RELEASE), b"other") == {"released": False}
    core.client_message(b"holder", wire.client_disconnect(), 0.0)
    assert core.counters()["leases_ended"] == 1
    listed = answer_body(core.client_message(b"x", workers, 0.0), b"x")
    assert not any(w["leased"] for w in listed)


def test_a_lease_waits_until_a_worker_has_nothing_to_do() -> None:
    core = make_core(ServicePolicy("s"))
    ready(core, b"w1", 101)
    (job,) = work(request(core, b"other", 1))
    assert answers(pinned(core, b"holder", 2, None, wire.LEASE)) == []
    granted = reply(core, b"w1", job[1].job)
    assert [to for to, _ in answers(granted)] == [b"other", b"holder"]
    assert work(request(core, b"other", 3)) == [], "the leased worker takes no unpinned work"
    released = pinned(core, b"holder", 4, 101, wire.RELEASE)
    assert answer_body(released, b"holder") == {"released": True}
    assert only_work(released)[0] == b"w1", "the released worker takes the queued call at once"
    assert core.counters()["leases_ended"] == 1


def test_a_waiting_lease_counts_once_as_queued_and_its_wait_as_the_queue_wait() -> None:
    """What status and the autoscaler see of a session waiting for a worker: one queued call, waiting since it came."""
    core = make_core(ServicePolicy("s"))
    ready(core, b"w1", 101)
    assert answer_body(pinned(core, b"a", 1, None, wire.LEASE, 1.0), b"a") == {"pid": 101}
    assert answers(pinned(core, b"b", 1, None, wire.LEASE, 2.0)) == []
    assert core.leases_waiting("s") == 1 and core.status(2.5)["services"]["s"]["queued"] == 1
    assert core.queued("s") == 0, "a new worker is for the session: no call waits in the queue"
    assert core.queue_wait("s", 2.5) == pytest.approx(0.5)
    assert work(request(core, b"c", 1, 3.0)) == [], "the leased worker takes no unpinned work"
    assert work(pinned(core, b"a", 2, 101, now=3.0)), "the lease holder's own call runs"
    assert work(pinned(core, b"a", 3, 101, now=3.0)) == [], "pinned behind the holder's running call"
    assert (core.queued("s"), core.leases_waiting("s")) == (1, 1), "the pinned call is no call for a new worker"
    assert core.queue_wait("s", 4.0) == pytest.approx(2.0), "the session waited longer than the queued call"
    core.client_message(b"b", wire.client_cancel(1), 5.0)
    assert core.leases_waiting("s") == 0 and core.queue_wait("s", 5.0) == pytest.approx(2.0)
    assert core.status(5.0)["services"]["s"]["queued"] == 2


def test_a_cancel_with_flag_bits_is_a_bad_message_and_cancels_nothing() -> None:
    core = make_core(ServicePolicy("s"))
    request(core, b"c", 1)
    cancel = bytes(wire.client_cancel(1)[0])
    assert core.client_message(b"c", [cancel[:5] + b"\x01" + cancel[6:]], 0.0) == []
    assert core.counters()["bad_client_messages"] == 1 and core.queued("s") == 1


def test_a_windows_crash_code_makes_a_poison_call_as_a_fatal_signal_does() -> None:
    core = make_core(ServicePolicy("s", idempotent=frozenset({"m"})))
    ready(core, b"w1", 101)
    ready(core, b"w2", 102)
    to, _ = only_work(request(core, b"c", 1))
    lost = core.worker_exited(101 if to == b"w1" else 102, 0xC0000005, 0.0)
    assert isinstance(only_error(lost, b"c", 1), WorkerCrashed), "an access violation's call was sent again"


def test_a_lease_waiting_under_a_steady_load_gets_a_worker_kept_free_for_it() -> None:
    core = make_core(ServicePolicy("s", idempotent=frozenset({"m"}), prefetch=2))
    ready(core, b"w1", 101)
    ready(core, b"w2", 102)
    assert len(work(request(core, b"c", 1) + request(core, b"c", 2))) == 2
    assert answers(pinned(core, b"holder", 9, None, wire.LEASE)) == [], "both workers are busy"
    (kept,) = [w for w in core._workers.values() if w.lease == b""]
    other = b"w2" if kept.ident == b"w1" else b"w1"
    for corr in range(3, 7):  # the steady load: held ahead by the other worker, never by the kept one
        assert [to for to, _ in work(request(core, b"c", corr))] in ([], [other])
    assert len(kept.jobs) == 1, "the kept worker was given more work"
    granted = reply(core, kept.ident, next(iter(kept.jobs)))
    assert {"pid": kept.pid} in [msgpack.unpackb(a.payload[0]) for to, a in answers(granted) if to == b"holder"]


def test_a_lease_that_stops_waiting_gives_its_kept_worker_back() -> None:
    core = make_core(ServicePolicy("s"))
    ready(core, b"w1", 101)
    (job,) = work(request(core, b"c", 1))
    pinned(core, b"holder", 2, None, wire.LEASE)
    core.client_message(b"holder", wire.client_cancel(2), 0.0)
    reply(core, b"w1", job[1].job)
    assert only_work(request(core, b"c", 3))[0] == b"w1"


def test_a_worker_of_another_host_with_a_registered_pid_is_refused_not_mistaken_for_a_reconnect() -> None:
    core = make_core(ServicePolicy("s"))
    info = {"service": "s", "threads": 1, "pid": 101, "pointer_size": 4}
    core.worker_message(b"local", wire.worker_ready({**info, "host": "here"}), 0.0)
    refused = core.worker_message(b"remote", wire.worker_ready({**info, "host": "there"}), 0.0)
    assert worker_commands(refused, b"remote") == [wire.DisconnectToWorker]
    assert core.worker_pids("s") == [101] and core.worker_idents() == [b"local"]
