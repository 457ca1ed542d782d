"""Python values <-> C memory for declared signatures: numbers, text, structs and n-dimensional arrays.

Everything here checks before it writes. ctypes silently truncates an out-of-range integer (for a legacy DLL, a
wrong answer nobody notices), and a short array or a wrong element type would have the library read or write
memory it was never given. A value that does not fit is :class:`Refused`; the caller turns that into an
ArgumentError naming the parameter, and the library is not called.
"""

import array
import ctypes
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple, Optional, Union

from protocol.codec import TYPESTRS, NDArray, slices, writable_copy
from protocol.errors import ConfigError

__all__ = ["SCALARS", "Buffer", "Element", "Layout", "Refused", "Row", "Struct", "Types"]

SCALARS: dict[str, Any] = {
    "int8": ctypes.c_int8,
    "int16": ctypes.c_int16,
    "int32": ctypes.c_int32,
    "int64": ctypes.c_int64,
    "uint8": ctypes.c_uint8,
    "uint16": ctypes.c_uint16,
    "uint32": ctypes.c_uint32,
    "uint64": ctypes.c_uint64,
    "byte": ctypes.c_byte,
    "ubyte": ctypes.c_ubyte,
    "short": ctypes.c_short,
    "ushort": ctypes.c_ushort,
    "int": ctypes.c_int,
    "uint": ctypes.c_uint,
    "long": ctypes.c_long,
    "ulong": ctypes.c_ulong,
    "longlong": ctypes.c_longlong,
    "ulonglong": ctypes.c_ulonglong,
    "size_t": ctypes.c_size_t,
    "ssize_t": ctypes.c_ssize_t,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "bool": ctypes.c_bool,
}
"""The number types a declaration may name, with this process's sizes (``long`` is 4 bytes in a 32-bit worker)."""

LIST, ARRAY, NDARRAY = "list", "array", "ndarray"
"""The forms an array result can take: (nested) lists, an ``array.array``, an :class:`NDArray`."""

_KIND_WORDS = {"i": "signed integer", "u": "unsigned integer", "f": "float", "b": "bool"}
_WIDE_CODEC = "utf-32-le" if ctypes.sizeof(ctypes.c_wchar) == 4 else "utf-16-le"


def _typecode_kind(code: str) -> tuple[str, int]:
    return ("f" if code in "fd" else "u" if code.isupper() else "i", array.array(code).itemsize)


_TYPECODE_KINDS = {code: _typecode_kind(code) for code in "bBhHiIqQlLfd"}
"""``array.array`` typecodes and their (kind, itemsize) in this process: 'l' is 4 bytes in a 32-bit worker."""
_TYPECODES = {kind: code for code, kind in reversed(_TYPECODE_KINDS.items())}
"""The typecode of each (kind, itemsize): the first of the list above ('q' rather than an 8-byte 'l')."""


def _kind_words(kind: str, size: int) -> str:
    return f"{size}-byte {_KIND_WORDS[kind]}"


