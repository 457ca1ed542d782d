"""The dllpool wire format (version 3): multipart ZeroMQ messages, pure functions only.

Every message starts with a small fixed-layout header, parsed with
:mod:`struct`, followed by the body and any out-of-band buffer frames (the
call payload, which stays opaque here: the broker never decodes arguments,
results or error details, it only forwards them). A header starts with a
4-byte protocol tag (``DPC`` for client<->broker, ``DPW`` for broker<->worker,
then the version byte) and a command byte.

A body under :data:`JOIN_LIMIT` bytes rides in the header's frame, right after
the header (:data:`FLAG_JOINED`): one frame fewer to send and to receive at
every hop. Each frame costs a call into libzmq, and in a client each such call
lets go of the GIL: with 64 calling threads, the two frames a request and its
answer no longer have saved 25 % of the client's CPU per call and half of its
context switches (measured against a fake broker, 64 threads, 4,000 calls/s).
A bigger body keeps a frame of its own, so it is never copied to be joined.

Headers (big-endian; ``corr`` is the client's correlation ID, ``job`` the
broker's own ID for one dispatch, so a worker can only answer what it was
given; both unsigned 64-bit)::

    REQUEST, client -> broker   tag cmd flags len(service) len(method) corr:u64 timeout:f64 service method [pid:u32]
    REQUEST, broker -> worker   tag cmd flags len(method)  pad         job:u64  timeout:f64 method
    REPLY, ERROR, CANCEL        tag cmd flags pad pad corr-or-job:u64      (a CANCEL's flags are 0)
    HEARTBEAT, client -> broker tag cmd [pad pad pad window:f64]
    READY, HEARTBEAT, DISCONNECT, STOP tag cmd

Messages::

    client -> broker   REQUEST [header+body, *buffers]   HEARTBEAT [header]   CANCEL [header]
                       DISCONNECT [header]
    broker -> client   REPLY [header+body, *buffers]     ERROR [header+error]  HEARTBEAT [header]
    worker -> broker   READY [header, info]   REPLY [header+body, *buffers]   ERROR [header+error]
                       HEARTBEAT [header, [figures]]     DISCONNECT [header]
    broker -> worker   REQUEST [header+body, *buffers]   HEARTBEAT [header]   DISCONNECT [header]
                       CANCEL [header]   STOP [header]

``header+body`` is one frame with :data:`FLAG_JOINED` set, or two frames
``header, body`` without it.

``timeout`` counts only with :data:`FLAG_TIMEOUT` set: the seconds left
until the caller's deadline when the message was sent. ``pid`` is there only
with :data:`FLAG_PINNED`: the one worker that must run the call. Methods whose
name starts with ``$`` are the broker's own (:data:`BROKER_METHODS`). :data:`FLAG_BATCH`
marks a request whose body holds many argument lists for one method
(``Client.map``). ``info`` (READY) and ``error`` are small msgpack maps; the
broker reads ``info`` and forwards ``error`` untouched. A worker's HEARTBEAT
may carry ``figures``, a small msgpack map of what the worker measured of
itself (:data:`FIGURES`), for status and recycling. STOP retires a worker:
the broker sends it once the worker holds no call, and the worker exits.

Clients have a lifetime at the broker: a client HEARTBEAT may carry the
client's own liveness ``window`` (seconds it may stay silent before the
broker forgets the calls it has queued), and DISCONNECT says it is gone for
good. A CANCEL to a worker asks it to answer a job it holds but has not
started without running it (the broker already gave up on that job).
"""

import functools
import math
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional, Union, cast

import msgpack

from .errors import ProtocolError

