"""Declared C signatures, 64-bit side: prototypes and struct definitions from the configuration, normalized.

A function is declared by its C prototype (pasted from the header, parsed by pycparser, a real C parser) plus
``params`` annotations for what C does not say: which way a pointer's data goes and how long an array is. The
result is plain JSON-ready data (the FUNC, PARAM and FIELD dicts of docs/data.md) that the 32-bit worker turns
into ctypes without a parser of its own. Everything a declaration can get wrong is refused here, before any
worker starts, with a :class:`ConfigError` that names the parameter and says what to write instead: a pointer
whose length nobody declared is how a library reads or writes out of bounds, so it is never guessed.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from pycparser import c_ast, c_generator, c_parser

from protocol import ConfigError
from workers32.marshal import SCALARS

__all__ = ["calling_convention", "legacy_prototype", "parse_function", "parse_structs"]

Elem = str | dict[str, str]
"""A scalar name (a key of ``SCALARS``), ``"char"``, ``"wchar"`` or ``{"struct": name}``."""
Dim = int | str | list[int | str] | None
Field = dict[str, Any]
Func = dict[str, Any]
Param = dict[str, Any]

_ALIASES = {name + "_t": name for name in SCALARS if name[-1].isdigit()}
_TYPEDEFS = {
    **{
        name: name
        for name in SCALARS
        if name.isidentifier() and name not in {"short", "int", "long", "float", "double"}
    },
    **_ALIASES,
    "wchar": "wchar",
    "wchar_t": "wchar",
}
"""Type names C does not have (legacy names such as ``uint8`` or ``ulong``, ``int32_t``, ``size_t``, ``bool``,
``wchar_t``): declared to the parser as typedefs, and taken by name, so the worker keeps the name it knows."""
_SPELLINGS = {
    "char": "char",
    "signed char": "byte",
    "unsigned char": "ubyte",
    "short": "short",
    "unsigned short": "ushort",
    "int": "int",
    "unsigned int": "uint",
    "long": "long",
    "unsigned long": "ulong",
    "long long": "longlong",
    "unsigned long long": "ulonglong",
    "float": "float",
    "double": "double",
    "_Bool": "bool",
}
"""C's own spellings of the scalar types, ``signed`` and a redundant ``int`` removed (``unsigned long int``)."""
_TEXT = ("char", "wchar")
_NOT_LENGTHS = {"float", "double", "bool"}
_ANNOTATION = re.compile(r"\s*(inout|in|out)\s*((?:\[[^\[\]]*\]\s*)*)")
_FACTOR = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*))\s*")
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_STDCALL = re.compile(r"\b(?:__stdcall|_stdcall|WINAPI|APIENTRY|CALLBACK|PASCAL)\b")
_CDECL = re.compile(r"\b(?:__cdecl|_cdecl|CDECL)\b")
_DECORATION = re.compile(r'\b__declspec\s*\(\s*dll(?:ex|im)port\s*\)|\bextern\s+"C"|\bDLLEXPORT\b')
"""What a prototype pasted from a Windows header may carry that C parsers do not know: the calling convention
(which the service's ``kind`` decides) and export decorations."""
_TOKEN = re.compile(r"[A-Za-z_]\w*|\S")
_C_WORDS = frozenset(
    {"auto", "char", "const", "double", "enum", "extern", "float", "inline", "int", "long", "register", "restrict"}
    | {"short", "signed", "static", "struct", "typedef", "union", "unsigned", "void", "volatile", "_Bool"}
)
_SYNTAX_HELP = (
    "write DIR or DIR[d1][d2] with DIR in, out or inout; a dimension is an integer, the name of an integer "
    'parameter, a product such as n*m, or [] for an out array whose length the caller gives ("out[]")'
)
_WRAPPER = "call it from a wrapper class instead (the service keys module and class)"
_HANDLES = (
    'a pointer the library gives out and takes back is a handle: params = { return = "handle" } where it is '
    'returned, "handle" (or "close") where it is passed'
)

_parser: c_parser.CParser | None = None
_parser_lock = threading.Lock()
"""pycparser's parser keeps state while it parses: configurations loaded from two threads take turns."""


