"""Call payloads: arguments and results as msgpack, big buffers out of band.

A payload is a list of frames: a msgpack body, then one frame per large
bytes-like value or array. The body refers to those frames by index through
ext types, so a megabyte array crosses the sockets as its own zero-copy frame
and is never embedded in (or scanned by) the msgpack body.

Unpacking takes untrusted input: every length is bounded, nesting is bounded
by msgpack's own stack limit, and the only ext types are the ones below. No
pickle, marshal or eval. The body refers to each frame exactly once: a
repeated reference would make the receiver copy one buffer as often as a
small body says (copy amplification), and a frame it never refers to only
takes the receiver's memory.

Out-of-band buffers are copied out of their frames in slices of
:data:`COPY_SLICE` bytes: a copy of hundreds of megabytes in one C call holds
the GIL for seconds, during which a worker's heartbeat thread (or a client's
I/O thread) could not run.
"""

import array
import ctypes
import functools
import io
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, cast

import msgpack

from .errors import ProtocolError
from .frames import Buffer

__all__ = [
    "Limits",
    "DEFAULT_LIMITS",
    "NDArray",
    "HandleRef",
    "HandleHook",
    "StructFields",
    "is_pointer",
    "ArrayHook",
    "ShareHook",
    "SHARED_NAME",
    "KEPT_SUFFIX",
    "TYPESTRS",
    "pack_call",
    "plain_arguments",
    "unpack_call",
    "pack_batch",
    "unpack_batch",
    "pack_value",
    "unpack_value",
    "COPY_SLICE",
    "slices",
    "writable_copy",
]

EXT_BUFFER = 1
"""Out-of-band bytes: ext data is the msgpack index of the frame that holds them."""
EXT_ARRAY = 2
"""An ``array.array``: ext data is msgpack ``[typecode, frame index or inline bytes]``."""
EXT_NDARRAY = 3
"""A typed n-dimensional array (a NumPy array, an :class:`NDArray`): ext data is msgpack
``[typestr, shape, data]``, data being inline bytes, a frame index, or the name of a shared-memory segment."""

EXT_TUPLE = 4
"""A tuple (msgpack has only arrays, which unpack as lists): ext data is the msgpack array of its items."""
EXT_COMPLEX = 5
"""A complex number: ext data is its real and imaginary parts as two little-endian doubles."""
EXT_STRUCT = 6
"""A ``ctypes.Structure`` or ``Union`` as its values, never its memory (it may hold pointers a peer cannot use):
ext data is msgpack ``[class name, {field: value}]``; the receiver gets a :class:`StructFields`."""
EXT_RANGE = 7
"""A ``range``: ext data is msgpack ``[start, stop, step]``."""
EXT_HANDLE = 8
"""A handle (:class:`HandleRef`): ext data is msgpack ``[worker pid, id, kind]``."""

_MAX_EXT_DEPTH = 64
"""Tuples and structures nested in one another, at most: each level is a nested unpack."""
_MAX_NAME = 200
"""Longest structure class or field name accepted."""

OUT_OF_BAND_MIN = 16 * 1024
"""Values this big or bigger travel as frames of their own."""

COPY_SLICE = 8 * 1024 * 1024
"""Big buffers are copied this many bytes at a time (about 10 ms each): other threads get the GIL in between.
A multiple of every array item size, so an array grows by whole items."""

_INT_RANGE = "-2**63 .. 2**64-1"
"""What a msgpack integer holds."""
_TYPECODES = "bBhHiIqQfd"
_WIDE = {"l": {4: "i", 8: "q"}, "L": {4: "I", 8: "Q"}}
"""C long differs between 32- and 64-bit Linux; send it as the fixed-width code."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one payload may unpack to."""

    max_body: int = 16 * 1024 * 1024
    max_items: int = 1_000_000
    max_frames: int = 1024


DEFAULT_LIMITS = Limits()


def _array_code(value: "array.array[Any]") -> str:
    code = _WIDE.get(value.typecode, {}).get(value.itemsize, value.typecode)
    if code not in _TYPECODES:
        raise TypeError(f"array typecode {value.typecode!r} cannot be sent")
    return code


