"""Declared signatures in this (64-bit) process: arguments checked and marshalled by workers32/signatures.py and
workers32/marshal.py, against the 64-bit demo library and a small library of every declared kind compiled here.

Through real 32-bit workers: tests/test_marshal_pool.py.
"""

from __future__ import annotations

import array
import ctypes
import mmap
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.declarations import legacy_prototype, parse_function
from protocol import codec
from protocol.codec import NDArray
from protocol.errors import ArgumentError, ConfigError, LibraryLoadError
from workers32.signatures import CFunction

from . import marshal_lib
from .marshal_lib import COMPLEX, FUNCTIONS, STRUCTS, arr, func, ref, value

ROOT = Path(__file__).resolve().parent.parent
LIBDEMO64 = ROOT / "examples" / "build" / "64" / "libdemo.so"

pytestmark = pytest.mark.skipif(
    struct.calcsize("P") != 8 or not sys.platform.startswith("linux"), reason="builds a 64-bit Linux library"
)

Call = Callable[..., Any]


@pytest.fixture(scope="module")
def demo() -> ctypes.CDLL:
    if not LIBDEMO64.exists():
        pytest.fail(f"{LIBDEMO64} is missing: run `dllpool setup` (make test does)")
    return ctypes.CDLL(str(LIBDEMO64))


@pytest.fixture(scope="module")
def mlib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return ctypes.CDLL(marshal_lib.build(tmp_path_factory.mktemp("marshal"), 64))


@pytest.fixture(scope="module")
def m(mlib: ctypes.CDLL) -> dict[str, CFunction]:
    """Every function of the library of declared kinds, as the worker builds them."""
    return {name: CFunction(mlib, name, decl, STRUCTS) for name, decl in FUNCTIONS.items()}


def legacy(lib: ctypes.CDLL, name: str, args: list[str], returns: str = "int", symbol: str | None = None) -> CFunction:
    """The first form, ``{ args = [...], returns = "..." }``, as the configuration normalizes it."""
    func = parse_function(legacy_prototype(name, args, returns), {}, {}, "test", symbol)
    return CFunction(lib, name, func)


def refused(function: Call, *args: Any, **kwargs: Any) -> str:
    """The message of the ArgumentError the call gets (and it names the signature)."""
    with pytest.raises(ArgumentError) as info:
        function(*args, **kwargs)
    assert info.value.details["signature"] in str(info.value)
    return str(info.value)


def elements(array_: NDArray) -> Any:
    """An NDArray's elements as (nested) lists."""
    return array_.view().tolist()


def scale_decl(direction: str = "inout") -> dict[str, Any]:
    return func(
        "void scale(double *v, int n, double f)",
        None,
        arr("v", direction, "double", ["n"]),
        value("n", "int"),
        value("f", "double"),
    )


def scale_sum_decl() -> dict[str, Any]:
    return func(
        "double scale_sum(const double *values, int n, double factor)",
        "double",
        arr("values", "in", "double", ["n"]),
        value("n", "int"),
        value("factor", "double"),
    )


# ============================================================ the first form, on the 64-bit demo library


def test_scalars_of_the_first_form(demo: ctypes.CDLL) -> None:
    add = legacy(demo, "add", ["int", "int"])
    assert add(2, 3) == 5
    assert add(2**31 - 1, 0) == 2**31 - 1
    assert add.signature == "int add(int, int)"
    assert legacy(demo, "plus", ["int32", "int32_t"], symbol="add")(40, 2) == 42
    assert legacy(demo, "version", [])() == 10203
    assert legacy(demo, "pointer_size", [])() == 8
    assert legacy(demo, "sleep_ms", ["int"], "void")(0) is None
    add_i64 = legacy(demo, "add_i64", ["int64", "int64"], "int64")
    assert add_i64(2**62, 2**62 - 1) == 2**63 - 1
    assert "does not fit in 64-bit signed" in refused(add_i64, 2**63, 0)
    half = legacy(demo, "half", ["float"], "float")
    assert half(5) == 2.5
    assert "expected a number, got bool" in refused(half, True)
    is_true = legacy(demo, "is_true", ["bool"])
    assert (is_true(True), is_true(False), is_true(7)) == (1, 0, 1)
    assert "expected a bool" in refused(is_true, "yes")
    echo = legacy(demo, "echo_u8", ["uint8"], "uint8")
    assert echo(255) == 255
    assert "8-bit unsigned" in refused(echo, 256)
    assert "8-bit unsigned" in refused(echo, -1)


