"""Direct ctypes calls of the demo libraries' struct, array, out-parameter and text functions.

The same calls check both builds before any worker is involved: the 64-bit test
process imports this module and calls :func:`observe` on ``examples/build/64``;
the 32-bit runtime runs it as a script on ``examples/build/32`` and prints the
``repr`` of what it saw (literal values only).  Hence Python 3.9 and ctypes only.
The inputs are shared with the tests that make the same calls through a pool.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

# The notebook's inputs (examples/c/ctest.c) and what each call gives.
A, B = {"re": 1.0, "im": 2.0}, {"re": 4.0, "im": 5.0}  # add(A, B) -> 5.0, 7.0
SUM_VALUES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 11.0]  # sum -> 32.0
TITLE = "the quick  brown\tfox, 2nd edition"  # titlecase -> "The Quick  Brown\tFox, 2nd Edition"
SENTENCE = "the quick brown fox jumps over lazy dogs"  # tokenize(" ", ...) -> 8 tokens
M1, M2 = [[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]  # mult -> [[19, 22], [43, 50]]
LIBRARIES = {"libdemo.so": "", "libdemo_cpp.so": "cpp_", "libdemo_f.so": "f_"}
"""The demo libraries and their functions' prefix: each has scale, fill_squares, divmod and upper."""

TOKEN, ROWS, COLUMNS = 20, 20, 100  # ctest.c's fixed sizes
INT_MIN = -(2**31)


class Complex(ctypes.Structure):
    _fields_ = [("re", ctypes.c_double), ("im", ctypes.c_double)]


def _pair(c: Complex) -> tuple[float, float]:
    return (c.re, c.im)


def _doubles(values: list[float], extra: int = 0) -> Any:
    """A C double array holding ``values`` then ``extra`` -1.0 sentinels that no call may touch."""
    return (ctypes.c_double * (len(values) + extra))(*values, *[-1.0] * extra)


def _matrix(rows: list[list[float]], count: int) -> Any:
    """``count`` rows of COLUMNS doubles (``double m[][100]``), -1.0 where ``rows`` gives nothing."""
    matrix = ((ctypes.c_double * COLUMNS) * count)()
    for i in range(count):
        for j in range(COLUMNS):
            matrix[i][j] = rows[i][j] if i < len(rows) and j < len(rows[i]) else -1.0
    return matrix


def _tokens(lib: Any, sep: bytes, text: bytes) -> tuple[int, list[bytes], bytes]:
    """(count, the rows written, the row after the caller's 20: a sentinel tokenize must leave alone)."""
    rows = ((ctypes.c_char * TOKEN) * (ROWS + 1))()
    rows[ROWS].value = b"sentinel"
    count = lib.tokenize(sep, text, rows)
    return count, [rows[i].value for i in range(count)], rows[ROWS].value


def _mult(lib: Any, a: list[list[float]], b: list[list[float]], n: int, r: int, m: int) -> list[list[float]]:
    """c's first 2 rows and 3 columns after mult: c starts as -1.0 everywhere, so cells it must not write show."""
    c = _matrix([], 2)
    lib.mult(_matrix(a, max(n, len(a))), _matrix(b, max(r, len(b))), c, n, r, m)
    return [list(c[i][:3]) for i in range(2)]


