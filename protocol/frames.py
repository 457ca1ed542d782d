"""The dllpool wire format: multipart ZeroMQ messages, pure functions only.

Every message starts with a protocol frame (``DPC`` for client<->broker,
``DPW`` for broker<->worker, each followed by a version byte) and a one-byte
command. Header frames are small and parsed here; the call payload (a
msgpack body plus any out-of-band buffer frames) is opaque and passed
through untouched, so the broker never decodes arguments.

Client -> broker (client DEALER, broker ROUTER)::

    REQUEST    [DPC1, 0x01, corr, service, method, meta, body, *buffers]
    HEARTBEAT  [DPC1, 0x05]
    CANCEL     [DPC1, 0x07, corr]

Broker -> client::

    REPLY      [DPC1, 0x02, corr, body, *buffers]
    ERROR      [DPC1, 0x03, corr, error]
    HEARTBEAT  [DPC1, 0x05]

Worker -> broker (worker DEALER, broker ROUTER)::

    READY      [DPW1, 0x04, info]
    REPLY      [DPW1, 0x02, job, body, *buffers]
    ERROR      [DPW1, 0x03, job, error]
    HEARTBEAT  [DPW1, 0x05]
    DISCONNECT [DPW1, 0x06]

Broker -> worker::

    REQUEST    [DPW1, 0x01, job, method, meta, body, *buffers]
    HEARTBEAT  [DPW1, 0x05]
    DISCONNECT [DPW1, 0x06]

``corr`` is the client's correlation ID (opaque, 1-16 bytes); ``job`` is the
broker's own ID for one dispatch, so a worker can only answer what it was
given. ``meta``, ``info`` and ``error`` are small msgpack maps.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union, cast

import msgpack

from .errors import ProtocolError

__all__ = [
    "Buffer",
    "CLIENT_PROTOCOL",
    "WORKER_PROTOCOL",
    "REQUEST",
    "REPLY",
    "ERROR",
    "READY",
    "HEARTBEAT",
    "DISCONNECT",
    "CANCEL",
    "MAX_CORR_LEN",
    "MAX_NAME_LEN",
    "MAX_HEADER_LEN",
    "MAX_ERROR_LEN",
    "ClientRequest",
    "ClientHeartbeat",
    "ClientCancel",
    "ClientMessage",
    "WorkerReady",
    "WorkerReply",
    "WorkerHeartbeat",
    "WorkerDisconnect",
    "WorkerMessage",
    "WorkerRequest",
    "pack_header",
    "unpack_header",
    "parse_client",
    "parse_worker",
    "parse_for_client",
    "parse_for_worker",
    "client_request",
    "client_heartbeat",
    "client_cancel",
    "reply_to_client",
    "error_to_client",
    "heartbeat_to_client",
    "request_to_worker",
    "heartbeat_to_worker",
    "disconnect_to_worker",
    "worker_ready",
    "worker_reply",
    "worker_error",
    "worker_heartbeat",
    "worker_disconnect",
    "ReplyToClient",
    "HeartbeatToClient",
    "HeartbeatToWorker",
    "DisconnectToWorker",
]

Buffer = Union[bytes, bytearray, memoryview]
"""A frame as the socket layer hands it over (``bytes`` or a zero-copy view)."""

CLIENT_PROTOCOL = b"DPC\x01"
WORKER_PROTOCOL = b"DPW\x01"

REQUEST = b"\x01"
REPLY = b"\x02"
ERROR = b"\x03"
READY = b"\x04"
HEARTBEAT = b"\x05"
DISCONNECT = b"\x06"
CANCEL = b"\x07"

MAX_CORR_LEN = 16
MAX_NAME_LEN = 255
MAX_HEADER_LEN = 4096
MAX_ERROR_LEN = 65536
"""Errors carry a remote traceback, so they may be longer than other headers."""


def pack_header(data: dict[str, Any]) -> bytes:
    """Pack a small header map (meta, info, error)."""
    return cast(bytes, msgpack.packb(data, use_bin_type=True))


def unpack_header(frame: Buffer, what: str, limit: int = MAX_HEADER_LEN) -> dict[str, Any]:
    """Unpack a header map from an untrusted peer, within tight limits."""
    if len(frame) > limit:
        raise ProtocolError(f"{what} is {len(frame)} bytes; the limit is {limit}")
    try:
        data = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=0,
            max_array_len=4096,
            max_map_len=256,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"{what} is not valid msgpack: {str(exc) or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} must be a msgpack map, not {type(data).__name__}")
    return data


def _name(frame: Buffer, what: str) -> str:
    if not 0 < len(frame) <= MAX_NAME_LEN:
        raise ProtocolError(f"{what} must be 1-{MAX_NAME_LEN} bytes, got {len(frame)}")
    try:
        return bytes(frame).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None


def _ident(frame: Buffer, what: str) -> bytes:
    if not 0 < len(frame) <= MAX_CORR_LEN:
        raise ProtocolError(f"{what} must be 1-{MAX_CORR_LEN} bytes, got {len(frame)}")
    return bytes(frame)


def _check(frames: Sequence[Buffer], protocol: bytes, minimum: int) -> bytes:
    """Validate the protocol frame and return the command byte."""
    if len(frames) < 2:
        raise ProtocolError(f"message has {len(frames)} frame(s); at least 2 expected")
    if frames[0] != protocol:
        head = bytes(frames[0][:8])
        if head[:3] == protocol[:3]:
            raise ProtocolError(
                f"protocol version {head[3:4].hex() or 'missing'} is not supported; "
                f"this peer speaks {protocol[3:].hex()}"
            )
        raise ProtocolError(f"not a dllpool message (first frame {head!r})")
    command = bytes(frames[1])
    if len(frames) < minimum:
        raise ProtocolError(f"command {command.hex()} needs {minimum} frames, got {len(frames)}")
    return command


# --- messages the broker receives ---------------------------------------------------


@dataclass(frozen=True)
class ClientRequest:
    corr: bytes
    service: str
    method: str
    meta: dict[str, Any]
    payload: list[Buffer] = field(repr=False)

    @property
    def timeout(self) -> Optional[float]:
        """Seconds the client will wait, or None; validated by :func:`parse_client`."""
        value = self.meta.get("timeout")
        return None if value is None else float(value)


@dataclass(frozen=True)
class ClientHeartbeat:
    pass


@dataclass(frozen=True)
class ClientCancel:
    corr: bytes


ClientMessage = Union[ClientRequest, ClientHeartbeat, ClientCancel]


@dataclass(frozen=True)
class WorkerReady:
    info: dict[str, Any]

    @property
    def service(self) -> str:
        return str(self.info["service"])

    @property
    def threads(self) -> int:
        return int(self.info["threads"])

    @property
    def pid(self) -> int:
        return int(self.info["pid"])


@dataclass(frozen=True)
class WorkerReply:
    """A result (``error is None``) or an error answer to one job."""

    job: bytes
    payload: list[Buffer] = field(repr=False)
    error: Optional[dict[str, Any]] = None


@dataclass(frozen=True)
class WorkerHeartbeat:
    pass


@dataclass(frozen=True)
class WorkerDisconnect:
    pass


WorkerMessage = Union[WorkerReady, WorkerReply, WorkerHeartbeat, WorkerDisconnect]


def parse_client(frames: Sequence[Buffer]) -> ClientMessage:
    """Parse what a client sent to the broker (routing frame already removed)."""
    command = _check(frames, CLIENT_PROTOCOL, 2)
    if command == REQUEST:
        if len(frames) < 7:
            raise ProtocolError(f"REQUEST needs at least 7 frames, got {len(frames)}")
        meta = unpack_header(frames[5], "request meta")
        timeout = meta.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0
        ):
            raise ProtocolError(f"request meta 'timeout' must be a number >= 0 or nil, got {timeout!r}")
        return ClientRequest(
            corr=_ident(frames[2], "correlation ID"),
            service=_name(frames[3], "service name"),
            method=_name(frames[4], "method name"),
            meta=meta,
            payload=list(frames[6:]),
        )
    if command == HEARTBEAT:
        return ClientHeartbeat()
    if command == CANCEL:
        _check(frames, CLIENT_PROTOCOL, 3)
        return ClientCancel(_ident(frames[2], "correlation ID"))
    raise ProtocolError(f"unknown client command {command.hex() or 'empty'}")


def parse_worker(frames: Sequence[Buffer]) -> WorkerMessage:
    """Parse what a worker sent to the broker (routing frame already removed)."""
    command = _check(frames, WORKER_PROTOCOL, 2)
    if command == READY:
        _check(frames, WORKER_PROTOCOL, 3)
        info = unpack_header(frames[2], "READY info")
        service, threads, pid = info.get("service"), info.get("threads"), info.get("pid")
        if not isinstance(service, str) or not service:
            raise ProtocolError("READY info needs a 'service' string")
        if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 1024:
            raise ProtocolError(f"READY info 'threads' must be 1-1024, got {threads!r}")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise ProtocolError(f"READY info 'pid' must be a positive integer, got {pid!r}")
        return WorkerReady(info)
    if command == REPLY:
        _check(frames, WORKER_PROTOCOL, 4)
        return WorkerReply(_ident(frames[2], "job ID"), list(frames[3:]))
    if command == ERROR:
        _check(frames, WORKER_PROTOCOL, 4)
        error = unpack_header(frames[3], "error", MAX_ERROR_LEN)
        return WorkerReply(_ident(frames[2], "job ID"), [], error)
    if command == HEARTBEAT:
        return WorkerHeartbeat()
    if command == DISCONNECT:
        return WorkerDisconnect()
    raise ProtocolError(f"unknown worker command {command.hex() or 'empty'}")


# --- messages the peers receive -----------------------------------------------------


@dataclass(frozen=True)
class ReplyToClient:
    """A result (``error is None``) or error for the request ``corr``."""

    corr: bytes
    payload: list[Buffer] = field(repr=False)
    error: Optional[dict[str, Any]] = None


@dataclass(frozen=True)
class HeartbeatToClient:
    pass


@dataclass(frozen=True)
class WorkerRequest:
    job: bytes
    method: str
    meta: dict[str, Any]
    payload: list[Buffer] = field(repr=False)


@dataclass(frozen=True)
class HeartbeatToWorker:
    pass


@dataclass(frozen=True)
class DisconnectToWorker:
    pass


def parse_for_client(frames: Sequence[Buffer]) -> Union[ReplyToClient, HeartbeatToClient]:
    """Parse what the broker sent to a client."""
    command = _check(frames, CLIENT_PROTOCOL, 2)
    if command == REPLY:
        _check(frames, CLIENT_PROTOCOL, 4)
        return ReplyToClient(_ident(frames[2], "correlation ID"), list(frames[3:]))
    if command == ERROR:
        _check(frames, CLIENT_PROTOCOL, 4)
        return ReplyToClient(_ident(frames[2], "correlation ID"), [], unpack_header(frames[3], "error", MAX_ERROR_LEN))
    if command == HEARTBEAT:
        return HeartbeatToClient()
    raise ProtocolError(f"unknown broker command {command.hex() or 'empty'}")


def parse_for_worker(
    frames: Sequence[Buffer],
) -> Union[WorkerRequest, HeartbeatToWorker, DisconnectToWorker]:
    """Parse what the broker sent to a worker."""
    command = _check(frames, WORKER_PROTOCOL, 2)
    if command == REQUEST:
        _check(frames, WORKER_PROTOCOL, 6)
        return WorkerRequest(
            job=_ident(frames[2], "job ID"),
            method=_name(frames[3], "method name"),
            meta=unpack_header(frames[4], "request meta"),
            payload=list(frames[5:]),
        )
    if command == HEARTBEAT:
        return HeartbeatToWorker()
    if command == DISCONNECT:
        return DisconnectToWorker()
    raise ProtocolError(f"unknown broker command {command.hex() or 'empty'}")


# --- builders -----------------------------------------------------------------------


def client_request(
    corr: bytes, service: str, method: str, meta: dict[str, Any], payload: Sequence[Buffer]
) -> list[Buffer]:
    return [
        CLIENT_PROTOCOL,
        REQUEST,
        corr,
        service.encode("utf-8"),
        method.encode("utf-8"),
        pack_header(meta),
        *payload,
    ]


def client_heartbeat() -> list[Buffer]:
    return [CLIENT_PROTOCOL, HEARTBEAT]


def client_cancel(corr: bytes) -> list[Buffer]:
    return [CLIENT_PROTOCOL, CANCEL, corr]


def reply_to_client(corr: bytes, payload: Sequence[Buffer]) -> list[Buffer]:
    return [CLIENT_PROTOCOL, REPLY, corr, *payload]


def error_to_client(corr: bytes, error: dict[str, Any]) -> list[Buffer]:
    return [CLIENT_PROTOCOL, ERROR, corr, pack_header(error)]


def heartbeat_to_client() -> list[Buffer]:
    return [CLIENT_PROTOCOL, HEARTBEAT]


def request_to_worker(job: bytes, method: str, meta: dict[str, Any], payload: Sequence[Buffer]) -> list[Buffer]:
    return [WORKER_PROTOCOL, REQUEST, job, method.encode("utf-8"), pack_header(meta), *payload]


def heartbeat_to_worker() -> list[Buffer]:
    return [WORKER_PROTOCOL, HEARTBEAT]


def disconnect_to_worker() -> list[Buffer]:
    return [WORKER_PROTOCOL, DISCONNECT]


def worker_ready(info: dict[str, Any]) -> list[Buffer]:
    return [WORKER_PROTOCOL, READY, pack_header(info)]


def worker_reply(job: bytes, payload: Sequence[Buffer]) -> list[Buffer]:
    return [WORKER_PROTOCOL, REPLY, job, *payload]


def worker_error(job: bytes, error: dict[str, Any]) -> list[Buffer]:
    return [WORKER_PROTOCOL, ERROR, job, pack_header(error)]


def worker_heartbeat() -> list[Buffer]:
    return [WORKER_PROTOCOL, HEARTBEAT]


def worker_disconnect() -> list[Buffer]:
    return [WORKER_PROTOCOL, DISCONNECT]