class _Declared(NamedTuple):
    """A parameter as C declares it, before its annotation."""

    name: str
    text: str
    elem: Elem
    const: bool
    storage: list[int | None] | None
    """None: passed by value; else the extents of the array it points to (None where C leaves it open)."""
    pointer: bool
    """Declared ``T *p`` rather than ``T p[]``: with a bare direction it points to one value."""


def legacy_prototype(name: str, args: Sequence[str], returns: str) -> str:
    """The prototype the old ``args``/``returns`` form stands for: its strings are C parameter declarations."""
    return f"{returns} {name}({', '.join(args)})"


def parse_structs(table: Mapping[str, Any], where: str) -> dict[str, list[Field]]:
    """``{name: [FIELD, ...]}`` from a ``structs`` table of C definitions (or bare field lists).

    A struct may contain structs declared before or after it in the same table, never itself.
    """
    names = set(table)
    for name in names:
        if not name.isidentifier() or name in _TYPEDEFS or name in _C_WORDS:
            raise ConfigError(f"{where}.{name}: a struct's name must be a C identifier other than a type name")
    structs = {name: _struct(name, table[name], names, f"{where}.{name}") for name in table}
    for name in structs:
        _refuse_cycles(name, structs, [], where)
    return structs


def parse_function(
    prototype: str,
    params: Mapping[str, Any],
    structs: Mapping[str, list[Field]],
    where: str,
    symbol: str | None = None,
) -> Func:
    """FUNC from a C prototype and its ``params`` annotations; ``symbol`` defaults to the prototype's name."""
    signature = " ".join(_COMMENT.sub(" ", prototype).split()).rstrip(";").rstrip()
    nodes = _parse(
        " ".join(_DECORATION.sub(" ", _CDECL.sub(" ", _STDCALL.sub(" ", signature))).split()), structs, where
    )
    if len(nodes) != 1 or not isinstance(nodes[0], c_ast.Decl) or not isinstance(nodes[0].type, c_ast.FuncDecl):
        raise ConfigError(
            f"{where}: {signature!r} is not one function prototype such as 'double sum(double f[], int n)' "
            "(struct definitions go in the service's structs table)"
        )
    func: c_ast.FuncDecl = nodes[0].type
    handles = {name for name, annotation in params.items() if annotation in _HANDLE_WORDS and name != "return"}
    nodes_by_name = _parameter_nodes(func.args, where)
    declared = [_declared(node, name, structs, where) for name, node in nodes_by_name if name not in handles]
    names = [name for name, _ in nodes_by_name]
    for key, annotation in params.items():
        if key == "return" and annotation == "handle":
            continue
        if key not in names:
            listed = ", ".join(names) or "none"
            raise ConfigError(
                f"{where}: params names {key!r}, which is not a parameter of {signature!r} (its parameters: "
                f"{listed}; unnamed ones are arg1, arg2, ...)"
            )
        if not isinstance(annotation, str):
            raise ConfigError(f'{where}: params.{key} must be a string such as "in[n]", not {annotation!r}')
    by_name = {p.name: p for p in declared}
    resolved = [
        _handle_param(node, name, params[name], where)
        if name in handles
        else _annotated(by_name[name], params.get(name), declared, where)
        for name, node in nodes_by_name
    ]
    for param in resolved:
        _check_lengths(param, resolved, declared, where)
    if params.get("return") == "handle":
        returns: dict[str, Any] | None = {
            "kind": "handle",
            "type": _handle_kind(func.type, f"{where}: the return type"),
        }
    else:
        returns = _returns(func.type, structs, f"{where}: the return type")
    return {"symbol": symbol or nodes[0].name, "signature": signature, "returns": returns, "params": resolved}


_HANDLE_WORDS = ("handle", "close")
"""Annotations of a pointer the library gave out earlier: passed back (``handle``), or closed by this call."""


def _handle_kind(node: c_ast.Node, where: str) -> str:
    """The kind of a handle: what its pointer points to, ``void`` or a struct's name (declared or opaque)."""
    if isinstance(node, c_ast.PtrDecl) and isinstance(node.type, c_ast.TypeDecl):
        target = node.type.type
        if isinstance(target, c_ast.Struct) and target.name and target.decls is None:
            return str(target.name)
        if isinstance(target, c_ast.IdentifierType) and target.names == ["void"]:
            return "void"
    raise ConfigError(
        f"{where}: only a void* or a pointer to a struct (struct Device *) can be a handle, not {_text(node)!r}"
    )