def test_strings_of_the_first_form(demo: ctypes.CDLL) -> None:
    str_len = legacy(demo, "str_len", ["char*"])
    assert str_len("héllo") == 6, "str is sent as UTF-8"
    assert str_len(b"bytes!") == 6
    assert str_len(bytearray(b"abc")) == 3
    assert str_len(None) == -1
    assert "expected bytes, str or None" in refused(str_len, 5)
    assert legacy(demo, "greet", [], "char*")() == b"hello from 64-bit C"


def test_a_library_writing_into_an_input_string_changes_only_the_calls_copy() -> None:
    """An input ``char *`` gets a buffer of the call's own: libc's memset writing into it must not change the
    caller's bytes (nor CPython's shared one-character objects)."""
    memset = legacy(ctypes.CDLL(None), "memset", ["char *s", "int c", "size_t n"])
    text = b"hello world"
    memset(text, ord("X"), 5)
    memset(b"a", ord("Z"), 1)
    assert text == b"hello world" and bytes([97]) == b"a"


@pytest.mark.parametrize(
    "values",
    [
        [1.0, 2.0, 3.5],
        (1, 2, 3.5),
        [1.0, 2.0, 3.5, 99.0],
        array.array("d", [1.0, 2.0, 3.5]),
        array.array("d", [1.0, 2.0, 3.5]).tobytes(),
        bytearray(array.array("d", [1.0, 2.0, 3.5]).tobytes()),
        NDArray("<f8", (3,), bytearray(array.array("d", [1.0, 2.0, 3.5]).tobytes())),
    ],
)
def test_an_input_array_in_every_form(demo: ctypes.CDLL, values: Any) -> None:
    scale_sum = CFunction(demo, "scale_sum", scale_sum_decl())
    assert scale_sum(values, 3, 2.0) == 13.0
    assert scale_sum(values, 2, 1.0) == 3.0


def test_the_first_form_refuses_what_it_cannot_declare(demo: ctypes.CDLL) -> None:
    with pytest.raises(ConfigError, match="int33"):
        legacy(demo, "add", ["int33"])
    with pytest.raises(ConfigError, match="banana"):
        legacy(demo, "add", [], "banana")
    with pytest.raises(ConfigError, match=r"in\[N\]"):
        legacy(demo, "scale_sum", ["double", "double*"])


# ============================================================ memory safety: checked before the call


def test_a_short_array_or_a_huge_length_is_refused_before_the_call(demo: ctypes.CDLL) -> None:
    scale_sum = CFunction(demo, "scale_sum", scale_sum_decl())
    message = refused(scale_sum, [0.0], 6, 1.0)
    assert "argument 'values' of double scale_sum(" in message
    assert "has 1 element(s), fewer than the 6 of in[n] with n = 6" in message
    assert "fewer than the 2147483647 of in[n]" in refused(scale_sum, [0.0], 2**31 - 1, 1.0)
    assert "has 1 element(s)" in refused(scale_sum, array.array("d", [0.0]), 6, 1.0)
    assert "has 1 element(s)" in refused(scale_sum, NDArray("<f8", (1,), bytearray(8)), 2, 1.0)
    assert "argument 'n'" in refused(scale_sum, [0.0], -1, 1.0)
    assert "cannot be negative" in refused(scale_sum, [0.0], -1, 1.0)
    assert scale_sum([], 0, 1.0) == 0.0
    assert scale_sum(b"", 0, 1.0) == 0.0


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (
            array.array("i", [1, 2]),
            "array.array('i') (4-byte signed integer), but double (8-byte float) elements need typecode 'd'",
        ),
        (array.array("f", [1.0, 2.0]), "array.array('f') (4-byte float)"),
        (array.array("q", [1, 2]), "array.array('q') (8-byte signed integer)"),
        (
            NDArray("<i8", (2,), bytearray(16)),
            "an NDArray of '<i8' (8-byte signed integer), but double (8-byte float) elements need typestr '<f8'",
        ),
        (NDArray("<f4", (4,), bytearray(16)), "'<f4'"),
        (b"\x00" * 12, "12 bytes is not a whole number of 8-byte double items"),
        ([1.0, "x"], "argument 'values'[1] of"),
        ([1.0, None], "expected a number, got NoneType"),
        (None, "expected a list, an NDArray, an array.array or raw bytes, got NoneType"),
        ({1.0, 2.0}, "got set"),
    ],
)
def test_an_element_type_that_does_not_match_is_refused(demo: ctypes.CDLL, values: Any, needle: str) -> None:
    assert needle in refused(CFunction(demo, "scale_sum", scale_sum_decl()), values, 2, 1.0)


