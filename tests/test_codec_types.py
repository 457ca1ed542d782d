"""The ext types msl-loadlib users need where pickle carried them (issue 10): tuples, complex numbers, ranges,
and ctypes Structures as their fields; each strict on unpack."""

from __future__ import annotations

import ctypes
import enum
from collections import OrderedDict
from typing import Any

import msgpack
import pytest

from protocol import ProtocolError, codec
from protocol.codec import StructFields, pack_value, unpack_value


class Point(ctypes.Structure):
    _fields_ = (("x", ctypes.c_double), ("y", ctypes.c_double))


class Line(ctypes.Structure):
    _fields_ = (("ends", Point * 2), ("name", ctypes.c_char * 8))


class Colour(enum.IntEnum):
    RED = 1


def round_trip(value: Any) -> Any:
    return unpack_value(pack_value(value))


@pytest.mark.parametrize(
    "value",
    [(), (1, "a", (2.5, None)), 1 + 2j, -0.0j, range(9999), range(5, -5, -2), [(1, 2), {"k": (3j,)}]],
)
def test_values_pickle_carried_come_back_equal_and_of_their_type(value: Any) -> None:
    back = round_trip(value)
    assert back == value
    assert type(back) is type(value)


def test_a_big_tuple_and_a_tuple_holding_a_big_buffer_keep_their_type() -> None:
    assert round_trip(tuple(range(1000))) == tuple(range(1000))
    big = b"x" * (codec.OUT_OF_BAND_MIN * 2)
    frames = pack_value((big, 1))
    assert len(frames) == 2  # the buffer still travels as a frame of its own
    assert unpack_value(frames) == (big, 1)


def test_subclasses_of_plain_types_travel_as_their_base() -> None:
    assert round_trip([Colour.RED, OrderedDict(a=1)]) == [1, {"a": 1}]
    assert type(round_trip(Colour.RED)) is int


def test_a_structure_travels_as_its_fields() -> None:
    line = Line()
    line.ends[1].x = 2.5
    line.name = b"diag"
    back = round_trip(line)
    assert back == StructFields(
        "Line",
        {
            "ends": [StructFields("Point", {"x": 0.0, "y": 0.0}), StructFields("Point", {"x": 2.5, "y": 0.0})],
            "name": b"diag",
        },
    )


def test_a_structure_with_a_pointer_is_refused() -> None:
    class Node(ctypes.Structure):
        _fields_ = (("next", ctypes.c_void_p),)

    class Points(ctypes.Structure):
        _fields_ = (("n", ctypes.c_int), ("points", ctypes.POINTER(Point)))

    for value in (Node(), Points(), [1, (Points(),)]):
        with pytest.raises(TypeError, match="pointer cannot cross"):
            pack_value(value)


@pytest.mark.parametrize(
    ("code", "data"),
    [
        (codec.EXT_COMPLEX, b"\x00" * 15),
        (codec.EXT_TUPLE, msgpack.packb({"a": 1})),
        (codec.EXT_RANGE, msgpack.packb([0, 10, 0])),
        (codec.EXT_RANGE, msgpack.packb([0, True, 1])),
        (codec.EXT_STRUCT, msgpack.packb(["not a name", {}])),
        (codec.EXT_STRUCT, msgpack.packb(["P", {"no-name": 1}])),
        (codec.EXT_STRUCT, msgpack.packb(["P", [1]])),
    ],
)
def test_malformed_ext_data_is_a_protocol_error(code: int, data: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack_value([msgpack.packb(msgpack.ExtType(code, data))])


def test_nesting_is_bounded() -> None:
    data = msgpack.packb([])
    for _ in range(100):
        data = msgpack.packb([msgpack.ExtType(codec.EXT_TUPLE, data)])
    with pytest.raises(ProtocolError, match="deep"):
        unpack_value([msgpack.packb(msgpack.ExtType(codec.EXT_TUPLE, data))])