def notebook(folder: str) -> dict[str, Any]:
    """ctest.c's six functions on the notebook's inputs, and on the edges they must stay inside."""
    lib = ctypes.CDLL(str(Path(folder) / "libctest.so"))
    complex_p = ctypes.POINTER(Complex)
    double_p = ctypes.POINTER(ctypes.c_double)
    row_p = ctypes.POINTER(ctypes.c_double * COLUMNS)
    lib.add.argtypes, lib.add.restype = [Complex, Complex], Complex
    lib.swap.argtypes, lib.swap.restype = [complex_p, complex_p], None
    lib.sum.argtypes, lib.sum.restype = [double_p, ctypes.c_int], ctypes.c_double
    lib.titlecase.argtypes, lib.titlecase.restype = [ctypes.c_char_p], None
    lib.tokenize.argtypes = [ctypes.c_char, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char * TOKEN)]
    lib.tokenize.restype = ctypes.c_int
    lib.mult.argtypes = [row_p, row_p, row_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.mult.restype = None

    first, second = Complex(3.0, 4.0), Complex(-1.0, 0.5)
    lib.swap(first, second)
    titled = ctypes.create_string_buffer(TITLE.encode())
    lib.titlecase(titled)
    many = " ".join(str(i) for i in range(ROWS + 5)).encode()
    return {
        "add": _pair(lib.add(Complex(**A), Complex(**B))),
        "swap": (_pair(first), _pair(second)),
        "sum": lib.sum(_doubles(SUM_VALUES), len(SUM_VALUES)),
        "sum_first_3": lib.sum(_doubles(SUM_VALUES), 3),
        "sum_none": lib.sum(None, 0),
        "titlecase": titled.value.decode(),
        "tokenize": _tokens(lib, b" ", SENTENCE.encode()),
        "tokenize_runs": _tokens(lib, b",", b",,a,,b,"),
        "tokenize_long": _tokens(lib, b" ", b"x" * 30 + b" y"),
        "tokenize_many": _tokens(lib, b" ", many),
        "tokenize_empty": _tokens(lib, b" ", b""),
        "mult": _mult(lib, M1, M2, 2, 2, 2),
        "mult_1x3_3x2": _mult(lib, [[1.0, 2.0, 3.0]], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], 1, 3, 2),
        "mult_too_wide": _mult(lib, M1, M2, 2, COLUMNS + 1, 2),
        "mult_negative": _mult(lib, M1, M2, 2, 2, -1),
    }


def kinds(folder: str, library: str) -> dict[str, Any]:
    """A demo library's in-place array, output array, out-parameters and text into a buffer."""
    lib = ctypes.CDLL(str(Path(folder) / library))
    prefix = LIBRARIES[library]
    int_p, double_p = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double)
    scale = getattr(lib, prefix + "scale")
    scale.argtypes, scale.restype = [double_p, ctypes.c_int, ctypes.c_double], None
    fill_squares = getattr(lib, prefix + "fill_squares")
    fill_squares.argtypes, fill_squares.restype = [double_p, ctypes.c_int], None
    divmod_ = getattr(lib, prefix + "divmod")
    divmod_.argtypes, divmod_.restype = [ctypes.c_int, ctypes.c_int, int_p, int_p], ctypes.c_int
    upper = getattr(lib, prefix + "upper")
    upper.argtypes, upper.restype = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int], ctypes.c_int

    def scaled(values: list[float], n: int, k: float) -> list[float]:
        array = _doubles(values)
        scale(array, n, k)
        return list(array)

    def squares(n: int) -> list[float]:
        array = _doubles([], n + 1)
        fill_squares(array, n)
        return list(array)

    def quotient(a: int, b: int) -> tuple[int, int, int]:
        q, r = ctypes.c_int(99), ctypes.c_int(99)
        return divmod_(a, b, q, r), q.value, r.value

    def uppercased(text: bytes, size: int) -> tuple[int, bytes]:
        """(the return value, the whole 16-byte buffer: what the call wrote, then the # it left alone)."""
        out = ctypes.create_string_buffer(b"#" * 15, 16)
        return upper(text, out, size), out.raw

    return {
        "scale": scaled([1.0, 2.0, 3.0], 3, 2.0),
        "scale_first_2": scaled([1.0, 2.0, 3.0], 2, -0.5),
        "scale_none": scaled([1.0], 0, 5.0),
        "fill_squares": squares(4),
        "fill_squares_none": squares(0),
        "divmod": [quotient(a, b) for a, b in ((17, 5), (-17, 5), (17, -5), (1, 0), (INT_MIN, -1), (INT_MIN, 1))],
        "upper": uppercased(b"Hello, World", 16),
        "upper_cut": uppercased(b"Hello, World", 6),
        "upper_one": uppercased(b"Hello", 1),
        "upper_zero": uppercased(b"Hello", 0),
        "upper_bytes": uppercased("café 1".encode(), 16),
    }


def observe(folder: str) -> dict[str, Any]:
    """Everything above, for one build folder (examples/build/32 or examples/build/64)."""
    return {"notebook": notebook(folder), **{library: kinds(folder, library) for library in LIBRARIES}}


if __name__ == "__main__":
    print(repr(observe(sys.argv[1])))