__all__ = [
    "Buffer",
    "VERSION",
    "CLIENT_PROTOCOL",
    "WORKER_PROTOCOL",
    "REQUEST",
    "REPLY",
    "ERROR",
    "READY",
    "HEARTBEAT",
    "DISCONNECT",
    "CANCEL",
    "STOP",
    "FIGURES",
    "FLAG_TIMEOUT",
    "FLAG_BATCH",
    "FLAG_PINNED",
    "FLAG_JOINED",
    "JOIN_LIMIT",
    "LEASE",
    "RELEASE",
    "WORKERS",
    "STATUS",
    "ANY_SERVICE",
    "SCALE",
    "BROKER_METHODS",
    "DROP_HANDLES",
    "SESSION_INIT",
    "SESSION_CLOSE",
    "MAX_ID",
    "MAX_NAME_LEN",
    "MAX_HEADER_LEN",
    "MAX_ERROR_LEN",
    "MAX_CLIENT_WINDOW",
    "ClientRequest",
    "ClientHeartbeat",
    "ClientCancel",
    "ClientDisconnect",
    "ClientMessage",
    "WorkerReady",
    "WorkerReply",
    "WorkerHeartbeat",
    "WorkerDisconnect",
    "WorkerMessage",
    "WorkerRequest",
    "ReplyToClient",
    "HeartbeatToClient",
    "HeartbeatToWorker",
    "DisconnectToWorker",
    "CancelToWorker",
    "StopToWorker",
    "pack_header",
    "unpack_header",
    "parse_client",
    "parse_worker",
    "parse_for_client",
    "parse_for_worker",
    "corr_of",
    "client_request",
    "encoded_name",
    "client_request_header",
    "client_heartbeat",
    "client_cancel",
    "client_disconnect",
    "reply_to_client",
    "error_to_client",
    "answer_to_client",
    "heartbeat_to_client",
    "request_to_worker",
    "heartbeat_to_worker",
    "disconnect_to_worker",
    "cancel_to_worker",
    "stop_to_worker",
    "worker_ready",
    "worker_reply",
    "worker_error",
    "worker_heartbeat",
    "worker_disconnect",
]

Buffer = Union[bytes, bytearray, memoryview]
"""A frame as the socket layer hands it over (``bytes`` or a zero-copy view)."""

VERSION = 3
CLIENT_PROTOCOL = b"DPC" + bytes([VERSION])
WORKER_PROTOCOL = b"DPW" + bytes([VERSION])

REQUEST = 1
REPLY = 2
ERROR = 3
READY = 4
HEARTBEAT = 5
DISCONNECT = 6
CANCEL = 7
STOP = 8

FLAG_TIMEOUT = 1
"""The header's ``timeout`` field holds the seconds left until the caller's deadline."""
FLAG_BATCH = 2
"""The body is a list of argument lists, each a call of the one method; the result is a list of outcomes."""
FLAG_PINNED = 4
"""Client requests only: the header ends with the pid (u32) of the one worker that must run the call (a
session's worker, the worker a handle belongs to, one worker of a broadcast)."""
FLAG_JOINED = 8
"""REQUEST, REPLY and ERROR: the body (the payload's first frame) follows the header in the header's frame."""
_FLAGS = FLAG_TIMEOUT | FLAG_BATCH | FLAG_PINNED | FLAG_JOINED
JOIN_LIMIT = 64 * 1024
"""Bodies shorter than this are joined to their header (a copy this small costs less than a frame)."""
_PIN = struct.Struct(">I")

LEASE = "$lease"
"""Broker method: lease one worker of the service to this client alone (a session); the answer is
``{"pid": pid}`` once a worker is free. Calls pinned to that pid then go to it, in order."""
RELEASE = "$release"
"""Broker method, pinned to the leased pid: end the lease."""
WORKERS = "$workers"
"""Broker method: the service's registered workers, a list of ``{"pid", "host", "threads", "leased"}``."""
STATUS = "$status"
"""Broker method, for any service name: the whole pool's status (see ``BrokerCore.status``)."""
ANY_SERVICE = "*"
"""The service name clients send pool-wide broker methods (STATUS) with: the broker does not look at it."""
SCALE = "$scale"
"""Broker method: run the service with the number of workers in the body; answers ``{"workers": n}``."""
BROKER_METHODS = frozenset((LEASE, RELEASE, WORKERS, STATUS, SCALE))
FIGURES = frozenset(("rss", "address_space_free"))
"""What a worker's HEARTBEAT may report of itself, in bytes; other keys are ignored."""
SESSION_INIT = "$session_init"
"""Worker method, pinned: run the service's ``session_init`` function (a session starts on this worker)."""
SESSION_CLOSE = "$session_close"
"""Worker method, pinned: run the service's ``session_close`` function (the session on this worker ends)."""
DROP_HANDLES = "$drop"
"""Worker method of a service with handles, pinned to their worker: ``$drop([id, ...])``, the caller let go of
those handles (each is closed with its kind's declared close function, if any)."""

