"""Pool configuration: TOML file or dict in, validated dataclasses out.

Unknown keys are errors, not ignored: a typo such as ``worker = 4`` must not
silently give a pool of one. Relative paths are resolved against the
configuration file's folder (the working directory for a dict), and
``{bits}`` in a library path becomes 32 or 64, so one file can describe both
builds of a library.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import ConfigError
from workers32.constants import LIBRARY_KINDS

from .locations import default_config_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["MAX_WORKERS", "PoolConfig", "ServiceConfig", "load_config"]

MAX_WORKERS = 256
"""The most processes one service may have, however it is scaled: a bound on what a client's ``scale`` (or a
typo) can make a host start."""

_POOL_KEYS = {
    "frontend",
    "backend",
    "heartbeat_interval",
    "heartbeat_liveness",
    "kill_grace",
    "ready_timeout",
    "insecure",
    "max_message_size",
    "max_request_frames",
    "max_request_bytes",
    "client_bytes_in_flight",
    "queue_limit_bytes",
    "curve_secret_key",
    "curve_clients",
    "curve_workers",
    "shared_memory_min",
    "zygote",
}
_WORKER_KEYS = {"curve_key", "curve_server_key"}
_SERVICE_KEYS = {
    "bits",
    "workers",
    "threads",
    "python",
    "library",
    "kind",
    "functions",
    "module",
    "class",
    "options",
    "path",
    "idempotent",
    "queue_limit",
    "queue_limit_bytes",
    "max_call_seconds",
    "prefetch",
    "session_idle",
    "min_workers",
    "max_workers",
    "autoscale_wait",
    "autoscale_cooldown",
    "max_calls_per_worker",
    "max_worker_rss",
    "min_free_address_space",
    "structs",
    "init",
    "close",
    "session_init",
    "session_close",
    "environ_path",
    "dll_directories",
}
_HOOKS = ("init", "close", "session_init", "session_close")
"""Functions of the service run, without arguments, when each worker starts and stops, or each session does."""
_FUNCTION_KEYS = {"c", "args", "returns", "params", "symbol", "idempotent", "doc"}


@dataclass(frozen=True)
class ServiceConfig:
    """One service: what its workers host and how many of them run."""

    name: str
    bits: int = 32
    workers: int = 1
    """Processes the pool starts; 0 for a service served only by workers started elsewhere (``dllpool worker``)."""
    threads: int = 1
    python: str | None = None
    idempotent: frozenset[str] = frozenset()
    queue_limit: int = 10_000
    """Requests that may wait for a worker (queued, or held ahead by one); more are refused with Busy, so a flood
    cannot exhaust memory."""
    queue_limit_bytes: int = 2 << 30
    """Bytes of requests that may wait for a worker (queued, or held ahead by one); more are refused with Busy. Twice
    a client's ``client_bytes_in_flight``, so one client alone cannot fill it."""
    max_call_seconds: float = 3600.0
    """The deadline of a call whose caller gave none: past it the call gets Timeout and its worker is recycled, so
    a call that never returns cannot hold a worker forever."""
    prefetch: int = 2
    """Idempotent calls a worker may hold beyond its ``threads`` run slots, so the next call is already in its socket
    when one ends (non-idempotent calls are never held ahead). Why 2: on ``bench/compare.py --quick --no-msl`` (demo,
    4 workers, six alternating runs on a loaded 2-core host) submit with 512 in flight had a median of 2,063 calls/s
    at 0, 2,552 at 1, 2,486 at 2 and 2,940 at 4 (16 calling threads: 1,734, 1,690, 1,902 and 2,262). Each call held
    ahead may wait behind a long call while another worker frees up, so the default takes most of the gain the noise
    shows with at most two such calls per worker. Services of short calls only may go deeper; services whose
    idempotent calls can take seconds should use 0."""
    session_idle: float = 600.0
    """Seconds a worker leased to a session (``Client.session``) may go without a call before the lease ends, so
    a session its caller forgot does not hold a worker forever."""
    min_workers: int = -1
    """The fewest workers autoscaling leaves (-1: ``workers``)."""
    max_workers: int = -1
    """The most workers autoscaling starts (-1: ``workers``); autoscaling is on when it exceeds ``min_workers``."""
    autoscale_wait: float = 0.1
    """Seconds a call may wait in the queue before autoscaling adds workers: the wait, not the queue's length, is what
    callers feel."""
    autoscale_cooldown: float = 30.0
    """Seconds between two autoscaling changes of the service, and how long a worker must have had nothing to do
    before autoscaling retires one: a burst's tail does not tear down the workers the next burst needs."""
    max_calls_per_worker: int = 0
    """Calls after which a worker is replaced (it finishes what it runs first; no call sees an error); 0: never. For
    libraries that leak."""
    max_worker_rss: int = 0
    """Resident bytes past which a worker is replaced, as it reports them once a heartbeat; 0: never."""
    min_free_address_space: int = 64 << 20
    """Free address space, in bytes, below which a 32-bit worker is replaced before allocations start to fail (a
    32-bit process has 4 GiB at most, and a leaking or fragmenting DLL uses it up); 0: never. 64-bit workers
    ignore it."""
    hosting: dict[str, Any] = field(default_factory=dict)
    """What the worker gets: ``library``/``kind``/``functions``/``structs`` (the normalized declarations of
    broker/declarations.py) or ``module``/``class``/``options``/``path``."""

    def __post_init__(self) -> None:
        for bound in ("min_workers", "max_workers"):
            if getattr(self, bound) < 0:
                object.__setattr__(self, bound, self.workers)

    @property
    def autoscaled(self) -> bool:
        return self.min_workers < self.max_workers