TYPESTRS = {
    "|i1": "b",
    "|u1": "B",
    "|b1": "?",
    "<i2": "h",
    "<u2": "H",
    "<i4": "i",
    "<u4": "I",
    "<i8": "q",
    "<u8": "Q",
    "<f4": "f",
    "<f8": "d",
}
"""The element types an :class:`NDArray` may have (NumPy's ``__array_interface__`` type strings, little-endian as
both ends of a pool are), each with its ``struct`` format: what ctypes can represent as a scalar."""

SHARED_NAME = re.compile(r"dllpool\.[0-9]{1,10}\.[0-9a-f]{8,64}(\.array)?")
"""What a shared-memory segment's name must look like (``dllpool.<creator pid>.<random hex>``): a peer can only
name segments of dllpool's own, never another program's file in /dev/shm."""
KEPT_SUFFIX = ".array"
"""Ends the name of a segment a caller keeps for many calls (``client.shared_array``), as opposed to one made
for a single call: a worker keeps the mapping of the first kind only."""

_MAX_DIMS = 32
"""NumPy's own limit on dimensions."""


class NDArray:
    """A typed, shaped array on the wire, without NumPy: what a 32-bit worker gets for a NumPy argument.

    ``data`` holds the elements in C order, or is ``None`` while the array lives in the shared-memory segment
    named ``shared`` (whoever maps it sets ``data`` to the mapping). :meth:`view` gives a memoryview of the
    right format and shape, which ``numpy.asarray`` takes without a copy where NumPy is installed.
    """

    __slots__ = ("data", "shape", "shared", "typestr")

    def __init__(
        self, typestr: str, shape: Sequence[int], data: Optional[Buffer] = None, shared: Optional[str] = None
    ) -> None:
        self.typestr = typestr
        self.shape = tuple(shape)
        self.data = data
        self.shared = shared

    @property
    def itemsize(self) -> int:
        return int(self.typestr[2:])

    @property
    def size(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    def view(self) -> memoryview:
        """The elements as a memoryview with this array's format and shape (an empty array's is flat: a
        memoryview cannot have a dimension of 0)."""
        if self.data is None:
            raise ValueError(f"shared-memory segment {self.shared!r} is not mapped")
        flat: Any = memoryview(self.data).cast("B")  # typeshed knows cast() only for literal formats
        shape = list(self.shape) if self.size else [0]
        return cast(memoryview, flat.cast(TYPESTRS[self.typestr], shape))

    def __repr__(self) -> str:
        where = f"shared={self.shared!r}" if self.shared else f"{self.nbytes} bytes"
        return f"NDArray({self.typestr!r}, {self.shape}, {where})"


class HandleRef:
    """A pointer a library returned (a device handle, an opaque struct), as its caller sees it: the pid of the
    worker that holds the pointer, that worker's id for it, and its kind (the C type pointed to). The pointer
    itself never leaves the worker: a call given a handle back is routed to that worker, which looks the id up
    in its own table, so a caller can neither forge nor misuse an address."""

    __slots__ = ("id", "kind", "pid")

    def __init__(self, pid: int, id: int, kind: str) -> None:
        self.pid = pid
        self.id = id
        self.kind = kind

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HandleRef) and (self.pid, self.id, self.kind) == (other.pid, other.id, other.kind)

    def __hash__(self) -> int:
        return hash((self.pid, self.id, self.kind))

    def __repr__(self) -> str:
        return f"<handle {self.kind} #{self.id} of worker pid {self.pid}>"


HandleHook = Callable[[HandleRef], Any]
"""What a receiver makes of each :class:`HandleRef` it unpacks (a client: a Handle bound to its connection)."""


class StructFields:
    """A ctypes Structure as it crossed: its class name and its fields' values (nested structures as
    StructFields, arrays as lists). A 32-bit wrapper's arguments are rebuilt into the server module's class of
    the same name (``workers32.hosting``); a caller gets these for a structure a server returned."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name = name
        self.fields = fields

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StructFields) and (self.name, self.fields) == (other.name, other.fields)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the structure it stands for

    def __repr__(self) -> str:
        return f"StructFields({self.name!r}, {self.fields!r})"


def is_pointer(ctype: Any) -> bool:
    """Whether a field's declared type holds an address (a string's ``c_char_p`` crosses as its bytes)."""
    if not isinstance(ctype, type):
        return False
    if issubclass(ctype, ctypes.Array):
        return is_pointer(ctype._type_)
    return issubclass(ctype, (ctypes._Pointer, ctypes.c_void_p, ctypes._CFuncPtr))  # type: ignore[attr-defined]


def _field_value(value: Any) -> Any:
    """A structure field's value as it can cross: a ctypes array as a list."""
    if isinstance(value, ctypes.Array):
        return [_field_value(item) for item in value]
    return value