MAX_ID = 2**64 - 1
MAX_NAME_LEN = 255
MAX_HEADER_LEN = 4096
MAX_ERROR_LEN = 65536
"""Errors carry a remote traceback, so they may be longer than other headers."""

_CLIENT_REQUEST = struct.Struct(">4sBBBBQd")
_WORKER_REQUEST = struct.Struct(">4sBBBxQd")
_ANSWER = struct.Struct(">4sBBxxQ")
_CLIENT_HEARTBEAT_WINDOW = struct.Struct(">4sBxxxd")
MAX_CLIENT_WINDOW = 3600.0
"""The longest silence a client may ask the broker to wait out before forgetting its calls."""
_TAG_LEN = 4
_ID_OFFSET = 8
"""Where ``corr`` or ``job`` sits in every header that has one."""
_ID_AT = struct.Struct(">Q")
_SHORT_LEN = 5
"""Tag and command: the whole header of READY, HEARTBEAT and DISCONNECT."""


def pack_header(data: "dict[str, Any]") -> bytes:
    """Pack a small msgpack map (READY info, an error)."""
    return cast(bytes, msgpack.packb(data, use_bin_type=True))


def unpack_header(frame: Buffer, what: str, limit: int = MAX_HEADER_LEN) -> "dict[str, Any]":
    """Unpack a small msgpack map from an untrusted peer, within tight limits."""
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


def _not_ours(frames: Sequence[Buffer], protocol: bytes) -> ProtocolError:
    """Why a message whose first frame does not start with ``protocol``'s tag and a command is refused. (The
    parsers check the tag themselves, on every message: this is called only for what they refuse.)"""
    if not frames:
        return ProtocolError("message has no frames")
    head = bytes(frames[0][:8])
    if head[:3] == protocol[:3] and len(head) >= _TAG_LEN and head[3] != protocol[3]:
        return ProtocolError(f"protocol version {head[3]} is not supported; this peer speaks version {protocol[3]}")
    return ProtocolError(f"not a dllpool message (header {head!r})")


def _expect(frames: Sequence[Buffer], size: int, minimum: int, what: str) -> None:
    if len(frames[0]) != size:
        raise ProtocolError(f"{what} header must be {size} bytes, got {len(frames[0])}")
    if len(frames) < minimum:
        raise ProtocolError(f"{what} needs at least {minimum} frames, got {len(frames)}")


_DECODED: "dict[bytes, str]" = {}
"""Names as received, decoded: a broker and its workers see the same few names on every call. The parsers look a
name up here themselves (a function call costs more than the lookup), and :func:`_name` decodes the others."""
_DECODED_MAX = 1024
"""Names kept; a peer sending ever new ones empties it now and then (they are decoded again, nothing else)."""


def _name(raw: bytes, what: str) -> str:
    """A name not in :data:`_DECODED`, decoded and kept there; ProtocolError if it is empty or not UTF-8."""
    if not raw:
        raise ProtocolError(f"{what} is empty")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None
    if len(_DECODED) >= _DECODED_MAX:
        _DECODED.clear()
    _DECODED[raw] = name
    return name


