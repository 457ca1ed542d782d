"""Unit tests of configuration loading (no worker processes); declared signatures: tests/test_marshal.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.config import PoolConfig, ServiceConfig, load_config
from broker.locations import default_config_path
from protocol.errors import ConfigError
from workers32.signatures import check_type, type_names

ROOT = Path(__file__).resolve().parent.parent


def minimal(**service: Any) -> dict[str, Any]:
    table = {"library": "lib.so", "functions": {"add": {"args": ["int", "int"], "returns": "int"}}}
    table.update(service)
    return {"services": {"svc": table}}


def config_error(source: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source)
    return str(info.value)


# ============================================================ the embedded default


def test_default_config_loads() -> None:
    assert default_config_path() == ROOT / "config" / "pool.toml"
    config = load_config()
    assert isinstance(config, PoolConfig)
    assert config == load_config(default_config_path())
    assert config.heartbeat_interval == 1.0
    assert config.heartbeat_liveness == 3
    assert config.ready_timeout == 60.0
    assert {s.name for s in config.services} >= {"demo", "demo_threaded", "cpp", "fortran", "wrapped"}


def test_default_limits_leave_room_for_a_largest_request_and_for_more_than_one_client() -> None:
    config = load_config()
    assert (config.max_request_frames, config.max_request_bytes) == (1024, 1 << 30)
    assert config.max_request_bytes <= config.client_bytes_in_flight < config.queue_limit_bytes
    for service in config.services:
        assert config.client_bytes_in_flight < service.queue_limit_bytes, "one client alone could fill a service"
        assert service.max_call_seconds == 3600.0


def test_default_demo_service() -> None:
    demo = load_config().service("demo")
    assert demo.bits == 32
    assert demo.workers == 4
    assert demo.threads == 1
    assert demo.prefetch == ServiceConfig.prefetch
    functions = demo.hosting["functions"]
    assert {"add", "version", "pointer_size", "sleep_ms", "scale_sum"} <= set(functions)
    assert functions["add"] == {"args": ["int", "int"], "returns": "int", "symbol": None}
    assert functions["scale_sum"]["args"] == ["double*", "int", "double"]
    assert functions["scale_sum"]["returns"] == "double"
    assert functions["sleep_ms"]["returns"] == "void"
    assert demo.hosting["kind"] == "cdll"
    library = Path(demo.hosting["library"])
    assert library.is_absolute()
    assert library == ROOT / "examples" / "build" / "32" / "libdemo.so"
    assert "{bits}" not in str(library)
    # functions marked idempotent in the table are the service's idempotent methods
    assert {"add", "version", "pointer_size", "scale_sum"} <= demo.idempotent
    assert "sleep_ms" not in demo.idempotent


def test_default_threaded_and_wrapped_services() -> None:
    config = load_config()
    threaded = config.service("demo_threaded")
    assert (threaded.workers, threaded.threads) == (1, 4)
    wrapped = config.service("wrapped")
    assert wrapped.workers == 2
    assert wrapped.hosting["class"] == "DemoWrapper"
    module = Path(wrapped.hosting["module"])
    assert module.is_absolute()
    assert module == ROOT / "examples" / "wrappers" / "demo_wrapper.py"
    assert "library" not in wrapped.hosting
    with pytest.raises(KeyError):
        config.service("nope")


# ============================================================ dicts and files


def test_dict_config_works_and_resolves_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(
        {
            "pool": {"heartbeat_interval": 0.5, "heartbeat_liveness": 5, "kill_grace": 2, "frontend": "tcp://x:1"},
            "runtime32": {"python": "/opt/py32/python"},
            "services": {
                "lib": {
                    "bits": 64,
                    "workers": 3,
                    "threads": 2,
                    "queue_limit": 10,
                    "prefetch": 3,
                    "idempotent": ["f"],
                    "library": "libs/{bits}/x.so",
                    "functions": {"f": {"returns": "double", "symbol": "real_f"}, "g": {"idempotent": True}},
                }
            },
        }
    )
    assert config.heartbeat_interval == 0.5
    assert config.heartbeat_liveness == 5
    assert config.kill_grace == 2.0
    assert config.frontend == "tcp://x:1"
    assert config.python32 == "/opt/py32/python"
    service = config.service("lib")
    assert (service.bits, service.workers, service.threads, service.queue_limit, service.prefetch) == (64, 3, 2, 10, 3)
    assert service.hosting["library"] == str(tmp_path.resolve() / "libs" / "64" / "x.so")
    assert service.hosting["functions"]["f"] == {"args": [], "returns": "double", "symbol": "real_f"}
    assert service.hosting["functions"]["g"]["returns"] == "int"
    assert service.idempotent == frozenset({"f", "g"})


def test_relative_paths_resolve_against_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "pool.toml").write_text(
        """
[services.c]
library = "../lib/{bits}/libc.so"
[services.c.functions]
f = { args = ["double*", "int"], returns = "double" }

[services.w]
bits = 64
module = "wrappers/mine.py"
class = "Mine"
path = ["vendor", "/abs/dir"]
options = { port = 3 }