def _struct_fields(value: "ctypes.Structure | ctypes.Union") -> StructFields:
    name = type(value).__name__
    fields = {}
    for entry in getattr(type(value), "_fields_", ()):
        if is_pointer(entry[1]):
            raise TypeError(
                f"field {name}.{entry[0]} is a {entry[1].__name__}: a pointer cannot cross to another process"
            )
        fields[entry[0]] = _field_value(getattr(value, entry[0]))
    return StructFields(name, fields)


def _special(value: Any, pack: Callable[[Any], bytes]) -> Any:
    """The ext type of a value msgpack has no type for (None if it is not one of them); ``pack`` packs the
    parts with the same rules as the whole."""
    if isinstance(value, tuple):
        return msgpack.ExtType(EXT_TUPLE, pack(list(value)))
    if isinstance(value, complex):
        return msgpack.ExtType(EXT_COMPLEX, struct.pack("<dd", value.real, value.imag))
    if isinstance(value, range):
        return msgpack.ExtType(EXT_RANGE, pack([value.start, value.stop, value.step]))
    if isinstance(value, (ctypes.Structure, ctypes.Union)):
        value = _struct_fields(value)
    if isinstance(value, StructFields):
        return msgpack.ExtType(EXT_STRUCT, pack([value.name, value.fields]))
    return None


_BASE_TYPES = (bool, int, float, str, bytes, list, dict)
"""Subclasses of these (an IntEnum, an OrderedDict) cross as their base type, as before strict typing."""


ArrayHook = Callable[[NDArray], Any]
"""What a receiver makes of each :class:`NDArray` it unpacks (a client: a NumPy array)."""
ShareHook = Callable[[Any, memoryview], Optional[str]]
"""A sender's choice for a typed array (the object and its bytes): the name of a shared-memory segment that holds
the bytes, or ``None`` to send them in the body or a frame."""


def _array_like(value: Any) -> tuple[str, tuple[int, ...], memoryview]:
    """``(typestr, shape, C-ordered bytes)`` of an object with NumPy's ``__array_interface__``.

    A non-contiguous array is copied into C order here (the one copy a sender makes of it).
    """
    interface = value.__array_interface__
    typestr = str(interface["typestr"])
    if typestr not in TYPESTRS:
        raise TypeError(
            f"an array of type {typestr!r} cannot be sent: use one of {', '.join(sorted(TYPESTRS))} (little-endian "
            "integers, floats or bools)"
        )
    data = memoryview(value)
    if not data.c_contiguous or not data.nbytes:  # an empty n-D view cannot be cast
        data = memoryview(data.tobytes())
    return typestr, tuple(int(d) for d in interface["shape"]), data.cast("B")


class _NeedsFrames(Exception):
    """A value holds a buffer big enough for a frame of its own: pack it the thorough way."""


def _handle_ext(value: HandleRef) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_HANDLE, msgpack.packb([value.pid, value.id, value.kind], use_bin_type=True))


