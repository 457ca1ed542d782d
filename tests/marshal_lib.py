"""A small C library of every declared kind (out/inout refs, out arrays, text buffers, 2-D arrays, structs), its
build for 32 or 64 bits, and its declarations in the normalized form workers32/signatures.py takes.

The declarations are written out by hand here; each carries the TOML line it stands for, so that once the 64-bit
parser is in, :func:`hosting` can become a TOML table parsed by it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

SOURCE = r"""
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <wchar.h>
#include <wctype.h>

#define EXPORT __attribute__((visibility("default")))

struct Complex { double re; double im; };
struct Record { int id; char name[16]; double values[3]; struct Complex z; unsigned char grid[2][3]; };

static int calls = 0;

EXPORT int call_count(void) { return calls; }

EXPORT struct Complex c_add(struct Complex a, struct Complex b) {
    struct Complex c = {a.re + b.re, a.im + b.im};
    ++calls;
    return c;
}

EXPORT void c_swap(struct Complex *a, struct Complex *b) {
    struct Complex t = *a;
    *a = *b;
    *b = t;
    ++calls;
}

EXPORT double c_norm2(const struct Complex *z) { ++calls; return z->re * z->re + z->im * z->im; }

EXPORT void make_record(int id, const char *name, struct Record *out) {
    int i, j;
    memset(out, 0, sizeof *out);
    out->id = id;
    strncpy(out->name, name, sizeof out->name - 1);
    for (i = 0; i < 3; ++i) out->values[i] = id * (i + 1);
    out->z.re = id;
    out->z.im = -id;
    for (i = 0; i < 2; ++i) for (j = 0; j < 3; ++j) out->grid[i][j] = (unsigned char)(10 * i + j);
    ++calls;
}

EXPORT struct Record record_next(struct Record r) {
    int i, j;
    r.id += 1;
    for (i = 0; i < 3; ++i) r.values[i] *= 2;
    for (i = 0; r.name[i]; ++i) r.name[i] = (char)toupper((unsigned char)r.name[i]);
    r.z.re += 1;
    for (i = 0; i < 2; ++i) for (j = 0; j < 3; ++j) r.grid[i][j] += 1;
    ++calls;
    return r;
}

EXPORT double sum(double f[], int n) {
    double total = 0;
    int i;
    for (i = 0; i < n; ++i) total += f[i];
    ++calls;
    return total;
}

EXPORT void titlecase(char *s) {
    int start = 1;
    for (; *s; ++s) {
        *s = (char)(start ? toupper((unsigned char)*s) : tolower((unsigned char)*s));
        start = *s == ' ';
    }
    ++calls;
}

EXPORT int tokenize(char sep, const char *str, char t[][20]) {
    int count = 0, len = 0;
    for (; *str && count < 20; ++str) {
        if (*str == sep) {
            if (len) { t[count++][len] = 0; len = 0; }
        } else if (len < 19) {
            t[count][len++] = *str;
        }
    }
    if (len && count < 20) t[count++][len] = 0;
    ++calls;
    return count;
}

EXPORT void mult(double a[][100], double b[][100], double c[][100], int n, int r, int m) {
    int i, j, k;
    for (i = 0; i < n; ++i) for (j = 0; j < m; ++j) {
        c[i][j] = 0;
        for (k = 0; k < r; ++k) c[i][j] += a[i][k] * b[k][j];
    }
    ++calls;
}

EXPORT int divmod(int a, int b, int *q, int *r) {
    ++calls;
    if (b == 0) return -1;
    *q = a / b;
    *r = a % b;
    return 0;
}

EXPORT void fill_squares(double *out, int n) {
    int i;
    for (i = 0; i < n; ++i) out[i] = (double)i * i;
    ++calls;
}

EXPORT int read_block(unsigned char *buf, int size) {
    int i;
    for (i = 0; i < size; ++i) buf[i] = (unsigned char)(i & 0xff);
    ++calls;
    return size;
}

