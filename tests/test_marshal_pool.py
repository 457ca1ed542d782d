"""Declared signatures through a real pool of 32-bit workers: the memory-safety cases of issue 9 (the library is
never called with a short array, a huge length or the wrong element type, and the worker lives on), NumPy arrays
in and out, and each declared kind round-tripped across the process boundary.
"""

from __future__ import annotations

import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker import Pool
from broker.config import PoolConfig, ServiceConfig
from client import ArgumentError, Client

from . import marshal_lib
from .conftest import library
from .marshal_lib import arr, func, value

DEMO_FUNCTIONS = {
    # scale_sum = { c = "double scale_sum(const double *values, int n, double factor)", params = { values = "in[n]" },
    #               idempotent = true }
    "scale_sum": func(
        "double scale_sum(const double *values, int n, double factor)",
        "double",
        arr("values", "in", "double", ["n"]),
        value("n", "int"),
        value("factor", "double"),
    ),
    # scale = { c = "void scale(double *values, int n, double factor)", params = { values = "inout[n]" } }
    "scale": func(
        "void scale(double *values, int n, double factor)",
        None,
        arr("values", "inout", "double", ["n"]),
        value("n", "int"),
        value("factor", "double"),
    ),
    "worker_pid": func("int worker_pid(void)", "int"),
}


def declared_pool(directory: Path) -> Pool:
    """The demo library and the library of declared kinds, each hosted by one 32-bit worker.

    Their declarations are in the normalized form; once the TOML parser is in, this becomes a configuration dict
    with ``c``/``params`` tables handed to ``Pool.from_config``.
    """
    demo = {"library": library(32), "kind": "cdll", "functions": DEMO_FUNCTIONS}
    kinds = marshal_lib.hosting(marshal_lib.build(directory, 32))
    services = (
        # Idempotent, as in the issue: a call that crashed its worker would be re-sent to kill another one.
        ServiceConfig(name="demo", hosting=demo, idempotent=frozenset({"scale_sum"})),
        ServiceConfig(name="m", hosting=kinds),
    )
    return Pool(PoolConfig(services=services)).start()


@pytest.fixture(scope="module")
def declared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    with declared_pool(tmp_path_factory.mktemp("marshal32")) as pool:
        yield pool


@pytest.fixture()
def client(declared: Pool) -> Iterator[Client]:
    with declared.client(timeout=30) as c:
        yield c


def refused(client: Client, service: str, method: str, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ArgumentError) as info:
        client.call(service, method, *args, **kwargs)
    assert info.value.details["service"] == service and info.value.details["method"] == method
    return str(info.value)


def test_a_short_array_a_huge_length_or_a_wrong_type_never_reaches_the_library(declared: Pool, client: Client) -> None:
    (pid,) = declared.worker_pids("demo")
    assert "has 1 element(s), fewer than the 6 of in[n] with n = 6" in refused(
        client, "demo", "scale_sum", [0.0], 6, 1.0
    )
    assert "fewer than the 2147483647 of in[n]" in refused(client, "demo", "scale_sum", [0.0], 2**31 - 1, 1.0)
    message = refused(client, "demo", "scale_sum", array.array("i", [1, 2]), 2, 1.0)
    assert "array.array('i') (4-byte signed integer), but double (8-byte float) elements need typecode 'd'" in message
    assert "'<f4'" in refused(client, "demo", "scale_sum", np.zeros(2, np.float32), 2, 1.0)
    assert client.call("demo", "scale_sum", [1.0, 2.0, 3.5], 3, 2.0) == 13.0
    assert client.call("demo", "worker_pid") == pid
    assert declared.worker_pids("demo") == [pid]
    assert declared.stats()["workers_lost"] == 0


def test_an_output_array_beyond_max_message_size_is_refused(declared: Pool, client: Client) -> None:
    limit = declared.config.max_message_size
    message = refused(client, "m", "fill_squares", 2**31 - 1)
    assert f"needs 17,179,869,176 bytes, over the limit of {limit:,} bytes for one array" in message
    assert client.call("m", "fill_squares", 3) == {"out": array.array("d", [0.0, 1.0, 4.0])}
    assert declared.stats()["workers_lost"] == 0