@dataclass(frozen=True)
class PoolConfig:
    services: tuple[ServiceConfig, ...]
    frontend: str | None = None
    """``None``: an ``ipc://`` endpoint in a per-run folder (loopback TCP where ipc is unavailable)."""
    backend: str | None = None
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 3
    kill_grace: float = 1.0
    ready_timeout: float = 60.0
    python32: str | None = None
    insecure: bool = False
    """Allow a non-loopback TCP endpoint without CURVE keys (a trusted network only)."""
    max_message_size: int = 1 << 30
    """Bytes one frame may have; a peer that sends more is disconnected (ZMQ_MAXMSGSIZE). A worker whose result
    has a bigger frame answers ReplyTooLarge instead of sending it."""
    max_request_frames: int = 1024
    """Frames one request may have; more are refused with BadRequest, unread."""
    max_request_bytes: int = 1 << 30
    """Bytes one request may have, all frames together; more are refused with BadRequest."""
    client_bytes_in_flight: int = 1 << 30
    """Bytes of requests one client socket may have pending at the broker; more are refused with Busy. The Clients of
    one process share a connection, so their submitted calls share this budget (each blocking call's socket has its
    own)."""
    queue_limit_bytes: int = 4 << 30
    """Bytes of requests the broker holds for all services together (queued or at a worker); more get Busy."""
    curve_secret_key: str | None = None
    """The pool's ``*.key_secret`` file from ``dllpool keys``: enables CURVE on TCP endpoints."""
    curve_clients: tuple[str, ...] = ()
    """Public ``*.key`` files (or folders of them) of the clients allowed to connect to the frontend."""
    curve_workers: tuple[str, ...] = ()
    """Public ``*.key`` files (or folders of them) of the workers started elsewhere (``dllpool worker``) allowed to
    register at the backend. A client's key does not let it serve: a worker sees every call's arguments."""
    worker_curve_key: str | None = None
    """``[worker] curve_key``: the ``*.key_secret`` file ``dllpool worker`` connects to a remote broker with."""
    worker_curve_server_key: str | None = None
    """``[worker] curve_server_key``: that broker's public ``*.key`` file."""
    shared_memory_min: int = 1 << 20
    """Bytes from which the array arguments of this pool's clients (``Pool.client()``) go through shared memory
    when they are on the broker's host; 0: never (see ``client/shm.py``)."""
    zygote: bool = True
    """Fork workers from a zygote, a process of their interpreter that imported the worker's code once: a worker
    then starts in milliseconds, not an interpreter start. Used where it can be (Linux); elsewhere, with false, or
    when a zygote cannot start, workers are spawned as processes of their own (see ``broker/zygote.py``)."""

    def service(self, name: str) -> ServiceConfig:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The parsed configuration as JSON-ready data: how a broker process of its own receives it.

        Paths are already absolute, so the receiver needs neither the file nor its working directory.
        """
        data = dataclasses.asdict(self)
        for service in data["services"]:
            service["idempotent"] = sorted(service["idempotent"])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolConfig:
        """The inverse of :meth:`to_dict` (trusted input: nothing is validated again)."""
        services = tuple(
            ServiceConfig(**{**service, "idempotent": frozenset(service["idempotent"])}) for service in data["services"]
        )
        keys = {name: tuple(data[name]) for name in ("curve_clients", "curve_workers")}
        return cls(**{**data, "services": services, **keys})


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | PoolConfig | None = None) -> PoolConfig:
    """Read a configuration file (default: the embedded one) or take a dict; a PoolConfig is taken as it is (so
    ``Pool.from_config(load_config(...))`` works too)."""
    if source is None:
        source = default_config_path()
    if isinstance(source, PoolConfig):
        return source
    if isinstance(source, Mapping):
        return _parse(source, Path.cwd(), "<dict>")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"a configuration is a TOML file's path, a dict or a PoolConfig, not {type(source).__name__}")
    path = Path(source)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return _parse(data, path.resolve().parent, str(path))


def _unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")


def _get(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any, where: str) -> Any:
    value = table.get(key, default)
    if value is default:
        return value
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(f"{where}.{key} must be {_kind_name(kind)}, not a boolean")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key} must be {_kind_name(kind)}, not {type(value).__name__} {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {
            int: "an integer",
            float: "a number",
            str: "a string",
            bool: "true or false",
            list: "a list",
            Mapping: "a table",
        }.get(k, k.__name__)
        for k in kinds
    )


def _positive(value: Any, where: str) -> Any:
    if value is not None and value <= 0:
        raise ConfigError(f"{where} must be greater than 0, got {value}")
    return value


def _not_negative(value: int, where: str) -> int:
    if value < 0:
        raise ConfigError(f"{where} must be 0 or more, got {value}")
    return value


def _resolve(value: Any, base: Path) -> Any:
    return None if value is None else str((base / str(value)).resolve())


def _path(value: str, base: Path, bits: int) -> str:
    return str((base / value.replace("{bits}", str(bits))).resolve())


def _parse(data: Mapping[str, Any], base: Path, origin: str) -> PoolConfig:
    _unknown(data, {"pool", "runtime32", "services", "worker"}, origin)
    pool = data.get("pool", {})
    runtime = data.get("runtime32", {})
    worker = data.get("worker", {})
    services = data.get("services")
    if not isinstance(pool, Mapping) or not isinstance(runtime, Mapping) or not isinstance(worker, Mapping):
        raise ConfigError(f"{origin}: [pool], [runtime32] and [worker] must be tables")
    if not isinstance(services, Mapping) or not services:
        raise ConfigError(f"{origin}: at least one [services.NAME] table is required")
    _unknown(pool, _POOL_KEYS, f"{origin} [pool]")
    _unknown(runtime, {"python"}, f"{origin} [runtime32]")
    _unknown(worker, _WORKER_KEYS, f"{origin} [worker]")
    where = f"{origin} [pool]"
    return _checked(
        PoolConfig(
            services=tuple(_service(str(name), table, base, origin) for name, table in services.items()),
            frontend=_get(pool, "frontend", str, None, where),
            backend=_get(pool, "backend", str, None, where),
            heartbeat_interval=float(
                _positive(_get(pool, "heartbeat_interval", (int, float), 1.0, where), f"{where}.heartbeat_interval")
            ),
            heartbeat_liveness=_positive(
                _get(pool, "heartbeat_liveness", int, 3, where), f"{where}.heartbeat_liveness"
            ),
            kill_grace=float(_get(pool, "kill_grace", (int, float), 1.0, where)),
            ready_timeout=float(
                _positive(_get(pool, "ready_timeout", (int, float), 60.0, where), f"{where}.ready_timeout")
            ),
            python32=_get(runtime, "python", str, None, f"{origin} [runtime32]"),
            insecure=_get(pool, "insecure", bool, False, where),
            max_message_size=_positive(
                _get(pool, "max_message_size", int, 1 << 30, where), f"{where}.max_message_size"
            ),
            **{
                key: _positive(
                    _get(pool, key, int, PoolConfig.__dataclass_fields__[key].default, where), f"{where}.{key}"
                )
                for key in ("max_request_frames", "max_request_bytes", "client_bytes_in_flight", "queue_limit_bytes")
            },
            curve_secret_key=_resolve(_get(pool, "curve_secret_key", str, None, where), base),
            curve_clients=tuple(_resolve(p, base) for p in _get(pool, "curve_clients", list, [], where)),
            curve_workers=tuple(_resolve(p, base) for p in _get(pool, "curve_workers", list, [], where)),
            worker_curve_key=_resolve(_get(worker, "curve_key", str, None, f"{origin} [worker]"), base),
            worker_curve_server_key=_resolve(_get(worker, "curve_server_key", str, None, f"{origin} [worker]"), base),
            shared_memory_min=_not_negative(
                _get(pool, "shared_memory_min", int, PoolConfig.shared_memory_min, where), f"{where}.shared_memory_min"
            ),
            zygote=_get(pool, "zygote", bool, True, where),
        ),
        origin,
    )


def _checked(config: PoolConfig, origin: str) -> PoolConfig:
    """Refuse byte limits under which a request of ``max_request_bytes`` could never be taken."""
    budgets = {
        "[pool] client_bytes_in_flight": config.client_bytes_in_flight,
        "[pool] queue_limit_bytes": config.queue_limit_bytes,
        **{f"[services.{s.name}] queue_limit_bytes": s.queue_limit_bytes for s in config.services},
    }
    for name, budget in budgets.items():
        if budget < config.max_request_bytes:
            raise ConfigError(
                f"{origin} {name} is {budget}, less than [pool] max_request_bytes ({config.max_request_bytes}): "
                "a request of the largest allowed size could never be taken; lower max_request_bytes or raise it"
            )
    return config


def _service(name: str, table: Any, base: Path, origin: str) -> ServiceConfig:
    where = f"{origin} [services.{name}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    if not name or len(name.encode("utf-8")) > 255:
        raise ConfigError(f"{where}: a service name must be 1-255 bytes")
    _unknown(table, _SERVICE_KEYS, where)
    bits = _get(table, "bits", int, 32, where)
    if bits not in (32, 64):
        raise ConfigError(f"{where}.bits must be 32 or 64, got {bits}")
    hosting: dict[str, Any]
    idempotent = set(_get(table, "idempotent", list, [], where))
    if "library" in table and "module" in table:
        raise ConfigError(f"{where}: give either 'library' or 'module', not both")
    if "library" in table:
        functions = _get(table, "functions", Mapping, None, where)
        if not functions:
            raise ConfigError(f"{where}: a declared library needs a [services.{name}.functions] table")
        from .declarations import parse_structs  # pycparser: 35 ms that a broker process, given parsed data, spares

        structs = parse_structs(_get(table, "structs", Mapping, {}, where), f"{where}.structs")
        kind = _kind(_get(table, "kind", str, "cdll", where), f"{where}.kind")
        _check_conventions(functions, kind, where)
        hosting = {
            "library": _path(_get(table, "library", str, None, where), base, bits),
            "kind": kind,
            "functions": {fn: _function(fn, decl, structs, f"{where}.functions") for fn, decl in functions.items()},
            "structs": structs,
        }
        idempotent |= {
            fn for fn, decl in functions.items() if isinstance(decl, Mapping) and decl.get("idempotent") is True
        }
    elif "module" in table:
        module = _get(table, "module", str, None, where)
        if "class" not in table:
            raise ConfigError(f"{where}: a wrapper service needs 'class', the Server32-style class in {module!r}")
        hosting = {
            "module": _path(module, base, bits) if module.endswith(".py") else module,
            "class": _get(table, "class", str, None, where),
            "options": dict(_get(table, "options", Mapping, {}, where)),
            "path": [_path(p, base, bits) for p in _get(table, "path", list, [], where)],
        }
    else:
        raise ConfigError(f"{where}: give 'library' (a declared library) or 'module' and 'class' (a wrapper)")
    for key in ("environ_path", "dll_directories"):
        folders = _get(table, key, list, [], where)
        if folders:
            hosting[key] = [_path(str(folder), base, bits) for folder in folders]
    for hook in _HOOKS:
        function = _get(table, hook, str, None, where)
        if function is not None:
            declared = hosting.get("functions")
            if declared is not None and (function not in declared or declared[function]["params"]):
                raise ConfigError(f"{where}.{hook}: {function!r} must be a declared function taking no arguments")
            hosting[hook] = function
    queue_limit = _get(table, "queue_limit", int, ServiceConfig.queue_limit, where)
    workers, low, high = _worker_counts(table, where)
    return ServiceConfig(
        name=name,
        bits=bits,
        workers=workers,
        min_workers=low,
        max_workers=high,
        autoscale_wait=float(
            _positive(
                _get(table, "autoscale_wait", (int, float), ServiceConfig.autoscale_wait, where),
                f"{where}.autoscale_wait",
            )
        ),
        autoscale_cooldown=float(
            _not_negative(
                _get(table, "autoscale_cooldown", (int, float), ServiceConfig.autoscale_cooldown, where),
                f"{where}.autoscale_cooldown",
            )
        ),
        max_calls_per_worker=_not_negative(
            _get(table, "max_calls_per_worker", int, 0, where), f"{where}.max_calls_per_worker"
        ),
        max_worker_rss=_not_negative(_get(table, "max_worker_rss", int, 0, where), f"{where}.max_worker_rss"),
        min_free_address_space=_not_negative(
            _get(table, "min_free_address_space", int, ServiceConfig.min_free_address_space, where),
            f"{where}.min_free_address_space",
        ),
        threads=_positive(_get(table, "threads", int, 1, where), f"{where}.threads"),
        python=_get(table, "python", str, None, where),
        idempotent=frozenset(str(m) for m in idempotent),
        queue_limit=_positive(queue_limit, f"{where}.queue_limit"),
        queue_limit_bytes=_positive(
            _get(table, "queue_limit_bytes", int, ServiceConfig.queue_limit_bytes, where), f"{where}.queue_limit_bytes"
        ),
        max_call_seconds=float(
            _positive(
                _get(table, "max_call_seconds", (int, float), ServiceConfig.max_call_seconds, where),
                f"{where}.max_call_seconds",
            )
        ),
        prefetch=_not_negative(_get(table, "prefetch", int, ServiceConfig.prefetch, where), f"{where}.prefetch"),
        session_idle=float(
            _positive(
                _get(table, "session_idle", (int, float), ServiceConfig.session_idle, where), f"{where}.session_idle"
            )
        ),
        hosting=hosting,
    )


def _worker_counts(table: Mapping[str, Any], where: str) -> tuple[int, int, int]:
    """``workers``, ``min_workers`` and ``max_workers``, the last two defaulting to the first (no autoscaling)."""
    workers = _not_negative(_get(table, "workers", int, 1, where), f"{where}.workers")
    low = _not_negative(_get(table, "min_workers", int, workers, where), f"{where}.min_workers")
    high = _not_negative(_get(table, "max_workers", int, max(workers, low), where), f"{where}.max_workers")
    if not low <= workers <= high:
        raise ConfigError(
            f"{where}: workers ({workers}) must lie between min_workers ({low}) and max_workers ({high}); "
            "workers is how many start"
        )
    if high > MAX_WORKERS:
        raise ConfigError(f"{where}.max_workers is {high}; a service may have at most {MAX_WORKERS} workers")
    return workers, low, high


def _kind(kind: str, where: str) -> str:
    """Only the name is checked here: whether this platform has that loader is the worker's to say."""
    if kind not in LIBRARY_KINDS:
        raise ConfigError(f"{where} must be one of {', '.join(LIBRARY_KINDS)}, got {kind!r}")
    return kind