def _handle_param(node: c_ast.Node, name: str, annotation: str, where: str) -> Param:
    kind = _handle_kind(node.type, f"{where}: parameter {name} ({_text(node)})")
    return {"name": name, "kind": "handle", "type": kind, "close": annotation == "close"}


def _undecorated(signature: str) -> str:
    """The prototype without its calling convention and export decorations, for the C parser."""
    return " ".join(_DECORATION.sub(" ", _CDECL.sub(" ", _STDCALL.sub(" ", signature))).split())


def calling_convention(prototype: str) -> str | None:
    """``"stdcall"`` or ``"cdecl"`` when a prototype names its calling convention (``WINAPI``, ``__cdecl``...)."""
    text = _COMMENT.sub(" ", prototype)
    if _STDCALL.search(text):
        return "stdcall"
    return "cdecl" if _CDECL.search(text) else None


# ------------------------------------------------------------------ parsing


def _parse(text: str, structs: Iterable[str], where: str) -> list[c_ast.Node]:
    """The declarations ``text`` makes, with the legacy type names and the structs' names known as types."""
    known = {*_TYPEDEFS, *structs}
    prelude = [f"typedef int {name};" for name in _TYPEDEFS] + [f"typedef struct {s} {s};" for s in structs]
    text = _COMMENT.sub(" ", text)
    source = " ".join(prelude) + "\n" + text.rstrip().rstrip(";") + ";"
    try:
        return list(_c_parse(source).ext[len(prelude) :])
    except c_parser.ParseError as exc:
        unknown = _unknown_type_names(text, known)
        if unknown:
            try:
                _c_parse(" ".join(f"typedef int {name};" for name in unknown) + source)
            except c_parser.ParseError:
                pass
            else:
                raise ConfigError(f"{where}: {_unknown_type(unknown[0])}") from None
        place = re.sub(r"^<declaration>:(\d+):(\d+):\s*", _place, str(exc))
        raise ConfigError(f"{where}: {text!r} is not valid C ({place})") from None


def _place(match: re.Match[str]) -> str:
    """Where pycparser stopped, in the user's text (its first line follows the one-line prelude)."""
    line = int(match.group(1)) - 1
    return f"line {line}, column {match.group(2)}: " if line > 1 else f"column {match.group(2)}: "


def _c_parse(source: str) -> c_ast.FileAST:
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = c_parser.CParser()
        return _parser.parse(source, "<declaration>")


def _unknown_type_names(text: str, known: set[str]) -> list[str]:
    """Words used where a type goes (before a name or a ``*``, or alone as a parameter) that are no type we know."""
    tokens = ["", *_TOKEN.findall(text), ""]
    found = []
    for before, word, after in zip(tokens, tokens[1:], tokens[2:]):
        if not word.isidentifier() or word in known or word in _C_WORDS or before in ("struct", "union", "enum"):
            continue
        if after == "*" or after.isidentifier() or (before in ("(", ",") and after in (",", ")")):
            found.append(word)
    return found


def _unknown_type(name: str) -> str:
    return (
        f"unknown type {name!r}: use a C type (int, unsigned char, double, char*, ...), a fixed-size name (int32, "
        f"uint8_t, ...) or a struct declared in the service's structs table; if {name} is an opaque handle "
        f"(void* behind a typedef), {_WRAPPER}: {_HANDLES}"
    )


def _text(node: c_ast.Node) -> str:
    return str(c_generator.CGenerator().visit(node))


def _constant(node: c_ast.Node | None) -> int | None:
    """The value of an integer constant expression (``20``, ``0x10``, ``2*10``); None for anything else."""
    if isinstance(node, c_ast.Constant) and node.type == "int":
        digits = node.value.rstrip("uUlL")
        base = 16 if digits[:2].lower() == "0x" else 8 if digits.startswith("0") and len(digits) > 1 else 10
        try:
            return int(digits, base)
        except ValueError:  # 0b11 and other spellings C does not have
            return None
    if isinstance(node, c_ast.BinaryOp) and node.op in ("*", "+", "-"):
        left, right = _constant(node.left), _constant(node.right)
        if left is not None and right is not None:
            return left * right if node.op == "*" else left + right if node.op == "+" else left - right
    return None