def _request_payload(frames: Sequence[Buffer], header_len: int, flags: int, timeout: float) -> "list[Buffer]":
    """A REQUEST's payload, after a header of ``header_len`` bytes whose flags and timeout are checked first."""
    if flags & ~_FLAGS:
        raise ProtocolError(f"REQUEST has unknown flag bits {flags & ~_FLAGS:#04x}")
    if flags & FLAG_TIMEOUT and not 0.0 <= timeout < math.inf:
        raise ProtocolError(f"REQUEST timeout must be a finite number >= 0, got {timeout!r}")
    return _payload(frames, header_len, flags, "REQUEST")


def _payload(frames: Sequence[Buffer], header_len: int, flags: int, what: str) -> "list[Buffer]":
    """The body and buffers after a header of ``header_len`` bytes: joined to it, or in frames of their own."""
    header = frames[0]
    joined = bool(flags & FLAG_JOINED)
    if len(header) < header_len or (len(header) > header_len and not joined):
        raise ProtocolError(f"{what} header is {len(header)} bytes; its fields say {header_len}")
    if joined:
        if not 0 < len(header) - header_len < JOIN_LIMIT:
            raise ProtocolError(
                f"{what} says its body follows the header, but the body is {len(header) - header_len} bytes: "
                f"a joined body has 1 to {JOIN_LIMIT - 1}"
            )
        return [header[header_len:], *frames[1:]]
    if len(frames) < 2:
        raise ProtocolError(f"{what} has no body frame")
    return list(frames[1:])


def _answer(frames: Sequence[Buffer], what: str) -> "tuple[int, list[Buffer]]":
    """The ID and payload of a REPLY or ERROR."""
    if len(frames[0]) < _ANSWER.size:
        raise ProtocolError(f"{what} header must be at least {_ANSWER.size} bytes, got {len(frames[0])}")
    _, _, flags, ident = _ANSWER.unpack_from(frames[0])
    if flags & ~FLAG_JOINED:
        raise ProtocolError(f"{what} has unknown flag bits {flags & ~FLAG_JOINED:#04x}")
    return ident, _payload(frames, _ANSWER.size, flags, what)


def _cancelled(frames: Sequence[Buffer]) -> int:
    """The ID a CANCEL names. It has no flags: a set bit is a peer speaking something else, not a cancel."""
    _expect(frames, _ANSWER.size, 1, "CANCEL")
    _, _, flags, ident = _ANSWER.unpack(frames[0])
    if flags:
        raise ProtocolError(f"CANCEL has unknown flag bits {flags:#04x}")
    return int(ident)


def _joined(header: bytes, payload: Sequence[Buffer], joined: int) -> "list[Buffer]":
    """The frames of a message whose ``header`` was packed with the flag :func:`_join_flag` gave (``joined``)."""
    return [header + payload[0], *payload[1:]] if joined else [header, *payload]


def _join_flag(payload: Sequence[Buffer]) -> int:
    """:data:`FLAG_JOINED` when the body rides in its header's frame, else 0: asked once per message."""
    return FLAG_JOINED if payload and 0 < len(payload[0]) < JOIN_LIMIT else 0


# --- messages the broker receives ---------------------------------------------------


class ClientRequest(NamedTuple):
    corr: int
    service: str
    method: str
    timeout: Optional[float]
    """Seconds the client will wait, or None."""
    flags: int
    payload: "list[Buffer]"
    pin: Optional[int] = None
    """The pid of the worker that must run it (:data:`FLAG_PINNED`), or None for any worker of the service."""


class ClientHeartbeat(NamedTuple):
    window: Optional[float] = None
    """Seconds this client may stay silent before the broker forgets its calls (None: the broker's own)."""


class ClientCancel(NamedTuple):
    corr: int


class ClientDisconnect(NamedTuple):
    """The client is gone for good: its queued calls are dropped, and answers to its running ones discarded."""


ClientMessage = Union[ClientRequest, ClientHeartbeat, ClientCancel, ClientDisconnect]