def _check_conventions(functions: Mapping[str, Any], kind: str, where: str) -> None:
    """A prototype that names its calling convention must agree with ``kind``: a mismatch corrupts the stack."""
    from .declarations import calling_convention

    wanted = {"stdcall": ("windll", "oledll"), "cdecl": ("cdll",)}
    for name, decl in functions.items():
        prototype = decl if isinstance(decl, str) else decl.get("c") if isinstance(decl, Mapping) else None
        convention = calling_convention(prototype) if isinstance(prototype, str) else None
        if convention is not None and kind not in wanted[convention]:
            raise ConfigError(
                f"{where}.functions.{name} is declared {convention} but kind = {kind!r}: set kind = "
                f"{wanted[convention][0]!r} (the convention of every function of a library comes from its kind)"
            )


def _function(name: str, decl: Any, structs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """FUNC (broker/declarations.py) from a prototype string, or a table with ``c`` or the old ``args``/``returns``."""
    from .declarations import legacy_prototype, parse_function

    where = f"{where}.{name}"
    if isinstance(decl, str):
        decl = {"c": decl}
    if not isinstance(decl, Mapping):
        raise ConfigError(f'{where} must be a C prototype such as "int add(int a, int b)" or a table with c = ...')
    _unknown(decl, _FUNCTION_KEYS, where)
    if "c" in decl and ("args" in decl or "returns" in decl):
        raise ConfigError(f"{where}: give either c (the prototype) or args and returns, not both")
    symbol = _get(decl, "symbol", str, None, where)
    if "c" in decl:
        prototype = _get(decl, "c", str, None, where)
    else:
        args = _get(decl, "args", list, [], where)
        if not all(isinstance(arg, str) for arg in args):
            raise ConfigError(f'{where}.args must be a list of C parameter declarations such as ["int n"]')
        prototype = legacy_prototype(symbol or name, args, _get(decl, "returns", str, "int", where))
    _get(decl, "idempotent", bool, False, where)
    _get(decl, "doc", str, None, where)
    return parse_function(prototype, _get(decl, "params", Mapping, {}, where), structs, where, symbol)
