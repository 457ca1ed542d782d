"""The C, C++ and Fortran demo libraries' pointer functions, declared in config/pool.toml and called through the
default pool's 32-bit workers: an array scaled in place, an output array, out-parameters and text written into
a buffer (the same calls made directly with ctypes are in test_examples.py).
"""

from __future__ import annotations

import array
from collections.abc import Callable
from typing import Any

import pytest

from client import ArgumentError, Client

LANGUAGES = [("demo", ""), ("cpp", "cpp_"), ("fortran", "f_")]
"""(service, prefix of its functions): each library has <prefix>scale, fill_squares, divmod and upper."""
Call = Callable[..., Any]


@pytest.fixture(params=LANGUAGES, ids=[service for service, _ in LANGUAGES])
def call(request: pytest.FixtureRequest, client: Client) -> Call:
    """``call("scale", ...)`` calls the language's own ``scale``."""
    service, prefix = request.param
    return lambda function, *args, **kwargs: client.call(service, prefix + function, *args, **kwargs)


def test_scale_in_place_gives_back_the_form_it_was_given(call: Call) -> None:
    assert call("scale", [1.0, 2.0, 3.0], 3, 2.0) == {"x": [2.0, 4.0, 6.0]}
    assert call("scale", array.array("d", [1.0, 2.0, 3.0]), 2, -0.5) == {"x": array.array("d", [-0.5, -1.0, 3.0])}


def test_scale_numpy_array(call: Call) -> None:
    np = pytest.importorskip("numpy")
    result = call("scale", np.arange(5, dtype=np.float64), 5, 3.0)
    assert isinstance(result["x"], np.ndarray)
    np.testing.assert_array_equal(result["x"], [0.0, 3.0, 6.0, 9.0, 12.0])


def test_fill_squares_returns_the_output_array(call: Call) -> None:
    assert call("fill_squares", 4) == {"out": array.array("d", [0.0, 1.0, 4.0, 9.0])}
    assert call("fill_squares", 0) == {"out": array.array("d")}


def test_divmod_returns_its_out_parameters(call: Call) -> None:
    assert call("divmod", 17, 5) == {"return": 0, "q": 3, "r": 2}
    assert call("divmod", -17, 5) == {"return": 0, "q": -3, "r": -2}
    assert call("divmod", 1, 0)["return"] == -1


def test_upper_writes_into_a_buffer_of_the_declared_size(call: Call) -> None:
    assert call("upper", "Hello, World", 64) == {"return": 12, "out": "HELLO, WORLD"}
    assert call("upper", "Hello, World", 6) == {"return": 5, "out": "HELLO"}


def test_a_short_array_is_refused(call: Call) -> None:
    with pytest.raises(ArgumentError):
        call("scale", [1.0], 1_000_000, 2.0)
    assert call("divmod", 7, 2) == {"return": 0, "q": 3, "r": 1}  # and the worker is still there
