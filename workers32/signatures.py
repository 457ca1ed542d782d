"""Declared C signatures: type names from the configuration turned into ctypes.

A service that declares ``add = { args = ["int", "int"], returns = "int" }``
needs no Python code in the worker. Arguments are checked before the call:
ctypes silently truncates an out-of-range integer, which for a legacy DLL is
a wrong answer nobody notices, so we refuse it with an ArgumentError.
"""

import array
import ctypes
from collections.abc import Sequence
from typing import Any, Callable, Optional

from protocol.codec import slices
from protocol.errors import ArgumentError, ConfigError, LibraryLoadError

__all__ = ["CFunction", "SCALARS", "POINTER_SUFFIX", "check_type", "type_names"]

_Converter = Callable[[Any], Any]

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
_ALIASES = {name + "_t": name for name in SCALARS if name[-1].isdigit()}
_ALIASES.update({"unsigned int": "uint", "unsigned": "uint", "char": "int8", "unsigned char": "uint8"})

POINTER_SUFFIX = "*"
"""``double*`` etc.: an input array, passed as a list of numbers, an ``array.array`` or raw bytes."""

_STRINGS = {"char*": ctypes.c_char_p, "wchar*": ctypes.c_wchar_p}


def type_names() -> list[str]:
    """Every type name a configuration may use."""
    names = sorted(SCALARS) + sorted(_ALIASES) + sorted(_STRINGS)
    return names + [n + POINTER_SUFFIX for n in sorted(SCALARS) if n != "bool"] + ["void"]


def _canonical(name: str) -> str:
    name = " ".join(str(name).split()).replace(" *", "*")
    return _ALIASES.get(name, name)


def _int_converter(ctype: Any) -> _Converter:
    bits = 8 * ctypes.sizeof(ctype)
    signed = ctype(-1).value == -1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)

    def convert(value: Any) -> Any:
        if not isinstance(value, int):
            raise TypeError(f"expected an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise TypeError(f"{value} does not fit in {bits}-bit {'signed' if signed else 'unsigned'}")
        return value

    return convert


def _float(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _bool(value: Any) -> Any:
    if not isinstance(value, (bool, int)):
        raise TypeError(f"expected a bool, got {type(value).__name__}")
    return bool(value)


def _char_p(value: Any) -> Any:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"expected bytes, str or None, got {type(value).__name__}")


def _wchar_p(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected str or None, got {type(value).__name__}")


def _writable(value: Any) -> Any:
    """``value`` itself when ctypes can point into it; a copy (in slices, so heartbeats go on) when it is
    read-only bytes."""
    if not isinstance(value, bytes):
        return value
    copy = bytearray()
    for piece in slices(value):
        copy += piece
    return copy


def _array_converter(ctype: Any, element: _Converter) -> _Converter:
    size = ctypes.sizeof(ctype)

    def convert(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray, array.array)):
            nbytes = memoryview(value).nbytes
            if nbytes % size:
                raise TypeError(f"{nbytes} bytes is not a whole number of {size}-byte items")
            if not nbytes:  # an empty buffer may have no address at all; the library gets a valid one
                return (ctype * 0)()
            # The decoded argument is this call's own: the library may read it in place, never a copy of it.
            return (ctype * (nbytes // size)).from_buffer(_writable(value))
        if isinstance(value, (list, tuple)):
            return (ctype * len(value))(*[element(v) for v in value])
        raise TypeError(f"expected a list, array.array or bytes, got {type(value).__name__}")

    return convert


def _argument(name: str) -> tuple[Any, _Converter]:
    canonical = _canonical(name)
    if canonical in _STRINGS:
        return _STRINGS[canonical], _char_p if canonical == "char*" else _wchar_p
    if canonical.endswith(POINTER_SUFFIX) and canonical[:-1] in SCALARS and canonical != "bool*":
        ctype = SCALARS[canonical[:-1]]
        element = _float if ctype in (ctypes.c_float, ctypes.c_double) else _int_converter(ctype)
        return ctypes.POINTER(ctype), _array_converter(ctype, element)
    if canonical in SCALARS:
        ctype = SCALARS[canonical]
        if ctype in (ctypes.c_float, ctypes.c_double):
            return ctype, _float
        if ctype is ctypes.c_bool:
            return ctype, _bool
        return ctype, _int_converter(ctype)
    raise ConfigError(f"unknown argument type {name!r}; known types: {', '.join(type_names())}")


def _restype(name: str) -> Any:
    canonical = _canonical(name)
    if canonical == "void":
        return None
    if canonical in _STRINGS:
        return _STRINGS[canonical]
    if canonical in SCALARS:
        return SCALARS[canonical]
    raise ConfigError(f"unknown return type {name!r}; use void, char*, wchar* or one of: {', '.join(sorted(SCALARS))}")


def check_type(name: str, *, returns: bool = False) -> None:
    """Raise ConfigError for a type name a worker would refuse, before any worker starts."""
    if returns:
        _restype(name)
    else:
        _argument(name)


class CFunction:
    """One library function with its declared signature, callable with Python values.

    Built at start-up: a symbol the library lacks is a :class:`LibraryLoadError` naming it and the
    library, and an unknown type name a :class:`ConfigError`, before any call.
    """

    def __init__(
        self, library: Any, name: str, args: Sequence[str], returns: str, symbol: Optional[str] = None
    ) -> None:
        self.name = name
        self.signature = f"{returns} {name}({', '.join(args)})"
        try:
            self._func = getattr(library, symbol or name)
        except AttributeError:
            path = getattr(library, "_name", None)
            owner = f"library {path!r}" if path else "the library"
            raise LibraryLoadError(f"{owner} has no function {symbol or name!r} (declared as {name!r})") from None
        parts = [_argument(a) for a in args]
        self._converters = [c for _, c in parts]
        self._func.argtypes = [t for t, _ in parts]
        self._func.restype = _restype(returns)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise ArgumentError(
                f"{self.signature} takes positional arguments only, got keyword(s) {', '.join(sorted(kwargs))}",
                signature=self.signature,
            )
        if len(args) != len(self._converters):
            raise ArgumentError(
                f"{self.signature} takes {len(self._converters)} argument(s), got {len(args)}",
                signature=self.signature,
            )
        converted = []
        for index, (convert, value) in enumerate(zip(self._converters, args)):
            try:
                converted.append(convert(value))
            except TypeError as exc:
                raise ArgumentError(
                    f"argument {index + 1} of {self.signature}: {exc}", signature=self.signature
                ) from None
        return self._func(*converted)