def _elem(node: c_ast.Node, structs: Iterable[str], where: str) -> Elem | None:
    """The element type a type specifier names; None for void."""
    if isinstance(node, c_ast.Struct):
        if node.decls is not None:
            raise ConfigError(f"{where}: define struct {node.name or '...'} in the service's structs table instead")
        if node.name not in structs:
            raise ConfigError(
                f"{where}: struct {node.name} is not declared: add it to the service's structs table "
                f'({node.name} = "struct {node.name} {{ double re; double im; }};", its real fields)'
            )
        return {"struct": node.name}
    if isinstance(node, c_ast.Union):
        raise ConfigError(f"{where}: unions cannot be declared (nothing says which member holds data); {_WRAPPER}")
    if isinstance(node, c_ast.Enum):
        return "int"
    names = list(node.names)
    if len(names) == 1 and names[0] in _TYPEDEFS:
        return _TYPEDEFS[names[0]]
    if len(names) == 1 and names[0] in structs:
        return {"struct": names[0]}
    core = [w for w in names if w not in ("signed", "unsigned")]
    if len(core) > 1 and "int" in core and set(core) <= {"int", "short", "long"}:
        core.remove("int")
    spelled = " ".join(core) or "int"
    if "unsigned" in names or ("signed" in names and spelled not in ("short", "int", "long", "long long")):
        spelled = ("unsigned " if "unsigned" in names else "signed ") + spelled
    if spelled == "void":
        return None
    if spelled == "long double":
        raise ConfigError(f"{where}: long double has no size every compiler agrees on; {_WRAPPER}")
    if spelled not in _SPELLINGS:
        raise ConfigError(f"{where}: {' '.join(names)!r} is not a C type")
    return _SPELLINGS[spelled]


# ------------------------------------------------------------------ structs


def _struct(name: str, text: Any, names: set[str], where: str) -> list[Field]:
    if not isinstance(text, str):
        raise ConfigError(f'{where} must be a string such as "struct {name} {{ double re; double im; }};"')
    struct = _definition(_parse(text, names, where), name) if "{" in text else None
    if struct is None:  # a field list (which may hold a struct defined inline: refused with the fields)
        struct = _definition(_parse(f"struct {name} {{ {text.rstrip().rstrip(';')}; }}", names, where), name)
    if struct is None or not struct.decls:
        raise ConfigError(
            f'{where} must define one struct with fields: "struct {name} {{ double re; double im; }};" '
            'or just its fields, "double re; double im;"'
        )
    if struct.name != name:
        defined = f"struct {struct.name}" if struct.name else "a struct without a name"
        raise ConfigError(f"{where} defines {defined}: the entry's key must be the struct's name")
    fields = [_field(decl, names, f"{where}: field {decl.name or '(unnamed)'}") for decl in struct.decls]
    seen = [f["name"] for f in fields]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"{where}: two fields have the same name")
    return fields


def _definition(nodes: list[c_ast.Node], name: str) -> c_ast.Struct | None:
    """The struct ``nodes`` define: ``struct S {...};`` or ``typedef struct [S] {...} T;`` (named ``name`` if T is)."""
    if len(nodes) != 1:
        return None
    node = nodes[0]
    if isinstance(node, c_ast.Decl) and node.name is None and isinstance(node.type, c_ast.Struct):
        return node.type
    if isinstance(node, c_ast.Typedef) and isinstance(node.type.type, c_ast.Struct):
        struct = node.type.type
        if node.name == name or struct.name is None:
            struct.name = node.name
        return struct
    return None


_MAX_ELEMENTS = (1 << 31) - 1
"""More elements than this in one fixed array cannot exist in a 32-bit process."""


def _check_extent(elements: int, where: str) -> None:
    if elements > _MAX_ELEMENTS:
        raise ConfigError(f"{where}: an array of {elements:,} elements cannot exist in a 32-bit process")


