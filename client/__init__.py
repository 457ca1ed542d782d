"""The 64-bit caller's side of dllpool: ``from client import Client, Timeout`` (``AsyncClient`` for asyncio).

Errors are re-exported from :mod:`protocol.errors`, so one import gives a
caller everything it needs to call and to catch. The clients, ``AsyncClient``
and the load-test names are imported when first used (:func:`__getattr__`).
"""

from typing import TYPE_CHECKING

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
from protocol.lazy import on_first_use

from .shm import close_shared_array, shared_array

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .client import Client, Session
    from .client64 import Client64
    from .core import ClientCore
    from .keys import CurveKeys
    from .loadtest import CallSpec, LoadProgress, LoadResult, LoadTest, Scenario
    from .proxy import RemoteMethod, ServiceProxy

_ON_FIRST_USE = {
    "AsyncClient": "aio",
    **dict.fromkeys(("CallSpec", "LoadProgress", "LoadResult", "LoadTest", "Scenario"), "loadtest"),
    **dict.fromkeys(("Client", "Session"), "client"),
    "Client64": "client64",
    "ClientCore": "core",
    "CurveKeys": "keys",
    **dict.fromkeys(("RemoteMethod", "ServiceProxy"), "proxy"),
}
"""Names imported when first asked for: asyncio and the load tests (hdrh) took 55 ms of every start of a
pool's broker process, which uses neither (nor do most callers); the clients, 20 ms more, and that process
needs only :mod:`client.shm`."""

__getattr__, __dir__ = on_first_use(__name__, _ON_FIRST_USE)


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
