"""Unit tests of the wire format: frames, call codec and error hierarchy (no sockets)."""

from __future__ import annotations

import array
import contextlib
import pickle
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    meta = {"timeout": 1.5, "tag": [1, "x"]}
    frames = wire.client_request(b"corr-1", "démo", "scale_sum", meta, [b"body", b"big buffer"])
    msg = wire.parse_client(conv(frames))
    assert isinstance(msg, wire.ClientRequest)
    assert msg.corr == b"corr-1"
    assert isinstance(msg.corr, bytes)
    assert msg.service == "démo"
    assert msg.method == "scale_sum"
    assert msg.meta == meta
    assert msg.timeout == 1.5
    assert as_bytes(msg.payload) == [b"body", b"big buffer"]


def test_client_request_without_timeout(conv: Any) -> None:
    msg = wire.parse_client(conv(wire.client_request(b"c", "s", "m", {}, [b"b"])))
    assert isinstance(msg, wire.ClientRequest)
    assert msg.timeout is None
    assert msg.meta == {}


def test_client_heartbeat_and_cancel_round_trip(conv: Any) -> None:
    assert isinstance(wire.parse_client(conv(wire.client_heartbeat())), wire.ClientHeartbeat)
    cancel = wire.parse_client(conv(wire.client_cancel(b"\x00\x07")))
    assert cancel == wire.ClientCancel(b"\x00\x07")


def test_reply_to_client_round_trip(conv: Any) -> None:
    msg = wire.parse_for_client(conv(wire.reply_to_client(b"abc", [b"result", b"frame2"])))
    assert isinstance(msg, wire.ReplyToClient)
    assert msg.corr == b"abc"
    assert msg.error is None
    assert as_bytes(msg.payload) == [b"result", b"frame2"]


def test_error_to_client_round_trip(conv: Any) -> None:
    error = {"type": "Busy", "message": "full", "details": {"queue_limit": 2}}
    msg = wire.parse_for_client(conv(wire.error_to_client(b"abc", error)))
    assert isinstance(msg, wire.ReplyToClient)
    assert msg.corr == b"abc"
    assert msg.error == error
    assert msg.payload == []


def test_heartbeat_to_client_round_trip(conv: Any) -> None:
    assert isinstance(wire.parse_for_client(conv(wire.heartbeat_to_client())), wire.HeartbeatToClient)


def test_request_to_worker_round_trip(conv: Any) -> None:
    frames = wire.request_to_worker(b"\x00" * 7 + b"\x01", "add", {"timeout": 0.25}, [b"body", b"buf"])
    msg = wire.parse_for_worker(conv(frames))
    assert isinstance(msg, wire.WorkerRequest)
    assert msg.job == b"\x00" * 7 + b"\x01"
    assert msg.method == "add"
    assert msg.meta == {"timeout": 0.25}
    assert as_bytes(msg.payload) == [b"body", b"buf"]


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
    msg = wire.parse_worker(conv(wire.worker_reply(b"job1", [b"body", b"x" * 100])))
    assert isinstance(msg, wire.WorkerReply)
    assert msg.job == b"job1"
    assert msg.error is None
    assert as_bytes(msg.payload) == [b"body", b"x" * 100]


def test_worker_error_round_trip(conv: Any) -> None:
    error = {"type": "RemoteError", "message": "boom", "details": {"remote_traceback": "tb " * 3000}}
    msg = wire.parse_worker(conv(wire.worker_error(b"job1", error)))
    assert isinstance(msg, wire.WorkerReply)
    assert msg.job == b"job1"
    assert msg.error == error
    assert msg.payload == []


def test_worker_heartbeat_and_disconnect_round_trip(conv: Any) -> None:
    assert isinstance(wire.parse_worker(conv(wire.worker_heartbeat())), wire.WorkerHeartbeat)
    assert isinstance(wire.parse_worker(conv(wire.worker_disconnect())), wire.WorkerDisconnect)


def test_client_and_worker_protocols_are_not_interchangeable() -> None:
    with pytest.raises(ProtocolError):
        wire.parse_client(wire.worker_heartbeat())
    with pytest.raises(ProtocolError):
        wire.parse_worker(wire.client_heartbeat())