def _field(decl: c_ast.Decl, names: set[str], where: str) -> Field:
    if decl.name is None:
        raise ConfigError(f"{where}: every field needs a name (anonymous structs and unions cannot be declared)")
    if decl.bitsize is not None:
        raise ConfigError(f"{where}: bit fields cannot be declared; {_WRAPPER}")
    node, shape = decl.type, []
    while isinstance(node, c_ast.ArrayDecl):
        extent = _constant(node.dim)
        if extent is None or extent < 1:
            raise ConfigError(f"{where}: an array field needs a fixed size such as [20]")
        shape.append(extent)
        _check_extent(math.prod(shape), where)
        node = node.type
    if isinstance(node, (c_ast.PtrDecl, c_ast.FuncDecl)):
        raise ConfigError(
            f"{where}: a pointer field points into the worker's memory, which the caller cannot see; give the "
            f"field a fixed size (double v[3]) or {_WRAPPER}"
        )
    elem = _elem(node.type, names, where)
    if elem is None:
        raise ConfigError(f"{where}: a field cannot be void")
    return {"name": decl.name, "type": elem, "shape": shape}


def _refuse_cycles(name: str, structs: Mapping[str, list[Field]], path: list[str], where: str) -> None:
    if name in path:
        cycle = " -> ".join([*path[path.index(name) :], name])
        raise ConfigError(f"{where}.{name}: struct {name} contains itself ({cycle}); a struct can only hold a pointer")
    for field in structs[name]:
        if isinstance(field["type"], dict):
            _refuse_cycles(field["type"]["struct"], structs, [*path, name], where)


# ------------------------------------------------------------------ parameters


def _parameter_nodes(params: c_ast.ParamList | None, where: str) -> list[tuple[str, Any]]:
    """Each parameter's name (``argN`` when the prototype gives none) and node."""
    nodes = list(params.params) if params is not None else []
    if len(nodes) == 1 and _is_void(nodes[0]):
        return []
    named: list[tuple[str, Any]] = []
    for index, node in enumerate(nodes, 1):
        if isinstance(node, c_ast.EllipsisParam):
            raise ConfigError(f"{where}: a variadic function (...) cannot be declared; {_WRAPPER}")
        if isinstance(node, c_ast.ID):
            raise ConfigError(f"{where}: parameter {node.name}: {_unknown_type(node.name)}")
        named.append((node.name or f"arg{index}", node))
    names = [name for name, _ in named]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{where}: two parameters are named {name!r}")
    return named


def _is_void(node: c_ast.Node) -> bool:
    return (
        isinstance(node, c_ast.Typename)
        and isinstance(node.type, c_ast.TypeDecl)
        and isinstance(node.type.type, c_ast.IdentifierType)
        and node.type.type.names == ["void"]
    )


def _declared(node: c_ast.Decl | c_ast.Typename, name: str, structs: Iterable[str], where: str) -> _Declared:
    text = _text(node)
    where = f"{where}: parameter {name} ({text})"
    if _has_function(node.type):
        raise ConfigError(f"{where}: a function pointer (a callback) cannot be declared; {_WRAPPER}")
    storage: list[int | None] = []
    typ, pointer, depth = node.type, False, 0
    while not isinstance(typ, c_ast.TypeDecl):
        if depth and isinstance(typ, c_ast.PtrDecl):
            raise ConfigError(
                f"{where}: pointers to pointers and arrays of pointers cannot be declared (the worker cannot know "
                f"what they point to); {_WRAPPER}"
            )
        if isinstance(typ, c_ast.PtrDecl):
            pointer = True
            storage.append(None)
        else:
            extent = _constant(typ.dim)
            if extent is not None and extent < 1:
                raise ConfigError(f"{where}: an array extent must be 1 or more")
            _check_extent(math.prod(e or 1 for e in [*storage, extent]), where)
            if extent is None and depth:
                raise ConfigError(
                    f"{where}: only the first dimension of an array parameter may be open ([] or a variable); the "
                    "others must be constants, as the library's code indexes with them"
                )
            storage.append(extent)
        typ, depth = typ.type, depth + 1
    elem = _elem(typ.type, structs, where)
    if elem is None:
        if storage:
            raise ConfigError(
                f"{where}: void* (an opaque pointer) cannot be declared: the worker cannot know what it points to; "
                f"{_WRAPPER}: {_HANDLES}"
            )
        raise ConfigError(f"{where}: void is only a whole parameter list, f(void)")
    return _Declared(name, text, elem, "const" in typ.quals, storage or None, pointer)