[services.m]
module = "some.package.module"
class = "Cls"
""",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(str(folder / "pool.toml"))
    base = folder.resolve()
    assert config.service("c").hosting["library"] == str(base.parent / "lib" / "32" / "libc.so")
    w = config.service("w").hosting
    assert w["module"] == str(base / "wrappers" / "mine.py")
    assert w["class"] == "Mine"
    assert w["path"] == [str(base / "vendor"), "/abs/dir"]
    assert w["options"] == {"port": 3}
    assert config.service("m").hosting["module"] == "some.package.module", "a dotted module name is not a path"
    assert config.frontend is None
    assert config.backend is None


# ============================================================ errors


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({"services": {"s": {}}, "pools": {}}, ["pools"]),
        ({"pool": {"heartbeat": 1}, **minimal()}, ["heartbeat", "allowed"]),
        ({"runtime32": {"pyhton": "x"}, **minimal()}, ["pyhton"]),
        (minimal(worker=4), ["[services.svc]", "worker", "allowed", "workers"]),
        (minimal(bits=16), ["bits", "32 or 64", "16"]),
        (minimal(bits="32"), ["bits", "integer"]),
        (minimal(workers=-2), ["workers", "0 or more"]),
        (minimal(workers="4"), ["workers", "integer", "'4'"]),
        (minimal(workers=True), ["workers", "boolean"]),
        (minimal(workers=2.5), ["workers", "integer"]),
        (minimal(threads=0), ["threads", "greater than 0"]),
        (minimal(queue_limit=0), ["queue_limit", "greater than 0"]),
        (minimal(max_call_seconds=0), ["max_call_seconds", "greater than 0"]),
        (minimal(max_call_seconds="1h"), ["max_call_seconds", "number"]),
        (minimal(queue_limit_bytes=1024), ["[services.svc] queue_limit_bytes", "max_request_bytes", "never"]),
        ({"pool": {"client_bytes_in_flight": 1}, **minimal()}, ["client_bytes_in_flight", "max_request_bytes"]),
        ({"pool": {"queue_limit_bytes": 0}, **minimal()}, ["queue_limit_bytes", "greater than 0"]),
        ({"pool": {"max_request_frames": 1.5}, **minimal()}, ["max_request_frames", "integer"]),
        (minimal(prefetch=-1), ["prefetch", "0 or more"]),
        (minimal(prefetch=1.5), ["prefetch", "integer"]),
        (minimal(prefetch=True), ["prefetch", "boolean"]),
        (minimal(functions={"f": {"args": ["int33"]}}), ["functions.f", "int33", "unknown argument type"]),
        (minimal(functions={"f": {"args": ["int"], "returns": "int33"}}), ["functions.f", "unknown return type"]),
        (minimal(functions={"f": {"returns": "double*"}}), ["functions.f", "return type"]),
        (minimal(functions={"f": {"args": ["bool*"]}}), ["functions.f", "bool*"]),
        (minimal(functions={"f": {"arg": ["int"]}}), ["functions.f", "arg", "allowed"]),
        (minimal(functions={"f": "int f(int)"}), ["functions.f", "must be a table"]),
        (minimal(functions={"f": {"args": "int"}}), ["functions.f.args", "list"]),
        (minimal(functions={}), ["functions"]),
        (minimal(module="m.py", **{"class": "C"}), ["library", "module", "not both"]),
        ({"services": {"svc": {"workers": 2}}}, ["[services.svc]", "library", "module"]),
        ({"services": {"svc": {"module": "m.py"}}}, ["[services.svc]", "class", "m.py"]),
        ({"services": {}}, ["services"]),
        ({"pool": {}}, ["services"]),
        ({"services": {"svc": 5}}, ["[services.svc]", "table"]),
        ({"pool": {"heartbeat_interval": 0}, **minimal()}, ["heartbeat_interval", "greater than 0"]),
        ({"pool": {"heartbeat_liveness": 1.5}, **minimal()}, ["heartbeat_liveness", "integer"]),
        ({"pool": {"insecure": "yes"}, **minimal()}, ["insecure", "true or false"]),
        ({"pool": [], **minimal()}, ["[pool]", "table"]),
    ],
)
def test_dict_errors_name_the_key(data: dict[str, Any], needles: list[str]) -> None:
    message = config_error(data)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_typo_in_service_key_in_a_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text('[services.demo]\nworker = 4\nlibrary = "x.so"\n[services.demo.functions]\nf = {}\n')
    message = config_error(path)
    assert str(path) in message
    assert "[services.demo]" in message
    assert "worker" in message
    assert "workers" in message, "the allowed keys are listed"


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[services.demo\nworkers = 4\n", encoding="utf-8")
    message = config_error(path)
    assert "not valid TOML" in message
    assert str(path) in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    message = config_error(path)
    assert "does not exist" in message
    assert str(path) in message


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('# caf\xe9\n[services.demo]\nlibrary = "x.so"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_function_idempotent_flag_must_be_a_boolean() -> None:
    """``idempotent = "no"`` must not silently make a function re-runnable after a crash."""
    message = config_error(minimal(functions={"f": {"idempotent": "no"}}))
    assert "idempotent" in message


def test_check_type_knows_every_listed_name() -> None:
    names = type_names()
    assert "int" in names
    assert "double*" in names
    assert "char*" in names
    assert "void" in names
    for name in names:
        if name != "void":
            check_type(name)
    for name in ("void", "char*", "wchar*", "int32_t", "unsigned int", "double"):
        check_type(name, returns=True)
    with pytest.raises(ConfigError, match="int33"):
        check_type("int33")
    with pytest.raises(ConfigError, match="unknown return type"):
        check_type("int*", returns=True)


def test_zero_workers_means_workers_started_elsewhere() -> None:
    assert load_config(minimal(workers=0)).service("svc").workers == 0