class WorkerReady(NamedTuple):
    info: "dict[str, Any]"

    @property
    def service(self) -> str:
        return str(self.info["service"])

    @property
    def threads(self) -> int:
        return int(self.info["threads"])

    @property
    def pid(self) -> int:
        return int(self.info["pid"])


class WorkerReply(NamedTuple):
    """A result or (``error``) an error answer to one job; ``payload`` is forwarded as it came."""

    job: int
    error: bool
    payload: "list[Buffer]"


class WorkerHeartbeat(NamedTuple):
    figures: "Optional[dict[str, int]]" = None


class WorkerDisconnect(NamedTuple):
    pass


WorkerMessage = Union[WorkerReady, WorkerReply, WorkerHeartbeat, WorkerDisconnect]

_CLIENT_HEARTBEAT = ClientHeartbeat()
_CLIENT_DISCONNECT = ClientDisconnect()
_WORKER_HEARTBEAT = WorkerHeartbeat()
_WORKER_DISCONNECT = WorkerDisconnect()


def parse_client(frames: Sequence[Buffer]) -> ClientMessage:
    """Parse what a client sent to the broker (routing frame already removed)."""
    header = frames[0] if frames else b""
    if header[:_TAG_LEN] != CLIENT_PROTOCOL or len(header) < _SHORT_LEN:
        raise _not_ours(frames, CLIENT_PROTOCOL)
    command = header[_TAG_LEN]
    if command == REQUEST:
        if len(header) < _CLIENT_REQUEST.size:
            raise ProtocolError(f"REQUEST header must be at least {_CLIENT_REQUEST.size} bytes, got {len(header)}")
        _, _, flags, service_len, method_len, corr, timeout = _CLIENT_REQUEST.unpack_from(header)
        end = _CLIENT_REQUEST.size + service_len
        at = end + method_len + (_PIN.size if flags & FLAG_PINNED else 0)
        payload = _request_payload(frames, at, flags, timeout)  # first: it checks the header's length
        service, method = bytes(header[_CLIENT_REQUEST.size : end]), bytes(header[end : end + method_len])
        return ClientRequest(
            corr,
            _DECODED.get(service) or _name(service, "service name"),
            _DECODED.get(method) or _name(method, "method name"),
            timeout if flags & FLAG_TIMEOUT else None,
            flags & ~(FLAG_PINNED | FLAG_JOINED),
            payload,
            _PIN.unpack_from(header, at - _PIN.size)[0] if flags & FLAG_PINNED else None,
        )
    if command == HEARTBEAT:
        if len(header) == _SHORT_LEN:
            return _CLIENT_HEARTBEAT
        _expect(frames, _CLIENT_HEARTBEAT_WINDOW.size, 1, "HEARTBEAT")
        window = _CLIENT_HEARTBEAT_WINDOW.unpack(header)[2]
        if not (0 < window <= MAX_CLIENT_WINDOW):
            raise ProtocolError(f"HEARTBEAT window must be > 0 and <= {MAX_CLIENT_WINDOW:g} s, got {window!r}")
        return ClientHeartbeat(window)
    if command == CANCEL:
        return ClientCancel(_cancelled(frames))
    if command == DISCONNECT:
        return _CLIENT_DISCONNECT
    raise ProtocolError(f"unknown client command {command:#04x}")


