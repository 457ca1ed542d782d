"""Unit tests of the sans-io client core: events in, frames and outcomes out, a fake clock, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from client.core import Call, ClientCore, Outcome
from protocol import frames as wire
from protocol.codec import pack_call, pack_value
from protocol.errors import (
    BrokerUnavailable,
    CallError,
    ProtocolError,
    RemoteError,
    Timeout,
    WorkerCrashed,
    error_to_wire,
)

ADDRESS = "ipc:///tmp/test-broker"
INTERVAL = 1.0
LIVENESS = 3
WINDOW = INTERVAL * LIVENESS
GRACE = 1.0
"""max(0.5 s, the heartbeat interval)."""


def make_core(now: float = 0.0, connected: bool = True) -> ClientCore:
    core = ClientCore(ADDRESS, INTERVAL, LIVENESS, now)
    if connected:
        core.connection_made(now)
    return core


def new_call(corr: int, now: float = 0.0, timeout: float | None = None, method: str = "add") -> Call:
    return Call(corr, "s", method, timeout, pack_call((corr, 1), {}), now)


def send_all(core: ClientCore, now: float) -> list[wire.ClientRequest]:
    """What the driver puts on the socket: every request the core hands out, parsed as the broker would."""
    sent = []
    while (frames := core.next_request(now)) is not None:
        message = wire.parse_client(frames)
        assert isinstance(message, wire.ClientRequest)
        sent.append(message)
        core.sent(now)
    return sent


def reply(corr: int, value: Any) -> list[Any]:
    return wire.reply_to_client(corr, pack_value(value))


def commands(frames_list: list[list[Any]]) -> list[Any]:
    return [wire.parse_client(frames) for frames in frames_list]


# ============================================================ sending and answering


def test_a_call_goes_out_with_its_names_body_and_timeout_and_its_answer_ends_it() -> None:
    core = make_core()
    call = new_call(7, timeout=5.0)
    core.add(call)
    (request,) = send_all(core, 2.0)
    assert (request.corr, request.service, request.method) == (7, "s", "add")
    assert request.timeout == 3.0, "the header carries the time left until the caller's deadline"
    assert call.sent and not core.idle
    assert core.received(reply(7, 8), 2.5) == Outcome(call, 8)
    assert core.idle and not core.pending


def test_nothing_goes_out_before_the_handshake_and_everything_after_it() -> None:
    core = make_core(connected=False)
    for corr in (1, 2, 3):
        core.add(new_call(corr))
    assert core.next_request(0.0) is None
    core.connection_made(0.5)
    assert [r.corr for r in send_all(core, 0.5)] == [1, 2, 3]
    assert not core.has_backlog


def test_an_error_answer_is_rebuilt_with_the_call_named() -> None:
    core = make_core()
    call = new_call(1)
    core.add(call)
    send_all(core, 0.0)
    answer = wire.error_to_client(1, error_to_wire(WorkerCrashed("the worker died", pid=42)))
    outcome = core.received(answer, 0.1)
    assert outcome is not None and outcome.call is call
    assert isinstance(outcome.error, WorkerCrashed)
    assert outcome.error.details == {"pid": 42, "service": "s", "method": "add"}


def test_an_error_whose_details_do_not_fit_is_still_a_call_error() -> None:
    core = make_core()
    core.add(new_call(1))
    send_all(core, 0.0)
    answer = wire.error_to_client(1, {"type": "RemoteError", "message": "x", "details": {"message": "clash"}})
    outcome = core.received(answer, 0.1)
    assert outcome is not None and isinstance(outcome.error, CallError)


def test_heartbeats_late_answers_and_unknown_ids_end_nothing() -> None:
    core = make_core()
    core.add(new_call(1))
    send_all(core, 0.0)
    assert core.received(wire.heartbeat_to_client(), 0.1) is None
    assert core.received(reply(99, 1), 0.2) is None
    assert core.stats["late_replies"] == 1
    assert list(core.pending) == [1]


def test_a_malformed_answer_that_names_a_pending_call_fails_it() -> None:
    core = make_core()
    call = new_call(5)
    core.add(call)
    send_all(core, 0.0)
    outcome = core.received([wire.reply_to_client(5, [b""])[0]], 0.1)  # a REPLY without its body
    assert outcome is not None and outcome.call is call
    assert isinstance(outcome.error, ProtocolError) and "s.add" in str(outcome.error)
    assert core.received([b"garbage"], 0.2) is None
    assert core.stats["malformed"] == 2


def test_an_unreadable_result_is_a_protocol_error_for_that_call() -> None:
    core = make_core()
    core.add(new_call(1))
    send_all(core, 0.0)
    outcome = core.received(wire.reply_to_client(1, [b"\xc1"]), 0.1)  # 0xc1: never valid msgpack
    assert outcome is not None and isinstance(outcome.error, ProtocolError)


def test_a_sent_call_is_cancelled_at_the_broker_an_unsent_one_never_leaves() -> None:
    core = make_core(connected=False)
    core.add(new_call(1))
    assert core.cancel(1) is None, "nothing to tell the broker about a call it never got"
    core.connection_made(0.0)
    assert send_all(core, 0.0) == []
    core.add(new_call(2))
    send_all(core, 0.0)
    cancel = core.cancel(2)
    assert cancel is not None and commands([cancel]) == [wire.ClientCancel(2)]
    assert core.received(reply(2, 3), 0.1) is None, "the answer to a cancelled call is discarded"
    assert core.cancel(2) is None and core.stats["cancels_sent"] == 1


def test_close_fails_every_call_with_broker_unavailable() -> None:
    core = make_core()
    calls = [new_call(1), new_call(2, timeout=1.0)]
    for call in calls:
        core.add(call)
    send_all(core, 0.0)
    ended = core.close("client closed")
    assert [o.call for o in ended] == calls
    assert all(isinstance(o.error, BrokerUnavailable) and str(o.error) == "client closed" for o in ended)
    assert core.tick(5.0).ended == [], "closed calls have no deadlines left"


# ============================================================ deadlines


def test_the_broker_owns_a_sent_calls_deadline_the_backstop_fires_a_grace_period_later() -> None:
    core = make_core()
    call = new_call(1, timeout=2.0)
    core.add(call)
    send_all(core, 0.0)
    assert core.next_deadline() == 2.0
    assert core.tick(2.0).ended == [], "at the deadline the broker's own Timeout answer is awaited"
    core.received(wire.heartbeat_to_client(), 2.5)
    tick = core.tick(2.0 + GRACE)
    assert [o.call for o in tick.ended] == [call]
    error = tick.ended[0].error
    assert isinstance(error, Timeout) and "the broker sent no answer for it 1 s past the deadline" in str(error)
    assert wire.ClientCancel(1) in commands(tick.sends), "the broker may still hold it queued"
    assert core.stats["timeouts"] == 1


def test_the_brokers_timeout_answer_before_the_backstop_is_the_one_the_caller_gets() -> None:
    core = make_core()
    call = new_call(1, timeout=2.0)
    core.add(call)
    send_all(core, 0.0)
    core.tick(2.0)
    answer = wire.error_to_client(1, error_to_wire(Timeout("still running", service="s")))
    outcome = core.received(answer, 2.1)
    assert outcome is not None and isinstance(outcome.error, Timeout) and "still running" in str(outcome.error)
    assert core.tick(3.5).ended == []


def test_a_call_that_never_reached_the_broker_times_out_at_its_deadline_naming_the_problem() -> None:
    core = make_core(connected=False)
    core.handshake_failed("the handshake failed (something)", refused=False)
    call = new_call(1, timeout=1.0)
    core.add(call)
    assert core.tick(0.99).ended == []
    (outcome,) = core.tick(1.0).ended
    assert isinstance(outcome.error, Timeout)
    assert "never reached the broker" in str(outcome.error) and "the handshake failed" in str(outcome.error)
    core.connection_made(1.1)
    assert send_all(core, 1.1) == [], "an expired call is never sent"


def test_a_call_held_back_for_a_connection_keeps_its_callers_deadline() -> None:
    core = make_core(connected=False)
    core.add(new_call(1, timeout=10.0))
    core.connection_made(4.0)
    (request,) = send_all(core, 4.0)
    assert request.timeout == 6.0


def test_answered_calls_deadlines_do_not_pile_up() -> None:
    core = make_core()
    for corr in range(1, 5001):
        core.add(new_call(corr, timeout=100.0))
        send_all(core, 0.0)
        core.received(reply(corr, corr), 0.0)
        core.tick(0.0)
    assert len(core._deadlines) <= 1024 + 1


# ============================================================ liveness


def test_a_quiet_connection_is_heartbeated_once_per_interval() -> None:
    core = make_core()
    assert core.tick(0.5).sends == []
    assert commands(core.tick(1.0).sends) == [wire.ClientHeartbeat(WINDOW)]
    assert core.tick(1.5).sends == []
    core.received(wire.heartbeat_to_client(), 1.6)
    assert commands(core.tick(2.0).sends) == [wire.ClientHeartbeat(WINDOW)]


def test_the_window_is_told_before_the_first_request_and_again_after_an_interval_of_silence() -> None:
    """A broker that judges clients by their own window must hear it before it holds a call of this socket."""
    core = make_core(connected=False)
    core.connection_made(5.0)
    assert commands([core.greeting(5.0) or []]) == [wire.ClientHeartbeat(WINDOW)]
    assert core.greeting(5.1) is None, "the broker knows it now"
    core.add(new_call(1))
    send_all(core, 5.2)
    core.received(reply(1, 2), 5.3)
    assert core.greeting(5.2 + INTERVAL - 0.01) is None
    assert commands([core.greeting(5.2 + INTERVAL) or []]) == [wire.ClientHeartbeat(WINDOW)], "it may be forgotten"
    core.connection_lost(7.0)
    core.connection_made(7.1)
    assert core.greeting(7.1) is not None, "a new connection is a new socket to the broker"


def test_a_core_that_does_not_watch_the_broker_heartbeats_but_never_gives_up_on_it() -> None:
    """The bulk socket: its answers may wait behind an upload for longer than the window."""
    core = ClientCore(ADDRESS, INTERVAL, LIVENESS, 0.0, watch_broker=False)
    core.connection_made(0.0)
    core.add(new_call(1))
    send_all(core, 0.0)
    heartbeats = 0
    for tenth in range(1, 100 * int(WINDOW) + 1):  # ten windows without a word from the broker
        tick = core.tick(tenth / 10)
        assert tick.ended == [] and not tick.reopen
        heartbeats += len(tick.sends)
    assert heartbeats == 10 * WINDOW / INTERVAL, "it heartbeats once per interval: the broker holds a call of it"
    (outcome,) = core.connection_lost(10 * WINDOW, " (on the bulk socket)")
    assert isinstance(outcome.error, BrokerUnavailable)
    assert "was pending (on the bulk socket); it may or may not have run" in str(outcome.error)


def test_a_broker_that_answers_nothing_for_the_window_fails_every_call_and_asks_for_a_new_socket() -> None:
    core = make_core()
    calls = [new_call(1), new_call(2, timeout=60.0)]
    for call in calls:
        core.add(call)
    send_all(core, 0.0)
    for tenth in range(1, 10 * int(WINDOW)):
        tick = core.tick(tenth / 10)
        assert not tick.reopen and tick.ended == []
    tick = core.tick(WINDOW + 0.05)
    assert tick.reopen
    assert sorted(o.call.corr for o in tick.ended) == [1, 2]
    assert all(
        isinstance(o.error, BrokerUnavailable) and "no answer from the broker" in str(o.error) for o in tick.ended
    )
    assert not core.connected and core.stats["reconnects"] == 1


def test_a_long_call_survives_while_the_broker_answers_heartbeats() -> None:
    core = make_core()
    call = new_call(1)
    core.add(call)
    send_all(core, 0.0)
    now = 0.0
    while now < 10 * WINDOW:
        now = round(now + 0.1, 1)
        tick = core.tick(now)
        assert tick.ended == [] and not tick.reopen
        if tick.sends:  # a heartbeat: the broker answers it
            core.received(wire.heartbeat_to_client(), now + 0.01)
    assert core.received(reply(1, 2), now) == Outcome(call, 2)


def test_silence_while_nobody_watched_is_not_held_against_the_broker() -> None:
    """A driver busy elsewhere (a map's caller working through its results) sent no heartbeats meanwhile."""
    core = make_core()
    core.add(new_call(1))
    send_all(core, 0.0)
    tick = core.tick(10 * WINDOW)
    assert tick.ended == [] and not tick.reopen
    assert commands(tick.sends) == [wire.ClientHeartbeat(WINDOW)], "it asks again at once"
    start = 10 * WINDOW
    for tenth in range(1, 10 * int(WINDOW)):
        assert not core.tick(start + tenth / 10).reopen
    assert core.tick(start + WINDOW + 0.05).reopen, "and counts the window from then"


def test_calls_waiting_for_a_connection_fail_after_the_window() -> None:
    core = make_core(connected=False)
    core.add(new_call(1))
    assert core.tick(WINDOW).ended == []
    (outcome,) = core.tick(WINDOW + 0.01).ended
    assert isinstance(outcome.error, BrokerUnavailable)
    assert f"nothing answers at {ADDRESS}" in str(outcome.error)


def test_a_refused_handshake_fails_waiting_calls_at_once() -> None:
    core = make_core(connected=False)
    core.add(new_call(1))
    core.handshake_failed("the broker refused this client's CURVE public key", refused=True)
    (outcome,) = core.tick(0.01).ended
    assert isinstance(outcome.error, BrokerUnavailable)
    assert "cannot connect to the broker" in str(outcome.error) and "refused" in str(outcome.error)


def test_a_lost_connection_fails_the_calls_it_carried_and_keeps_the_unsent_ones() -> None:
    core = make_core()
    carried = new_call(1)
    core.add(carried)
    send_all(core, 0.0)
    core.connection_lost(0.5)  # a first drop: nothing else was waiting
    core.connection_made(0.6)
    core.add(new_call(2))
    send_all(core, 0.6)
    core.received(reply(1, 2), 0.7)  # ignored: already failed
    unsent = new_call(3)
    core.add(unsent)
    ended = core.connection_lost(1.0)
    assert [o.call.corr for o in ended] == [2]
    assert isinstance(ended[0].error, BrokerUnavailable)
    assert "may or may not have run" in str(ended[0].error)
    assert not core.connected and core.stats["reconnects"] == 2
    core.connection_made(1.5)
    assert [r.corr for r in send_all(core, 1.5)] == [3]


def test_idle_means_nothing_pending_and_nothing_unanswered() -> None:
    core = make_core()
    assert core.idle
    core.tick(1.0)  # a heartbeat goes out
    assert not core.idle
    core.received(wire.heartbeat_to_client(), 1.1)
    assert core.idle


@pytest.mark.parametrize("interval", [0.1, 2.0])
def test_the_grace_is_the_heartbeat_interval_but_at_least_half_a_second(interval: float) -> None:
    assert ClientCore(ADDRESS, interval, 3, 0.0).grace == max(0.5, interval)


# ============================================================ every call ends exactly once


class CoreMachine(RuleBasedStateMachine):
    """Any order of calls, answers, drops, cancels and clock ticks: each call ends once, or stays pending."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.core = make_core(connected=False)
        self.next_corr = 1
        self.ended: dict[int, list[BaseException | None]] = {}
        self.cancelled: set[int] = set()
        self.sent: list[int] = []

    def record(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.ended.setdefault(outcome.call.corr, []).append(outcome.error)

    @rule(timeout=st.none() | st.floats(0.0, 10.0))
    def add(self, timeout: float | None) -> None:
        self.core.add(new_call(self.next_corr, self.now, timeout))
        self.next_corr += 1

    @rule()
    def flush(self) -> None:
        self.sent += [r.corr for r in send_all(self.core, self.now)]

    @rule()
    def connect(self) -> None:
        self.core.connection_made(self.now)

    @precondition(lambda self: self.core.connected)
    @rule()
    def drop(self) -> None:
        self.record(self.core.connection_lost(self.now))

    @rule(seconds=st.floats(0.0, 5.0))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        tick = self.core.tick(self.now)
        self.record(tick.ended)
        if tick.reopen:
            assert not self.core.connected

    @precondition(lambda self: self.sent)
    @rule(data=st.data(), error=st.booleans())
    def answer(self, data: st.DataObject, error: bool) -> None:
        corr = data.draw(st.sampled_from(self.sent))
        frames = (
            wire.error_to_client(corr, error_to_wire(RemoteError("boom")))
            if error
            else wire.reply_to_client(corr, pack_value(corr))
        )
        outcome = self.core.received(frames, self.now)
        if outcome is not None:
            self.record([outcome])

    @rule()
    def heartbeat(self) -> None:
        assert self.core.received(wire.heartbeat_to_client(), self.now) is None

    @precondition(lambda self: self.next_corr > 1)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        corr = data.draw(st.integers(1, self.next_corr - 1))
        if corr in self.core.pending:
            self.cancelled.add(corr)
        self.core.cancel(corr)

    @invariant()
    def each_call_ends_at_most_once_and_pending_ones_have_not_ended(self) -> None:
        assert all(len(errors) == 1 for errors in self.ended.values()), self.ended
        assert not set(self.ended) & set(self.core.pending)
        assert not set(self.ended) & self.cancelled

    def teardown(self) -> None:
        self.record(self.core.close("closed"))
        every = set(range(1, self.next_corr))
        assert set(self.ended) | self.cancelled == every
        assert all(len(errors) == 1 for errors in self.ended.values())


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
