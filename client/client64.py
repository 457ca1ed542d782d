"""``Client64``: msl-loadlib's client class on a dllpool pool, so code written for msl-loadlib runs with only
its import lines changed (docs/migrating.md lists what still differs).

A Client64 starts a private pool hosting ``module32``'s Server32 subclass (one worker unless ``workers=N``),
or, given ``address=``, calls a service of a running broker. It wraps one :class:`client.Client`, so one
Client64 may be used from many threads at once.
"""

from __future__ import annotations

import ast
import io
import logging
import os
import threading
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TypeVar

from protocol.errors import ArgumentError, CallError, ConfigError, RemoteError, Server32Error, UnknownMethod

from .client import Client

if TYPE_CHECKING:
    from broker import Pool

__all__ = ["Client64"]

_Self = TypeVar("_Self", bound="Client64")

ATTRIBUTE = "dllpool:attribute"
"""The worker's built-in reader of a wrapper object's public attributes (``workers32.hosting.ATTRIBUTE``)."""

_MEANINGLESS = {
    "protocol": "values cross as msgpack, never pickle, so there is no pickle protocol to choose",
    "server32_dir": "workers run on the 32-bit interpreter dllpool provisions or the configuration names",
}
"""msl-loadlib options that do nothing here, each with what to do instead."""


def _paths(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None) -> list[str]:
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return [os.path.abspath(os.fspath(p)) for p in paths]


def _server_class(module: str, folders: list[str]) -> str:
    """The name of the Server32 subclass ``module`` defines, found in its source without importing it here
    (it is a 32-bit module, and importing runs its code): the first in name order, as msl-loadlib's
    ``inspect.getmembers`` finds it. Subclasses of subclasses count."""
    candidates = [Path(f, module + ".py") for f in folders] + [Path(f, module, "__init__.py") for f in folders]
    source = next((path for path in candidates if path.is_file()), None)
    if source is None:
        raise ConfigError(f"cannot find module {module!r} (looked in {', '.join(folders)}): pass append_sys_path")
    try:
        tree = ast.parse(source.read_bytes(), str(source))
    except (SyntaxError, ValueError) as exc:
        raise ConfigError(f"cannot read module {str(source)!r}: {exc}") from None
    found = {"Server32"}
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    for _ in classes:  # a fixpoint: a subclass may come before its base in the file
        for node in classes:
            bases = {
                b.id if isinstance(b, ast.Name) else b.attr
                for b in node.bases
                if isinstance(b, (ast.Name, ast.Attribute))
            }
            if bases & found:
                found.add(node.name)
    found.discard("Server32")
    if not found:
        raise ConfigError(f"module {str(source)!r} does not contain a class that is a subclass of Server32")
    return sorted(found)[0]


_WORKER_LOG = logging.getLogger("dllpool.worker")
_SUPERVISOR_LOG = logging.getLogger("broker.supervisor")