def test_a_refused_call_never_reaches_the_library(m: dict[str, CFunction]) -> None:
    before = m["call_count"]()
    for call, args in [
        (m["sum"], ([1.0], 2)),
        (m["sum"], (array.array("f", [1.0, 2.0]), 2)),
        (m["titlecase"], ("x" * 256,)),
        (m["c_add"], ({"re": 1.0}, {"re": 1.0, "im": 1.0})),
        (m["mult"], ([[1.0]], [[1.0]], 1, 101, 1)),
        (m["fill_squares"], (2**31 - 1,)),
        (m["divmod"], (1, "2")),
    ]:
        refused(call, *args)
    assert m["call_count"]() == before


def test_an_output_array_is_bounded_by_max_message_size(mlib: ctypes.CDLL, m: dict[str, CFunction]) -> None:
    message = refused(m["fill_squares"], 2**31 - 1)
    assert "out[n] with n = 2147483647 needs 17,179,869,176 bytes" in message
    assert "over the limit of 1,073,741,824 bytes for one array" in message
    assert "max_message_size" in message
    small = CFunction(mlib, "fill_squares", FUNCTIONS["fill_squares"], out_limit=1024)
    assert len(small(128)["out"]) == 128
    assert "over the limit of 1,024 bytes" in refused(small, 129)


def test_dims_must_fit_the_c_arrays_extents(m: dict[str, CFunction]) -> None:
    message = refused(m["mult"], [[1.0] * 101], [[1.0]] * 101, 1, 101, 1)
    assert "argument 'a' of void mult(" in message
    assert "in[n][r] with n = 1, r = 101: 101 is more than the C array's extent of 100" in message


# ============================================================ the calling convention


def test_out_parameters_come_back_in_a_dict(m: dict[str, CFunction]) -> None:
    divmod_ = m["divmod"]
    assert divmod_(17, 5) == {"return": 0, "q": 3, "r": 2}
    assert divmod_(17, b=5) == {"return": 0, "q": 3, "r": 2}
    assert divmod_(b=5, a=17) == {"return": 0, "q": 3, "r": 2}
    assert divmod_(17, 0, q=7, r=8) == {"return": -1, "q": 7, "r": 8}, "an out value given is its initial value"
    assert list(divmod_(1, 1)) == ["return", "q", "r"], "the return value first, then C order"
    assert m["c_swap"]({"re": 1.0, "im": 2.0}, {"re": 3.0, "im": 4.0}) == {
        "a": {"re": 3.0, "im": 4.0},
        "b": {"re": 1.0, "im": 2.0},
    }, "void: no 'return'"


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        ((17,), {}, "takes 2 argument(s), got 1: missing argument 'b'"),
        ((), {}, "missing argument 'a', 'b'"),
        ((17, 5, 0), {}, "takes 2 argument(s), got 3"),
        ((17, 5), {"a": 1}, "got argument 'a' both by position and by keyword"),
        ((17, 5), {"quotient": 1}, "has no parameter 'quotient'; its parameters are: a, b, q, r"),
        ((17, 2**31), {}, "argument 'b' of int divmod(int a, int b, int *q, int *r): 2147483648 does not fit"),
        ((17, 5), {"q": 1.5}, "argument 'q' of"),
    ],
)
def test_binding_errors_name_the_parameter(m: dict[str, CFunction], args: Any, kwargs: Any, needle: str) -> None:
    message = refused(m["divmod"], *args, **kwargs)
    assert message.startswith("int divmod(int a, int b, int *q, int *r)") or message.startswith("argument")
    assert needle in message


def test_refs_in_and_inout(m: dict[str, CFunction]) -> None:
    assert m["c_norm2"]({"re": 3.0, "im": 4.0}) == 25.0
    assert m["bump"](41, 21) == {"x": 42, "y": 42}
    assert "does not fit in 16-bit signed" in refused(m["bump"], 1, 2**15)
    assert m["next_char"]("a") == {"c": "b"}
    assert m["next_char"](b"a") == {"c": b"b"}
    assert "expected one character" in refused(m["next_char"], "ab")


