"""The 64-bit caller's side of dllpool: ``from client import Client, Timeout`` (``AsyncClient`` for asyncio).

Errors are re-exported from :mod:`protocol.errors`, so one import gives a
caller everything it needs to call and to catch.
"""

from protocol.errors import (
    ArgumentError,
    BadRequest,
    BrokerUnavailable,
    Busy,
    CallError,
    ConfigError,
    DllPoolError,
    HandleLost,
    ProtocolError,
    RemoteError,
    ReplyTooLarge,
    Server32Error,
    SharedMemoryError,
    Timeout,
    UnknownMethod,
    UnknownService,
    WorkerCrashed,
)

from .aio import AsyncClient
from .client import Client, Session
from .client64 import Client64
from .core import ClientCore
from .keys import CurveKeys
from .loadtest import CallSpec, LoadProgress, LoadResult, LoadTest, Scenario
from .proxy import RemoteMethod, ServiceProxy
from .shm import close_shared_array, shared_array

__all__ = [
    "ArgumentError",
    "AsyncClient",
    "BadRequest",
    "BrokerUnavailable",
    "Busy",
    "CallError",
    "CallSpec",
    "Client",
    "Client64",
    "Session",
    "ClientCore",
    "ConfigError",
    "CurveKeys",
    "DllPoolError",
    "HandleLost",
    "LoadProgress",
    "LoadResult",
    "LoadTest",
    "ProtocolError",
    "RemoteError",
    "ReplyTooLarge",
    "SharedMemoryError",
    "Server32Error",
    "RemoteMethod",
    "Scenario",
    "ServiceProxy",
    "Timeout",
    "UnknownMethod",
    "UnknownService",
    "WorkerCrashed",
    "close_shared_array",
    "shared_array",
]
