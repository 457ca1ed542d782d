"""Unit tests of the wire format: frames, call codec and error hierarchy (no sockets)."""

from __future__ import annotations

import array
import contextlib
import math
import pickle
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.calls import check_name
from protocol import codec, errors
from protocol import frames as wire
from protocol.codec import Limits, pack_call, pack_value, unpack_call, unpack_value
from protocol.errors import (
    ArgumentError,
    BadRequest,
    BrokerUnavailable,
    Busy,
    CallError,
    DllPoolError,
    ProtocolError,
    RemoteError,
    Timeout,
    UnknownMethod,
    UnknownService,
    WorkerCrashed,
    error_from_wire,
    error_to_wire,
)
from protocol.frames import Buffer

CPC = wire.CLIENT_PROTOCOL
DPW = wire.WORKER_PROTOCOL


def views(frames: list[Any]) -> list[memoryview]:
    """The same frames as zero-copy views, the way the socket layer hands them over."""
    return [memoryview(bytes(f)) for f in frames]


def as_bytes(frames: list[Any]) -> list[bytes]:
    return [bytes(f) for f in frames]


@pytest.fixture(params=["bytes", "memoryview"])
def conv(request: pytest.FixtureRequest) -> Any:
    return (lambda frames: list(frames)) if request.param == "bytes" else views


# ============================================================ builders round-trip


def test_client_request_round_trip(conv: Any) -> None:
    frames = wire.client_request(2**64 - 1, "démo", "scale_sum", 1.5, [b"body", b"big buffer"])
    assert len(frames) == 2, "the header with the small body joined to it, then the buffers as given"
    assert bytes(frames[0]).endswith(b"body") and frames[1] == b"big buffer"
    msg = wire.parse_client(conv(frames))
    assert isinstance(msg, wire.ClientRequest)
    assert msg.corr == 2**64 - 1
    assert (msg.service, msg.method) == ("démo", "scale_sum")
    assert msg.timeout == 1.5
    assert msg.flags & wire.FLAG_TIMEOUT
    assert as_bytes(msg.payload) == [b"body", b"big buffer"]


def test_a_body_of_join_limit_bytes_keeps_a_frame_of_its_own(conv: Any) -> None:
    """Joining copies the body: a big one is never joined (nor copied)."""
    big, small = b"x" * wire.JOIN_LIMIT, b"y" * (wire.JOIN_LIMIT - 1)
    builders: list[tuple[Callable[[list[bytes]], list[Buffer]], Callable[[list[Any]], Any]]] = [
        (lambda p: wire.client_request(1, "s", "m", None, p), wire.parse_client),
        (lambda p: wire.request_to_worker(1, "m", None, p), wire.parse_for_worker),
        (lambda p: wire.worker_reply(1, p), wire.parse_worker),
        (lambda p: wire.reply_to_client(1, p), wire.parse_for_client),
    ]
    for build, parse in builders:
        separate = build([big, b"buf"])
        assert separate[1] is big and len(separate) == 3
        joined = build([small, b"buf"])
        assert len(joined) == 2
        for frames, body in ((separate, big), (joined, small)):
            msg = parse(conv(frames))
            assert as_bytes(msg.payload) == [body, b"buf"]
            assert not getattr(msg, "flags", 0) & wire.FLAG_JOINED, "the flag is the frames', not the caller's"
        alone = build([small])  # the usual message: one frame, which the parsers take apart in line
        assert len(alone) == 1
        msg = parse(conv(alone))
        assert as_bytes(msg.payload) == [small]
        assert not getattr(msg, "flags", 0) & wire.FLAG_JOINED


def test_names_are_decoded_alike_whether_or_not_the_table_of_decoded_names_holds_them(conv: Any) -> None:
    """Received names are kept decoded, up to a bound: a peer sending ever new ones cannot grow the table, and a
    name is read the same the first time, from the table, and after the table was emptied."""
    names = [f"méthode_{i}" for i in range(wire._DECODED_MAX + 100)]
    for _ in range(2):
        for name in names:
            request = wire.parse_for_worker(conv(wire.request_to_worker(1, name, None, [b"\x90"])))
            assert isinstance(request, wire.WorkerRequest) and request.method == name
            client = wire.parse_client(conv(wire.client_request(1, name, "m", None, [b"\x90"])))
            assert isinstance(client, wire.ClientRequest) and (client.service, client.method) == (name, "m")
            assert len(wire._DECODED) <= wire._DECODED_MAX
    with pytest.raises(ProtocolError, match="method name is not UTF-8"):
        wire.parse_for_worker(conv([_worker_request(1, b"\xff"), b"body"]))


def test_client_request_without_timeout_and_with_batch_flag(conv: Any) -> None:
    msg = wire.parse_client(conv(wire.client_request(7, "s", "m", None, [b"b"], wire.FLAG_BATCH)))
    assert isinstance(msg, wire.ClientRequest)
    assert msg.timeout is None
    assert msg.flags == wire.FLAG_BATCH


@pytest.mark.parametrize(
    ("name", "needle"),
    [("", "1-255 UTF-8 bytes, got 0"), ("é" * 128, "1-255 UTF-8 bytes, got 256"), ("\ud800", "cannot be encoded")],
)
def test_a_name_that_cannot_be_sent_is_refused_before_sending_every_time(name: str, needle: str) -> None:
    for _ in range(2):  # names are encoded once and kept: a refusal is not
        with pytest.raises(ValueError, match=needle):
            check_name(name, "method")
        with pytest.raises(ValueError, match=needle):
            wire.client_request(1, "demo", name, None, pack_call((), {}))
    with pytest.raises(TypeError, match="method name must be a str, not bytes"):
        check_name(b"add", "method")  # type: ignore[arg-type]
    assert wire.encoded_name("é" * 127, "method") == "é".encode() * 127