def test_numpy_arrays_in_and_out(client: Client) -> None:
    assert client.call("demo", "scale_sum", np.arange(5.0), 5, 2.0) == 20.0
    assert client.call("demo", "scale_sum", np.arange(10.0)[::2], 5, 1.0) == 20.0, "a non-contiguous array is copied"
    values = np.arange(100_000, dtype=np.float64)  # big enough for a frame of its own
    scaled = client.call("demo", "scale", values, len(values), 0.5)["values"]
    assert isinstance(scaled, np.ndarray) and scaled.dtype == np.float64
    np.testing.assert_array_equal(scaled, values * 0.5)
    assert "'<i4'" in refused(client, "demo", "scale", np.arange(3, dtype=np.int32), 3, 2.0)
    out = client.call("m", "fill_squares", 4, out=np.full(6, -1.0))["out"]
    np.testing.assert_array_equal(out, [0.0, 1.0, 4.0, 9.0, -1.0, -1.0])
    transposed = client.call("m", "transpose", np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), 2, 3)["out"]
    assert isinstance(transposed, np.ndarray) and transposed.shape == (3, 2)
    np.testing.assert_array_equal(transposed, [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]])
    product = client.call("m", "mult", np.array([[1.0, 2.0], [3.0, 4.0]]), [[5.0, 6.0], [7.0, 8.0]], 2, 2, 2)["c"]
    np.testing.assert_array_equal(product, [[19.0, 22.0], [43.0, 50.0]])
    assert client.call("m", "count_true", np.array([True, False, True]), 3) == 2
    assert client.call("m", "sum_i64", np.array([2**40, 2**41]), 2) == 2**40 + 2**41


def test_sizes_are_the_32bit_workers(client: Client) -> None:
    """``long`` is 4 bytes in the worker."""
    assert client.call("m", "bump", 2**31 - 2, 3) == {"x": 2**31 - 1, "y": 6}
    assert "does not fit in 32-bit signed" in refused(client, "m", "bump", 2**31, 3)


def test_each_declared_kind_across_the_boundary(client: Client) -> None:
    assert client.call("m", "divmod", 17, 5) == {"return": 0, "q": 3, "r": 2}
    assert client.call("m", "titlecase", "hello big world") == {"s": "Hello Big World"}
    assert "buffer too small" in refused(client, "m", "titlecase", "x" * 256)
    tokens = client.call("m", "tokenize", ",", "a,bb,,ccc")
    assert tokens["return"] == 3 and tokens["t"][:4] == ["a", "bb", "ccc", ""]
    assert client.call("m", "mult", [[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]], 2, 2, 2) == {
        "c": [[19.0, 22.0], [43.0, 50.0]]
    }
    assert client.call("m", "c_add", {"re": 2.0, "im": 3.0}, {"re": 3.0, "im": 4.0}) == {"re": 5.0, "im": 7.0}
    assert client.call("m", "c_swap", {"re": 1.0, "im": 0.0}, {"re": 0.0, "im": 1.0}) == {
        "a": {"re": 0.0, "im": 1.0},
        "b": {"re": 1.0, "im": 0.0},
    }
    record = client.call("m", "make_record", 3, "ann")["out"]
    assert record == {
        "id": 3,
        "name": "ann",
        "values": [3.0, 6.0, 9.0],
        "z": {"re": 3.0, "im": -3.0},
        "grid": [[0, 1, 2], [10, 11, 12]],
    }
    assert client.call("m", "record_next", record)["name"] == "ANN"
    assert client.call("m", "fill_names", 2) == {"names": ["name0", "name1"]}
    assert client.call("m", "read_some", 3, buf=bytearray(4)) == {"return": 3, "buf": b"\x00\x01\x02\x00"}
    assert client.call("m", "wupper", "abc") == {"s": "ABC"}
    assert client.call("m", "wlen", "héllo€") == 6
