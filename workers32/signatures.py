"""Declared C signatures: a library function made callable with Python values, every argument checked first.

A declaration (the normalized form the 64-bit side makes of the configuration) says what the C prototype says:
each pointer's direction, the lengths of its arrays, the size of its text buffers, its structs. The worker
checks every argument against it before the call (a declared call can never have the library read or write
out of bounds) and hands back what the library wrote through out and inout pointers.

Calling convention: positional arguments bind, in C order, to the parameters that are not ``out``; any
parameter may be given by keyword. A function without out/inout parameters returns its return value; one with
them returns ``{"return": value, <name>: value, ...}`` (no "return" for void), in C order.
"""

import array
import ctypes
import functools
import math
from collections.abc import Mapping
from typing import Any, Callable, Optional

from protocol.codec import NDArray
from protocol.errors import ArgumentError, ConfigError, LibraryLoadError

from .handles import HANDLES
from .marshal import ARRAY, LIST, NDARRAY, SCALARS, Buffer, Char, Layout, Number, Refused, Struct, Types

__all__ = ["CFunction", "DEFAULT_OUT_LIMIT", "SCALARS"]

DEFAULT_OUT_LIMIT = 1 << 30
"""Bytes an output array may have when the worker's spec gives no ``max_message_size``."""

_MISSING: Any = object()
"""An ``out`` parameter the caller did not give: the worker allocates it."""

_Finish = Callable[[], Any]
_Prepared = tuple[Any, Optional[_Finish]]
"""A pointer parameter's C argument, and (for out/inout) what gives its value after the call."""


class _Param:
    """One C parameter: what ctypes is told (``argtype``) and how a Python value becomes the C argument."""

    argtype: Any = None

    def __init__(self, spec: Mapping[str, Any], position: int) -> None:
        self.name = str(spec["name"])
        self.position = position
        self.dir = str(spec.get("dir", "in"))
        if self.dir not in ("in", "out", "inout"):
            raise ConfigError(f"parameter {self.name!r} has direction {self.dir!r}; use in, out or inout")
        self.ref = str(position + 1) if self.name == f"arg{position + 1}" else repr(self.name)
        """How messages name it: its position when the prototype left it unnamed."""

    def load(self, value: Any) -> Any:
        """The C argument for a value passed by value."""
        raise NotImplementedError

    def prepare(self, value: Any, lengths: Mapping[str, int], any_nd: bool, limit: int) -> _Prepared:
        """The C argument for a pointer, and (for out/inout) what gives its value after the call."""
        raise NotImplementedError


class _Value(_Param):
    """A number, character or struct passed by value."""

    def __init__(self, spec: Mapping[str, Any], position: int, types: Types) -> None:
        super().__init__(spec, position)
        self.element = types.element(spec["type"])
        self.argtype = self.element.ctype

    def load(self, value: Any) -> Any:
        return self.element.load(value)


class _Text(_Param):
    """A NUL-terminated string the library reads (``const char *``): str (sent as UTF-8), bytes or None.

    The library gets a buffer of the call's own, never the interpreter's string object: a library that writes
    into a ``char *`` declared as input (within the text) would otherwise change an immutable object, one
    CPython may share with all of the process (``b"a"``).
    """

    def __init__(self, spec: Mapping[str, Any], position: int) -> None:
        super().__init__(spec, position)
        self.wide = spec["type"] == "wchar"
        self.argtype = ctypes.c_wchar_p if self.wide else ctypes.c_char_p

    def load(self, value: Any) -> Any:
        if value is None:
            return None
        if self.wide:
            if not isinstance(value, str):
                raise Refused(f"expected str or None, got {type(value).__name__}")
            return ctypes.create_unicode_buffer(value)
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, (bytes, bytearray)):
            raise Refused(f"expected bytes, str or None, got {type(value).__name__}")
        return ctypes.create_string_buffer(bytes(value))


