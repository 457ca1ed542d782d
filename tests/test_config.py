"""Unit tests of configuration loading (no worker processes); declared signatures: tests/test_marshal.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from broker import Pool
from broker.config import PoolConfig, ServiceConfig, load_config
from broker.locations import default_config_path
from protocol.errors import ConfigError

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


def test_a_pool_config_is_a_source_too_and_anything_else_is_refused_by_name() -> None:
    """``Pool.from_config(load_config(path))`` reads naturally: the PoolConfig is taken as it is."""
    config = load_config(minimal())
    assert load_config(config) is config
    pool = Pool.from_config(config, start=False)
    assert pool.config is config
    assert Pool(config).config is config
    assert Pool(minimal()).config == config, "Pool() reads a source as load_config does"
    assert Pool(default_config_path()).config == load_config()
    with pytest.raises(TypeError, match="a TOML file's path, a dict or a PoolConfig, not int"):
        load_config(42)  # type: ignore[arg-type]


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
    assert functions["add"] == {
        "symbol": "add",
        "signature": "int add(int, int)",
        "returns": {"kind": "value", "type": "int"},
        "params": [{"name": "arg1", "kind": "value", "type": "int"}, {"name": "arg2", "kind": "value", "type": "int"}],
    }
    assert functions["scale_sum"]["params"][0] == {
        "name": "values",
        "kind": "array",
        "dir": "in",
        "type": "double",
        "dims": ["n"],
        "storage": [None],
    }
    assert functions["scale_sum"]["returns"] == {"kind": "value", "type": "double"}
    assert functions["sleep_ms"]["returns"] is None
    assert demo.hosting["structs"] == {}
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
    assert service.hosting["functions"]["f"] == {
        "symbol": "real_f",
        "signature": "double real_f()",
        "returns": {"kind": "value", "type": "double"},
        "params": [],
    }
    assert service.hosting["functions"]["g"]["returns"] == {"kind": "value", "type": "int"}
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
f = { args = ["const double *values", "int n"], returns = "double", params = { values = "in[n]" } }

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


# ============================================================ declared signatures in a whole configuration

NOTEBOOK_TOML = """
[services.notebook]
library = "libnotebook.so"

[services.notebook.structs]
Complex = "struct Complex { double re; double im; };"
Pair = \"\"\"
struct Pair {      /* a C definition as pasted from the header */
    struct Complex z[2];
    char name[20];
};
\"\"\"