def parse_worker(frames: Sequence[Buffer]) -> WorkerMessage:
    """Parse what a worker sent to the broker (routing frame already removed)."""
    header = frames[0] if frames else b""
    if header[:_TAG_LEN] != WORKER_PROTOCOL or len(header) < _SHORT_LEN:
        raise _not_ours(frames, WORKER_PROTOCOL)
    command = header[_TAG_LEN]
    if command in (REPLY, ERROR):
        job, payload = _answer(frames, "REPLY" if command == REPLY else "ERROR")
        return WorkerReply(job, command == ERROR, payload)
    if command == HEARTBEAT:
        return _WORKER_HEARTBEAT if len(frames) == 1 else WorkerHeartbeat(_figures(frames[1]))
    if command == READY:
        _expect(frames, _SHORT_LEN, 2, "READY")
        info = unpack_header(frames[1], "READY info")
        service, threads, pid = info.get("service"), info.get("threads"), info.get("pid")
        if not isinstance(service, str) or not service:
            raise ProtocolError("READY info needs a 'service' string")
        if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 1024:
            raise ProtocolError(f"READY info 'threads' must be 1-1024, got {threads!r}")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise ProtocolError(f"READY info 'pid' must be a positive integer, got {pid!r}")
        return WorkerReady(info)
    if command == DISCONNECT:
        return _WORKER_DISCONNECT
    raise ProtocolError(f"unknown worker command {command:#04x}")


def _figures(frame: Buffer) -> "dict[str, int]":
    """The figures of a worker's HEARTBEAT: known names with sizes, the rest dropped."""
    raw = unpack_header(frame, "HEARTBEAT figures")
    figures = {}
    for name in FIGURES & raw.keys():
        value = raw[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
            raise ProtocolError(f"HEARTBEAT figure {name!r} must be a byte count, got {value!r}")
        figures[name] = value
    return figures


# --- messages the peers receive -----------------------------------------------------


class ReplyToClient(NamedTuple):
    """A result, or (``error``) the error map for the request ``corr``."""

    corr: int
    payload: "list[Buffer]"
    error: "Optional[dict[str, Any]]" = None


class HeartbeatToClient(NamedTuple):
    pass


class WorkerRequest(NamedTuple):
    job: int
    method: str
    timeout: Optional[float]
    """Seconds left until the caller's deadline when the broker sent it, or None."""
    flags: int
    payload: "list[Buffer]"


class HeartbeatToWorker(NamedTuple):
    pass


class DisconnectToWorker(NamedTuple):
    pass


class StopToWorker(NamedTuple):
    """Exit: the worker is retired (recycled or scaled down) and holds no call."""


class CancelToWorker(NamedTuple):
    """Answer ``job`` at once, without running it, if it has not started; otherwise finish it as usual."""

    job: int


_HEARTBEAT_TO_CLIENT = HeartbeatToClient()
_HEARTBEAT_TO_WORKER = HeartbeatToWorker()
_DISCONNECT_TO_WORKER = DisconnectToWorker()
_STOP_TO_WORKER = StopToWorker()


def parse_for_client(frames: Sequence[Buffer]) -> Union[ReplyToClient, HeartbeatToClient]:
    """Parse what the broker sent to a client; an error's map is unpacked (within limits) here."""
    header = frames[0] if frames else b""
    if header[:_TAG_LEN] != CLIENT_PROTOCOL or len(header) < _SHORT_LEN:
        raise _not_ours(frames, CLIENT_PROTOCOL)
    command = header[_TAG_LEN]
    if command == REPLY:
        return ReplyToClient(*_answer(frames, "REPLY"))
    if command == ERROR:
        corr, payload = _answer(frames, "ERROR")
        return ReplyToClient(corr, [], unpack_header(payload[0], "error", MAX_ERROR_LEN))
    if command == HEARTBEAT:
        return _HEARTBEAT_TO_CLIENT
    raise ProtocolError(f"unknown broker command {command:#04x}")


def parse_for_worker(
    frames: Sequence[Buffer],
) -> Union[WorkerRequest, HeartbeatToWorker, DisconnectToWorker, CancelToWorker, StopToWorker]:
    """Parse what the broker sent to a worker."""
    header = frames[0] if frames else b""
    if header[:_TAG_LEN] != WORKER_PROTOCOL or len(header) < _SHORT_LEN:
        raise _not_ours(frames, WORKER_PROTOCOL)
    command = header[_TAG_LEN]
    if command == REQUEST:
        if len(header) <= _WORKER_REQUEST.size:
            raise ProtocolError("REQUEST needs a header with a method name and a body")
        _, _, flags, method_len, job, timeout = _WORKER_REQUEST.unpack_from(header)
        end = _WORKER_REQUEST.size + method_len
        payload = _request_payload(frames, end, flags, timeout)  # first: it checks the header's length
        method = bytes(header[_WORKER_REQUEST.size : end])
        return WorkerRequest(
            job,
            _DECODED.get(method) or _name(method, "method name"),
            timeout if flags & FLAG_TIMEOUT else None,
            flags & ~FLAG_JOINED,
            payload,
        )
    if command == HEARTBEAT:
        return _HEARTBEAT_TO_WORKER
    if command == DISCONNECT:
        return _DISCONNECT_TO_WORKER
    if command == STOP:
        return _STOP_TO_WORKER
    if command == CANCEL:
        return CancelToWorker(_cancelled(frames))
    raise ProtocolError(f"unknown broker command {command:#04x}")


def corr_of(frames: Sequence[Buffer], protocol: bytes) -> Optional[int]:
    """The ID in a message too malformed to parse, when its header still carries one worth answering."""
    if not frames or len(frames[0]) < _ANSWER.size or frames[0][:_TAG_LEN] != protocol:
        return None
    if frames[0][_TAG_LEN] not in (REQUEST, REPLY, ERROR):
        return None
    return int(_ID_AT.unpack_from(frames[0], _ID_OFFSET)[0])


# --- builders -----------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def encoded_name(name: str, what: str) -> bytes:
    """A service or method name (``what``) as it is sent; ValueError if it cannot be. Made once per name: a
    client checks and sends, and a broker forwards, the same few names on every call."""
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} name {name!r:.80} cannot be encoded as UTF-8") from None
    if not 0 < len(raw) <= MAX_NAME_LEN:
        raise ValueError(f"{what} name must be 1-{MAX_NAME_LEN} UTF-8 bytes, got {len(raw)}")
    return raw