class _Ref(_Param):
    """A pointer to one value (``int *q``, ``struct Complex *z``)."""

    def __init__(self, spec: Mapping[str, Any], position: int, types: Types) -> None:
        super().__init__(spec, position)
        self.element = types.element(spec["type"])
        self.argtype = ctypes.POINTER(self.element.ctype)

    def prepare(self, value: Any, lengths: Mapping[str, int], any_nd: bool, limit: int) -> _Prepared:
        element = self.element
        if value is _MISSING:
            native = element.ctype()
        elif isinstance(element, Struct):
            native = element.load(value)
        else:
            native = element.ctype(element.load(value))
        pointer = ctypes.byref(native)
        if self.dir == "in":
            return pointer, None
        if isinstance(element, Struct):
            return pointer, lambda: element.dump(native)
        return pointer, lambda: element.dump(native.value, value)


def _dim_names(dim: Any) -> list[str]:
    terms = dim if isinstance(dim, list) else [dim]
    return [t for t in terms if isinstance(t, str)]


def _dim_text(dim: Any) -> str:
    if dim is None:
        return ""
    return "*".join(map(str, dim)) if isinstance(dim, list) else str(dim)


def _first_leaf(value: Any) -> Any:
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return value


class _Array(_Param):
    """A pointer to an array: its logical dims come from constants, length parameters or (``out[]``) the caller,
    inside the extents the C type fixes (``storage``)."""

    def __init__(self, spec: Mapping[str, Any], position: int, types: Types) -> None:
        super().__init__(spec, position)
        self.element = types.element(spec["type"])
        self.argtype = ctypes.POINTER(self.element.ctype)
        self.dims = list(spec["dims"])
        self.storage = list(spec.get("storage") or [None] * len(self.dims))
        if not self.dims or len(self.storage) != len(self.dims):
            raise ConfigError(f"array {self.name!r} needs dims and storage of the same length, at least one")
        for index, dim in enumerate(self.dims):
            terms = dim if isinstance(dim, list) else [dim]
            if dim is None:
                if index or self.dir != "out":
                    raise ConfigError(f"array {self.name!r}: only an out array's first dim may be left to the caller")
            elif not terms or not all(
                isinstance(t, str) or (isinstance(t, int) and not isinstance(t, bool) and t >= 0) for t in terms
            ):
                raise ConfigError(f"array {self.name!r} has a bad dim {dim!r}")
        if not all(s is None or (isinstance(s, int) and not isinstance(s, bool) and s > 0) for s in self.storage):
            raise ConfigError(f"array {self.name!r} has a bad storage {self.storage!r}")
        self.free = all(s is None for s in self.storage)
        """No extent fixed by the C type: the storage is the logical dims."""
        self.names = sorted({n for dim in self.dims for n in _dim_names(dim)})
        self.annotation = self.dir + "".join(f"[{_dim_text(d)}]" for d in self.dims)

    @staticmethod
    def _extent(dim: Any, lengths: Mapping[str, int]) -> int:
        if isinstance(dim, list):
            return math.prod(lengths[t] if isinstance(t, str) else t for t in dim)
        return lengths[dim] if isinstance(dim, str) else int(dim)

    def _label(self, lengths: Mapping[str, int], given: Optional[int]) -> str:
        """``in[n] with n = 6``: the annotation and the values it took in this call, for messages."""
        used = [f"{n} = {lengths[n]}" for n in self.names] + ([] if given is None else [f"{given} given"])
        return self.annotation + (f" with {', '.join(used)}" if used else "")

    def _count(self, value: Any, width: int) -> int:
        """The first dim of an ``out[]`` array from the buffer the caller gave to fill."""
        if isinstance(value, (list, tuple)):
            return len(value)
        if isinstance(value, NDArray) and len(value.shape) == len(self.dims):
            return value.shape[0]
        if isinstance(self.element, Char):
            if len(self.dims) == 1 and self.element.kind == "c" and isinstance(value, (bytes, bytearray)):
                return len(value)
        elif isinstance(value, (NDArray, array.array, bytes, bytearray)):
            nbytes = value.nbytes if isinstance(value, NDArray) else memoryview(value).nbytes
            return nbytes // self.element.size // width if width else 0
        raise Refused(
            f"is {self.annotation}: give its length as an int, or a buffer to fill, got {type(value).__name__}"
        )

    def layout(self, value: Any, lengths: Mapping[str, int]) -> tuple[Layout, bool]:
        """This call's layout, and whether ``value`` is an array to use (not a count or nothing)."""
        given = value is not _MISSING
        inner = [self._extent(dim, lengths) for dim in self.dims[1:]]
        storage = inner if self.free else [s if s is not None else e for s, e in zip(self.storage[1:], inner)]
        counted: Optional[int] = None
        if self.dims[0] is not None:
            first = self._extent(self.dims[0], lengths)
        elif isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise Refused(f"is {self.annotation}: its length must be >= 0, got {value}")
            first = counted = value
            given = False
        else:
            first = counted = self._count(value, math.prod(storage))
        extents = [first, *inner]
        label = functools.partial(self._label, lengths, counted)
        if self.free:
            return Layout(self.element, extents, extents, label), given
        for extent, fixed in zip(extents, self.storage):
            if fixed is not None and extent > fixed:
                raise Refused(f"{label()}: {extent} is more than the C array's extent of {fixed}")
        storage.insert(0, first if self.storage[0] is None else self.storage[0])
        return Layout(self.element, extents, storage, label), given

    def _default_form(self, any_nd: bool) -> str:
        if any_nd and self.element.typestr is not None:
            return NDARRAY
        if len(self.dims) == 1 and self.element.typecode is not None:
            return ARRAY
        return LIST

    def prepare(self, value: Any, lengths: Mapping[str, int], any_nd: bool, limit: int) -> _Prepared:
        layout, given = self.layout(value, lengths)
        if not given:
            own, flat = self._allocate(layout, limit)
            form = self._default_form(any_nd)
            return flat, lambda: layout.read(flat, form, own=own)
        source = layout.source(value)
        if isinstance(source, Buffer):
            result = source.owner if isinstance(value, bytes) else value
            if layout.in_place(source):
                return layout.flat(source.owner), None if self.dir == "in" else lambda: result
        own, flat = self._allocate(layout, limit)
        layout.fill(source, flat)
        if self.dir == "in":
            return flat, None
        if not isinstance(source, Buffer):
            like = _first_leaf(value)
            return flat, lambda: layout.read(flat, LIST, like)
        buffer = source

        def copy_back() -> Any:
            layout.copy_back(buffer, flat)
            return result

        return flat, copy_back

    @staticmethod
    def _allocate(layout: Layout, limit: int) -> tuple[bytearray, Any]:
        """Zeroed memory for the call's copy of the array, within the bytes one message may carry."""
        if layout.nbytes > limit:
            raise Refused(
                f"{layout.what} needs {layout.nbytes:,} bytes, over the limit of {limit:,} bytes for one array "
                "(max_message_size)"
            )
        try:
            own = bytearray(layout.nbytes)
        except MemoryError:  # within the limit, but more than this (32-bit) process has room for now
            raise Refused(
                f"{layout.what} needs {layout.nbytes:,} bytes, more than this {8 * ctypes.sizeof(ctypes.c_void_p)}-bit "
                "worker can allocate now: pass less per call"
            ) from None
        return own, layout.flat(own)