[services.notebook.functions]
add = "struct Complex add(struct Complex a, struct Complex b)"
swap = { c = "void swap(struct Complex *a, struct Complex *b)", params = { a = "inout", b = "inout" } }
sum = { c = "double sum(double f[], int n)", params = { f = "in[n]" }, idempotent = true }
titlecase = { c = "void titlecase(char *s)", params = { s = "inout[256]" } }
tokenize = { c = "int tokenize(char sep, const char *str, char t[][20])", params = { t = "out[20]" } }
mult = { c = "void mult(double a[][100], double b[][100], double c[][100], int n, int r, int m)", \\
params = { a = "in[n][r]", b = "in[r][m]", c = "out[n][m]" } }
first = { c = "struct Complex first(const struct Pair *p)", symbol = "pair_first", doc = "The first of two." }
add_i = { args = ["int", "int"], returns = "int" }
"""


def test_a_service_with_structs_and_prototypes_loads_into_its_hosting(tmp_path: Path) -> None:
    path = tmp_path / "notebook.toml"
    path.write_text(NOTEBOOK_TOML.replace("\\\n", ""), encoding="utf-8")
    service = load_config(path).service("notebook")
    hosting = service.hosting
    assert hosting["structs"] == {
        "Complex": [{"name": "re", "type": "double", "shape": []}, {"name": "im", "type": "double", "shape": []}],
        "Pair": [
            {"name": "z", "type": {"struct": "Complex"}, "shape": [2]},
            {"name": "name", "type": "char", "shape": [20]},
        ],
    }
    functions = hosting["functions"]
    complex_ = {"struct": "Complex"}
    assert functions["add"] == {
        "symbol": "add",
        "signature": "struct Complex add(struct Complex a, struct Complex b)",
        "returns": {"kind": "value", "type": complex_},
        "params": [{"name": "a", "kind": "value", "type": complex_}, {"name": "b", "kind": "value", "type": complex_}],
    }
    assert [p["dir"] for p in functions["swap"]["params"]] == ["inout", "inout"]
    assert functions["sum"]["params"][0] == {
        "name": "f",
        "kind": "array",
        "dir": "in",
        "type": "double",
        "dims": ["n"],
        "storage": [None],
    }
    assert functions["tokenize"]["params"][2]["dims"] == [20, 20]
    assert functions["mult"]["params"][2]["dims"] == ["n", "m"]
    assert functions["first"]["symbol"] == "pair_first"
    assert functions["first"]["params"] == [{"name": "p", "kind": "ref", "dir": "in", "type": {"struct": "Pair"}}]
    assert functions["add_i"]["signature"] == "int add_i(int, int)"
    assert service.idempotent == frozenset({"sum"})
    assert json.loads(json.dumps(hosting)) == hosting, "the worker gets it as JSON"
    assert PoolConfig.from_dict(json.loads(json.dumps(load_config(path).to_dict()))) == load_config(path)


@pytest.mark.parametrize(
    ("functions", "needles"),
    [
        (
            {"scale_sum": {"args": ["double*", "int", "double"], "returns": "double"}},
            ["[services.svc].functions.scale_sum", "parameter arg1 (double *)", 'params = { arg1 = "in[arg2]" }'],
        ),
        (
            {"open": "void *open(const char *path)"},
            ["functions.open", "void*", "wrapper", "is a handle"],
        ),
        ({"on": "void on(void (*cb)(int))"}, ["functions.on", "parameter cb", "callback", "wrapper"]),
        ({"norm": "double norm(struct Vec v)"}, ["functions.norm", "parameter v", "struct Vec", "structs table"]),
    ],
)
def test_an_unsafe_declaration_is_refused_naming_service_function_and_parameter(
    functions: dict[str, Any], needles: list[str]
) -> None:
    message = config_error(minimal(functions=functions))
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_the_readme_configuration_loads(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", readme, re.S)
    assert block is not None
    (tmp_path / "pool.toml").write_text(block.group(1), encoding="utf-8")
    config = load_config(tmp_path / "pool.toml")
    scale_sum = config.service("demo").hosting["functions"]["scale_sum"]
    assert scale_sum["params"][0]["dims"] == ["n"]


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
        (minimal(functions={"f": {"args": ["int33"]}}), ["functions.f", "unknown type 'int33'"]),
        (minimal(functions={"f": {"args": ["int"], "returns": "int33"}}), ["functions.f", "unknown type 'int33'"]),
        (minimal(functions={"f": {"returns": "double*"}}), ["functions.f", "return type", "pointer"]),
        (minimal(functions={"f": {"args": ["bool*"]}}), ["functions.f", "parameter arg1 (bool *)", '"in[N]"']),
        (minimal(functions={"f": {"arg": ["int"]}}), ["functions.f", "arg", "allowed"]),
        (minimal(functions={"f": 5}), ["functions.f", "C prototype", "c = "]),
        (minimal(functions={"f": {"args": "int"}}), ["functions.f.args", "list"]),
        (minimal(functions={"f": {"args": [5]}}), ["functions.f.args", "C parameter declarations"]),
        (minimal(functions={"f": {"c": "int f(int)", "args": ["int"]}}), ["functions.f", "c", "args", "not both"]),
        (minimal(functions={"f": {"c": 5}}), ["functions.f.c", "string"]),
        (minimal(functions={"f": {"c": "int f(int a)", "params": "in"}}), ["functions.f.params", "a table"]),
        (minimal(functions={"f": {"c": "int f(int a)", "doc": 5}}), ["functions.f.doc", "string"]),
        (minimal(structs=["x"]), ["[services.svc].structs", "a table"]),
        (minimal(structs={"S": "int a; void *p;"}), ["[services.svc].structs.S", "field p", "pointer"]),
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


def test_zero_workers_means_workers_started_elsewhere() -> None:
    assert load_config(minimal(workers=0)).service("svc").workers == 0