def client_request(
    corr: int,
    service: str,
    method: str,
    timeout: Optional[float],
    payload: Sequence[Buffer],
    flags: int = 0,
    pin: Optional[int] = None,
) -> "list[Buffer]":
    """A REQUEST; names that do not fit raise ValueError (the caller's mistake, found before sending)."""
    names = encoded_name(service, "service"), encoded_name(method, "method")
    if len(payload) == 1 and 0 < len(payload[0]) < JOIN_LIMIT:  # the usual request: _joined's work, in a line
        return [client_request_header(corr, *names, timeout, flags | FLAG_JOINED, pin) + payload[0]]
    joined = _join_flag(payload)
    return _joined(client_request_header(corr, *names, timeout, flags & ~FLAG_JOINED | joined, pin), payload, joined)


def client_request_header(
    corr: int, service: bytes, method: bytes, timeout: Optional[float], flags: int = 0, pin: Optional[int] = None
) -> bytes:
    """The header alone, for names already encoded (and checked); ``pin``: the one worker's pid. With
    :data:`FLAG_JOINED` in ``flags``, the body must follow it in its frame."""
    flags &= ~(FLAG_TIMEOUT | FLAG_PINNED)
    if timeout is not None:
        flags |= FLAG_TIMEOUT
    if pin is not None:
        flags |= FLAG_PINNED
    fixed = _CLIENT_REQUEST.pack(CLIENT_PROTOCOL, REQUEST, flags, len(service), len(method), corr, timeout or 0.0)
    return fixed + service + method + (b"" if pin is None else _PIN.pack(pin))


def _short(protocol: bytes, command: int) -> "list[Buffer]":
    return [protocol + bytes([command])]


def client_heartbeat(window: Optional[float] = None) -> "list[Buffer]":
    """A HEARTBEAT; ``window`` (seconds, at most :data:`MAX_CLIENT_WINDOW`) tells the broker how long this
    client may stay silent before it forgets the client's calls."""
    if window is None:
        return _short(CLIENT_PROTOCOL, HEARTBEAT)
    return [_CLIENT_HEARTBEAT_WINDOW.pack(CLIENT_PROTOCOL, HEARTBEAT, min(window, MAX_CLIENT_WINDOW))]