class _Output(logging.Handler):
    """Keeps the stderr lines of this Client64's workers (the supervisor logs each, at INFO, with the worker's
    service name) and notices a worker of theirs killed for not stopping in time."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.marker = f"[{service}["
        self.pids: list[int] = []
        self.lines: list[str] = []
        self.killed = False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name == _WORKER_LOG.name and self.marker in message:
            self.lines.append(message.split("] ", 1)[-1])
        elif "did not stop" in message and any(f"pid {pid} " in message for pid in self.pids):
            self.killed = True

    def attach(self) -> None:
        if _WORKER_LOG.level == logging.NOTSET:
            _WORKER_LOG.setLevel(logging.INFO)  # else its INFO records are never made: the root logger's is WARNING
        _WORKER_LOG.addHandler(self)
        _SUPERVISOR_LOG.addHandler(self)

    def detach(self) -> None:
        _WORKER_LOG.removeHandler(self)
        _SUPERVISOR_LOG.removeHandler(self)


class Client64:
    """msl-loadlib's ``Client64`` on a dllpool pool; see the module docstring.

    ``host`` and ``port`` are accepted and ignored (the pool's sockets are private ipc endpoints); ``timeout``
    bounds the start of the workers; ``rpc_timeout`` is every request's timeout. Keyword arguments other than
    dllpool's own (``workers``, ``address``, ``service``, ``threads``) reach the Server32 subclass's constructor
    with their types (msl-loadlib turns them into strings).
    """

    def __init__(
        self,
        module32: str | os.PathLike[str],
        host: str | None = None,
        port: int | None = None,
        timeout: float = 10.0,
        append_sys_path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
        append_environ_path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
        add_dll_directory: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
        rpc_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        given = {k: kwargs.pop(k) for k in ("protocol", "server32_dir") if k in kwargs}
        for option, value in given.items():
            if value is not None:
                warnings.warn(
                    f"Client64 option {option!r} has no effect with dllpool: {_MEANINGLESS[option]}", stacklevel=2
                )
        address = kwargs.pop("address", None)
        workers = int(kwargs.pop("workers", 1))
        threads = int(kwargs.pop("threads", 1))
        directory, name = os.path.split(os.fspath(module32))
        name = name.removesuffix(".py")
        self._service = str(kwargs.pop("service", f"{name}-{uuid.uuid4().hex[:8]}"))
        self._pool: Pool | None = None
        self._output = _Output(self._service)
        self._lock = threading.Lock()
        if address is None:
            folders = [p for p in [os.path.abspath(directory)] if directory] + _paths(append_sys_path) + [os.getcwd()]
            service = {
                "bits": 32,
                "workers": workers,
                "threads": threads,
                "module": name,
                "class": _server_class(name, folders),
                "options": kwargs,
                "path": folders,
                "environ_path": [os.path.abspath(p) for p in _paths(append_environ_path)],
                "dll_directories": [os.path.abspath(p) for p in _paths(add_dll_directory)],
            }
            from broker import Pool  # the broker is the 64-bit side's; a remote-only Client64 never needs it

            self._output.attach()
            config = {"pool": {"ready_timeout": float(timeout)}, "services": {self._service: service}}
            try:
                self._pool = Pool.from_config(config, broker="thread")
            except BaseException:
                self._output.detach()
                raise
            address = self._pool.address
        elif kwargs:
            raise ConfigError(f"with address=, the service's options are its configuration's, not {sorted(kwargs)}")
        self._client: Client | None = Client(str(address), rpc_timeout)
        self._lib32_path: str | None = None

    # --- msl-loadlib's API -------------------------------------------------------------

    def request32(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call method ``name`` of the Server32 object, or return the value of its public attribute or
        property ``name``; a failure on the server is a :class:`Server32Error`."""
        client = self._client
        if client is None:
            raise Server32Error("The connection to the 32-bit server is closed")
        try:
            try:
                # through the call itself, not Client.call: a keyword argument may be named "timeout"
                return client._conn.call(
                    client._owner, client._new_call(self._service, name, args, kwargs, client.timeout)
                )
            except UnknownMethod:
                return client.call(self._service, ATTRIBUTE, name)
        except (RemoteError, ArgumentError) as exc:
            raise _as_server32_error(exc) from None

    def shutdown_server32(self, kill_timeout: float = 10) -> tuple[IO[bytes], IO[bytes]]:
        """Stop the workers (each runs its ``shutdown_handler``) and return ``(stdout, stderr)`` streams: the
        lines the workers wrote to stderr, and an empty stdout (a worker's stdout is this process's)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._pool is not None:
                self._output.pids = self._pool.worker_pids()
                self._pool.stop()
                self._pool = None
                self._output.detach()
                if self._output.killed:
                    warnings.warn("killed the 32-bit server using brute force", stacklevel=2)
        stderr = "".join(line + "\n" for line in self._output.lines)
        return io.BytesIO(), io.BytesIO(stderr.encode())

    @property
    def host(self) -> str | None:
        """Always None: the pool has no TCP server of msl-loadlib's kind."""
        return None

    @property
    def port(self) -> int:
        """Always -1, as msl-loadlib's for a server without a port."""
        return -1

    @property
    def connection(self) -> Client | None:
        """The dllpool Client this Client64 calls through (None once shut down)."""
        return self._client

    @property
    def lib32_path(self) -> str:
        """The library file the Server32 object loaded."""
        if self._lib32_path is None:
            self._lib32_path = str(self.request32("path"))
        return self._lib32_path

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown_server32()

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is not None or getattr(self, "_client", None) is not None:
            try:
                self.shutdown_server32()
            except Exception:  # at interpreter exit the modules it needs may be gone; the pool's atexit stops it
                logging.getLogger(__name__).debug("Client64 shutdown in __del__ failed", exc_info=True)

    def __repr__(self) -> str:
        state = "closed" if self._client is None else self._client.address
        return f"<{type(self).__name__} service={self._service} address={state}>"


def _as_server32_error(exc: CallError) -> Server32Error:
    """msl-loadlib's error for what the server answered: a wrong argument count is a TypeError there."""
    details = dict(exc.details)
    if not isinstance(exc, RemoteError):
        details.setdefault("remote_type", "TypeError")
        details.setdefault("remote_message", exc.message)
    return Server32Error(exc.message, **details)