def test_client_heartbeat_and_cancel_round_trip(conv: Any) -> None:
    assert isinstance(wire.parse_client(conv(wire.client_heartbeat())), wire.ClientHeartbeat)
    cancel = wire.parse_client(conv(wire.client_cancel(7)))
    assert isinstance(cancel, wire.ClientCancel)
    assert cancel.corr == 7


def test_reply_to_client_round_trip(conv: Any) -> None:
    msg = wire.parse_for_client(conv(wire.reply_to_client(12345, [b"result", b"frame2"])))
    assert isinstance(msg, wire.ReplyToClient)
    assert msg.corr == 12345
    assert msg.error is None
    assert as_bytes(msg.payload) == [b"result", b"frame2"]


def test_error_to_client_round_trip(conv: Any) -> None:
    error = {"type": "Timeout", "message": "late", "details": {"service": "s"}}
    msg = wire.parse_for_client(conv(wire.error_to_client(12345, error)))
    assert isinstance(msg, wire.ReplyToClient)
    assert msg.corr == 12345
    assert msg.error == error


def test_a_worker_answer_is_forwarded_to_the_client_untouched(conv: Any) -> None:
    """The broker re-addresses a worker's answer: only the header changes, the body is forwarded as it came."""
    error = wire.pack_header({"type": "RemoteError", "message": "boom", "details": {}})
    reply = wire.parse_worker(conv(wire.worker_error(99, {"type": "RemoteError", "message": "boom", "details": {}})))
    assert isinstance(reply, wire.WorkerReply)
    assert reply.error
    assert bytes(reply.payload[0]) == error
    forwarded = wire.answer_to_client(5, reply.error, reply.payload)
    assert len(forwarded) == 1 and bytes(forwarded[0]).endswith(error)
    msg = wire.parse_for_client(forwarded)
    assert isinstance(msg, wire.ReplyToClient)
    assert (msg.corr, msg.error) == (5, {"type": "RemoteError", "message": "boom", "details": {}})


def test_heartbeat_to_client_round_trip(conv: Any) -> None:
    assert isinstance(wire.parse_for_client(conv(wire.heartbeat_to_client())), wire.HeartbeatToClient)


def test_request_to_worker_round_trip(conv: Any) -> None:
    frames = wire.request_to_worker(1, "add", 0.25, [b"body", b"buf"])
    msg = wire.parse_for_worker(conv(frames))
    assert isinstance(msg, wire.WorkerRequest)
    assert msg.job == 1
    assert msg.method == "add"
    assert msg.timeout == 0.25
    assert as_bytes(msg.payload) == [b"body", b"buf"]
    untimed = wire.parse_for_worker(conv(wire.request_to_worker(2, "add", None, [b"b"], wire.FLAG_TIMEOUT)))
    assert isinstance(untimed, wire.WorkerRequest)
    assert untimed.timeout is None, "the timeout flag follows the timeout argument, not the flags given"


def test_heartbeat_and_disconnect_to_worker_round_trip(conv: Any) -> None:
    assert isinstance(wire.parse_for_worker(conv(wire.heartbeat_to_worker())), wire.HeartbeatToWorker)
    assert isinstance(wire.parse_for_worker(conv(wire.disconnect_to_worker())), wire.DisconnectToWorker)


def test_worker_ready_round_trip(conv: Any) -> None:
    info = {"service": "demo", "threads": 3, "pid": 4242, "pointer_size": 4}
    msg = wire.parse_worker(conv(wire.worker_ready(info)))
    assert isinstance(msg, wire.WorkerReady)
    assert msg.info == info
    assert (msg.service, msg.threads, msg.pid) == ("demo", 3, 4242)


def test_worker_reply_round_trip(conv: Any) -> None:
    msg = wire.parse_worker(conv(wire.worker_reply(2**63, [b"body", b"x" * 100])))
    assert isinstance(msg, wire.WorkerReply)
    assert msg.job == 2**63
    assert not msg.error
    assert as_bytes(msg.payload) == [b"body", b"x" * 100]


def test_worker_error_round_trip(conv: Any) -> None:
    error = {"type": "RemoteError", "message": "boom", "details": {"remote_traceback": "tb " * 3000}}
    msg = wire.parse_worker(conv(wire.worker_error(3, error)))
    assert isinstance(msg, wire.WorkerReply)
    assert msg.job == 3
    assert msg.error
    assert wire.unpack_header(msg.payload[0], "error", wire.MAX_ERROR_LEN) == error


def test_worker_heartbeat_and_disconnect_round_trip(conv: Any) -> None:
    assert isinstance(wire.parse_worker(conv(wire.worker_heartbeat())), wire.WorkerHeartbeat)
    assert isinstance(wire.parse_worker(conv(wire.worker_disconnect())), wire.WorkerDisconnect)


def test_client_and_worker_protocols_are_not_interchangeable() -> None:
    with pytest.raises(ProtocolError):
        wire.parse_client(wire.worker_heartbeat())
    with pytest.raises(ProtocolError):
        wire.parse_worker(wire.client_heartbeat())