EXPORT void bump(long *x, short *y) { *x += 1; *y = (short)(*y * 2); ++calls; }

EXPORT int sum_fixed(int m[3][4]) {
    int i, j, total = 0;
    for (i = 0; i < 3; ++i) for (j = 0; j < 4; ++j) total += m[i][j] * (i == 2 && j == 3 ? 1000 : 1);
    ++calls;
    return total;
}

EXPORT void fill_names(char names[][8], int n) {
    int i;
    for (i = 0; i < n; ++i) { strcpy(names[i], "name"); names[i][4] = (char)('0' + i % 10); names[i][5] = 0; }
    ++calls;
}

EXPORT int wlen(const wchar_t *s) { ++calls; return (int)wcslen(s); }

EXPORT void wupper(wchar_t *s) { for (; *s; ++s) *s = (wchar_t)towupper((wint_t)*s); ++calls; }

EXPORT void fill_complex(struct Complex *zs, int n) {
    int i;
    for (i = 0; i < n; ++i) { zs[i].re = i; zs[i].im = -i; }
    ++calls;
}

EXPORT int count_true(const bool *b, int n) {
    int i, count = 0;
    for (i = 0; i < n; ++i) count += b[i];
    ++calls;
    return count;
}

EXPORT char first_char(const char *s) { ++calls; return s[0]; }

EXPORT int64_t sum_i64(const int64_t *v, int n) {
    int64_t total = 0;
    int i;
    for (i = 0; i < n; ++i) total += v[i];
    ++calls;
    return total;
}

EXPORT void transpose(const double *m, int rows, int cols, double *out) {
    int i, j;
    for (i = 0; i < rows; ++i) for (j = 0; j < cols; ++j) out[j * rows + i] = m[i * cols + j];
    ++calls;
}

EXPORT void next_char(char *c) { *c = (char)(*c + 1); ++calls; }