class Refused(Exception):
    """A value that does not fit its declaration. ``path`` locates it inside the argument (``[2]``, ``.re``)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def inside(self, part: str) -> "Refused":
        """The same refusal, seen from one level up (``part`` is where it sits there)."""
        return Refused(self.message, part + self.path)


def _int_converter(ctype: Any) -> Callable[[Any], Any]:
    bits = 8 * ctypes.sizeof(ctype)
    signed = ctype(-1).value == -1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)

    def convert(value: Any) -> Any:
        if not isinstance(value, int):
            raise Refused(f"expected an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise Refused(f"{value} does not fit in {bits}-bit {'signed' if signed else 'unsigned'}")
        return value

    return convert


def _float(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(f"expected a number, got {type(value).__name__}")
    return float(value)


def _bool(value: Any) -> Any:
    if not isinstance(value, int):
        raise Refused(f"expected a bool, got {type(value).__name__}")
    return bool(value)


class Element:
    """One C element type (a declaration's ELEM): how a Python value goes into it and comes out of it."""

    kind = ""
    """'i' signed, 'u' unsigned, 'f' float, 'b' bool, 'c' char, 'w' wchar_t, 's' struct."""
    text = False
    """Whether arrays of it are text (char, wchar_t)."""
    typestr: Optional[str] = None
    """The :class:`NDArray` type string of this element, if an NDArray can hold it."""
    typecode: Optional[str] = None
    """The ``array.array`` typecode of this element, if an array.array can hold it."""

    def __init__(self, name: str, ctype: Any) -> None:
        self.name = name
        self.ctype = ctype
        self.size = ctypes.sizeof(ctype)

    def load(self, value: Any) -> Any:
        """What ctypes takes for ``value`` (a number, a byte, a struct instance); Refused if it does not fit."""
        raise NotImplementedError

    def dump(self, native: Any, like: Any = None) -> Any:
        """The Python value of what ctypes gives back, in the form of ``like`` (the value given, if any)."""
        return native

    def store(self, flat: Any, start: int, values: Sequence[Any]) -> None:
        """Write ``values`` into the ctypes array ``flat`` from element ``start`` on."""
        raise NotImplementedError

    def fetch(self, flat: Any, start: int, count: int) -> list[Any]:
        return [self.dump(item) for item in flat[start : start + count]]

    def matches(self, kind: str, size: int) -> bool:
        return (kind, size) == (self.kind, self.size)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Number(Element):
    """An integer, float or bool, range-checked."""

    def __init__(self, name: str, ctype: Any) -> None:
        super().__init__(name, ctype)
        self.convert: Callable[[Any], Any]
        if ctype is ctypes.c_bool:
            self.kind, self.convert = "b", _bool
        elif ctype in (ctypes.c_float, ctypes.c_double):
            self.kind, self.convert = "f", _float
        else:
            self.kind = "i" if ctype(-1).value == -1 else "u"
            self.convert = _int_converter(ctype)
        typestr = f"|{self.kind}1" if self.size == 1 else f"<{self.kind}{self.size}"
        self.typestr = typestr if typestr in TYPESTRS else None
        self.typecode = _TYPECODES.get((self.kind, self.size))

    def load(self, value: Any) -> Any:
        return self.convert(value)

    def store(self, flat: Any, start: int, values: Sequence[Any]) -> None:
        packed = self._packed(values)
        if packed is not None:
            at = start * self.size
            memoryview(flat).cast("B")[at : at + len(packed) * self.size] = memoryview(packed).cast("B")
            return
        converted = []
        for index, value in enumerate(values):
            try:
                converted.append(self.convert(value))
            except Refused as exc:
                raise exc.inside(f"[{index}]") from None
        flat[start : start + len(converted)] = converted

    def _packed(self, values: Sequence[Any]) -> "Optional[array.array[Any]]":
        """``values`` converted and checked in C by ``array.array`` (its range and type checks are the ones
        :attr:`convert` makes, 40 times faster for a million numbers); None leaves a bool element (which
        ``array('d')`` would take as a number), an error or a bool array to the loop that names the element."""
        if self.typecode is None or (self.kind == "f" and bool in map(type, values)):
            return None
        try:
            return array.array(self.typecode, values)
        except (TypeError, OverflowError, ValueError):
            return None

    def fetch(self, flat: Any, start: int, count: int) -> list[Any]:
        return list(flat[start : start + count])

    def describe(self) -> str:
        return f"{self.name} ({_kind_words(self.kind, self.size)})"


class Char(Element):
    """A C ``char`` (one byte of text) or ``wchar_t``; arrays of them are text buffers."""

    text = True

    def __init__(self, name: str, ctype: Any) -> None:
        super().__init__(name, ctype)
        self.kind = "c" if ctype is ctypes.c_char else "w"

    def load(self, value: Any) -> Any:
        if self.kind == "w":
            if isinstance(value, str) and len(value) == 1:
                return value
            raise Refused(f"expected one character (a str of length 1), got {value!r:.40}")
        raw = value.encode("utf-8") if isinstance(value, str) else value
        if isinstance(raw, (bytes, bytearray)) and len(raw) == 1:
            return bytes(raw)
        raise Refused(f"expected one character (a str or bytes of one byte), got {value!r:.40}")

    def dump(self, native: Any, like: Any = None) -> Any:
        if isinstance(native, bytes) and not isinstance(like, (bytes, bytearray)):
            return native.decode("utf-8", "replace")
        return native

    def encode(self, value: Any) -> bytes:
        """Text as the bytes C holds, up to its first NUL (where C sees it end)."""
        if isinstance(value, str) and self.kind == "c":
            raw = value.encode("utf-8")
        elif isinstance(value, str):
            raw = value.encode(_WIDE_CODEC)
        elif isinstance(value, (bytes, bytearray)) and self.kind == "c":
            raw = bytes(value)
        else:
            wanted = "a str or bytes" if self.kind == "c" else "a str"
            raise Refused(f"expected text ({wanted}), got {type(value).__name__}")
        return raw[: self.end(raw)]

    def end(self, raw: bytes) -> int:
        """Where the text in ``raw`` ends: its first NUL character, or its length."""
        nul = bytes(self.size)
        at = raw.find(nul)
        while at >= 0 and at % self.size:
            at = raw.find(nul, at + 1)
        return len(raw) if at < 0 else at

    def decode(self, raw: bytes, like: Any) -> Any:
        """The text in a C buffer, as bytes if ``like`` is bytes, else as str (undecodable bytes replaced)."""
        raw = raw[: self.end(raw)]
        if self.kind == "w":
            return raw.decode(_WIDE_CODEC, "replace")
        return raw if isinstance(like, (bytes, bytearray)) else raw.decode("utf-8", "replace")


class Struct(Element):
    """A C struct, given and returned as a dict with exactly its declared fields."""

    kind = "s"

    def __init__(self, name: str, ctype: Any, fields: "list[Field]") -> None:
        super().__init__(f"struct {name}", ctype)
        self.fields = fields
        self.field_names = [f.name for f in fields]

    def load(self, value: Any) -> Any:
        native = self.ctype()
        self.fill(native, value)
        return native

    def fill(self, native: Any, value: Any) -> None:
        """Set every field of the ctypes struct ``native`` from the dict ``value``."""
        if not isinstance(value, Mapping):
            raise Refused(
                f"expected a dict with the fields of {self.name} ({', '.join(self.field_names)}), got "
                f"{type(value).__name__}"
            )
        missing = [n for n in self.field_names if n not in value]
        unknown = [str(n) for n in value if n not in self.field_names]
        if missing or unknown:
            problems = [f"missing field(s) {', '.join(missing)}"] if missing else []
            problems += [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
            raise Refused(f"{'; '.join(problems)}: {self.name} has the fields {', '.join(self.field_names)}")
        for field in self.fields:
            try:
                field.put(native, value[field.name])
            except Refused as exc:
                raise exc.inside(f".{field.name}") from None

    def dump(self, native: Any, like: Any = None) -> Any:
        return {field.name: field.get(native) for field in self.fields}

    def store(self, flat: Any, start: int, values: Sequence[Any]) -> None:
        for index, value in enumerate(values):
            try:
                self.fill(flat[start + index], value)
            except Refused as exc:
                raise exc.inside(f"[{index}]") from None


class Field:
    """One field of a struct: a scalar, a nested struct, or a fixed array of either (char arrays are text)."""

    def __init__(self, name: str, element: Element, shape: Sequence[int]) -> None:
        self.name = name
        self.element = element
        self.layout = Layout(element, shape, shape) if shape else None
        ctype = element.ctype
        for extent in reversed(shape):
            ctype = ctype * extent
        self.ctype = ctype
        self.offset = 0
        """Set once the struct is laid out."""

    def _flat(self, native: Any) -> Any:
        assert self.layout is not None
        return (self.element.ctype * self.layout.count).from_buffer(native, self.offset)

    def put(self, native: Any, value: Any) -> None:
        if self.layout is not None:
            self.layout.write(value, self._flat(native))
        elif isinstance(self.element, Struct):
            self.element.fill(getattr(native, self.name), value)
        else:
            setattr(native, self.name, self.element.load(value))

    def get(self, native: Any) -> Any:
        if self.layout is not None:
            return self.layout.read(self._flat(native), LIST)
        return self.element.dump(getattr(native, self.name))


_NUMBERS = {name: Number(name, ctype) for name, ctype in SCALARS.items()}
_CHARS = {"char": Char("char", ctypes.c_char), "wchar": Char("wchar_t", ctypes.c_wchar)}


class Types:
    """The element types of one library's declarations, built once at start-up: numbers, characters, structs."""

    def __init__(self, structs: Mapping[str, Any]) -> None:
        self._declared = structs
        self._structs: dict[str, Struct] = {}
        for name in structs:
            self._struct(str(name), ())

    def element(self, spec: Any) -> Element:
        """The element a declaration's ELEM names; ConfigError for one it cannot."""
        if isinstance(spec, Mapping) and set(spec) == {"struct"}:
            return self._struct(str(spec["struct"]), ())
        if isinstance(spec, str) and spec in _NUMBERS:
            return _NUMBERS[spec]
        if isinstance(spec, str) and spec in _CHARS:
            return _CHARS[spec]
        raise ConfigError(
            f"unknown element type {spec!r}: use one of {', '.join(sorted(_NUMBERS))}, char, wchar or "
            '{"struct": NAME}'
        )

    def _struct(self, name: str, within: tuple[str, ...]) -> Struct:
        built = self._structs.get(name)
        if built is not None:
            return built
        if name not in self._declared:
            known = ", ".join(sorted(self._declared)) or "none"
            raise ConfigError(f"unknown struct {name!r} (declared structs: {known})")
        if name in within:
            raise ConfigError(f"struct {name} contains itself ({' -> '.join((*within, name))}): use a pointer")
        fields = []
        for decl in self._declared[name]:
            if not isinstance(decl, Mapping) or "name" not in decl or "type" not in decl:
                raise ConfigError(f"struct {name}: a field must be {{name, type, shape}}, got {decl!r:.80}")
            spec = decl["type"]
            if isinstance(spec, Mapping) and set(spec) == {"struct"}:
                element: Element = self._struct(str(spec["struct"]), (*within, name))
            else:
                element = self.element(spec)
            shape = list(decl.get("shape", []))
            if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
                raise ConfigError(f"struct {name}: field {decl['name']!r} has a bad shape {shape!r}")
            fields.append(Field(str(decl["name"]), element, shape))
        if len({f.name for f in fields}) != len(fields) or not fields:
            raise ConfigError(f"struct {name} needs fields with distinct names")
        ctype = type(name, (ctypes.Structure,), {"_fields_": [(f.name, f.ctype) for f in fields]})
        for field in fields:
            field.offset = getattr(ctype, field.name).offset
        struct = self._structs[name] = Struct(name, ctype, fields)
        return struct


class Row(NamedTuple):
    """The innermost row of nested lists (a list of elements, or a text) and where it goes."""

    value: Any
    start: int
    """Its first element's index in the storage."""
    path: str
    """Where it sits in the argument (``[2][0]``)."""


class Buffer(NamedTuple):
    """A typed buffer given for an array: an NDArray, an ``array.array`` or raw bytes."""

    owner: Any
    """What ctypes can point into (the NDArray's data, the array.array, the bytearray)."""
    memory: memoryview
    """Its bytes."""
    shape: tuple[int, ...]
    """In elements of the parameter's type; once checked, in the storage's layout (a flat buffer as rows of the
    storage's width)."""


def _copy(dst: memoryview, at: int, src: memoryview, start: int, nbytes: int) -> None:
    """Copy in slices: other threads (the worker's heartbeats) get the GIL between two of them."""
    for piece in slices(src[start : start + nbytes]):
        dst[at : at + len(piece)] = piece
        at += len(piece)


def _copy_region(
    dst: memoryview,
    dst_shape: Sequence[int],
    src: memoryview,
    src_shape: Sequence[int],
    region: Sequence[int],
    size: int,
) -> None:
    """Copy the leading ``region`` (in elements of ``size`` bytes) between two C-ordered arrays of other shapes."""
    if not all(region):
        return
    inner = len(region) - 1
    while inner > 0 and region[inner] == dst_shape[inner] == src_shape[inner]:
        inner -= 1  # whole rows in both: one longer run
    run = math.prod(region[inner:]) * size
    dst_strides = [math.prod(dst_shape[i + 1 :]) * size for i in range(inner)]
    src_strides = [math.prod(src_shape[i + 1 :]) * size for i in range(inner)]
    for index in itertools.product(*(range(r) for r in region[:inner])):
        at = sum(i * s for i, s in zip(index, dst_strides))
        start = sum(i * s for i, s in zip(index, src_strides))
        _copy(dst, at, src, start, run)


class Layout:
    """An n-dimensional array in C memory: its logical ``dims`` inside the C ``storage`` extents (row-major).

    ``double a[][100]`` declared ``in[n][r]`` is storage ``(n, 100)`` holding dims ``(n, r)``: row ``i`` starts
    at element ``100 * i``. An array of char (or wchar_t) is text: its last dim is one NUL-terminated buffer.
    """

    def __init__(
        self,
        element: Element,
        dims: Sequence[int],
        storage: Sequence[int],
        label: Optional[Callable[[], str]] = None,
    ) -> None:
        self.element = element
        self.dims = tuple(dims)
        self.storage = tuple(storage)
        self._label = label
        self.count = math.prod(self.storage)
        self.nbytes = self.count * element.size
        self.strides = [math.prod(self.storage[i + 1 :]) for i in range(len(self.storage) - 1)] + [1]
        """Elements from one index of each dim to the next."""

    @property
    def what(self) -> str:
        """How messages name the declared extent (``in[n] with n = 6``, ``double[3]``)."""
        if self._label is not None:
            return self._label()
        return self.element.name + "".join(f"[{d}]" for d in self.dims)

    def flat(self, owner: Any) -> Any:
        """A ctypes array of every element of the storage, over ``owner``'s memory."""
        if not self.count:  # an empty buffer may have no address at all; the library gets a valid one
            return (self.element.ctype * 0)()
        return (self.element.ctype * self.count).from_buffer(owner)

    # --- typed buffers ------------------------------------------------------------------------

    def buffer(self, value: Any) -> Optional[Buffer]:
        """``value`` as a typed buffer (type checked, read-only data copied), or None for lists and text."""
        element = self.element
        if element.text:
            return None
        if isinstance(value, NDArray):
            if value.data is None:
                raise Refused(f"is an array in shared memory {value.shared!r} that is not mapped")
            if value.typestr not in TYPESTRS or not element.matches(value.typestr[1], value.itemsize):
                given = f"an NDArray of {value.typestr!r}"
                if value.typestr in TYPESTRS:
                    given += f" ({_kind_words(value.typestr[1], value.itemsize)})"
                raise Refused(self._mismatch(given, "typestr"))
            owner = value.data
            if memoryview(owner).readonly:
                owner = value.data = writable_copy(memoryview(owner).cast("B"))
            memory = memoryview(owner).cast("B")
            if memory.nbytes < value.nbytes:
                raise Refused(f"is an array of shape {value.shape} with only {memory.nbytes} bytes of data")
            return Buffer(owner, memory, value.shape)
        if isinstance(value, array.array):
            kind = _TYPECODE_KINDS.get(value.typecode)
            if kind is None or not element.matches(*kind):
                given = f"an array.array({value.typecode!r})" + (f" ({_kind_words(*kind)})" if kind else "")
                raise Refused(self._mismatch(given, "typecode"))
            return Buffer(value, memoryview(value).cast("B"), (len(value),))
        if isinstance(value, (bytes, bytearray)):
            if len(value) % element.size:
                raise Refused(f"{len(value)} bytes is not a whole number of {element.size}-byte {element.name} items")
            owner = value if isinstance(value, bytearray) else writable_copy(memoryview(value).cast("B"))
            return Buffer(owner, memoryview(owner), (len(value) // element.size,))
        return None

    def _mismatch(self, given: str, attribute: str) -> str:
        element = self.element
        if not isinstance(element, Number):
            return f"is {given}, but {element.name} elements are given as a list of dicts or raw bytes"
        code = getattr(element, attribute)
        if code is None:
            return f"is {given}, but {element.describe()} elements have no {attribute}: give a list"
        return f"is {given}, but {element.describe()} elements need {attribute} {code!r}"

    def _buffer_shape(self, buffer: Buffer) -> tuple[int, ...]:
        """The buffer's C shape, checked to hold every logical element: a flat (1-D) buffer is in the storage's
        layout (rows of the storage's width), an n-D one in its own."""
        shape, dims = buffer.shape, self.dims
        if len(shape) == 1:
            width = self.strides[0]
            needed = dims[0] * width
            if shape[0] < needed:
                rows = f" ({dims[0]} row(s) of {width})" if len(dims) > 1 else ""
                raise Refused(f"has {shape[0]} element(s), fewer than the {needed}{rows} of {self.what}")
            return (shape[0] // width if width else dims[0], *self.storage[1:])
        if len(shape) != len(dims):
            raise Refused(f"is a {len(shape)}-dimensional array; {self.what} has {len(dims)} dimension(s)")
        if any(have < need for have, need in zip(shape, dims)):
            raise Refused(f"has shape {shape}, smaller than the {dims} of {self.what}")
        return shape

    def in_place(self, buffer: Buffer) -> bool:
        """Whether the library can be handed a checked ``buffer`` itself: it is laid out as the storage, and big
        enough."""
        return buffer.shape[1:] == self.storage[1:] and math.prod(buffer.shape) >= self.count

    def copy_back(self, buffer: Buffer, flat: Any) -> None:
        """After the call: the logical elements of ``flat`` into the (checked) buffer the caller gave."""
        memory = memoryview(flat).cast("B")
        _copy_region(buffer.memory, buffer.shape, memory, self.storage, self.dims, self.element.size)

    # --- any value in, the caller's form out ------------------------------------------------

    def source(self, value: Any) -> "Union[Buffer, list[Row]]":
        """``value`` checked to hold every logical element, before any memory is set aside for it: a typed buffer
        (its ``shape`` now its C shape), or the innermost rows of nested lists (each a list of elements, or a
        text) with where they go."""
        buffer = self.buffer(value)
        if buffer is not None:
            return Buffer(buffer.owner, buffer.memory, self._buffer_shape(buffer))
        rows: list[Row] = []
        self._rows(value, 0, 0, "", rows)
        return rows

    def _rows(self, value: Any, depth: int, start: int, path: str, rows: "list[Row]") -> None:
        extent = self.dims[depth]
        last = depth == len(self.dims) - 1
        if last and self.element.text:
            rows.append(Row(value, start, path))
            return
        if not isinstance(value, (list, tuple, array.array) if last else (list, tuple)):
            wanted = "a list" if depth else self._forms()
            raise Refused(f"expected {wanted}, got {type(value).__name__}", path)
        if len(value) < extent:
            items = "element(s)" if last else "item(s)"
            raise Refused(f"has {len(value)} {items}, fewer than the {extent} of {self.what}", path)
        if last:
            rows.append(Row(value, start, path))
            return
        for index in range(extent):
            self._rows(value[index], depth + 1, start + index * self.strides[depth], f"{path}[{index}]", rows)

    def fill(self, source: "Union[Buffer, list[Row]]", flat: Any) -> None:
        """Put the logical elements of a checked ``source`` into ``flat``."""
        element = self.element
        if isinstance(source, Buffer):
            memory = memoryview(flat).cast("B")
            _copy_region(memory, self.storage, source.memory, source.shape, self.dims, element.size)
            return
        for row in source:
            try:
                if isinstance(element, Char):
                    self._write_text(element, row.value, flat, row.start)
                else:
                    element.store(flat, row.start, row.value[: self.dims[-1]])
            except Refused as exc:
                raise exc.inside(row.path) from None

    def write(self, value: Any, flat: Any) -> None:
        """Put the logical elements of ``value`` (a typed buffer, nested lists, text) into ``flat``."""
        self.fill(self.source(value), flat)

    def _forms(self) -> str:
        nested = "nested lists" if len(self.dims) > 1 else "a list"
        if self.element.text:
            return f"{nested} of texts"
        if isinstance(self.element, Struct):
            return f"{nested} of dicts or raw bytes"
        return f"{nested}, an NDArray, an array.array or raw bytes"

    def _write_text(self, element: Char, value: Any, flat: Any, start: int) -> None:
        raw = element.encode(value)
        room = self.dims[-1] * element.size
        if len(raw) + element.size > room:
            units = len(raw) // element.size
            raise Refused(
                f"buffer too small: {units} character unit(s) of text and its NUL need {units + 1}, but {self.what} "
                f"holds {self.dims[-1]}"
            )
        at = start * element.size
        memoryview(flat).cast("B")[at : at + len(raw)] = raw

    def read(self, flat: Any, form: str, like: Any = None, own: Optional[bytearray] = None) -> Any:
        """The logical elements of ``flat`` as ``form``: nested lists (text: str, or bytes if ``like`` is), an
        ``array.array`` (1-D) or an NDArray. ``own`` is ``flat``'s memory when it is this call's own: an NDArray
        of the storage's shape takes it without a copy."""
        size = self.element.size
        if form == NDARRAY:
            assert self.element.typestr is not None
            if own is not None and self.dims == self.storage:
                return NDArray(self.element.typestr, self.dims, own)
            data = bytearray(math.prod(self.dims) * size)
            _copy_region(memoryview(data), self.dims, memoryview(flat).cast("B"), self.storage, self.dims, size)
            return NDArray(self.element.typestr, self.dims, data)
        if form == ARRAY:
            assert self.element.typecode is not None
            result = array.array(self.element.typecode)
            for piece in slices(memoryview(flat).cast("B")[: self.dims[0] * size]):
                result.frombytes(piece)
            return result
        return self._read(flat, 0, 0, like)

    def _read(self, flat: Any, depth: int, start: int, like: Any) -> Any:
        element, extent = self.element, self.dims[depth]
        if depth < len(self.dims) - 1:
            step = self.strides[depth]
            return [self._read(flat, depth + 1, start + i * step, like) for i in range(extent)]
        if isinstance(element, Char):
            at = start * element.size
            return element.decode(bytes(memoryview(flat).cast("B")[at : at + extent * element.size]), like)
        return element.fetch(flat, start, extent)