# ============================================================ arrays


def test_an_inout_array_comes_back_in_the_form_it_was_given(demo: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "COPY_SLICE", 16)  # copies go in several slices
    scale = CFunction(demo, "scale", scale_decl())
    assert scale([1.0, 2.0, 3.0], 3, 2.0) == {"v": [2.0, 4.0, 6.0]}
    assert scale([1, 2, 3], 2, 2.0) == {"v": [2.0, 4.0]}, "a list of the declared length"
    values = array.array("d", [1.0, 2.0, 3.0, 4.0])
    result = scale(values, 3, 2.0)["v"]
    assert result is values and values == array.array("d", [2.0, 4.0, 6.0, 4.0]), "the library got a copy"
    raw = array.array("d", [1.0, 2.0]).tobytes()
    assert scale(raw, 2, 2.0) == {"v": array.array("d", [2.0, 4.0]).tobytes()}
    assert raw == array.array("d", [1.0, 2.0]).tobytes(), "the library wrote into immutable bytes"
    buffer = bytearray(raw)
    assert scale(buffer, 1, 3.0)["v"] is buffer
    assert buffer == array.array("d", [3.0, 2.0]).tobytes()
    nd = NDArray("<f8", (2,), bytearray(raw))
    assert scale(nd, 2, 0.5)["v"] is nd
    assert elements(nd) == [0.5, 1.0]


def test_an_array_in_a_mapping_is_used_in_place_and_let_go(demo: ctypes.CDLL) -> None:
    """An NDArray over a shared-memory mapping: the library writes into the mapping itself, and nothing points
    into it after the call, so its owner can close it."""
    scale = CFunction(demo, "scale", scale_decl())
    with mmap.mmap(-1, 32) as mapping:
        mapping.write(array.array("d", [1.0, 2.0, 3.0, 4.0]).tobytes())
        nd = NDArray("<f8", (4,), memoryview(mapping), shared="dllpool.1.0123abcd")
        assert scale(nd, 4, 10.0)["v"] is nd
        assert array.array("d", bytes(mapping)) == array.array("d", [10.0, 20.0, 30.0, 40.0])
        assert "fewer than the 5" in refused(scale, nd, 5, 1.0)
        nd.data = None
        del nd
        mapping.close()  # BufferError if any ctypes object still pointed into it


def test_an_array_of_storage_larger_than_given_is_copied_and_written_back(demo: ctypes.CDLL) -> None:
    """``double v[8]`` declared ``inout[n]``: the library gets all 8 elements, the caller's buffer the n."""
    decl = func(
        "void scale(double v[8], int n, double f)",
        None,
        arr("v", "inout", "double", ["n"], [8]),
        value("n", "int"),
        value("f", "double"),
    )
    scale = CFunction(demo, "scale", decl)
    values = array.array("d", [1.0, 2.0, 3.0])
    assert scale(values, 2, 2.0)["v"] is values
    assert values == array.array("d", [2.0, 4.0, 3.0])
    assert "9 is more than the C array's extent of 8" in refused(scale, [1.0] * 9, 9, 1.0)


def test_output_arrays(m: dict[str, CFunction]) -> None:
    assert m["fill_squares"](4) == {"out": array.array("d", [0.0, 1.0, 4.0, 9.0])}
    assert m["fill_squares"](0) == {"out": array.array("d")}
    assert m["read_block"](5) == {"return": 5, "buf": array.array("B", [0, 1, 2, 3, 4])}
    given = array.array("d", [7.0] * 5)
    assert m["fill_squares"](3, out=given)["out"] is given
    assert given == array.array("d", [0.0, 1.0, 4.0, 7.0, 7.0])
    nd = NDArray("<f8", (3,), bytearray(24))
    assert m["fill_squares"](3, out=nd)["out"] is nd and elements(nd) == [0.0, 1.0, 4.0]
    assert m["fill_squares"](2, out=[5.0, 5.0, 5.0]) == {"out": [0.0, 1.0]}
    assert "fewer than the 4 of out[n]" in refused(m["fill_squares"], 4, out=array.array("d", [0.0] * 3))