def test_a_message_with_a_small_body_is_one_frame() -> None:
    assert len(wire.client_request(1, "s", "m", None, [b"body"])) == 1
    assert len(wire.request_to_worker(1, "m", None, [b"body"])) == 1
    assert len(wire.worker_reply(1, [b"body"])) == 1
    assert len(wire.worker_error(1, {"type": "RemoteError"})) == 1
    assert len(wire.reply_to_client(1, [b"body"])) == 1
    assert len(wire.error_to_client(1, {"type": "Timeout"})) == 1
    for heartbeat in (wire.client_heartbeat(), wire.worker_heartbeat(), wire.heartbeat_to_client()):
        assert len(heartbeat) == 1


def test_builders_refuse_names_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="service name"):
        wire.client_request(1, "", "m", None, [b"b"])
    with pytest.raises(ValueError, match="method name"):
        wire.client_request(1, "s", "é" * 128, None, [b"b"])


def test_corr_of_finds_the_id_of_an_unparseable_message() -> None:
    good = wire.client_request(77, "s", "m", None, [b"b"])
    assert wire.corr_of(good[:1], CPC) == 77, "a request missing its body still names its caller"
    assert wire.corr_of(wire.reply_to_client(78, [b"x"]), CPC) == 78
    assert wire.corr_of(wire.client_heartbeat(), CPC) is None
    assert wire.corr_of([b"DPW\x02" + bytes(20)], CPC) is None
    assert wire.corr_of([], CPC) is None


# ============================================================ malformed frames


def _request(
    corr: int = 1,
    service: bytes = b"s",
    method: bytes = b"m",
    timeout: float | None = None,
    flags: int = 0,
    body: list[bytes] | None = None,
) -> list[bytes]:
    return [
        wire.client_request_header(corr, service, method, timeout, flags),
        *([b"\x92\x90\x80"] if body is None else body),
    ]