EXPORT void scale_rows(double m[][4], int rows, int cols, double f) {
    int i, j;
    for (i = 0; i < rows; ++i) for (j = 0; j < cols; ++j) m[i][j] *= f * (i + 1);
    ++calls;
}
"""


def build(directory: Path, bits: int) -> str:
    """The library compiled for ``bits`` into ``directory``."""
    source = directory / "marshal_lib.c"
    source.write_text(SOURCE)
    target = directory / f"libmarshal{bits}.so"
    subprocess.run(
        ["gcc", f"-m{bits}", "-std=c99", "-Wall", "-Werror", "-O1", "-shared", "-fPIC", "-o", str(target), str(source)],
        check=True,
    )
    return str(target)


# --- the normalized declaration form (CONTEXT: FUNC, PARAM, FIELD) ---------------------------------------------


def value(name: str, type_: Any) -> dict[str, Any]:
    return {"name": name, "kind": "value", "type": type_}


def text(name: str, type_: str = "char") -> dict[str, Any]:
    return {"name": name, "kind": "string", "type": type_}


def ref(name: str, direction: str, type_: Any) -> dict[str, Any]:
    return {"name": name, "kind": "ref", "dir": direction, "type": type_}


def arr(name: str, direction: str, type_: Any, dims: list[Any], storage: list[Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "array",
        "dir": direction,
        "type": type_,
        "dims": dims,
        "storage": storage or [None] * len(dims),
    }


def func(signature: str, returns: Any, *params: dict[str, Any]) -> dict[str, Any]:
    """``returns``: None (void), a type (a value), or ``("string", "char")``."""
    if isinstance(returns, tuple):
        ret: Any = {"kind": returns[0], "type": returns[1]}
    else:
        ret = None if returns is None else {"kind": "value", "type": returns}
    return {
        "symbol": signature.split("(")[0].split()[-1].lstrip("*"),
        "signature": signature,
        "returns": ret,
        "params": list(params),
    }


COMPLEX = {"struct": "Complex"}
RECORD = {"struct": "Record"}

STRUCTS: dict[str, list[dict[str, Any]]] = {
    # Complex = "struct Complex { double re; double im; };"
    "Complex": [{"name": "re", "type": "double", "shape": []}, {"name": "im", "type": "double", "shape": []}],
    # Record = "struct Record { int id; char name[16]; double values[3]; struct Complex z; unsigned char grid[2][3]; };"
    "Record": [
        {"name": "id", "type": "int", "shape": []},
        {"name": "name", "type": "char", "shape": [16]},
        {"name": "values", "type": "double", "shape": [3]},
        {"name": "z", "type": COMPLEX, "shape": []},
        {"name": "grid", "type": "uint8", "shape": [2, 3]},
    ],
}

FUNCTIONS: dict[str, dict[str, Any]] = {
    "call_count": func("int call_count(void)", "int"),
    # c_add = "struct Complex c_add(struct Complex a, struct Complex b)"
    "c_add": func(
        "struct Complex c_add(struct Complex a, struct Complex b)", COMPLEX, value("a", COMPLEX), value("b", COMPLEX)
    ),
    # c_swap = { c = "void c_swap(struct Complex *a, struct Complex *b)", params = { a = "inout", b = "inout" } }
    "c_swap": func(
        "void c_swap(struct Complex *a, struct Complex *b)",
        None,
        ref("a", "inout", COMPLEX),
        ref("b", "inout", COMPLEX),
    ),
    # c_norm2 = "double c_norm2(const struct Complex *z)"
    "c_norm2": func("double c_norm2(const struct Complex *z)", "double", ref("z", "in", COMPLEX)),
    # make_record = { c = "void make_record(int id, const char *name, struct Record *out)", params = { out = "out" } }
    "make_record": func(
        "void make_record(int id, const char *name, struct Record *out)",
        None,
        value("id", "int"),
        text("name"),
        ref("out", "out", RECORD),
    ),
    # record_next = "struct Record record_next(struct Record r)"
    "record_next": func("struct Record record_next(struct Record r)", RECORD, value("r", RECORD)),
    # sum = { c = "double sum(double f[], int n)", params = { f = "in[n]" } }
    "sum": func("double sum(double f[], int n)", "double", arr("f", "in", "double", ["n"]), value("n", "int")),
    # titlecase = { c = "void titlecase(char *s)", params = { s = "inout[256]" } }
    "titlecase": func("void titlecase(char *s)", None, arr("s", "inout", "char", [256])),
    # tokenize = { c = "int tokenize(char sep, const char *str, char t[][20])", params = { t = "out[20]" } }
    "tokenize": func(
        "int tokenize(char sep, const char *str, char t[][20])",
        "int",
        value("sep", "char"),
        text("str"),
        arr("t", "out", "char", [20, 20], [None, 20]),
    ),
    # mult = { c = "void mult(double a[][100], double b[][100], double c[][100], int n, int r, int m)",
    #          params = { a = "in[n][r]", b = "in[r][m]", c = "out[n][m]" } }
    "mult": func(
        "void mult(double a[][100], double b[][100], double c[][100], int n, int r, int m)",
        None,
        arr("a", "in", "double", ["n", "r"], [None, 100]),
        arr("b", "in", "double", ["r", "m"], [None, 100]),
        arr("c", "out", "double", ["n", "m"], [None, 100]),
        value("n", "int"),
        value("r", "int"),
        value("m", "int"),
    ),
    # divmod = { c = "int divmod(int a, int b, int *q, int *r)", params = { q = "out", r = "out" } }
    "divmod": func(
        "int divmod(int a, int b, int *q, int *r)",
        "int",
        value("a", "int"),
        value("b", "int"),
        ref("q", "out", "int"),
        ref("r", "out", "int"),
    ),
    # fill_squares = { c = "void fill_squares(double *out, int n)", params = { out = "out[n]" } }
    "fill_squares": func(
        "void fill_squares(double *out, int n)", None, arr("out", "out", "double", ["n"]), value("n", "int")
    ),
    # read_block = { c = "int read_block(unsigned char *buf, int size)", params = { buf = "out[size]" } }
    "read_block": func(
        "int read_block(unsigned char *buf, int size)",
        "int",
        arr("buf", "out", "uint8", ["size"]),
        value("size", "int"),
    ),
    # bump = { c = "void bump(long *x, short *y)", params = { x = "inout", y = "inout" } }
    "bump": func("void bump(long *x, short *y)", None, ref("x", "inout", "long"), ref("y", "inout", "short")),
    # sum_fixed = "int sum_fixed(int m[3][4])"
    "sum_fixed": func("int sum_fixed(int m[3][4])", "int", arr("m", "in", "int", [3, 4], [3, 4])),
    # fill_names = { c = "void fill_names(char names[][8], int n)", params = { names = "out[n]" } }
    "fill_names": func(
        "void fill_names(char names[][8], int n)",
        None,
        arr("names", "out", "char", ["n", 8], [None, 8]),
        value("n", "int"),
    ),
    # wlen = "int wlen(const wchar_t *s)"
    "wlen": func("int wlen(const wchar_t *s)", "int", text("s", "wchar")),
    # wupper = { c = "void wupper(wchar_t *s)", params = { s = "inout[16]" } }
    "wupper": func("void wupper(wchar_t *s)", None, arr("s", "inout", "wchar", [16])),
    # fill_complex = { c = "void fill_complex(struct Complex *zs, int n)", params = { zs = "out[n]" } }
    "fill_complex": func(
        "void fill_complex(struct Complex *zs, int n)", None, arr("zs", "out", COMPLEX, ["n"]), value("n", "int")
    ),
    # count_true = { c = "int count_true(const bool *b, int n)", params = { b = "in[n]" } }
    "count_true": func("int count_true(const bool *b, int n)", "int", arr("b", "in", "bool", ["n"]), value("n", "int")),
    # first_char = "char first_char(const char *s)"
    "first_char": func("char first_char(const char *s)", "char", text("s")),
    # sum_i64 = { c = "int64_t sum_i64(const int64_t *v, int n)", params = { v = "in[n]" } }
    "sum_i64": func(
        "int64_t sum_i64(const int64_t *v, int n)", "int64", arr("v", "in", "int64", ["n"]), value("n", "int")
    ),
    # transpose = { c = "void transpose(const double *m, int rows, int cols, double *out)",
    #               params = { m = "in[rows][cols]", out = "out[cols][rows]" } }
    "transpose": func(
        "void transpose(const double *m, int rows, int cols, double *out)",
        None,
        arr("m", "in", "double", ["rows", "cols"]),
        value("rows", "int"),
        value("cols", "int"),
        arr("out", "out", "double", ["cols", "rows"]),
    ),
    # The worker's caller-given length, on a function the configuration would only take as out[size] (out[]
    # next to an integer parameter is refused there, as the two could disagree).
    "read_some": {
        **func(
            "int read_block(unsigned char *buf, int size)",
            "int",
            arr("buf", "out", "uint8", [None]),
            value("size", "int"),
        ),
        "symbol": "read_block",
    },
    # scale_rows = { c = "void scale_rows(double m[][4], int rows, int cols, double f)",
    #                params = { m = "inout[rows][cols]" } }
    "scale_rows": func(
        "void scale_rows(double m[][4], int rows, int cols, double f)",
        None,
        arr("m", "inout", "double", ["rows", "cols"], [None, 4]),
        value("rows", "int"),
        value("cols", "int"),
        value("f", "double"),
    ),
    # next_char = { c = "void next_char(char *c)", params = { c = "inout" } }
    "next_char": func("void next_char(char *c)", None, ref("c", "inout", "char")),
}


def hosting(library: str) -> dict[str, Any]:
    """What a worker hosting this library is given (a service's ``hosting`` table)."""
    return {"library": library, "kind": "cdll", "functions": FUNCTIONS, "structs": STRUCTS}