def test_an_output_array_is_an_ndarray_when_the_call_gave_one(m: dict[str, CFunction]) -> None:
    flags = NDArray("|b1", (3,), bytearray(b"\x01\x00\x01"))
    assert m["count_true"](flags, 3) == 2
    matrix = NDArray("<f8", (2, 3), bytearray(array.array("d", [1, 2, 3, 4, 5, 6]).tobytes()))
    out = m["transpose"](matrix, 2, 3)["out"]
    assert isinstance(out, NDArray) and out.typestr == "<f8" and out.shape == (3, 2)
    assert elements(out) == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    assert m["transpose"]([[1, 2, 3], [4, 5, 6]], 2, 3) == {"out": [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]}


def test_an_out_array_of_caller_given_length(m: dict[str, CFunction]) -> None:
    read_some = m["read_some"]
    assert read_some(3, buf=4) == {"return": 3, "buf": array.array("B", [0, 1, 2, 0])}
    buffer = bytearray(b"\xff" * 4)
    assert read_some(2, buf=buffer)["buf"] is buffer and buffer == b"\x00\x01\xff\xff"
    assert read_some(2, buf=[9, 9]) == {"return": 2, "buf": [0, 1]}
    assert "needs the length of its out[] array 'buf' by keyword: buf=<count>, or buf=<buffer to fill>" in refused(
        read_some, 2
    )
    assert "its length must be >= 0, got -1" in refused(read_some, 0, buf=-1)
    assert "give its length as an int, or a buffer to fill, got str" in refused(read_some, 0, buf="four")


def test_numbers_of_every_width_and_bools(m: dict[str, CFunction]) -> None:
    assert m["sum_i64"]([2**62, 2**62 - 1], 2) == 2**63 - 1
    assert m["sum_i64"](array.array("q", [1, 2]), 2) == 3
    assert m["sum_i64"](array.array("l", [1, 2]), 2) == 3, "long is 8 bytes in a 64-bit process"
    assert m["sum_i64"](NDArray("<i8", (2,), bytearray(array.array("q", [5, 6]).tobytes())), 2) == 11
    assert "'<u8' (8-byte unsigned integer)" in refused(m["sum_i64"], NDArray("<u8", (1,), bytearray(8)), 1)
    assert "does not fit in 64-bit signed" in refused(m["sum_i64"], [2**63], 1)
    assert m["count_true"]([True, False, 1, 0], 4) == 2
    assert "bool (1-byte bool) elements have no typecode: give a list" in refused(
        m["count_true"], array.array("B", [1]), 1
    )


# ============================================================ 2-D arrays