class _Handle(_Param):
    """A pointer the library gave out earlier (``void *h``), passed back as its handle; ``close``: the call
    closes it, so the handle is forgotten once the call returns."""

    argtype = ctypes.c_void_p

    def __init__(self, spec: Mapping[str, Any], position: int) -> None:
        super().__init__(spec, position)
        self.kind = str(spec["type"])
        self.close = bool(spec.get("close", False))

    def load(self, value: Any) -> Any:
        return HANDLES.pointer(value, self.kind, closing=self.close)


def _param(spec: Mapping[str, Any], position: int, types: Types) -> _Param:
    kind = spec["kind"]
    if kind == "handle":
        return _Handle(spec, position)
    if kind == "value":
        return _Value(spec, position, types)
    if kind == "string":
        return _Text(spec, position)
    if kind == "ref":
        return _Ref(spec, position, types)
    if kind == "array":
        return _Array(spec, position, types)
    raise ConfigError(f"parameter {spec.get('name')!r} has kind {kind!r}; use value, string, ref, array or handle")


class CFunction:
    """One library function with its declared signature, callable with Python values.

    Built at start-up from the normalized declaration ``func`` and the library's ``structs``: a symbol the
    library lacks is a :class:`LibraryLoadError` naming it and the library, a declaration that cannot work a
    :class:`ConfigError`, before any call. ``out_limit`` bounds the bytes of each output array the worker
    allocates (the pool's ``max_message_size``: a bigger result could not be sent anyway).
    """

    def __init__(
        self,
        library: Any,
        name: str,
        func: Mapping[str, Any],
        structs: Optional[Mapping[str, Any]] = None,
        out_limit: Optional[int] = None,
    ) -> None:
        self.name = name
        self.signature = str(func.get("signature") or name)
        symbol = str(func.get("symbol") or name)
        try:
            self._func = getattr(library, symbol)
        except AttributeError:
            path = getattr(library, "_name", None)
            owner = f"library {path!r}" if path else "the library"
            raise LibraryLoadError(f"{owner} has no function {symbol!r} (declared as {name!r})") from None
        self._limit = out_limit or DEFAULT_OUT_LIMIT
        try:
            self._declare(func, Types(structs or {}))
        except ConfigError as exc:
            raise ConfigError(f"function {name!r} ({self.signature}): {exc}") from None
        except (KeyError, TypeError, ValueError, OverflowError, MemoryError) as exc:  # a struct too big for ctypes
            raise ConfigError(
                f"function {name!r} ({self.signature}): malformed declaration ({type(exc).__name__}: {exc})"
            ) from None

    def _declare(self, func: Mapping[str, Any], types: Types) -> None:
        params = [_param(spec, position, types) for position, spec in enumerate(func["params"])]
        by_name = {p.name: p for p in params}
        if len(by_name) != len(params):
            raise ConfigError("two parameters have the same name")
        lengths: set[str] = set()
        for param in params:
            for length in getattr(param, "names", []):
                target = by_name.get(length)
                element = getattr(target, "element", None)
                if not isinstance(target, _Value) or not (isinstance(element, Number) and element.kind in "iu"):
                    raise ConfigError(f"array {param.name!r} takes a length from {length!r}, not an integer parameter")
                lengths.add(length)
        self._params = params
        self._by_name = by_name
        self._inputs = [p for p in params if p.dir != "out"]
        self._values = [p for p in params if isinstance(p, (_Value, _Text, _Handle))]
        self._closes = [p for p in params if isinstance(p, _Handle) and p.close]
        self.closes = self._closes[0].kind if len(params) == 1 and self._closes else None
        """The kind of handle this function closes, when closing one is all it takes: what a dropped handle of
        that kind is closed with."""
        returns = func.get("returns") or {}
        self.uses_handles = returns.get("kind") == "handle" or any(isinstance(p, _Handle) for p in params)
        self._pointers = [p for p in params if isinstance(p, (_Ref, _Array))]
        self._lengths = lengths
        self._caller_sized = [p for p in params if isinstance(p, _Array) and p.dims[0] is None]
        self._plain = len(self._inputs) == len(params) and not self._caller_sized
        """Every parameter is an input: positional arguments are the C arguments in order."""
        self._outputs = any(p.dir != "in" for p in self._pointers)
        numbers = [p.element for p in params if isinstance(p, _Value) and isinstance(p.element, Number)]
        self._numbers = tuple(number.convert for number in numbers) if len(numbers) == len(params) else None
        """Each parameter's range check, when every one is a number passed by value: calls then skip binding and
        preparing (a worker's most frequent calls, at a fraction of the general path's Python)."""
        self._allocates = any(isinstance(p, _Array) and p.dir == "out" for p in params)
        """Some out array may be left to the worker, in a form that depends on the other arguments."""
        self._func.argtypes = [p.argtype for p in params]
        returns = func.get("returns")
        self._void = returns is None
        self._returned: Optional[Callable[[Any], Any]] = None
        """What makes the Python value of a result ctypes gives back, where ctypes' own will not do."""
        if returns is None:
            self._func.restype = None
        elif returns["kind"] == "string":
            self._func.restype = ctypes.c_wchar_p if returns["type"] == "wchar" else ctypes.c_char_p
        elif returns["kind"] == "value":
            element = types.element(returns["type"])
            self._func.restype = element.ctype
            if isinstance(element, (Char, Struct)):
                self._returned = element.dump
        elif returns["kind"] == "handle":
            self._func.restype = ctypes.c_void_p
            self._returned = functools.partial(HANDLES.register, kind=str(returns["type"]))
        else:
            raise ConfigError(f"return kind {returns['kind']!r}; use value, string or handle")

    def _error(self, message: str) -> ArgumentError:
        return ArgumentError(f"{self.signature} {message}", signature=self.signature)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        """The arguments in C order, ``_MISSING`` for out parameters the caller left to the worker."""
        inputs = self._inputs
        if not kwargs and self._plain and len(args) == len(inputs):
            return list(args)
        if len(args) > len(inputs):
            raise self._error(f"takes {len(inputs)} argument(s), got {len(args)}")
        given = [_MISSING] * len(self._params)
        for param, value in zip(inputs, args):
            given[param.position] = value
        for key, value in kwargs.items():
            named = self._by_name.get(key)
            if named is None:
                names = ", ".join(p.name for p in self._params) or "none"
                raise self._error(f"has no parameter {key!r}; its parameters are: {names}")
            if given[named.position] is not _MISSING:
                raise self._error(f"got argument {named.ref} both by position and by keyword")
            given[named.position] = value
        missing = [p.ref for p in inputs if given[p.position] is _MISSING]
        if missing:
            got = len(args) + len(kwargs)
            raise self._error(f"takes {len(inputs)} argument(s), got {got}: missing argument {', '.join(missing)}")
        for param in self._caller_sized:
            if given[param.position] is _MISSING:
                raise self._error(
                    f"needs the length of its out[] array {param.name!r} by keyword: {param.name}=<count>, "
                    f"or {param.name}=<buffer to fill>"
                )
        return given

    def _prepare(
        self, given: list[Any], natives: list[Any], finishers: list[tuple[str, _Finish]]
    ) -> Optional[ArgumentError]:
        """Fill ``natives`` with the C arguments and ``finishers`` with what gives the out values; the error for an
        argument that does not fit (returned, not raised: the refusal's frames, which may point into a caller's
        buffer, end here)."""
        lengths: dict[str, int] = {}
        param: _Param
        try:
            for param in self._values:
                native = natives[param.position] = param.load(given[param.position])
                if param.name in self._lengths:
                    if native < 0:
                        raise Refused(f"{native} is an array length, which cannot be negative")
                    lengths[param.name] = native
            any_nd = self._allocates and any(isinstance(value, NDArray) for value in given)
            for param in self._pointers:
                natives[param.position], finish = param.prepare(given[param.position], lengths, any_nd, self._limit)
                if finish is not None:
                    finishers.append((param.name, finish))
        except Refused as exc:
            return ArgumentError(
                f"argument {param.ref}{exc.path} of {self.signature}: {exc.message}", signature=self.signature
            )
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        numbers = self._numbers
        if numbers is not None and not kwargs and len(args) == len(numbers):
            converted = []
            try:
                for convert, value in zip(numbers, args):  # a loop: a comprehension is one more function call
                    converted.append(convert(value))
            except Refused:
                pass  # the general path names the argument that does not fit
            else:
                native = self._func(*converted)
                return native if self._returned is None else self._returned(native)
        given = self._bind(args, kwargs)
        natives: list[Any] = [None] * len(given)
        finishers: list[tuple[str, _Finish]] = []
        try:
            refusal = self._prepare(given, natives, finishers)
            if refusal is not None:
                for param in self._closes:
                    if natives[param.position] is not None:  # this call claimed it before the refusal
                        HANDLES.reopen(given[param.position])
            else:
                returned = self._func(*natives)
                if self._returned is not None:
                    returned = self._returned(returned)
                for param in self._closes:
                    HANDLES.forget(given[param.position])
                if not self._outputs:
                    return returned
                result = {} if self._void else {"return": returned}
                for name, finish in finishers:
                    result[name] = finish()
                return result
        finally:
            # No ctypes object may outlive the call: one over a caller's buffer (a shared-memory mapping) would
            # keep it from being closed.
            natives.clear()
            finishers.clear()
        raise refusal