def _struct_request(flags: int, service_len: int, method_len: int, timeout: float, names: bytes) -> list[bytes]:
    return [struct.pack(">4sBBBBQd", CPC, wire.REQUEST, flags, service_len, method_len, 1, timeout) + names, b"body"]


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([], "no frames"),
        ([CPC], "not a dllpool message"),
        ([bytes([CPC[0], CPC[1], CPC[2], wire.VERSION, 0x42])], "unknown client command 0x42"),
        ([b"HTTP/1.1 200"], "not a dllpool message"),
        ([b""], "not a dllpool message"),
        (_request(body=[]), "no body frame"),
        ([CPC + bytes([wire.REQUEST]) + bytes(10), b"b"], "at least 24 bytes"),
        (_struct_request(0, 1, 1, 0.0, b"s"), "its fields say 26"),
        (_struct_request(0, 1, 1, 0.0, b"smm"), "its fields say 26"),
        (_struct_request(wire.FLAG_JOINED, 1, 1, 0.0, b"sm")[:1], "but the body is 0 bytes"),
        (_struct_request(wire.FLAG_JOINED, 1, 2, 0.0, b"sm")[:1], "its fields say 27"),
        (
            [_struct_request(wire.FLAG_JOINED, 1, 1, 0.0, b"sm" + bytes(wire.JOIN_LIMIT))[0]],
            f"a joined body has 1 to {wire.JOIN_LIMIT - 1}",
        ),
        (_struct_request(0, 0, 1, 0.0, b"m"), "service name is empty"),
        (_struct_request(0, 1, 0, 0.0, b"s"), "method name is empty"),
        (_struct_request(0, 1, 1, 0.0, b"\xffm"), "service name is not UTF-8"),
        (_struct_request(0, 1, 1, 0.0, b"s\xc3"), "method name is not UTF-8"),
        (_struct_request(wire.FLAG_TIMEOUT, 1, 1, -1.0, b"sm"), "timeout"),
        (_struct_request(wire.FLAG_TIMEOUT, 1, 1, -0.5, b"sm"), "timeout"),
        (_struct_request(wire.FLAG_TIMEOUT, 1, 1, math.nan, b"sm"), "timeout"),
        (_struct_request(wire.FLAG_TIMEOUT, 1, 1, math.inf, b"sm"), "timeout"),
        (_struct_request(0x80, 1, 1, 0.0, b"sm"), "unknown flag bits"),
        ([CPC + bytes([wire.CANCEL])], "CANCEL header must be 16 bytes"),
        ([CPC + bytes([wire.CANCEL]) + bytes(12)], "CANCEL header must be 16 bytes"),
    ],
)
def test_parse_client_rejects(frames: list[bytes], needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_client(frames)
    assert needle in str(info.value)


def test_names_at_the_length_limit_are_accepted() -> None:
    ok = wire.parse_client(wire.client_request(1, "s" * 255, "é" * 127, None, [b"b"]))
    assert isinstance(ok, wire.ClientRequest)
    assert ok.method == "é" * 127


@pytest.mark.parametrize("timeout", [0, 0.0, 5, 2.5, None])
def test_valid_timeouts_are_accepted(timeout: Any) -> None:
    msg = wire.parse_client(_request(timeout=timeout))
    assert isinstance(msg, wire.ClientRequest)
    assert msg.timeout == (None if timeout is None else float(timeout))


def test_a_timeout_field_without_its_flag_is_ignored() -> None:
    msg = wire.parse_client(_struct_request(0, 1, 1, -7.0, b"sm"))
    assert isinstance(msg, wire.ClientRequest)
    assert msg.timeout is None


@pytest.mark.parametrize("parse", [wire.parse_client, wire.parse_for_client])
def test_wrong_version_is_named(parse: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        parse([b"DPC\x01", b"\x05"])
    message = str(info.value)
    assert "version 1 is not supported" in message
    assert f"speaks version {wire.VERSION}" in message


@pytest.mark.parametrize("parse", [wire.parse_worker, wire.parse_for_worker])
def test_wrong_worker_version_is_named(parse: Any) -> None:
    with pytest.raises(ProtocolError, match="version 9"):
        parse([b"DPW\x09\x05"])


def _ready(info: Any) -> list[bytes]:
    return [DPW + bytes([wire.READY]), msgpack.packb(info)]


def _client_error_header() -> bytes:
    """An ERROR header whose error map comes in a frame of its own (as a big one does)."""
    return struct.pack(">4sBBxxQ", CPC, wire.ERROR, 0, 1)


def _answer(command: int, job: bytes) -> bytes:
    return DPW + bytes([command]) + job


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([DPW], "not a dllpool message"),
        ([DPW + b"\x42"], "unknown worker command 0x42"),
        ([b"DPC\x02\x05"], "not a dllpool message"),
        ([DPW + bytes([wire.READY])], "READY needs at least 2 frames"),
        (_ready({"threads": 1, "pid": 5}), "service"),
        (_ready({"service": "", "threads": 1, "pid": 5}), "service"),
        (_ready({"service": 5, "threads": 1, "pid": 5}), "service"),
        (_ready({"service": "s", "pid": 5}), "threads"),
        (_ready({"service": "s", "threads": 0, "pid": 5}), "threads"),
        (_ready({"service": "s", "threads": True, "pid": 5}), "threads"),
        (_ready({"service": "s", "threads": 1025, "pid": 5}), "threads"),
        (_ready({"service": "s", "threads": 1}), "pid"),
        (_ready({"service": "s", "threads": 1, "pid": 0}), "pid"),
        (_ready({"service": "s", "threads": 1, "pid": "5"}), "pid"),
        (_ready(["s", 1, 5]), "map"),
        ([DPW + bytes([wire.READY]), b"\xdd\xff\xff\xff\xff"], "READY info"),
        ([DPW + bytes([wire.READY]), b"\x91" * 100_000], "limit"),
        ([_answer(wire.REPLY, bytes(11))], "REPLY has no body frame"),
        ([_answer(wire.REPLY, bytes(3)), b"body"], "REPLY header must be at least 16 bytes"),
        ([_answer(wire.ERROR, bytes(12)), b"body"], "ERROR header is 17 bytes; its fields say 16"),
        ([_answer(wire.REPLY, bytes([wire.FLAG_JOINED]) + bytes(10))], "but the body is 0 bytes"),
        ([_answer(wire.REPLY, bytes([0x80]) + bytes(10)), b"body"], "unknown flag bits 0x80"),
    ],
)
def test_parse_worker_rejects(frames: list[bytes], needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_worker(frames)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([wire.reply_to_client(1, [])[0]], "REPLY has no body frame"),
        ([_client_error_header(), b"\x90"], "map"),
        (wire.answer_to_client(1, True, [b"\x90"]), "map"),
        (_request(), "unknown broker command 0x01"),
        ([CPC + bytes([wire.REPLY]) + bytes(3), b"body"], "REPLY header must be at least 16 bytes"),
        (
            [_client_error_header(), b"\x81\xa1m" + b"\xdb" + (70_000).to_bytes(4, "big") + b"x" * 70_000],
            "limit",
        ),
    ],
)
def test_parse_for_client_rejects(frames: list[bytes], needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_for_client(frames)
    assert needle in str(info.value)


def _worker_request(method_len: int, names: bytes, flags: int = 0, timeout: float = 0.0) -> bytes:
    return struct.pack(">4sBBBxQd", DPW, wire.REQUEST, flags, method_len, 1, timeout) + names


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([_worker_request(1, b"m")], "no body frame"),
        ([_worker_request(1, b"m", wire.FLAG_JOINED)], "but the body is 0 bytes"),
        ([_worker_request(0, b""), b"body"], "method name"),
        ([_worker_request(2, b"m"), b"body"], "its fields say"),
        ([_worker_request(1, b"\xff"), b"body"], "not UTF-8"),
        ([_worker_request(1, b"m", wire.FLAG_TIMEOUT, -1.0), b"body"], "timeout"),
        ([DPW + bytes([wire.READY]), b"\x80"], "unknown broker command 0x04"),
    ],
)
def test_parse_for_worker_rejects(frames: list[bytes], needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_for_worker(frames)
    assert needle in str(info.value)


def test_header_limits() -> None:
    with pytest.raises(ProtocolError, match="4097 bytes; the limit is 4096"):
        wire.unpack_header(b"\x80" + b"\x00" * 4096, "meta")
    with pytest.raises(ProtocolError, match="meta is not valid msgpack"):
        # header maps carry no bytes values (max_bin_len=0)
        wire.unpack_header(msgpack.packb({"k": b"v"}, use_bin_type=True), "meta")


def test_error_header_may_be_longer_than_other_headers() -> None:
    error = {"type": "RemoteError", "message": "x", "details": {"remote_traceback": "t" * 20_000}}
    assert wire.unpack_header(wire.pack_header(error), "error", wire.MAX_ERROR_LEN) == error
    with pytest.raises(ProtocolError, match="limit"):
        wire.unpack_header(wire.pack_header(error), "meta")


@pytest.mark.parametrize("depth", [1_100, 4_000])
def test_deeply_nested_header_message_names_the_problem(depth: int) -> None:
    """Nesting deeper than msgpack's stack (1024) but within the size limit.

    msgpack raises ``StackError()`` whose str() is empty; the ProtocolError
    message must still say something after "not valid msgpack:".
    """
    with pytest.raises(ProtocolError) as info:
        wire.parse_worker([DPW + bytes([wire.READY]), b"\x91" * depth + b"\xc0"])
    message = str(info.value)
    assert "READY info is not valid msgpack" in message
    assert message.split("not valid msgpack:", 1)[1].strip(), f"message names no problem: {message!r}"


# ============================================================ codec


def roundtrip(value: Any, limits: Limits = codec.DEFAULT_LIMITS) -> Any:
    return unpack_value(views(pack_value(value)), limits)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        1.5,
        -0.0,
        float("inf"),
        "",
        "héllo ✓",
        b"",
        b"\x00\xff" * 10,
        None,
        True,
        False,
        [],
        {},
        [1, [2, [3, {"a": [None, b"x"]}]]],
        {"nested": {"list": [1.25, "s", b"b", None, False]}, "n": -7},
    ],
)
def test_pack_value_round_trip(value: Any) -> None:
    result = roundtrip(value)
    assert result == value
    assert type(result) is type(value)