def _inline(value: Any) -> Any:
    """msgpack's hook for what it does not pack itself, while everything stays in the body."""
    if isinstance(value, HandleRef):
        return _handle_ext(value)
    if isinstance(value, array.array):
        data = memoryview(value).cast("B")
        if len(data) >= OUT_OF_BAND_MIN:
            raise _NeedsFrames
        return msgpack.ExtType(EXT_ARRAY, msgpack.packb([_array_code(value), data.tobytes()], use_bin_type=True))
    if isinstance(value, NDArray) or hasattr(type(value), "__array_interface__"):
        return _Packer(inline_only=True).prepare(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    special = _special(value, _pack_inline)
    if special is not None:
        return special
    for base in _BASE_TYPES:
        if isinstance(value, base) and type(value) is not int:
            return cast(Callable[[Any], Any], base)(value)
    if isinstance(value, int):  # with a hook, msgpack hands over an integer it cannot carry instead of raising
        raise OverflowError(f"integer out of range (msgpack carries {_INT_RANGE})")
    raise TypeError(f"can not serialize {type(value).__name__!r} object")


def _pack_inline(value: Any) -> bytes:
    return _packb(value, _inline)


def _inline_unless_array(value: Any) -> Any:
    """:func:`_inline` for a sender with a ``share`` hook: a typed array takes the thorough way, where the hook
    is asked about it (a caller's shared array is shared whatever its size)."""
    if isinstance(value, NDArray) or hasattr(type(value), "__array_interface__"):
        raise _NeedsFrames
    return _inline(value)


class _Packer:
    """Replaces big buffers and arrays by ext references to frames of their own (or to shared memory)."""

    def __init__(self, share: Optional[ShareHook] = None, inline_only: bool = False) -> None:
        self.frames: list[Buffer] = []
        self.share = share
        self.inline_only = inline_only

    def _ref(self, data: memoryview) -> Any:
        if len(data) < OUT_OF_BAND_MIN:
            return data.tobytes()
        if self.inline_only:
            raise _NeedsFrames
        self.frames.append(data)
        return len(self.frames)

    def _ndarray(self, value: Any) -> Any:
        if isinstance(value, NDArray):
            if value.typestr not in TYPESTRS:
                raise TypeError(f"an array of type {value.typestr!r} cannot be sent")
            typestr, shape = value.typestr, value.shape
            if value.shared is not None:
                where: Any = value.shared
            elif value.data is None:
                raise TypeError("an NDArray without data or a shared-memory segment cannot be sent")
            else:
                where = None
                data = memoryview(value.data).cast("B")
        else:
            interface_shape = value.__array_interface__["shape"]
            if not interface_shape and hasattr(value, "item"):
                return self.prepare(value.item())  # a NumPy scalar or 0-d array is the Python number it holds
            typestr, shape, data = _array_like(value)
            where = None
        if where is None:
            if self.share is not None and not self.inline_only:
                where = self.share(value, data)
            if where is None:
                where = self._ref(data)
        return msgpack.ExtType(EXT_NDARRAY, msgpack.packb([typestr, list(shape), where], use_bin_type=True))

    def prepare(self, value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            if len(value) < OUT_OF_BAND_MIN:
                return value
            return msgpack.ExtType(EXT_BUFFER, msgpack.packb(self._ref(memoryview(value).cast("B"))))
        if isinstance(value, array.array):
            ref = self._ref(memoryview(value).cast("B"))
            return msgpack.ExtType(EXT_ARRAY, msgpack.packb([_array_code(value), ref], use_bin_type=True))
        if isinstance(value, NDArray) or hasattr(type(value), "__array_interface__"):
            return self._ndarray(value)
        if isinstance(value, HandleRef):
            return _handle_ext(value)
        if isinstance(value, (list, tuple)):
            if len(value) > _SHALLOW_ITEMS and set(map(type, value)) <= _PLAIN:
                items = list(value)  # a million numbers: looked at in C, not one by one (4 s down to 30 ms)
            else:
                items = [self.prepare(v) for v in value]
            return msgpack.ExtType(EXT_TUPLE, _packb(items, _inline)) if isinstance(value, tuple) else items
        if isinstance(value, dict):
            return {k: self.prepare(v) for k, v in value.items()}
        if isinstance(value, (set, frozenset)):
            return [self.prepare(v) for v in value]
        if isinstance(value, (ctypes.Structure, ctypes.Union)):
            value = _struct_fields(value)
        if isinstance(value, StructFields):
            return _special(StructFields(value.name, self.prepare(value.fields)), _pack_inline)
        return value

    def pack(self, value: Any) -> list[Buffer]:
        return [_packb(self.prepare(value), _inline), *self.frames]


def _packb(value: Any, default: Optional[Callable[[Any], Any]] = None) -> bytes:
    try:
        # strict_types: a tuple reaches the hook (to become EXT_TUPLE) instead of packing as a list. (A Packer of
        # our own, and annotated rather than cast(): msgpack.packb and cast() are each a Python function call more
        # on every call's path.)
        packed: bytes = msgpack.Packer(use_bin_type=True, default=default, strict_types=True).pack(value)
        return packed
    except OverflowError:  # msgpack says only "Integer value out of range"
        raise OverflowError(f"integer out of range (msgpack carries {_INT_RANGE})") from None
    except BufferError as exc:  # a non-contiguous memoryview
        raise TypeError(f"a buffer that is not contiguous cannot be sent: {exc}") from None


_SHALLOW_ITEMS = 64
"""Containers this small are looked into for big buffers before the one-pass attempt."""


def _holds_big_buffer(value: Any, depth: int = 3) -> bool:
    """Whether a bytes-like value that needs a frame of its own sits near the top of ``value``.

    msgpack packs bytes itself, so the one-pass attempt would copy a big buffer into a body only to
    throw it away (and, in a 32-bit worker, need a second block of its size). Looking a few small
    levels deep covers a call's arguments and most results for well under a microsecond.
    """
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return len(value) >= OUT_OF_BAND_MIN
    if kind is memoryview:
        return bool(value.nbytes >= OUT_OF_BAND_MIN)
    if kind not in _CONTAINERS or not depth or len(value) > _SHALLOW_ITEMS:
        return False
    for item in value.values() if kind is dict else value:
        if type(item) in _LOOKED_INTO and _holds_big_buffer(item, depth - 1):
            return True
    return False


_CONTAINERS = (list, tuple, dict)
_PLAIN = frozenset((int, float, bool, str, type(None)))
"""Types that never hold a buffer: a list of only these is left to msgpack whole."""
_LOOKED_INTO = frozenset((bytes, bytearray, memoryview, *_CONTAINERS))


def pack_value(value: Any, share: Optional[ShareHook] = None) -> list[Buffer]:
    """Frames for one value (a call's result).

    One pass in msgpack's C code does it when the body stays below
    :data:`OUT_OF_BAND_MIN` (then no buffer in it can need a frame of its
    own); otherwise, or for a big array, a walk over the value moves each
    big buffer to a frame of its own (or, where ``share`` says so, a typed
    array to shared memory).
    """
    if type(value) not in _PLAIN and _holds_big_buffer(value):  # a number or a string holds none
        return _Packer(share).pack(value)
    return _packed_whole(value, share)


def _packed_whole(value: Any, share: Optional[ShareHook]) -> list[Buffer]:
    """msgpack's one pass for a value with no big buffer near its top; the walk if the body still needs frames."""
    try:
        body = _packb(value, _inline if share is None else _inline_unless_array)
    except _NeedsFrames:
        pass
    else:
        if len(body) < OUT_OF_BAND_MIN:
            return [body]
    return _Packer(share).pack(value)


def plain_arguments(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """Whether a call's arguments are all numbers, strings or None, as most calls' are: then they hold no buffer,
    array or handle, and the looks for those (which cost more than packing such arguments) can be skipped."""
    return _PLAIN.issuperset(map(type, args)) and _PLAIN.issuperset(map(type, kwargs.values()))


def pack_call(
    args: Sequence[Any], kwargs: dict[str, Any], share: Optional[ShareHook] = None, *, plain: Optional[bool] = None
) -> list[Buffer]:
    """Frames for a call's arguments; ``plain``: what :func:`plain_arguments` says of them, if the caller asked."""
    value = [list(args), kwargs]
    if plain_arguments(args, kwargs) if plain is None else plain:
        return _packed_whole(value, share)
    return pack_value(value, share)


def slices(data: Buffer) -> Iterator[memoryview]:
    """``data`` as consecutive byte views of at most :data:`COPY_SLICE` bytes, for a copy that lets other
    threads run between two of them."""
    view = memoryview(data).cast("B")
    for start in range(0, len(view), COPY_SLICE):
        yield view[start : start + COPY_SLICE]


def _copy_bytes(data: Buffer) -> bytes:
    if len(data) <= COPY_SLICE:
        return bytes(data)
    out = io.BytesIO()  # grows in place and hands over its buffer: the copy below is the only one
    for piece in slices(data):
        out.write(piece)
    return out.getvalue()


def writable_copy(data: Buffer) -> bytearray:
    """A private, writable copy: a library may write into an array in place."""
    result = bytearray(len(data))
    view = memoryview(result)
    for start, piece in zip(range(0, len(data), COPY_SLICE), slices(data)):
        view[start : start + len(piece)] = piece
    return result


def _ndarray(ref: Any, frame: Callable[[Any], Buffer]) -> NDArray:
    """An NDArray from its ext data, every field checked: the sizes come from an untrusted peer."""
    if not isinstance(ref, list) or len(ref) != 3:
        raise ProtocolError("malformed typed array in payload")
    typestr, shape, where = ref
    if typestr not in TYPESTRS:
        raise ProtocolError(f"typed array in payload has unknown element type {typestr!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 62 for d in shape)
    ):
        raise ProtocolError(f"typed array in payload has a malformed shape {shape!r:.100}")
    array_ = NDArray(typestr, shape)
    if isinstance(where, str):
        if not SHARED_NAME.fullmatch(where):
            raise ProtocolError(f"typed array in payload names shared memory {where!r:.80}, not a dllpool segment")
        array_.shared = where
        return array_
    data = where if isinstance(where, bytes) else frame(where)
    if len(data) != array_.nbytes:
        raise ProtocolError(
            f"typed array in payload has {len(data)} bytes of data; its shape {tuple(shape)} of "
            f"{typestr!r} needs {array_.nbytes}"
        )
    array_.data = writable_copy(data)
    return array_


def _handle(ref: Any) -> HandleRef:
    if (
        not isinstance(ref, list)
        or len(ref) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 63 for n in ref[:2])
        or not isinstance(ref[2], str)
        or not 0 < len(ref[2]) <= 255
    ):
        raise ProtocolError("malformed handle in payload")
    return HandleRef(*ref)


def _is_name(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= _MAX_NAME and name.isidentifier()


def _struct_from(ref: Any) -> StructFields:
    """A StructFields from its ext data: a class name and a map of field names, each a Python identifier."""
    if not isinstance(ref, list) or len(ref) != 2 or not _is_name(ref[0]) or not isinstance(ref[1], dict):
        raise ProtocolError("malformed structure in payload")
    if not all(map(_is_name, ref[1])):
        raise ProtocolError(f"structure {ref[0]} in payload has a field name that is not an identifier")
    return StructFields(ref[0], ref[1])


def _range_from(ref: Any) -> range:
    if (
        not isinstance(ref, list)
        or len(ref) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in ref)
        or ref[2] == 0
    ):
        raise ProtocolError("malformed range in payload")
    return range(*ref)


def _copy_array(typecode: str, data: Buffer) -> "array.array[Any]":
    result = array.array(typecode)
    if len(data) % result.itemsize:
        raise ProtocolError(f"array data of {len(data)} bytes is not a whole number of {typecode!r} items")
    for piece in slices(data):
        result.frombytes(piece)
    return result


def unpack_value(
    frames: Sequence[Buffer],
    limits: Limits = DEFAULT_LIMITS,
    arrays: Optional[ArrayHook] = None,
    handles: Optional[HandleHook] = None,
) -> Any:
    """Rebuild a value from frames sent by an untrusted peer.

    Each frame after the body must be referred to by the body exactly once. A typed array becomes an
    :class:`NDArray` holding a private writable copy of its data (or naming its shared-memory segment), or
    whatever ``arrays`` makes of that; a handle a :class:`HandleRef`, or what ``handles`` makes of it.
    """
    if not frames:
        raise ProtocolError("payload has no body frame")
    if len(frames) > limits.max_frames:
        raise ProtocolError(f"payload has {len(frames)} frames; the limit is {limits.max_frames}")
    body = frames[0]
    if len(body) > limits.max_body:
        raise ProtocolError(f"payload body is {len(body)} bytes; the limit is {limits.max_body}")

    options = _DEFAULT_OPTIONS if limits is DEFAULT_LIMITS else _options(limits)
    if len(frames) == 1 and _holds_no_ext(body):
        return _unpackb(body, options)  # no frame to refer to, no hook to run
    used: set[int] = set()

    def frame(index: Any) -> Buffer:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 < index < len(frames):
            raise ProtocolError(f"payload refers to frame {index!r}, which does not exist")
        if index in used:
            raise ProtocolError(f"payload refers to frame {index} more than once; each frame may be used once")
        used.add(index)
        return frames[index]

    depth = 0

    def nested(data: bytes) -> Any:
        """The msgpack inside a tuple's or structure's ext data, under the same limits and hooks."""
        nonlocal depth
        if depth >= _MAX_EXT_DEPTH:
            raise ProtocolError(f"payload nests tuples or structures more than {_MAX_EXT_DEPTH} deep")
        depth += 1
        try:
            return msgpack.unpackb(data, **options)
        finally:
            depth -= 1

    def ext_hook(code: int, data: bytes) -> Any:
        if code == EXT_COMPLEX:
            if len(data) != 16:
                raise ProtocolError(f"complex number in payload has {len(data)} bytes, not 16")
            real, imag = struct.unpack("<dd", data)
            return complex(real, imag)
        if code == EXT_TUPLE:
            items = nested(data)
            if not isinstance(items, list):
                raise ProtocolError("malformed tuple in payload")
            return tuple(items)
        if code == EXT_STRUCT:
            return _struct_from(nested(data))
        if code == EXT_RANGE:
            return _range_from(nested(data))
        if code not in (EXT_BUFFER, EXT_ARRAY, EXT_NDARRAY, EXT_HANDLE):
            raise ProtocolError(f"unknown ext type {code} in payload")
        ref = msgpack.unpackb(data, raw=False, max_array_len=_MAX_DIMS, max_map_len=0, max_ext_len=0)
        if code == EXT_HANDLE:
            handle = _handle(ref)
            return handle if handles is None else handles(handle)
        if code == EXT_NDARRAY:
            received = _ndarray(ref, frame)
            return received if arrays is None else arrays(received)
        if code == EXT_BUFFER:
            return _copy_bytes(frame(ref))
        if code == EXT_ARRAY:
            if not isinstance(ref, list) or len(ref) != 2 or ref[0] not in _TYPECODES:
                raise ProtocolError("malformed array in payload")
            typecode, where = ref
            return _copy_array(typecode, where if isinstance(where, bytes) else frame(where))
        raise ProtocolError(f"unknown ext type {code} in payload")

    options = {**options, "ext_hook": ext_hook}
    value = _unpackb(body, options)
    if len(used) < len(frames) - 1:
        unused = [i for i in range(1, len(frames)) if i not in used]
        raise ProtocolError(f"payload has {len(unused)} frame(s) its body never refers to (frame {unused[0]} first)")
    return value


_EXT_START = re.compile(b"[\xc7-\xc9\xd4-\xd8]")
"""The bytes that start a msgpack ext value (ext 8/16/32, fixext 1-16). A body with none of them holds no ext
value; one with some may (they also occur inside other values), and takes the full path."""


def _holds_no_ext(body: Buffer) -> bool:
    try:
        return _EXT_START.search(body) is None
    except (TypeError, ValueError, BufferError):  # a buffer re cannot read (not contiguous): the full path says so
        return False


@functools.lru_cache(maxsize=8)
def _options(limits: Limits) -> "dict[str, Any]":
    """msgpack's options for a payload under ``limits``, made once (a call's arguments are unpacked per call)."""
    return {
        "raw": False,
        "strict_map_key": False,
        "max_str_len": limits.max_body,
        "max_bin_len": limits.max_body,
        "max_array_len": limits.max_items,
        "max_map_len": limits.max_items,
        "max_ext_len": limits.max_body,
    }


_DEFAULT_OPTIONS = _options(DEFAULT_LIMITS)
"""The options nearly every payload is read with, at hand without hashing a Limits (a dataclass's hash runs in
Python) on every call."""


def _unpackb(body: Buffer, options: "dict[str, Any]") -> Any:
    try:
        return msgpack.unpackb(body, **options)
    except ProtocolError:  # from the ext hook
        raise
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"payload is not valid msgpack: {str(exc) or type(exc).__name__}") from None


def unpack_call(
    frames: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS, arrays: Optional[ArrayHook] = None
) -> tuple[list[Any], dict[str, Any]]:
    """Rebuild ``(args, kwargs)``; anything else is a ProtocolError."""
    value = unpack_value(frames, limits, arrays)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], list)
        or not isinstance(value[1], dict)
        or (value[1] and not all(isinstance(k, str) for k in value[1]))  # most calls have no kwargs to look at
    ):
        raise ProtocolError("call payload must be [args list, kwargs map with string keys]")
    return value[0], value[1]


def pack_batch(calls: Sequence[Sequence[Any]]) -> list[Buffer]:
    """Frames for many calls of one method (``Client.map``): a list of positional-argument lists.

    The worker answers with one list holding ``[True, result]`` or ``[False, error map]`` per call,
    in the same order.
    """
    return pack_value([list(args) for args in calls])


def unpack_batch(frames: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS) -> list[list[Any]]:
    """Rebuild the argument lists of a batch; anything else is a ProtocolError."""
    value = unpack_value(frames, limits)
    if not isinstance(value, list) or not all(isinstance(args, list) for args in value):
        raise ProtocolError("batch payload must be a list of argument lists")
    return value
