"""Attribute-style calls: ``client.service("math").add(1, 2)``.

The proxy turns attribute access into remote calls, so it must never do that
for names Python itself probes (``__reduce_ex__``, ``_ipython_display_``,
``__wrapped__`` ...): every name starting with ``_`` is an AttributeError.
The same proxy serves :class:`~client.aio.AsyncClient`: a call through it is
then a coroutine, and ``submit`` gives an asyncio Future.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Caller", "RemoteMethod", "ServiceProxy", "SessionCalls"]


class Caller(Protocol):
    """What a proxy calls through: a Client, a session of one, or an AsyncClient (whose ``submit`` gives an
    asyncio Future)."""

    address: str

    def call(self, service: str, method: str, /, *args: Any, **kwargs: Any) -> Any: ...

    def submit(self, service: str, method: str, /, *args: Any, **kwargs: Any) -> Any: ...


class ServiceProxy:
    """Stands for one service of the pool; ``proxy.name(...)`` calls ``name`` in a worker.

    ``timeout=`` is taken by the client (per-call timeout), not passed on.
    """

    __slots__ = ("_client", "_service")

    def __init__(self, client: Caller, service: str) -> None:
        self._client = client
        self._service = service

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r} (private names are never remote)")
        return RemoteMethod(self._client, self._service, name)

    def __repr__(self) -> str:
        return f"<ServiceProxy {self._service!r} via {self._client.address}>"


class RemoteMethod:
    """One remote function; call it, or ``.submit()`` it for a Future."""

    __slots__ = ("_client", "_method", "_service")

    def __init__(self, client: Caller, service: str, method: str) -> None:
        self._client = client
        self._service = service
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.call(self._service, self._method, *args, **kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """Start the call: a Future (an asyncio one through an AsyncClient)."""
        return self._client.submit(self._service, self._method, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<RemoteMethod {self._service}.{self._method} via {self._client.address}>"


class Session(Protocol):
    """A session of a Client or of an AsyncClient: its calls name the method only."""

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any: ...

    def submit(self, method: str, /, *args: Any, **kwargs: Any) -> Any: ...


class SessionCalls:
    """What a ServiceProxy needs of a client, for a session."""

    __slots__ = ("_session", "address")

    def __init__(self, session: Session, address: str) -> None:
        self._session = session
        self.address = address

    def call(self, service: str, method: str, /, *args: Any, **kwargs: Any) -> Any:
        return self._session.call(method, *args, **kwargs)

    def submit(self, service: str, method: str, /, *args: Any, **kwargs: Any) -> Any:
        return self._session.submit(method, *args, **kwargs)