def test_pack_call_round_trip() -> None:
    args = [1, -2.5, "text", b"raw", None, True, [1, [2, 3]], {"k": {"n": [1]}}]
    kwargs = {"scale": 2.0, "name": "x", "data": b"\x01\x02", "flags": [True, False]}
    frames = pack_call(args, kwargs)
    assert len(frames) == 1
    got_args, got_kwargs = unpack_call(views(frames))
    assert got_args == args
    assert got_kwargs == kwargs


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [1, {"k": 2**70}], {3, 2**99}])
def test_an_integer_msgpack_cannot_carry_is_an_overflow_error(value: Any) -> None:
    with pytest.raises(OverflowError, match=r"integer out of range \(msgpack carries -2\*\*63 \.\. 2\*\*64-1\)"):
        pack_value(value)


@pytest.mark.parametrize("value", [object(), [1, {"k": ...}], (1, object())])
def test_a_type_msgpack_cannot_carry_is_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="can not serialize"):
        pack_value(value)


def test_tuples_stay_tuples_and_sets_travel_as_lists() -> None:
    args, kwargs = unpack_call(pack_call((1, (2, (3,))), {"s": {4}, "t": ()}))
    assert args == [1, (2, (3,))]
    assert kwargs == {"s": [4], "t": ()}


ARRAY_SAMPLES: dict[str, list[Any]] = {
    "b": [-128, 0, 127],
    "B": [0, 255],
    "h": [-32768, 32767],
    "H": [0, 65535],
    "i": [-(2**31), 2**31 - 1],
    "I": [0, 2**32 - 1],
    "q": [-(2**63), 2**63 - 1],
    "Q": [0, 2**64 - 1],
    "f": [0.5, -1.25, 3.0],
    "d": [0.1, -1e300, 2.5],
}


@pytest.mark.parametrize("typecode", sorted(ARRAY_SAMPLES))
def test_small_array_round_trip(typecode: str) -> None:
    value = array.array(typecode, ARRAY_SAMPLES[typecode])
    frames = pack_value([value])
    assert len(frames) == 1, "a small array travels inline in the body"
    (result,) = unpack_value(views(frames))
    assert isinstance(result, array.array)
    assert result.typecode == typecode
    assert result == value


@pytest.mark.parametrize("typecode", sorted(ARRAY_SAMPLES))
def test_big_array_travels_out_of_band(typecode: str) -> None:
    value = array.array(typecode, ARRAY_SAMPLES[typecode] * 20_000)
    frames = pack_value({"data": value, "n": 1})
    assert len(frames) == 2
    assert len(frames[0]) < 100, "the body only refers to the array's frame"
    assert bytes(frames[1]) == value.tobytes()
    result = unpack_value(views(frames))
    assert result["n"] == 1
    assert result["data"].typecode == typecode
    assert result["data"] == value


@pytest.mark.parametrize(("typecode", "fixed"), [("l", {4: "i", 8: "q"}), ("L", {4: "I", 8: "Q"})])
@pytest.mark.parametrize("count", [3, 10_000])
def test_c_long_arrays_arrive_as_fixed_width(typecode: str, fixed: dict[int, str], count: int) -> None:
    value = array.array(typecode, [1, 2, 3] * count)
    result = roundtrip(value)
    assert result.typecode == fixed[value.itemsize]
    assert result.itemsize == value.itemsize
    assert list(result) == list(value)


@pytest.mark.parametrize("typecode", ["u"])
def test_unsendable_array_typecode_is_refused(typecode: str) -> None:
    with pytest.raises(TypeError, match="cannot be sent"):
        pack_value(array.array(typecode, "abc"))


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_big_bytes_travel_as_separate_frames(kind: Any) -> None:
    data = bytes(range(256)) * 64  # 16 KiB exactly: the threshold
    assert len(data) == codec.OUT_OF_BAND_MIN
    frames = pack_call([kind(data), b"small"], {"k": kind(data * 4)})
    assert len(frames) == 3, "each big buffer gets a frame of its own"
    assert len(frames[0]) < 100, "the body only refers to the frames"
    assert sorted(len(f) for f in frames[1:]) == [len(data), 4 * len(data)]
    args, kwargs = unpack_call(views(frames))
    assert args == [data, b"small"]
    assert kwargs == {"k": data * 4}
    assert type(args[0]) is bytes


def test_bytes_below_threshold_stay_inline() -> None:
    data = b"q" * (codec.OUT_OF_BAND_MIN - 1)
    frames = pack_value(data)
    assert len(frames) == 1
    assert unpack_value(frames) == data


def test_big_buffer_is_sent_zero_copy() -> None:
    data = bytearray(b"z" * 100_000)
    frames = pack_value(data)
    assert isinstance(frames[1], memoryview)
    data[0:1] = b"A"  # the frame is a view of the caller's buffer, not a copy
    assert bytes(frames[1][:1]) == b"A"


