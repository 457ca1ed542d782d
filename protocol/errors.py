"""The one error hierarchy of dllpool.

Every error a caller can see is a subclass of :class:`DllPoolError`.  Errors
that answer a call travel over the wire as a small msgpack map
(``{"type": ..., "message": ..., "details": {...}}``) and are rebuilt on the
client side by :func:`error_from_wire`, so the type a worker or the broker
raised is the type the caller catches.
"""

from typing import Any, Optional

__all__ = [
    "DllPoolError",
    "ConfigError",
    "LibraryLoadError",
    "RuntimeMissing",
    "PoolStartError",
    "ProtocolError",
    "CallError",
    "RemoteError",
    "ArgumentError",
    "BadRequest",
    "UnknownService",
    "UnknownMethod",
    "Timeout",
    "WorkerCrashed",
    "HandleLost",
    "Busy",
    "BrokerUnavailable",
    "ReplyTooLarge",
    "SharedMemoryError",
    "Server32Error",
    "error_from_wire",
    "error_to_wire",
]


class DllPoolError(Exception):
    """Base class of every dllpool error."""


class ConfigError(DllPoolError):
    """A configuration file or dict is invalid; the message names the key."""


class LibraryLoadError(ConfigError):
    """A service's library or wrapper cannot be loaded (missing file, wrong bitness, missing symbol,
    a wrapper module that does not import): the message names the service, the path and the reason.

    It is permanent for the configuration as written, so the worker is not restarted for it.
    """


class RuntimeMissing(DllPoolError):
    """The 32-bit interpreter a service needs is not installed or not usable."""


class PoolStartError(DllPoolError):
    """The pool's workers did not all become ready."""


class ProtocolError(DllPoolError):
    """A peer sent frames that do not follow the dllpool wire format."""


class CallError(DllPoolError):
    """A call was answered with an error instead of a result.

    ``details`` holds the machine-readable facts (service, method, ...) that
    the message states for people.
    """

    def __init__(self, message: str, /, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details


class RemoteError(CallError):
    """The library or wrapper raised an exception inside the worker.

    ``remote_type`` is the exception's type name in the worker and
    ``remote_traceback`` its formatted traceback there.
    """

    @property
    def remote_type(self) -> str:
        return str(self.details.get("remote_type", ""))

    @property
    def remote_traceback(self) -> str:
        return str(self.details.get("remote_traceback", ""))

    def __str__(self) -> str:
        tb = self.remote_traceback
        return f"{self.message}\n\nRemote traceback:\n{tb}" if tb else self.message


class ArgumentError(CallError):
    """The arguments do not fit the function's declared signature."""


class BadRequest(CallError):
    """The broker or worker could not parse the request (a client bug, not a caller's)."""


class UnknownService(CallError):
    """No service of that name exists; ``details["services"]`` lists those that do."""


class UnknownMethod(CallError):
    """The service has no such callable; ``details["methods"]`` lists those it has."""


class Timeout(CallError, TimeoutError):
    """The call did not complete before its deadline."""


class WorkerCrashed(CallError):
    """The worker process running the call died (crash, kill, exit)."""


class HandleLost(WorkerCrashed):
    """A call was given a handle whose worker is gone: the pointer it stood for died with that process (the
    library's state with it), so the handle can never be used again; open a new one."""


class Busy(CallError):
    """The service's queue is full; the request was refused, not queued."""


class BrokerUnavailable(CallError):
    """The broker could not be reached, or went away while the call was pending."""


class ReplyTooLarge(CallError):
    """The call ran, but its result has a frame bigger than the pool's ``max_message_size``
    (``details["limit"]``, ``details["size"]``), so it cannot be sent; the worker keeps serving."""


class SharedMemoryError(CallError):
    """A buffer could not go through shared memory: the segment is gone or too small, or the 32-bit worker
    cannot map that many bytes (``details["limit"]``, ``details["size"]``). The library was not called."""


class Server32Error(RemoteError):
    """msl-loadlib's ``Server32Error``: what :class:`client.Client64` raises when the 32-bit server failed a
    request (its code raised, the method or attribute does not exist, the arguments do not fit).

    ``name``, ``value`` and ``traceback`` are msl-loadlib's: the remote exception's type name, its message,
    and the frame of the server's code it came from; ``remote_traceback`` has the whole traceback.
    """

    @property
    def name(self) -> str:
        return self.remote_type

    @property
    def value(self) -> str:
        return str(self.details.get("remote_message", self.message))

    @property
    def traceback(self) -> str:
        return str(self.details.get("remote_frame", ""))

    def __str__(self) -> str:
        return f"\n{self.traceback}\n{self.name}: {self.value}" if self.name else self.message


_WIRE_TYPES: dict[str, type[CallError]] = {
    cls.__name__: cls
    for cls in (
        CallError,
        RemoteError,
        ArgumentError,
        BadRequest,
        UnknownService,
        UnknownMethod,
        Timeout,
        WorkerCrashed,
        HandleLost,
        Busy,
        BrokerUnavailable,
        ReplyTooLarge,
        SharedMemoryError,
        Server32Error,
    )
}


def error_to_wire(error: CallError) -> dict[str, Any]:
    """The msgpack-ready form of ``error``."""
    return {"type": type(error).__name__, "message": error.message, "details": error.details}


def error_from_wire(data: Any) -> CallError:
    """Rebuild the error a peer sent; a malformed one becomes a plain CallError."""
    if not isinstance(data, dict):
        return CallError(f"malformed error reply: {data!r:.200}")
    type_name = data.get("type")
    message = data.get("message")
    details = data.get("details")
    if not isinstance(message, str):
        message = repr(message)
    if not isinstance(details, dict) or not all(isinstance(k, str) for k in details):
        details = {}
    cls: Optional[type[CallError]] = _WIRE_TYPES.get(type_name) if isinstance(type_name, str) else None
    return (cls or CallError)(message, **details)