def test_the_notebooks_matrix_product(m: dict[str, CFunction]) -> None:
    a, b = [[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]
    assert m["mult"](a, b, 2, 2, 2) == {"c": [[19.0, 22.0], [43.0, 50.0]]}
    assert m["mult"]([[1, 2, 99], [3, 4]], [*b, [0.0, 0.0]], 2, 2, 2) == {"c": [[19.0, 22.0], [43.0, 50.0]]}
    nd_a = NDArray("<f8", (2, 2), bytearray(array.array("d", [1, 2, 3, 4]).tobytes()))
    c = m["mult"](nd_a, b, 2, 2, 2)["c"]
    assert isinstance(c, NDArray) and c.shape == (2, 2) and elements(c) == [[19.0, 22.0], [43.0, 50.0]]


def test_a_2d_array_in_the_c_storage_layout_is_used_in_place(m: dict[str, CFunction]) -> None:
    """Rows of the storage's width (100): an NDArray of shape (n, 100) or a flat buffer of n*100 elements."""
    a = array.array("d", [0.0]) * 200
    a[0], a[1], a[100], a[101] = 1.0, 2.0, 3.0, 4.0
    b = NDArray("<f8", (2, 100), bytearray(a.tobytes()))
    wide = NDArray("<f8", (2, 100), bytearray(1600))
    result = m["mult"](a, b, 2, 2, 2, c=wide)
    assert result["c"] is wide
    assert [row[:2] for row in elements(wide)] == [[7.0, 10.0], [15.0, 22.0]]
    assert "has 199 element(s), fewer than the 200 (2 row(s) of 100) of in[n][r]" in refused(
        m["mult"], a[:199], b, 2, 2, 2
    )


def test_an_inout_2d_array_laid_out_otherwise_than_the_storage(m: dict[str, CFunction]) -> None:
    """Rows of 3 for a ``double m[][4]``: copied into the storage's rows of 4, and back into the caller's array."""
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert m["scale_rows"](rows, 2, 3, 10.0) == {"m": [[10.0, 20.0, 30.0], [80.0, 100.0, 120.0]]}
    nd = NDArray("<f8", (3, 3), bytearray(array.array("d", range(9)).tobytes()))
    assert m["scale_rows"](nd, 2, 2, 1.0)["m"] is nd
    assert elements(nd) == [[0.0, 1.0, 2.0], [6.0, 8.0, 5.0], [6.0, 7.0, 8.0]], "only the logical 2x2 changed"
    assert "5 is more than the C array's extent of 4" in refused(m["scale_rows"], [[1.0] * 5], 1, 5, 1.0)


@pytest.mark.parametrize(
    ("a", "needle"),
    [
        ([[1.0, 2.0]], "argument 'a' of void mult("),
        ([[1.0, 2.0]], "has 1 item(s), fewer than the 2 of in[n][r] with n = 2, r = 2"),
        ([[1.0, 2.0], [3.0]], "argument 'a'[1] of"),
        ([[1.0, 2.0], [3.0]], "has 1 element(s), fewer than the 2 of in[n][r]"),
        (
            [[1.0, 2.0], 3.0],
            "argument 'a'[1] of void mult(double a[][100], double b[][100], double c[][100], int n, "
            "int r, int m): expected a list, got float",
        ),
        ([[1.0, 2.0], [3.0, "4"]], "argument 'a'[1][1] of"),
        (NDArray("<f8", (2, 1), bytearray(16)), "has shape (2, 1), smaller than the (2, 2) of in[n][r]"),
        (
            NDArray("<f8", (2, 2, 1), bytearray(32)),
            "is a 3-dimensional array; in[n][r] with n = 2, r = 2 has 2 dimension(s)",
        ),
    ],
)
def test_a_2d_array_shorter_in_any_dim_is_refused(m: dict[str, CFunction], a: Any, needle: str) -> None:
    assert needle in refused(m["mult"], a, [[1.0, 2.0], [3.0, 4.0]], 2, 2, 2)


def test_a_fixed_2d_array(m: dict[str, CFunction]) -> None:
    rows = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert m["sum_fixed"](rows) == 78 + 12 * 999
    assert m["sum_fixed"](array.array("i", range(1, 13))) == 78 + 12 * 999
    assert "has 2 item(s), fewer than the 3 of in[3][4]" in refused(m["sum_fixed"], rows[:2])
    assert "array.array('d')" in refused(m["sum_fixed"], array.array("d", [0.0] * 12))


# ============================================================ text


def test_a_text_buffer_edited_in_place(m: dict[str, CFunction]) -> None:
    titlecase = m["titlecase"]
    assert titlecase("the quick BROWN fox") == {"s": "The Quick Brown Fox"}
    assert titlecase(b"the fox") == {"s": b"The Fox"}
    assert titlecase(bytearray(b"ab\x00cd")) == {"s": b"Ab"}, "text ends at its NUL"
    assert titlecase("x" * 255) == {"s": "X" + "x" * 254}
    message = refused(titlecase, "x" * 256)
    assert "buffer too small: 256 character unit(s) of text and its NUL need 257, but inout[256] holds 256" in message
    assert "expected text (a str or bytes), got list" in refused(titlecase, ["x"])


def test_a_list_of_strings_out(m: dict[str, CFunction]) -> None:
    result = m["tokenize"](" ", "The quick brown fox jumps over the lazy dog")
    assert result["return"] == 9
    assert result["t"][:9] == ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
    assert result["t"][9:] == [""] * 11
    assert "expected one character" in refused(m["tokenize"], "ab", "x")
    assert m["fill_names"](3) == {"names": ["name0", "name1", "name2"]}
    assert m["fill_names"](0) == {"names": []}


def test_wide_text_and_a_char_return(m: dict[str, CFunction]) -> None:
    assert m["wlen"]("héllo€") == 6
    assert m["wupper"]("abc") == {"s": "ABC"}
    assert "buffer too small" in refused(m["wupper"], "x" * 16)
    assert "expected text (a str), got bytes" in refused(m["wupper"], b"abc")
    assert m["first_char"]("xyz") == "x"


# ============================================================ structs


def test_structs_by_value_and_returned(m: dict[str, CFunction]) -> None:
    assert m["c_add"]({"re": 2.0, "im": 3.0}, {"re": 3, "im": 4}) == {"re": 5.0, "im": 7.0}
    record = m["make_record"](7, "bob")["out"]
    assert record == {
        "id": 7,
        "name": "bob",
        "values": [7.0, 14.0, 21.0],
        "z": {"re": 7.0, "im": -7.0},
        "grid": [[0, 1, 2], [10, 11, 12]],
    }
    assert m["record_next"](record) == {
        "id": 8,
        "name": "BOB",
        "values": [14.0, 28.0, 42.0],
        "z": {"re": 8.0, "im": -7.0},
        "grid": [[1, 2, 3], [11, 12, 13]],
    }


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"name": "x" * 16}, "argument 'r'.name of struct Record record_next(struct Record r): buffer too small"),
        ({"values": [1.0, 2.0]}, "argument 'r'.values of"),
        ({"values": [1.0, 2.0]}, "has 2 element(s), fewer than the 3 of double[3]"),
        ({"z": {"re": 1.0}}, "argument 'r'.z of"),
        ({"z": {"re": 1.0}}, "missing field(s) im: struct Complex has the fields re, im"),
        ({"z": {"re": 1.0, "im": 1.0, "phase": 0}}, "unknown field(s) phase"),
        ({"grid": [[1, 2, 3], [4, 5, 256]]}, "argument 'r'.grid[1][2] of"),
        ({"id": 1.5}, "argument 'r'.id of"),
    ],
)
def test_a_struct_must_have_its_declared_fields(m: dict[str, CFunction], change: dict[str, Any], needle: str) -> None:
    record = {"id": 1, "name": "a", "values": [1.0, 2.0, 3.0], "z": {"re": 0.0, "im": 0.0}, "grid": [[0] * 3] * 2}
    assert needle in refused(m["record_next"], {**record, **change})