def _has_function(node: c_ast.Node) -> bool:
    while not isinstance(node, c_ast.TypeDecl):
        if isinstance(node, c_ast.FuncDecl):
            return True
        node = node.type
    return False


def _annotation(text: str, where: str) -> tuple[str, list[Dim]]:
    """``"out[n][20]"`` -> ``("out", ["n", 20])``; products become lists, ``[]`` None."""
    match = _ANNOTATION.fullmatch(text)
    if match is None:
        raise ConfigError(f"{where}: cannot read the annotation {text!r}: {_SYNTAX_HELP}")
    dims: list[Dim] = []
    for inside in re.findall(r"\[([^\[\]]*)\]", match.group(2)):
        if not inside.strip():
            dims.append(None)
            continue
        factors: list[int | str] = []
        for factor in inside.split("*"):
            part = _FACTOR.fullmatch(factor)
            if part is None:
                raise ConfigError(f"{where}: cannot read the dimension [{inside}] in {text!r}: {_SYNTAX_HELP}")
            factors.append(int(part.group(1)) if part.group(1) else part.group(2))
        dims.append(_product(factors))
    return match.group(1), dims


def _product(factors: list[int | str]) -> Dim:
    """One factor as itself; the fixed factors of a product multiplied out."""
    fixed = 1
    for factor in factors:
        if isinstance(factor, int):
            fixed *= factor
    named: list[int | str] = [f for f in factors if isinstance(f, str)]
    if not named:
        return fixed
    if fixed != 1:
        named.insert(0, fixed)
    return named if len(named) > 1 else named[0]


def _annotated(p: _Declared, annotation: str | None, declared: list[_Declared], where: str) -> Param:
    """PARAM from a parameter as C declares it and its annotation (or the defaults)."""
    where = f"{where}: parameter {p.name} ({p.text})"
    direction, dims = _annotation(annotation, where) if annotation is not None else (None, [])
    if p.storage is None:
        if direction not in (None, "in") or dims:
            raise ConfigError(
                f"{where} is passed by value, so it can only be in; for a value the library writes back, the C "
                f'parameter is a pointer ({_pointer_text(p)}) declared "out"'
            )
        return {"name": p.name, "kind": "value", "type": p.elem}
    if p.const and direction in ("out", "inout"):
        raise ConfigError(f'{where} points to const data, which the library does not write: declare it "in"')
    flat = p.storage == [None]
    if flat and p.elem in _TEXT and direction in (None, "in") and not dims:
        return {"name": p.name, "kind": "string", "type": p.elem}
    if dims:
        return _array(p, direction or "in", dims, where, [d.name for d in declared if _says_a_length(d)])
    if direction is None and flat and p.pointer and p.const and isinstance(p.elem, dict):
        return {"name": p.name, "kind": "ref", "dir": "in", "type": p.elem}
    if direction is not None and flat and p.pointer and p.elem not in _TEXT:
        return {"name": p.name, "kind": "ref", "dir": direction, "type": p.elem}
    if None not in p.storage:
        return {
            "name": p.name,
            "kind": "array",
            "dir": direction or "in",
            "type": p.elem,
            "dims": list(p.storage),
            "storage": list(p.storage),
        }
    if p.elem in _TEXT and flat:
        raise ConfigError(
            f"{where}: a character buffer the library writes needs its size in characters, the NUL included: "
            f'params = {{ {p.name} = "{direction}[256]" }}'
        )
    raise ConfigError(f"{where}: {_needs_annotation(p, declared)}")


def _needs_annotation(p: _Declared, declared: list[_Declared]) -> str:
    """What to write for a pointer or open array whose length (and direction) nobody declared."""
    lengths = [q.name for q in declared if q.storage is None and _is_length_type(q.elem)]
    n = lengths[0] if lengths else "N"
    inner = "".join(f"[{s}]" for s in p.storage[1:]) if p.storage else ""
    dims = f"; the dimensions after the first come from the C type, {inner}" if inner else ""
    single = p.pointer and p.storage == [None]
    if p.const:
        written, one = "", ', or "in" for one value' if single else ""
    else:
        written = f', "out[{n}]" if it fills them, "inout[{n}]" if it reads and changes them'
        one = ', or "out"/"inout" for one value the library writes back' if single else ""
    return (
        f"the library is given a pointer, and nothing says how many values it may read or write there: add "
        f'params = {{ {p.name} = "in[{n}]" }} for an array of {n} values it reads{written} (a length is an '
        f"integer, the name of an integer parameter or a product such as n*m{dims}){one}"
    )


