"""Typed arrays on the wire (protocol.codec.NDArray, EXT_NDARRAY): NumPy arrays in, without NumPy on the far side,
and every field of a peer's typed array checked."""

from __future__ import annotations

from typing import Any, cast

import msgpack
import numpy
import pytest

from client.arrays import from_wire
from protocol.codec import EXT_NDARRAY, OUT_OF_BAND_MIN, TYPESTRS, NDArray, pack_value, unpack_value
from protocol.errors import ProtocolError

DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


def round_trip(value: Any, **unpack: Any) -> Any:
    return unpack_value([bytes(frame) for frame in pack_value(value)], **unpack)


def test_every_dtype_ctypes_can_hold_has_a_typestr() -> None:
    assert sorted(numpy.dtype(name).str for name in DTYPES) == sorted(TYPESTRS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 4), (2, 0), (5000,), (2, 3, 4)])
def test_an_array_crosses_with_its_dtype_shape_and_values(dtype: str, shape: tuple[int, ...]) -> None:
    original = (numpy.arange(numpy.prod(shape)) % 100).astype(dtype).reshape(shape)
    received = round_trip(original)
    assert isinstance(received, NDArray)
    assert (received.typestr, received.shape, received.nbytes) == (original.dtype.str, shape, original.nbytes)
    back = from_wire(received)
    assert back.dtype == original.dtype and back.shape == shape
    assert numpy.array_equal(back, original)
    back[...] = 0  # the receiver's own, writable copy
    assert numpy.array_equal(original, (numpy.arange(numpy.prod(shape)) % 100).astype(dtype).reshape(shape))


def test_view_gives_the_format_and_shape_without_numpy() -> None:
    received = round_trip(numpy.arange(6, dtype="int32").reshape(2, 3))
    view = received.view()
    assert (view.format, view.shape, view.tolist()) == ("i", (2, 3), [[0, 1, 2], [3, 4, 5]])


def test_a_non_contiguous_array_is_sent_in_c_order() -> None:
    matrix = numpy.arange(20.0).reshape(4, 5)
    for view in (matrix[:, 1], matrix.T, matrix[::2, ::2]):
        assert not view.flags.c_contiguous
        assert numpy.array_equal(from_wire(round_trip(view)), view)


def test_numpy_scalars_are_the_numbers_they_hold() -> None:
    assert round_trip([numpy.int32(5), numpy.float64(2.5), numpy.array(7)]) == [5, 2.5, 7]


def test_a_big_array_gets_a_frame_of_its_own_and_every_array_is_offered_to_the_share_hook() -> None:
    big = numpy.zeros(OUT_OF_BAND_MIN // 8, "float64")
    small = numpy.zeros(4, "float64")
    offered: list[int] = []

    def share(value: Any, data: memoryview) -> str | None:
        offered.append(len(data))
        return None

    frames = pack_value([big, small], share)
    assert len(frames) == 2 and memoryview(frames[1]).nbytes == big.nbytes
    assert offered == [big.nbytes, small.nbytes], "a caller's shared array is shared whatever its size"
    assert len(pack_value([small, 1.5], share)) == 1 and offered[-1] == small.nbytes
    named = pack_value([small], lambda value, data: "dllpool.42.00112233aabbccdd.array")
    (received,) = unpack_value(named)
    assert (received.shared, received.data, received.shape) == ("dllpool.42.00112233aabbccdd.array", None, (4,))


@pytest.mark.parametrize(
    "dtype", ["U3", "O", ">f8", "complex128", "datetime64[s]"], ids=["str", "object", "big-endian", "complex", "time"]
)
def test_a_dtype_ctypes_cannot_hold_is_refused_with_the_ones_that_work(dtype: str) -> None:
    value = numpy.zeros(2, dtype) if dtype != "O" else numpy.array([None, 1], dtype=object)
    with pytest.raises(TypeError, match="cannot be sent: use one of"):
        pack_value(value)


def _ext(*fields: Any) -> bytes:
    return cast(bytes, msgpack.packb([msgpack.ExtType(EXT_NDARRAY, msgpack.packb(list(fields), use_bin_type=True))]))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (["<f16", [1], b"\0" * 16], "unknown element type"),
        (["<f8", [-1], b""], "malformed shape"),
        (["<f8", [True], b"\0" * 8], "malformed shape"),
        (["<f8", [1] * 33, b"\0" * 8], "malformed|not valid"),
        (["<f8", "4", b"\0" * 32], "malformed shape"),
        (["<f8", [4], b"\0" * 31], "needs 32"),
        (["<f8", [1 << 40, 1 << 40], b""], "needs"),
        (["<f8", [4], "../../etc/passwd"], "not a dllpool segment"),
        (["<f8", [4], "dllpool.1.xyz"], "not a dllpool segment"),
        (["<f8", [4], 1], "frame 1, which does not exist"),
        (["<f8", [4]], "malformed typed array"),
    ],
)
def test_a_peers_typed_array_is_checked_field_by_field(fields: list[Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack_value([_ext(*fields)])