def test_missing_frame_is_a_protocol_error() -> None:
    frames = pack_value([b"x" * 20_000, b"y" * 20_000])
    assert len(frames) == 3
    with pytest.raises(ProtocolError, match="frame 2"):
        unpack_value(frames[:2])
    with pytest.raises(ProtocolError, match="does not exist"):
        unpack_value(frames[:1])


@pytest.mark.parametrize("ref", [0, -1, True, "1", b"\x01", [1], None, 1.0])
def test_bad_frame_reference_is_a_protocol_error(ref: Any) -> None:
    body = msgpack.packb(msgpack.ExtType(codec.EXT_BUFFER, msgpack.packb(ref, use_bin_type=True)))
    with pytest.raises(ProtocolError):
        unpack_value([body, b"frame one"])


def _ref(code: int, index: int) -> msgpack.ExtType:
    data = index if code == codec.EXT_BUFFER else ["d", index]
    return msgpack.ExtType(code, msgpack.packb(data, use_bin_type=True))


@pytest.mark.parametrize("first", [codec.EXT_BUFFER, codec.EXT_ARRAY])
@pytest.mark.parametrize("second", [codec.EXT_BUFFER, codec.EXT_ARRAY])
def test_a_frame_referred_to_twice_is_a_protocol_error(first: int, second: int) -> None:
    """Otherwise a small body could make the receiver copy one big frame thousands of times."""
    body = msgpack.packb([_ref(first, 1), {"k": _ref(second, 1)}])
    with pytest.raises(ProtocolError, match="refers to frame 1 more than once"):
        unpack_value([body, b"\x00" * 16])


@pytest.mark.parametrize("extra", [1, 3])
def test_a_frame_the_body_never_refers_to_is_a_protocol_error(extra: int) -> None:
    frames = [*pack_value([b"x" * 20_000, b"y" * 20_000]), *[b"unused"] * extra]
    with pytest.raises(ProtocolError, match=f"{extra} frame\\(s\\) its body never refers to \\(frame 3 first\\)"):
        unpack_value(frames)
    with pytest.raises(ProtocolError, match="never refers to"):
        unpack_value([pack_value(1)[0], b"unused"])


def test_big_buffers_are_copied_out_of_their_frames_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "COPY_SLICE", 64)
    assert [len(piece) for piece in codec.slices(b"x" * 150)] == [64, 64, 22]
    data = bytes(range(256)) * 100
    values = array.array("d", range(5000))
    args, kwargs = unpack_call(views(pack_call([data, values], {"empty": array.array("d")})))
    assert type(args[0]) is bytes and args[0] == data
    assert args[1] == values and args[1].typecode == "d"
    assert kwargs == {"empty": array.array("d")}