# ============================================================ malformed frames


def _request(
    corr: bytes = b"c",
    service: bytes = b"s",
    method: bytes = b"m",
    meta: bytes = b"\x80",
    body: bytes = b"\xc0",
) -> list[bytes]:
    return [CPC, wire.REQUEST, corr, service, method, meta, body]


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([], "0 frame"),
        ([CPC], "1 frame"),
        ([CPC, wire.REQUEST, b"c", b"s", b"m", b"\x80"], "7 frames"),
        ([CPC, wire.CANCEL], "frames"),
        ([b"HTTP/1.1", wire.REQUEST], "not a dllpool message"),
        ([b"", wire.REQUEST], "not a dllpool message"),
        ([CPC, b"\x7f"], "unknown client command 7f"),
        ([CPC, b""], "unknown client command empty"),
        (_request(corr=b""), "correlation ID"),
        (_request(corr=b"x" * 17), "correlation ID"),
        (_request(service=b""), "service name"),
        (_request(service=b"\xff\xfe"), "service name is not UTF-8"),
        (_request(method=b"\xc3"), "method name is not UTF-8"),
        (_request(service=b"s" * 256), "service name"),
        (_request(method=b"m" * 256), "method name"),
        (_request(meta=b"\x93\x01\x02\x03"), "must be a msgpack map"),
        (_request(meta=b"\xc1"), "request meta is not valid msgpack"),
        (_request(meta=wire.pack_header({"timeout": -1})), "timeout"),
        (_request(meta=wire.pack_header({"timeout": -0.5})), "timeout"),
        (_request(meta=wire.pack_header({"timeout": True})), "timeout"),
        (_request(meta=wire.pack_header({"timeout": "5"})), "timeout"),
        (_request(meta=wire.pack_header({"timeout": [5]})), "timeout"),
        (_request(meta=msgpack.packb({"timeout": float("nan")})), "timeout"),
        (_request(meta=b"\xdd\xff\xff\xff\xff"), "request meta"),
        (_request(meta=b"\xdf\xff\xff\xff\xff"), "request meta"),
        (_request(meta=b"\xdb\xff\xff\xff\xff"), "request meta"),
        (_request(meta=b"\x91" * 100_000), "limit"),
        (_request(meta=b"\x81\xa1k\xda" + (5000).to_bytes(2, "big") + b"v" * 5000), "limit"),
        ([CPC, wire.CANCEL, b""], "correlation ID"),
        ([CPC, wire.CANCEL, b"y" * 17], "correlation ID"),
    ],
)
def test_parse_client_rejects(frames: list[bytes], needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_client(frames)
    assert needle in str(info.value)


def test_name_of_255_bytes_is_accepted_and_256_refused() -> None:
    ok = wire.parse_client(_request(service=b"s" * 255, method="é".encode() * 127))
    assert isinstance(ok, wire.ClientRequest)
    assert ok.service == "s" * 255
    with pytest.raises(ProtocolError, match="255"):
        wire.parse_client(_request(service="é".encode() * 128))


def test_corr_of_16_bytes_is_accepted() -> None:
    msg = wire.parse_client(_request(corr=b"x" * 16))
    assert isinstance(msg, wire.ClientRequest)
    assert msg.corr == b"x" * 16


@pytest.mark.parametrize("timeout", [0, 0.0, 3, 2.5, None])
def test_valid_timeouts_are_accepted(timeout: Any) -> None:
    msg = wire.parse_client(_request(meta=wire.pack_header({"timeout": timeout})))
    assert isinstance(msg, wire.ClientRequest)
    assert msg.timeout == (None if timeout is None else float(timeout))


@pytest.mark.parametrize("parse", [wire.parse_client, wire.parse_for_client])
def test_wrong_version_is_named(parse: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        parse([b"DPC\x02", wire.HEARTBEAT])
    message = str(info.value)
    assert "version" in message
    assert "02" in message


def test_missing_version_is_named() -> None:
    with pytest.raises(ProtocolError, match="version"):
        wire.parse_client([b"DPC", wire.HEARTBEAT])


@pytest.mark.parametrize("parse", [wire.parse_worker, wire.parse_for_worker])
def test_wrong_worker_version_is_named(parse: Any) -> None:
    with pytest.raises(ProtocolError, match="version"):
        parse([b"DPW\x09", wire.HEARTBEAT])


def _ready(info: Any) -> list[bytes]:
    return [DPW, wire.READY, msgpack.packb(info)]


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([DPW], "1 frame"),
        ([DPW, b"\x42"], "unknown worker command 42"),
        ([b"DPC\x01", wire.HEARTBEAT], "not a dllpool message"),
        ([DPW, wire.READY], "frames"),
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
        ([DPW, wire.READY, b"\xdd\xff\xff\xff\xff"], "READY info"),
        ([DPW, wire.READY, b"\x91" * 100_000], "limit"),
        ([DPW, wire.REPLY, b"job"], "frames"),
        ([DPW, wire.REPLY, b"", b"body"], "job ID"),
        ([DPW, wire.REPLY, b"j" * 17, b"body"], "job ID"),
        ([DPW, wire.ERROR, b"job", b"\x01"], "map"),
        ([DPW, wire.ERROR, b"job", b"\x81\xa1m" + b"\xdb" + (70_000).to_bytes(4, "big") + b"x" * 70_000], "limit"),
    ],
)
def test_parse_worker_rejects(frames: list[bytes], needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_worker(frames)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([CPC, wire.REPLY, b"c"], "frames"),
        ([CPC, wire.ERROR, b"c", b"\x90"], "map"),
        ([CPC, wire.REQUEST, b"c", b"b"], "unknown broker command 01"),
        ([CPC, wire.REPLY, b"", b"body"], "correlation ID"),
    ],
)
def test_parse_for_client_rejects(frames: list[bytes], needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_for_client(frames)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([DPW, wire.REQUEST, b"j", b"m", b"\x80"], "frames"),
        ([DPW, wire.REQUEST, b"j", b"", b"\x80", b"body"], "method name"),
        ([DPW, wire.REQUEST, b"j", b"m", b"\x01", b"body"], "map"),
        ([DPW, wire.READY, b"\x80"], "unknown broker command 04"),
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
        wire.parse_client(_request(meta=b"\x91" * depth + b"\xc0"))
    message = str(info.value)
    assert "request meta is not valid msgpack" in message
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


def test_tuples_and_sets_travel_as_lists() -> None:
    args, kwargs = unpack_call(pack_call((1, (2, 3)), {"s": {4}}))
    assert args == [1, [2, 3]]
    assert kwargs == {"s": [4]}


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


@pytest.mark.parametrize("code", [c for c in range(128) if c not in (codec.EXT_BUFFER, codec.EXT_ARRAY)])
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


_COMMANDS = [
    wire.REQUEST,
    wire.REPLY,
    wire.ERROR,
    wire.READY,
    wire.HEARTBEAT,
    wire.DISCONNECT,
    wire.CANCEL,
    b"",
    b"\x00",
]
_header_like = st.one_of(
    st.binary(max_size=30),
    st.builds(wire.pack_header, st.dictionaries(st.sampled_from(["timeout", "service", "threads", "pid"]), json_like)),
)


def _frames_for(protocol: bytes) -> st.SearchStrategy[list[bytes]]:
    structured = st.builds(
        lambda head, cmd, rest: [head, cmd, *rest],
        st.sampled_from([protocol, protocol[:3] + b"\x02", protocol[:3], b"XYZ\x01"]),
        st.sampled_from(_COMMANDS),
        st.lists(_header_like, max_size=6),
    )
    return st.one_of(st.lists(st.binary(max_size=30), max_size=8), structured)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames_for(CPC))
def test_property_parse_client_raises_only_protocol_error(frames: list[bytes]) -> None:
    try:
        msg = wire.parse_client(frames)
    except ProtocolError:
        return
    assert isinstance(msg, (wire.ClientRequest, wire.ClientHeartbeat, wire.ClientCancel))
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