def _pointer_text(p: _Declared) -> str:
    elem = f"struct {p.elem['struct']}" if isinstance(p.elem, dict) else p.elem
    return f"{elem} *{p.name}"


def _says_a_length(p: _Declared) -> bool:
    return p.storage is None and _is_length_type(p.elem)


def _array(p: _Declared, direction: str, dims: list[Dim], where: str, lengths: list[str]) -> Param:
    """``lengths``: the integer parameters passed by value, one of which may be the array's length."""
    storage = list(p.storage or [])
    if dims[:1] == [None] and lengths:
        raise ConfigError(
            f'{where}: "out[]" would let the length the caller gives and the one the library is told '
            f"({', '.join(lengths)}) disagree, and the library write past the buffer: tie it to the parameter that "
            f'gives it, such as "out[{lengths[-1]}]", or give a fixed size such as "out[256]"'
        )
    if len(dims) > len(storage):
        if storage != [None]:
            raise ConfigError(
                f"{where} has {len(storage)} dimension(s) in C, and the annotation gives {len(dims)}: give at most "
                f"{len(storage)}"
            )
        storage = [None] * len(dims)
    for index, (dim, extent) in enumerate(zip(dims, storage)):
        if dim is None and (index or direction != "out"):
            raise ConfigError(
                f"{where}: [] (a length the caller gives) is only for the first dimension of an out array, "
                'such as "out[]"'
            )
        if isinstance(dim, int) and (dim < 1 or (extent is not None and dim > extent)):
            limit = f" and at most {extent}, the extent in C" if extent is not None else ""
            raise ConfigError(f"{where}: the dimension [{dim}] must be 1 or more{limit}")
    full = [*dims, *storage[len(dims) :]]
    return {"name": p.name, "kind": "array", "dir": direction, "type": p.elem, "dims": full, "storage": storage}


def _is_length_type(elem: Elem) -> bool:
    return isinstance(elem, str) and elem in SCALARS and elem not in _NOT_LENGTHS


def _check_lengths(param: Param, params: list[Param], declared: list[_Declared], where: str) -> None:
    """Every name an array's dimensions use is an integer parameter passed by value (so it is in)."""
    if param["kind"] != "array":
        return
    by_name = {p["name"]: p for p in params}
    texts = {p.name: p.text for p in declared}
    for dim in param["dims"]:
        for name in dim if isinstance(dim, list) else [dim]:
            if not isinstance(name, str):
                continue
            where_dim = f"{where}: parameter {param['name']}: the length {name}"
            if name not in by_name:
                raise ConfigError(f"{where_dim} names no parameter (its parameters: {', '.join(by_name)})")
            length = by_name[name]
            if length["kind"] != "value" or not _is_length_type(length["type"]):
                raise ConfigError(
                    f"{where_dim} must be an integer parameter passed by value (int {name}, size_t {name}, ...), "
                    f"which the caller gives; it is {texts[name]}" + (f" ({length['dir']})" if "dir" in length else "")
                )


def _returns(node: c_ast.Node, structs: Iterable[str], where: str) -> dict[str, Any] | None:
    """RET: None for void, a value (scalar or struct) or a NUL-terminated string."""
    if isinstance(node, c_ast.TypeDecl):
        elem = _elem(node.type, structs, where)
        return None if elem is None else {"kind": "value", "type": elem}
    if isinstance(node, c_ast.PtrDecl) and isinstance(node.type, c_ast.TypeDecl):
        elem = _elem(node.type.type, structs, where)
        if elem in _TEXT:
            return {"kind": "string", "type": elem}
        if elem is None:
            raise ConfigError(f"{where}: a void* (an opaque pointer) cannot be returned; {_WRAPPER}: {_HANDLES}")
    if _has_function(node):
        raise ConfigError(f"{where}: a function pointer cannot be returned; {_WRAPPER}")
    raise ConfigError(
        f"{where}: a pointer other than char* cannot be returned (nothing says how many values it points to, or who "
        f'frees them): have the library fill an out parameter (params = {{ x = "out[n]" }}), or {_WRAPPER}'
    )