@pytest.mark.parametrize(
    "code",
    [
        c
        for c in range(128)
        if c
        not in (
            codec.EXT_BUFFER,
            codec.EXT_ARRAY,
            codec.EXT_NDARRAY,
            codec.EXT_TUPLE,
            codec.EXT_COMPLEX,
            codec.EXT_STRUCT,
            codec.EXT_RANGE,
            codec.EXT_HANDLE,
        )
    ],
)
def test_unknown_ext_type_is_refused_and_never_unpickled(code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle must never be called when unpacking")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    body = msgpack.packb([msgpack.ExtType(code, pickle.dumps({"evil": 1}))])
    with pytest.raises(ProtocolError):
        unpack_value([body])
    body = msgpack.packb([msgpack.ExtType(code, msgpack.packb(1))])
    with pytest.raises(ProtocolError, match=f"unknown ext type {code} in payload"):
        unpack_value([body, b"frame"])


@pytest.mark.parametrize("code", [codec.EXT_BUFFER, codec.EXT_ARRAY])
def test_known_ext_types_with_pickled_data_are_refused(code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle called"))
    body = msgpack.packb(msgpack.ExtType(code, pickle.dumps(array.array("d", [1.0]))))
    with pytest.raises(ProtocolError):
        unpack_value([body])


def test_codec_modules_do_not_import_pickle() -> None:
    for module in (codec, wire, errors):
        assert "pickle" not in vars(module)
        assert "marshal" not in vars(module)


@pytest.mark.parametrize(
    "ext_data",
    [
        msgpack.packb(["d", b"\x00" * 7], use_bin_type=True),
        msgpack.packb(["i", b"\x00" * 6], use_bin_type=True),
        msgpack.packb(["h", b"\x00"], use_bin_type=True),
    ],
)
def test_inline_array_bytes_not_multiple_of_itemsize(ext_data: bytes) -> None:
    body = msgpack.packb(msgpack.ExtType(codec.EXT_ARRAY, ext_data))
    with pytest.raises(ProtocolError, match="whole number"):
        unpack_value([body])


def test_out_of_band_array_bytes_not_multiple_of_itemsize() -> None:
    body = msgpack.packb(msgpack.ExtType(codec.EXT_ARRAY, msgpack.packb(["d", 1])))
    with pytest.raises(ProtocolError, match="whole number"):
        unpack_value([body, b"\x00" * 9])


@pytest.mark.parametrize(
    "ref",
    [["l", b"\x00" * 8], ["u", b"\x00" * 4], ["d"], ["d", b"", 1], "d", 5, [1, b""], [["d"], b""]],
)
def test_malformed_array_is_refused(ref: Any) -> None:
    body = msgpack.packb(msgpack.ExtType(codec.EXT_ARRAY, msgpack.packb(ref, use_bin_type=True)))
    with pytest.raises(ProtocolError):
        unpack_value([body])


@pytest.mark.parametrize(
    "value",
    [5, None, "args", [], [[1]], [[1], {"a": 1}, 3], [{"a": 1}, [1]], [[1], {1: 2}], [[1], [2]], {"args": []}],
)
def test_call_payload_must_be_list_and_map(value: Any) -> None:
    with pytest.raises(ProtocolError, match="call payload"):
        unpack_call(pack_value(value))


def test_empty_payload_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="no body"):
        unpack_value([])
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        unpack_value([b""])
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        unpack_value([b"\x92\x01"])  # truncated


def test_limit_max_body() -> None:
    frames = pack_value("x" * 100)
    assert unpack_value(frames, Limits(max_body=len(frames[0]))) == "x" * 100
    with pytest.raises(ProtocolError, match="limit is 50"):
        unpack_value(frames, Limits(max_body=50))


def test_limit_max_items() -> None:
    assert unpack_value(pack_value([1, 2, 3]), Limits(max_items=3)) == [1, 2, 3]
    with pytest.raises(ProtocolError, match="max_array_len"):
        unpack_value(pack_value([1, 2, 3, 4]), Limits(max_items=3))
    with pytest.raises(ProtocolError, match="max_map_len"):
        unpack_value(pack_value({str(i): i for i in range(4)}), Limits(max_items=3))


def test_limit_max_frames() -> None:
    value = [b"a" * 20_000, b"b" * 20_000]
    assert unpack_value(pack_value(value), Limits(max_frames=3)) == value
    with pytest.raises(ProtocolError, match="3 frames; the limit is 2"):
        unpack_value(pack_value(value), Limits(max_frames=2))


def test_huge_length_prefix_in_body() -> None:
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        unpack_value([b"\xdd\xff\xff\xff\xff"])
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        unpack_value([b"\xc6\xff\xff\xff\xff"])


def test_deeply_nested_body_is_a_protocol_error_naming_the_problem() -> None:
    with pytest.raises(ProtocolError) as info:
        unpack_value([b"\x91" * 100_000 + b"\xc0"])
    message = str(info.value)
    assert message.split("not valid msgpack:", 1)[1].strip(), f"message names no problem: {message!r}"


# ============================================================ hypothesis

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(json_like)
def test_property_values_round_trip(value: Any) -> None:
    assert unpack_value(pack_value(value)) == value
    assert unpack_value(views(pack_value(value))) == value


@settings(max_examples=150, deadline=None)
@given(st.lists(json_like, max_size=4), st.dictionaries(st.text(max_size=8), json_like, max_size=4))
def test_property_calls_round_trip(args: list[Any], kwargs: dict[str, Any]) -> None:
    assert unpack_call(pack_call(args, kwargs)) == (args, kwargs)


_COMMANDS = [wire.REQUEST, wire.REPLY, wire.ERROR, wire.READY, wire.HEARTBEAT, wire.DISCONNECT, wire.CANCEL, 0, 255]
_body_like = st.one_of(
    st.binary(max_size=30),
    st.builds(wire.pack_header, st.dictionaries(st.sampled_from(["timeout", "service", "threads", "pid"]), json_like)),
)


def _frames_for(protocol: bytes) -> st.SearchStrategy[list[bytes]]:
    """Headers with a right or wrong tag, any command and any tail (including well-formed layouts)."""
    tails = st.one_of(
        st.binary(max_size=40),
        st.builds(
            lambda flags, a, b, ident, timeout, names: struct.pack(">BBBQd", flags, a, b, ident, timeout) + names,
            st.integers(0, 255),
            st.integers(0, 255),
            st.integers(0, 255),
            st.integers(0, 2**64 - 1),
            st.floats(),
            st.binary(max_size=10),
        ),
        st.builds(lambda ident: b"\x00\x00\x00" + struct.pack(">Q", ident), st.integers(0, 2**64 - 1)),
    )
    structured = st.builds(
        lambda head, cmd, tail, rest: [head + bytes([cmd]) + tail, *rest],
        st.sampled_from([protocol, protocol[:3] + b"\x01", protocol[:3], b"XYZ\x02"]),
        st.sampled_from(_COMMANDS),
        tails,
        st.lists(_body_like, max_size=4),
    )
    return st.one_of(st.lists(st.binary(max_size=30), max_size=8), structured)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames_for(CPC))
def test_property_parse_client_raises_only_protocol_error(frames: list[bytes]) -> None:
    try:
        msg = wire.parse_client(frames)
    except ProtocolError:
        return
    assert isinstance(msg, (wire.ClientRequest, wire.ClientHeartbeat, wire.ClientCancel, wire.ClientDisconnect))
    if isinstance(msg, wire.ClientRequest):
        assert msg.timeout is None or msg.timeout >= 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames_for(DPW))
def test_property_parse_worker_raises_only_protocol_error(frames: list[bytes]) -> None:
    try:
        msg = wire.parse_worker(frames)
    except ProtocolError:
        return
    assert isinstance(msg, (wire.WorkerReady, wire.WorkerReply, wire.WorkerHeartbeat, wire.WorkerDisconnect))
    if isinstance(msg, wire.WorkerReady):
        assert isinstance(msg.service, str)
        assert msg.threads >= 1
        assert msg.pid > 0


_ext = st.builds(
    lambda code, data: msgpack.packb([msgpack.ExtType(code, data)]),
    st.integers(min_value=0, max_value=127) | st.sampled_from([1, 2]),
    st.binary(max_size=20)
    | st.builds(
        lambda x: msgpack.packb(x, use_bin_type=True),
        st.lists(st.sampled_from(["d", "q", "l", "u", 1, 2, 0, b"\x00" * 8, b"\x00" * 3]), max_size=3)
        | st.integers(-2, 4),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40) | _ext, min_size=0, max_size=4))
