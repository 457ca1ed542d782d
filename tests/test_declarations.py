"""Unit tests of broker/declarations.py: C prototypes, annotations and structs into the normalized form.

No processes: what the worker receives is plain data, checked here field by field.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.declarations import legacy_prototype, parse_function, parse_structs
from protocol.errors import ConfigError
from workers32.signatures import SCALARS

WHERE = "pool.toml [services.nb].functions.f"
STRUCTS_WHERE = "pool.toml [services.nb].structs"
STRUCTS = parse_structs({"Complex": "struct Complex { double re; double im; };"}, STRUCTS_WHERE)
COMPLEX = {"struct": "Complex"}


def declare(c: str, params: dict[str, Any] | None = None, structs: dict[str, Any] | None = None) -> dict[str, Any]:
    func = parse_function(c, params or {}, STRUCTS if structs is None else structs, WHERE)
    assert json.loads(json.dumps(func)) == func, "the worker gets it as JSON"
    return func


def param(c: str, params: dict[str, Any] | None = None, index: int = 0) -> dict[str, Any]:
    return dict(declare(c, params)["params"][index])


def refused(c: str, params: dict[str, Any] | None = None, structs: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        declare(c, params, structs)
    message = str(info.value)
    assert message.startswith(WHERE), f"{message!r} does not name the service and function"
    return message


def array(name: str, direction: str, elem: Any, dims: list[Any], storage: list[Any]) -> dict[str, Any]:
    return {"name": name, "kind": "array", "dir": direction, "type": elem, "dims": dims, "storage": storage}


# ============================================================ the notebook's six functions, as CONTEXT.md declares them


def test_notebook_add_takes_and_returns_structs_by_value() -> None:
    assert declare("struct Complex add(struct Complex a, struct Complex b)") == {
        "symbol": "add",
        "signature": "struct Complex add(struct Complex a, struct Complex b)",
        "returns": {"kind": "value", "type": COMPLEX},
        "params": [{"name": "a", "kind": "value", "type": COMPLEX}, {"name": "b", "kind": "value", "type": COMPLEX}],
    }


def test_notebook_swap_takes_structs_by_pointer_inout() -> None:
    func = declare("void swap(struct Complex *a, struct Complex *b)", {"a": "inout", "b": "inout"})
    assert func["returns"] is None
    assert func["params"] == [
        {"name": "a", "kind": "ref", "dir": "inout", "type": COMPLEX},
        {"name": "b", "kind": "ref", "dir": "inout", "type": COMPLEX},
    ]


def test_notebook_sum_reads_an_array_of_n() -> None:
    func = declare("double sum(double f[], int n)", {"f": "in[n]"})
    assert func["signature"] == "double sum(double f[], int n)"
    assert func["returns"] == {"kind": "value", "type": "double"}
    assert func["params"] == [
        array("f", "in", "double", ["n"], [None]),
        {"name": "n", "kind": "value", "type": "int"},
    ]


def test_notebook_titlecase_edits_a_character_buffer() -> None:
    assert declare("void titlecase(char *s)", {"s": "inout[256]"})["params"] == [
        array("s", "inout", "char", [256], [None])
    ]


def test_notebook_tokenize_fills_a_2d_character_array() -> None:
    func = declare("int tokenize(char sep, const char *str, char t[][20])", {"t": "out[20]"})
    assert func["params"] == [
        {"name": "sep", "kind": "value", "type": "char"},
        {"name": "str", "kind": "string", "type": "char"},
        array("t", "out", "char", [20, 20], [None, 20]),
    ]


def test_notebook_mult_multiplies_arrays_with_a_fixed_row_length() -> None:
    func = declare(
        "void mult(double a[][100], double b[][100], double c[][100], int n, int r, int m)",
        {"a": "in[n][r]", "b": "in[r][m]", "c": "out[n][m]"},
    )
    assert func["params"] == [
        array("a", "in", "double", ["n", "r"], [None, 100]),
        array("b", "in", "double", ["r", "m"], [None, 100]),
        array("c", "out", "double", ["n", "m"], [None, 100]),
        {"name": "n", "kind": "value", "type": "int"},
        {"name": "r", "kind": "value", "type": "int"},
        {"name": "m", "kind": "value", "type": "int"},
    ]


# ============================================================ values and type names


@pytest.mark.parametrize(
    ("spelling", "elem"),
    [
        ("int", "int"),
        ("signed", "int"),
        ("signed int", "int"),
        ("unsigned", "uint"),
        ("unsigned int", "uint"),
        ("short", "short"),
        ("short int", "short"),
        ("signed short int", "short"),
        ("unsigned short", "ushort"),
        ("long", "long"),
        ("long int", "long"),
        ("unsigned long", "ulong"),
        ("unsigned long int", "ulong"),
        ("long long", "longlong"),
        ("signed long long int", "longlong"),
        ("unsigned long long", "ulonglong"),
        ("char", "char"),
        ("signed char", "byte"),
        ("unsigned char", "ubyte"),
        ("float", "float"),
        ("double", "double"),
        ("_Bool", "bool"),
        ("bool", "bool"),
        ("int8_t", "int8"),
        ("uint16_t", "uint16"),
        ("int32_t", "int32"),
        ("uint64_t", "uint64"),
        ("int64", "int64"),
        ("uint8", "uint8"),
        ("byte", "byte"),
        ("ubyte", "ubyte"),
        ("ushort", "ushort"),
        ("uint", "uint"),
        ("ulong", "ulong"),
        ("longlong", "longlong"),
        ("ulonglong", "ulonglong"),
        ("size_t", "size_t"),
        ("ssize_t", "ssize_t"),
        ("wchar_t", "wchar"),
        ("wchar", "wchar"),
        ("enum Mode", "int"),
        ("const volatile int", "int"),
    ],
)
def test_scalar_spellings_are_values_by_their_worker_name(spelling: str, elem: str) -> None:
    func = declare(f"{spelling} f({spelling} x)")
    assert func["params"] == [{"name": "x", "kind": "value", "type": elem}]
    assert func["returns"] == {"kind": "value", "type": elem}
    assert elem in SCALARS or elem in ("char", "wchar"), "the worker would not know this type"


def test_every_scalar_name_of_the_worker_can_be_declared() -> None:
    for name in SCALARS:
        assert param(f"void f({name} x)") == {"name": "x", "kind": "value", "type": name}


def test_unnamed_parameters_are_arg1_arg2_and_void_is_no_parameters() -> None:
    assert [p["name"] for p in declare("int add(int, int b, int)")["params"]] == ["arg1", "b", "arg3"]
    assert declare("int version(void)")["params"] == []
    assert declare("int version()")["params"] == []


def test_qualifiers_storage_class_comments_and_a_semicolon_are_tolerated() -> None:
    func = declare("extern double scale(const double * restrict v, volatile int n); /* from demo.h */", {"v": "in[n]"})
    assert func["signature"] == "extern double scale(const double * restrict v, volatile int n)"
    assert func["symbol"] == "scale"
    assert func["params"] == [array("v", "in", "double", ["n"], [None]), {"name": "n", "kind": "value", "type": "int"}]
    assert declare("int f(int a) // trailing comment")["signature"] == "int f(int a)"


def test_symbol_is_the_prototypes_name_unless_given() -> None:
    assert parse_function("int add(int a, int b)", {}, {}, WHERE)["symbol"] == "add"
    assert parse_function("int add(int a, int b)", {}, {}, WHERE, symbol="_add@8")["symbol"] == "_add@8"


# ============================================================ strings


@pytest.mark.parametrize(
    ("declaration", "annotation", "text"),
    [
        ("const char *s", None, "char"),
        ("char *s", None, "char"),
        ("char s[]", None, "char"),
        ("char *s", "in", "char"),
        ("const wchar_t *s", None, "wchar"),
        ("wchar *s", None, "wchar"),
    ],
)
def test_char_pointers_are_input_strings(declaration: str, annotation: str | None, text: str) -> None:
    params = {"s": annotation} if annotation else {}
    assert param(f"int f({declaration})", params) == {"name": "s", "kind": "string", "type": text}


@pytest.mark.parametrize(
    ("returns", "text"), [("char *", "char"), ("const char*", "char"), ("wchar_t *", "wchar"), ("char*", "char")]
)
def test_char_pointer_returns_are_strings(returns: str, text: str) -> None:
    assert declare(f"{returns} greet(void)")["returns"] == {"kind": "string", "type": text}


# ============================================================ references


@pytest.mark.parametrize("direction", ["in", "out", "inout"])
def test_a_pointer_to_one_scalar_with_a_direction_is_a_ref(direction: str) -> None:
    assert param("int divmod(int a, int b, int *q)", {"q": direction}, 2) == {
        "name": "q",
        "kind": "ref",
        "dir": direction,
        "type": "int",
    }


def test_divmod_returns_through_two_out_refs() -> None:
    func = declare("int divmod(int a, int b, int *q, int *r)", {"q": "out", "r": "out"})
    assert [(p["name"], p["kind"], p.get("dir")) for p in func["params"]] == [
        ("a", "value", None),
        ("b", "value", None),
        ("q", "ref", "out"),
        ("r", "ref", "out"),
    ]


def test_a_const_struct_pointer_without_annotation_is_one_struct_in() -> None:
    assert param("double norm(const struct Complex *z)") == {"name": "z", "kind": "ref", "dir": "in", "type": COMPLEX}
    assert param("double norm(const Complex *z)") == {"name": "z", "kind": "ref", "dir": "in", "type": COMPLEX}


# ============================================================ arrays


def test_fill_squares_and_read_block() -> None:
    assert param("void fill_squares(double *out, int n)", {"out": "out[n]"}) == array(
        "out", "out", "double", ["n"], [None]
    )
    assert param("void read_block(unsigned char *buf)", {"buf": "out[]"}) == array(
        "buf", "out", "ubyte", [None], [None]
    )


def test_fixed_arrays_without_annotation_are_in_with_their_c_dims() -> None:
    assert param("double norm(double v[3])") == array("v", "in", "double", [3], [3])
    assert param("double det(double m[2][0x3])") == array("m", "in", "double", [2, 3], [2, 3])
    assert param("void f(char name[20])") == array("name", "in", "char", [20], [20])
    assert param("void f(double v[2*4])") == array("v", "in", "double", [8], [8])


def test_fixed_arrays_with_a_bare_direction_keep_their_c_dims() -> None:
    assert param("void f(double v[3])", {"v": "out"}) == array("v", "out", "double", [3], [3])
    assert param("void f(char name[20])", {"name": "inout"}) == array("name", "inout", "char", [20], [20])


@pytest.mark.parametrize(
    ("annotation", "dims"),
    [
        ("in[n]", ["n"]),
        ("in[ 7 ]", [7]),
        ("in[n*m]", [["n", "m"]]),
        ("in[ n * m ]", [["n", "m"]]),
        ("in[2*n*3]", [[6, "n"]]),
        ("in[2*3]", [6]),
        ("in[n*1]", ["n"]),
    ],
)
def test_a_dimension_is_an_int_a_name_or_a_product(annotation: str, dims: list[Any]) -> None:
    assert param("void f(double *x, int n, size_t m)", {"x": annotation}) == array("x", "in", "double", dims, [None])


def test_2d_dims_over_a_flat_pointer_and_over_a_pointer_to_rows() -> None:
    assert param("void f(double *x, int n, int m)", {"x": "in[n][m]"}) == array(
        "x", "in", "double", ["n", "m"], [None, None]
    )
    assert param("void f(double (*x)[4], int n)", {"x": "inout[n]"}) == array(
        "x", "inout", "double", ["n", 4], [None, 4]
    )


def test_inner_dims_the_annotation_leaves_out_come_from_the_c_type() -> None:
    assert param("void f(double a[][100], int n)", {"a": "in[n]"}) == array(
        "a", "in", "double", ["n", 100], [None, 100]
    )
    assert param("void f(double a[][100])", {"a": "out[]"}) == array("a", "out", "double", [None, 100], [None, 100])
    assert param("void f(double a[10][100], int n)", {"a": "out[n][50]"}) == array(
        "a", "out", "double", ["n", 50], [10, 100]
    )


def test_a_variable_first_extent_is_left_to_the_annotation() -> None:
    assert param("void f(int n, double v[n])", {"v": "in[n]"}, 1) == array("v", "in", "double", ["n"], [None])


def test_arrays_of_structs() -> None:
    assert param("void f(struct Complex *zs, int n)", {"zs": "inout[n]"}) == array(
        "zs", "inout", COMPLEX, ["n"], [None]
    )
    assert param("void f(Complex zs[4])") == array("zs", "in", COMPLEX, [4], [4])


# ============================================================ structs


def test_structs_as_definitions_field_lists_and_typedefs_with_nested_structs_declared_before_or_after() -> None:
    structs = parse_structs(
        {
            "Line": "struct Point ends[2]; Color color; char label[16]; int grid[2][3]",
            "Point": "struct Point { double xy[2]; };",
            "Color": "typedef struct { unsigned char rgb[3]; _Bool opaque; } Color;",
            "Named": """
                struct Named {
                    char names[4][20];   /* four names of up to 19 characters */
                    wchar_t wide[8];
                    struct Line line;
                };""",
        },
        STRUCTS_WHERE,
    )
    assert structs == {
        "Line": [
            {"name": "ends", "type": {"struct": "Point"}, "shape": [2]},
            {"name": "color", "type": {"struct": "Color"}, "shape": []},
            {"name": "label", "type": "char", "shape": [16]},
            {"name": "grid", "type": "int", "shape": [2, 3]},
        ],
        "Point": [{"name": "xy", "type": "double", "shape": [2]}],
        "Color": [{"name": "rgb", "type": "ubyte", "shape": [3]}, {"name": "opaque", "type": "bool", "shape": []}],
        "Named": [
            {"name": "names", "type": "char", "shape": [4, 20]},
            {"name": "wide", "type": "wchar", "shape": [8]},
            {"name": "line", "type": {"struct": "Line"}, "shape": []},
        ],
    }
    assert json.loads(json.dumps(structs)) == structs
    func = parse_function(
        "struct Line mirror(Line l, const struct Named *n, Point *out)", {"out": "out"}, structs, WHERE
    )
    assert func["returns"] == {"kind": "value", "type": {"struct": "Line"}}
    assert [p["kind"] for p in func["params"]] == ["value", "ref", "ref"]
    assert func["params"][2] == {"name": "out", "kind": "ref", "dir": "out", "type": {"struct": "Point"}}


def test_no_structs_is_an_empty_table() -> None:
    assert parse_structs({}, STRUCTS_WHERE) == {}


@pytest.mark.parametrize(
    ("table", "needles"),
    [
        ({"S": "int a; void *p;"}, ["structs.S", "field p", "pointer", "fixed size"]),
        ({"S": "int a; int (*cb)(int);"}, ["structs.S", "field cb", "pointer"]),
        ({"S": "int flags : 3;"}, ["structs.S", "field flags", "bit fields"]),
        ({"S": "int n; double v[];"}, ["structs.S", "field v", "fixed size"]),
        ({"S": "int n; double v[n];"}, ["structs.S", "field v", "fixed size"]),
        ({"S": "struct T t;", "T": "struct S s;"}, ["contains itself", "S -> T -> S"]),
        ({"S": "struct S s;"}, ["contains itself", "S -> S"]),
        ({"S": "struct Nope n;"}, ["structs.S", "field n", "struct Nope is not declared"]),
        ({"S": "HANDLE h;"}, ["structs.S", "unknown type 'HANDLE'"]),
        ({"S": "long double x;"}, ["structs.S", "field x", "long double"]),
        ({"S": "union U u;"}, ["structs.S", "field u", "unions"]),
        ({"S": "struct Inner { int a; } in;"}, ["structs.S", "field in", "struct Inner", "structs table"]),
        ({"S": "struct { int a; };"}, ["structs.S", "name"]),
        ({"S": "void v;"}, ["structs.S", "field v", "void"]),
        ({"S": "int a; int a;"}, ["structs.S", "same name"]),
        ({"S": "struct T { int a; };"}, ["structs.S", "defines struct T", "key"]),
        ({"S": "struct S {};"}, ["structs.S", "fields"]),
        ({"S": "int a; int b; struct X { int c; };"}, ["structs.S"]),
        ({"S": 5}, ["structs.S", "must be a string"]),
        ({"S": "struct S {\n    int a;\n    int b c;\n};"}, ["structs.S", "not valid C", "line 3, column 11"]),
        ({"int32": "int a;"}, ["structs.int32", "C identifier", "type name"]),
        ({"my struct": "int a;"}, ["C identifier"]),
        ({"S": "int a"}, None),
    ],
)
def test_struct_refusals(table: dict[str, Any], needles: list[str] | None) -> None:
    if needles is None:  # a field list may leave out its last semicolon
        assert parse_structs(table, STRUCTS_WHERE) == {"S": [{"name": "a", "type": "int", "shape": []}]}
        return
    with pytest.raises(ConfigError) as info:
        parse_structs(table, STRUCTS_WHERE)
    message = str(info.value)
    assert message.startswith(STRUCTS_WHERE)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# ============================================================ the old args/returns form


def test_legacy_args_are_joined_into_a_prototype() -> None:
    assert legacy_prototype("add", ["int", "int"], "int") == "int add(int, int)"
    assert legacy_prototype("version", [], "int") == "int version()"
    func = declare(legacy_prototype("str_len", ["char*"], "int"))
    assert func["signature"] == "int str_len(char*)"
    assert func["params"] == [{"name": "arg1", "kind": "string", "type": "char"}]
    assert declare(legacy_prototype("w", ["wchar*"], "wchar*"))["returns"] == {"kind": "string", "type": "wchar"}
    assert declare(legacy_prototype("z", ["int64", "uint8_t", "bool"], "void"))["params"] == [
        {"name": "arg1", "kind": "value", "type": "int64"},
        {"name": "arg2", "kind": "value", "type": "uint8"},
        {"name": "arg3", "kind": "value", "type": "bool"},
    ]
    scale_sum = declare(
        legacy_prototype("scale_sum", ["const double *values", "int n", "double factor"], "double"),
        {"values": "in[n]"},
    )
    assert scale_sum["params"][0] == array("values", "in", "double", ["n"], [None])


def test_a_legacy_pointer_argument_without_annotation_is_refused_with_what_to_write() -> None:
    message = refused(legacy_prototype("scale_sum", ["double*", "int", "double"], "double"))
    assert "parameter arg1 (double *)" in message
    assert 'params = { arg1 = "in[arg2]" }' in message
    assert '"out[arg2]"' in message and '"inout[arg2]"' in message
    assert '"out"/"inout" for one value' in message


# ============================================================ refusals


@pytest.mark.parametrize(
    ("c", "params", "needles"),
    [
        # opaque pointers and callbacks: the wrapper form, or a handle
        ("void f(void *p)", {}, ["parameter p (void *p)", "void*", "wrapper", "module and class", "is a handle"]),
        ("void f(const void *p, int n)", {"p": "in[n]"}, ["parameter p", "void*", "is a handle"]),
        ("void *f(void)", {}, ["return type", "void*", "wrapper", "is a handle"]),
        ("void f(HANDLE h)", {}, ["unknown type 'HANDLE'", "wrapper", "is a handle"]),
        ("void f(int (*cb)(int), int n)", {}, ["parameter cb", "callback", "wrapper"]),
        ("void f(int cb(int))", {}, ["parameter cb", "callback", "wrapper"]),
        ("int (*f(void))(int)", {}, ["return type", "function pointer", "wrapper"]),
        # pointer returns other than char*
        ("int *f(void)", {}, ["return type", "pointer other than char*", "out parameter", "wrapper"]),
        ("struct Complex *f(void)", {}, ["return type", "pointer other than char*"]),
        ("char **f(void)", {}, ["return type", "pointer other than char*"]),
        # unknown types and structs
        ("void f(HANDLE)", {}, ["parameter HANDLE", "unknown type 'HANDLE'"]),
        ("void f(int a, DWORD)", {}, ["unknown type 'DWORD'"]),
        ("DWORD f(void)", {}, ["unknown type 'DWORD'"]),
        ("void f(unsigned double x)", {}, ["parameter x", "'unsigned double' is not a C type"]),
        ("void f(struct Vec v)", {}, ["parameter v", "struct Vec is not declared", "structs table", "Vec = "]),
        ("void f(struct Vec *v)", {"v": "inout"}, ["parameter v", "struct Vec is not declared"]),
        ("struct Vec f(void)", {}, ["return type", "struct Vec is not declared"]),
        ("void f(Vec v)", {}, ["unknown type 'Vec'", "structs table"]),
        ("void f(long double x)", {}, ["parameter x", "long double", "wrapper"]),
        ("void f(union U u)", {}, ["parameter u", "unions", "wrapper"]),
        ("void f(struct { int a; } s)", {}, ["parameter s", "structs table"]),
        # what cannot be checked
        ("void f(char **argv)", {}, ["parameter argv", "pointers to pointers", "wrapper"]),
        ("void f(double *rows[4])", {}, ["parameter rows", "arrays of pointers", "wrapper"]),
        ("int printf(const char *format, ...)", {}, ["variadic", "wrapper"]),
        ("void f(int a[0])", {}, ["parameter a", "1 or more"]),
        ("void f(double a[][])", {}, ["parameter a", "only the first dimension"]),
        ("void f(int n, double a[n][n])", {}, ["parameter a", "only the first dimension"]),
        # pointers nobody annotated: the message says what to write
        ("double f(double *x, int n)", {}, ["parameter x (double *x)", 'params = { x = "in[n]" }', "out"]),
        ("double f(double *x)", {}, ['params = { x = "in[N]" }']),
        ("double f(const double *x, int n)", {}, ['params = { x = "in[n]" }', 'or "in" for one value']),
        ("double f(double x[], size_t len)", {}, ['params = { x = "in[len]" }']),
        ("double f(double x[][3], int n)", {}, ['params = { x = "in[n]" }', "come from the C type, [3]"]),
        ("void f(struct Complex *z)", {}, ["parameter z", 'params = { z = "in[N]" }', '"out"/"inout"']),
        ("void f(int *q)", {}, ["parameter q", "params = { q = "]),
        ("void f(double x[], int n)", {"x": "out"}, ['params = { x = "in[n]" }']),
        ("void f(double x[][3], int n)", {"x": "inout"}, ['params = { x = "in[n]" }']),
        # annotations that do not fit the C type
        ("void f(int n)", {"n": "out"}, ["parameter n (int n)", "passed by value", "int *n", '"out"']),
        ("void f(int n)", {"n": "in[3]"}, ["parameter n", "passed by value"]),
        ("void f(struct Complex z)", {"z": "inout"}, ["parameter z", "struct Complex *z"]),
        ("void f(const double *x, int n)", {"x": "out[n]"}, ["parameter x", "const", '"in"']),
        ("void f(const int *q)", {"q": "inout"}, ["parameter q", "const"]),
        ("void f(char *s)", {"s": "out"}, ["parameter s", "size", 'params = { s = "out[256]" }']),
        ("void f(char *s)", {"s": "inout"}, ["parameter s", 'params = { s = "inout[256]" }']),
        ("void f(double x[3])", {"x": "in[4]"}, ["parameter x", "[4]", "at most 3"]),
        ("void f(double x[3])", {"x": "in[3][2]"}, ["parameter x", "1 dimension(s) in C", "gives 2"]),
        ("void f(double *x)", {"x": "in[0]"}, ["parameter x", "[0]", "1 or more"]),
        # annotation syntax
        ("void f(double *x, int n)", {"x": "in(n)"}, ["parameter x", "'in(n)'", "DIR[d1][d2]"]),
        ("void f(double *x, int n)", {"x": "sideways"}, ["parameter x", "'sideways'", "in, out or inout"]),
        ("void f(double *x, int n)", {"x": "in[n"}, ["parameter x", "'in[n'"]),
        ("void f(double *x, int n)", {"x": "IN[n]"}, ["parameter x", "'IN[n]'"]),
        ("void f(double *x, int n)", {"x": "in[n+1]"}, ["parameter x", "[n+1]", "product such as n*m"]),
        ("void f(double *x, int n)", {"x": "in[-1]"}, ["parameter x", "[-1]"]),
        ("void f(double *x, int n)", {"x": "in[n**2]"}, ["parameter x", "[n**2]"]),
        ("void f(double *x, int n)", {"x": 3}, ["params.x", "string"]),
        # annotations naming what is not there
        ("void f(double *x, int n)", {"y": "in[n]"}, ["params names 'y'", "parameters: x, n"]),
        ("void f(double *, int)", {"x": "in[n]"}, ["params names 'x'", "arg1, arg2"]),
        ("void f(double *x, int n)", {"x": "in[m]"}, ["parameter x", "the length m names no parameter"]),
        ("void f(double *x, int n)", {"x": "in[n*k]"}, ["parameter x", "the length k names no parameter"]),
        # lengths that are no integer given by the caller
        ("void f(double *x, double n)", {"x": "in[n]"}, ["parameter x", "length n", "integer", "double n"]),
        ("void f(double *x, char n)", {"x": "in[n]"}, ["length n", "char n"]),
        ("void f(double *x, bool n)", {"x": "in[n]"}, ["length n", "bool n"]),
        ("void f(double *x, int *n)", {"x": "in[n]", "n": "out"}, ["length n", "passed by value", "int *n (out)"]),
        ("void f(double *x, int *n)", {"x": "in[n]", "n": "inout"}, ["length n", "(inout)"]),
        ("void f(double *x, double *y, int n)", {"x": "in[y]", "y": "in[n]"}, ["length y", "double *y"]),
        # out[] only as the first dim of an out array
        ("void f(double x[][10])", {"x": "out[3][]"}, ["parameter x", "[]", "first dimension of an out array"]),
        ("void f(double *x)", {"x": "in[]"}, ["parameter x", "[]", "out array"]),
        ("void f(double *x)", {"x": "inout[]"}, ["parameter x", "[]", "out array"]),
        # out[] next to a length the library is told: they could disagree
        ("int read_block(unsigned char *buf, int size)", {"buf": "out[]"}, ["parameter buf", '"out[size]"']),
        # not one prototype
        ("int x", {}, ["not one function prototype"]),
        ("int f(int a); int g(int b)", {}, ["not one function prototype"]),
        ("struct Complex { double re; }; int f(void)", {}, ["not one function prototype", "structs table"]),
        ("int f(int a, int a)", {}, ["two parameters are named 'a'"]),
        ("int f(int a", {}, ["not valid C", "column"]),
        ("int f(\n  int a,\n  int b c)", {}, ["not valid C", "'int f( int a, int b c)'", "column 21"]),
        ("void f(void x)", {}, ["parameter x", "void"]),
    ],
)
def test_refusals_name_the_parameter_and_say_what_to_write(c: str, params: dict[str, Any], needles: list[str]) -> None:
    message = refused(c, params)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_handles_returned_passed_and_closed() -> None:
    opened = parse_function("struct Device *open_device(int n)", {"return": "handle"}, {}, "h")
    assert opened["returns"] == {"kind": "handle", "type": "Device"}
    read = parse_function("int read_device(struct Device *dev, int *value)", {"dev": "handle", "value": "out"}, {}, "h")
    assert read["params"][0] == {"name": "dev", "kind": "handle", "type": "Device", "close": False}
    closed = parse_function("void close_any(void *h)", {"h": "close"}, {}, "h")
    assert closed["params"] == [{"name": "h", "kind": "handle", "type": "void", "close": True}]
    with pytest.raises(ConfigError, match="only a void\\* or a pointer to a struct"):
        parse_function("int bad(int *h)", {"h": "handle"}, {}, "h")
    with pytest.raises(ConfigError, match="only a void\\* or a pointer to a struct"):
        parse_function("int make(void)", {"return": "handle"}, {}, "h")