def test_an_array_of_structs(m: dict[str, CFunction]) -> None:
    assert m["fill_complex"](2) == {"zs": [{"re": 0.0, "im": -0.0}, {"re": 1.0, "im": -1.0}]}
    raw = bytearray(32)
    assert m["fill_complex"](2, zs=raw)["zs"] is raw
    assert array.array("d", raw) == array.array("d", [0.0, -0.0, 1.0, -1.0])
    assert "struct Complex elements are given as a list of dicts or raw bytes" in refused(
        m["fill_complex"], 1, zs=array.array("d", [0.0, 0.0])
    )
    assert "argument 'zs'[1] of" in refused(m["fill_complex"], 2, zs=[{"re": 1.0, "im": 1.0}, {"re": 1.0}])


# ============================================================ declarations that cannot work


def test_declarations_that_cannot_work_are_config_errors(mlib: ctypes.CDLL) -> None:
    def declare(decl: dict[str, Any], structs: dict[str, Any] | None = None) -> str:
        with pytest.raises(ConfigError) as info:
            CFunction(mlib, "sum", decl, structs)
        return str(info.value)

    plain = func("double sum(double f[], int n)", "double", arr("f", "in", "double", ["n"]), value("n", "int"))
    assert "unknown struct 'Polar' (declared structs: none)" in declare(
        func("double sum(struct Polar p)", "double", value("p", {"struct": "Polar"}))
    )
    assert "struct Node contains itself (Node -> Node): use a pointer" in declare(
        plain, {"Node": [{"name": "next", "type": {"struct": "Node"}, "shape": []}]}
    )
    assert "unknown element type 'quad'" in declare(func("double sum(quad q)", "double", value("q", "quad")))
    assert "takes a length from 'x', not an integer parameter" in declare(
        func("double sum(double f[], double x)", "double", arr("f", "in", "double", ["x"]), value("x", "double"))
    )
    assert "only an out array's first dim may be left to the caller" in declare(
        func("double sum(double f[])", "double", arr("f", "in", "double", [None]))
    )
    assert "malformed declaration (KeyError: 'params')" in declare({"signature": "double sum(void)"})
    assert "function 'sum' (double sum(double f[], int n))" in declare({**plain, "returns": {"kind": "pointer"}})
    with pytest.raises(LibraryLoadError, match="no function 'no_such_function'"):
        CFunction(mlib, "no_such_function", plain | {"symbol": "no_such_function"})


def test_a_struct_in_place_of_a_number_and_a_ref_out(mlib: ctypes.CDLL) -> None:
    norm2 = CFunction(
        mlib, "c_norm2", func("double c_norm2(const struct Complex *z)", "double", ref("z", "in", COMPLEX)), STRUCTS
    )
    assert "expected a dict with the fields of struct Complex (re, im), got list" in refused(norm2, [3.0, 4.0])