def test_property_unpack_value_raises_only_protocol_error(frames: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):
        unpack_value(frames)


# ============================================================ errors

ALL_ERRORS = [
    CallError,
    RemoteError,
    ArgumentError,
    BadRequest,
    UnknownService,
    UnknownMethod,
    Timeout,
    WorkerCrashed,
    Busy,
    BrokerUnavailable,
]


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_error_wire_round_trip(cls: type[CallError]) -> None:
    original = cls(f"a {cls.__name__} happened", service="demo", method="add", pid=123, extra=[1, "x"])
    wire_form = error_to_wire(original)
    # through the real header encoding, as the broker and worker send it
    rebuilt = error_from_wire(wire.unpack_header(wire.pack_header(wire_form), "error", wire.MAX_ERROR_LEN))
    assert type(rebuilt) is cls
    assert rebuilt.message == f"a {cls.__name__} happened"
    assert rebuilt.details == {"service": "demo", "method": "add", "pid": 123, "extra": [1, "x"]}
    assert isinstance(rebuilt, DllPoolError)


@pytest.mark.parametrize(
    "data",
    [
        None,
        "boom",
        [1, 2],
        {},
        {"type": "NoSuchError", "message": "m"},
        {"type": "DllPoolError", "message": "m"},
        {"type": "ProtocolError", "message": "m"},
        {"type": "ConfigError", "message": "m"},
        {"type": "Exception", "message": "m"},
        {"type": 5, "message": "m"},
    ],
)
def test_malformed_wire_error_becomes_plain_call_error(data: Any) -> None:
    error = error_from_wire(data)
    assert type(error) is CallError


def test_malformed_wire_error_fields_are_tolerated() -> None:
    error = error_from_wire({"type": "Busy", "message": 42, "details": [1]})
    assert type(error) is Busy
    assert error.message == "42"
    assert error.details == {}
    error = error_from_wire({"type": "Busy", "message": "m", "details": {1: "non-string key"}})
    assert error.details == {}
    assert "malformed error reply" in error_from_wire(["x"]).message


@pytest.mark.parametrize("key", ["message", "self", "cls"])
def test_wire_error_details_may_use_any_string_key(key: str) -> None:
    """A peer controls ``details``; a key that clashes with CallError's parameter names must not raise."""
    data = {"type": "RemoteError", "message": "boom", "details": {key: "v", "remote_type": "ValueError"}}
    error = error_from_wire(data)
    assert isinstance(error, RemoteError)
    assert error.message == "boom"
    assert error.details.get("remote_type") == "ValueError"


def test_timeout_is_a_builtin_timeout_error() -> None:
    error = Timeout("too slow", service="s", method="m")
    assert isinstance(error, TimeoutError)
    assert isinstance(error, CallError)
    assert str(error) == "too slow"
    assert error.details == {"service": "s", "method": "m"}
    with pytest.raises(TimeoutError):
        raise error_from_wire(error_to_wire(error))


def test_remote_error_str_includes_remote_traceback() -> None:
    tb = 'Traceback (most recent call last):\n  File "wrapper.py", line 3\nZeroDivisionError: division by zero\n'
    error = RemoteError("ZeroDivisionError: division by zero", remote_type="ZeroDivisionError", remote_traceback=tb)
    text = str(error)
    assert text.startswith("ZeroDivisionError: division by zero")
    assert tb in text
    assert error.remote_type == "ZeroDivisionError"
    assert error.remote_traceback == tb
    rebuilt = error_from_wire(error_to_wire(error))
    assert tb in str(rebuilt)
    assert str(RemoteError("plain")) == "plain"


def test_every_public_error_is_a_dllpool_error() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, DllPoolError), name


def test_a_big_buffer_argument_is_sent_as_its_own_frame_never_copied_into_the_body() -> None:
    big = bytearray(b"x" * (1 << 20))
    frames = codec.pack_call((big, 3), {"k": 1})
    assert len(frames[0]) < 64, "the body holds only a reference to the buffer"
    assert isinstance(frames[1], memoryview)
    assert frames[1].obj is big, "the frame is the caller's own memory, not a copy"
    assert unpack_call(frames) == ([bytes(big), 3], {"k": 1})


@pytest.mark.parametrize("size", [100, 40_000])
def test_a_non_contiguous_buffer_is_a_type_error(size: int) -> None:
    with pytest.raises(TypeError, match="contiguous"):
        pack_value(memoryview(bytes(size))[::2])


@pytest.mark.parametrize(
    ("build", "parse", "message"),
    [
        (wire.client_cancel, wire.parse_client, wire.ClientCancel),
        (wire.cancel_to_worker, wire.parse_for_worker, wire.CancelToWorker),
    ],
)
def test_cancel_with_flag_bits_is_refused(build: Any, parse: Any, message: type) -> None:
    """A CANCEL has no flags (the byte after its command): one with bits set is not taken as a cancel."""
    header = build(0x1234)[0]
    assert parse([header]) == message(0x1234)
    flagged = header[:5] + bytes([wire.FLAG_JOINED]) + header[6:]
    with pytest.raises(ProtocolError, match="CANCEL has unknown flag bits 0x08"):
        parse([flagged])


def test_a_body_in_a_buffer_that_is_not_contiguous_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        unpack_value([memoryview(b"\x93\x01\x02\x03\x04")[::2]])