def client_disconnect() -> "list[Buffer]":
    return _short(CLIENT_PROTOCOL, DISCONNECT)


def client_cancel(corr: int) -> "list[Buffer]":
    return [_ANSWER.pack(CLIENT_PROTOCOL, CANCEL, 0, corr)]


def answer_to_client(corr: int, error: bool, payload: Sequence[Buffer]) -> "list[Buffer]":
    """A worker's answer re-addressed to the client: the body (result or error map) is forwarded as it came."""
    return _answer_frames(CLIENT_PROTOCOL, ERROR if error else REPLY, corr, payload)


def _answer_frames(protocol: bytes, command: int, ident: int, payload: Sequence[Buffer]) -> "list[Buffer]":
    if len(payload) == 1 and 0 < len(payload[0]) < JOIN_LIMIT:  # the usual answer: _joined's work, in a line
        return [_ANSWER.pack(protocol, command, FLAG_JOINED, ident) + payload[0]]
    joined = _join_flag(payload)
    return _joined(_ANSWER.pack(protocol, command, joined, ident), payload, joined)


def reply_to_client(corr: int, payload: Sequence[Buffer]) -> "list[Buffer]":
    return answer_to_client(corr, False, payload)


def error_to_client(corr: int, error: "dict[str, Any]") -> "list[Buffer]":
    return answer_to_client(corr, True, [pack_header(error)])


def heartbeat_to_client() -> "list[Buffer]":
    return _short(CLIENT_PROTOCOL, HEARTBEAT)


def request_to_worker(
    job: int, method: str, timeout: Optional[float], payload: Sequence[Buffer], flags: int = 0
) -> "list[Buffer]":
    """A REQUEST for a worker; ``timeout`` is what is left of the caller's, not the whole of it."""
    raw = encoded_name(method, "method")
    short = len(payload) == 1 and 0 < len(payload[0]) < JOIN_LIMIT  # the usual request: _joined's work, in a line
    joined = FLAG_JOINED if short else _join_flag(payload)
    flags = flags & ~(FLAG_TIMEOUT | FLAG_JOINED) | joined
    if timeout is not None:
        flags |= FLAG_TIMEOUT
    header = _WORKER_REQUEST.pack(WORKER_PROTOCOL, REQUEST, flags, len(raw), job, timeout or 0.0) + raw
    return [header + payload[0]] if short else _joined(header, payload, joined)


def heartbeat_to_worker() -> "list[Buffer]":
    return _short(WORKER_PROTOCOL, HEARTBEAT)


def disconnect_to_worker() -> "list[Buffer]":
    return _short(WORKER_PROTOCOL, DISCONNECT)


def stop_to_worker() -> "list[Buffer]":
    return _short(WORKER_PROTOCOL, STOP)


def cancel_to_worker(job: int) -> "list[Buffer]":
    return [_ANSWER.pack(WORKER_PROTOCOL, CANCEL, 0, job)]


def worker_ready(info: "dict[str, Any]") -> "list[Buffer]":
    return [*_short(WORKER_PROTOCOL, READY), pack_header(info)]


def worker_reply(job: int, payload: Sequence[Buffer]) -> "list[Buffer]":
    return _answer_frames(WORKER_PROTOCOL, REPLY, job, payload)


def worker_error(job: int, error: "dict[str, Any]") -> "list[Buffer]":
    return _answer_frames(WORKER_PROTOCOL, ERROR, job, [pack_header(error)])


def worker_heartbeat(figures: "Optional[dict[str, int]]" = None) -> "list[Buffer]":
    short = _short(WORKER_PROTOCOL, HEARTBEAT)
    return short if not figures else [*short, pack_header(figures)]


def worker_disconnect() -> "list[Buffer]":
    return _short(WORKER_PROTOCOL, DISCONNECT)
