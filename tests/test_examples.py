"""Tests for the demo libraries under examples/ (C, C++, Fortran; 32 and 64 bit).

A session fixture runs the demo-library build of ``dllpool setup`` (which
installs the multilib compilers once, if needed and possible). The 64-bit builds are loaded with
ctypes in this (64-bit) test process; the 32-bit builds are checked for their
ELF class here and exercised for real through a 32-bit interpreter when the
project's 32-bit runtime (.runtime32/runtime32.json) is present. The worker
tests exercise them through the real 32-bit workers.
"""

from __future__ import annotations

import ast
import ctypes
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from broker import demolibs, runtime32

from . import libcalls

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BUILD = EXAMPLES / "build"
LIB_NAMES = ("libdemo.so", "libctest.so", "libdemo_cpp.so", "libdemo_f.so")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the demo build makes Linux .so files")


@pytest.fixture(scope="session")
def built() -> Path:
    """The demo libraries, built (or found up to date) once per session, as `dllpool setup` does."""
    return demolibs.build(ROOT).folder


def elf_class(path: Path) -> int:
    """EI_CLASS of an ELF file: 1 = 32-bit, 2 = 64-bit."""
    with open(path, "rb") as f:
        header = f.read(5)
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return header[4]


# ---------------------------------------------------------------- build output


@pytest.mark.parametrize("name", LIB_NAMES)
def test_32bit_builds_are_elf32(built: Path, name: str) -> None:
    assert elf_class(built / "32" / name) == 1


@pytest.mark.parametrize("name", LIB_NAMES)
def test_64bit_builds_are_elf64(built: Path, name: str) -> None:
    assert elf_class(built / "64" / name) == 2


def test_second_build_is_a_no_op(built: Path) -> None:
    """Up to date: nothing is compiled and no apt command runs (the toolchain is not even probed)."""
    result = demolibs.build(ROOT)
    assert result.built == ()
    assert result.actions == ()


def test_a_changed_source_is_rebuilt(built: Path, tmp_path: Path) -> None:
    """A copy of the demo tree: touching nothing rebuilds nothing, editing a source rebuilds its two builds."""
    shutil.copytree(EXAMPLES, tmp_path / "examples", ignore=shutil.ignore_patterns("build"))
    first = demolibs.build(tmp_path)
    assert sorted(first.built) == sorted(f"{b}/{n}" for b in (32, 64) for n in LIB_NAMES)
    source = tmp_path / "examples" / "c" / "demo.c"
    source.write_text(source.read_text() + "\n/* changed */\n")
    assert sorted(demolibs.build(tmp_path).built) == ["32/libdemo.so", "64/libdemo.so"]


# ------------------------------------------------- 64-bit builds, in process


@pytest.fixture(scope="module")
def libs64(built: Path):
    if struct.calcsize("P") != 8:
        pytest.skip("the test process is not 64-bit")
    c = ctypes.CDLL(str(built / "64" / "libdemo.so"))
    cpp = ctypes.CDLL(str(built / "64" / "libdemo_cpp.so"))
    f = ctypes.CDLL(str(built / "64" / "libdemo_f.so"))

    c.add.argtypes = [ctypes.c_int, ctypes.c_int]
    c.add.restype = ctypes.c_int
    c.version.restype = ctypes.c_int
    c.pointer_size.restype = ctypes.c_int
    c.scale_sum.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int, ctypes.c_double]
    c.scale_sum.restype = ctypes.c_double
    c.greet.restype = ctypes.c_char_p
    c.str_len.argtypes = [ctypes.c_char_p]
    c.str_len.restype = ctypes.c_int
    c.add_i64.argtypes = [ctypes.c_int64, ctypes.c_int64]
    c.add_i64.restype = ctypes.c_int64
    c.echo_u8.argtypes = [ctypes.c_ubyte]
    c.echo_u8.restype = ctypes.c_ubyte
    c.half.argtypes = [ctypes.c_float]
    c.half.restype = ctypes.c_float
    c.is_true.argtypes = [ctypes.c_bool]
    c.is_true.restype = ctypes.c_int
    c.count_calls.restype = ctypes.c_int
    c.sleep_ms.argtypes = [ctypes.c_int]
    c.sleep_ms.restype = None

    cpp.cpp_add.argtypes = [ctypes.c_int, ctypes.c_int]
    cpp.cpp_add.restype = ctypes.c_int
    cpp.cpp_mean.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int]
    cpp.cpp_mean.restype = ctypes.c_double
    cpp.cpp_pointer_size.restype = ctypes.c_int

    f.f_add.argtypes = [ctypes.c_int, ctypes.c_int]
    f.f_add.restype = ctypes.c_int
    f.f_sum.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int]
    f.f_sum.restype = ctypes.c_double
    f.f_pointer_size.restype = ctypes.c_int
    return c, cpp, f


def doubles(*values: float):
    return (ctypes.c_double * len(values))(*values)


def test_c_library_64(libs64) -> None:
    c, _, _ = libs64
    assert c.add(2, 3) == 5
    assert c.add(-7, 2) == -5
    assert c.version() == 10203
    assert c.pointer_size() == 8
    assert c.scale_sum(doubles(1.0, 2.0, 3.5), 3, 2.0) == pytest.approx(13.0)
    assert c.scale_sum(doubles(), 0, 5.0) == 0.0
    assert c.greet().decode() == "hello from 64-bit C"
    assert c.str_len(b"hello") == 5
    assert c.str_len(b"") == 0
    assert c.str_len(None) == -1


def test_c_library_64_types(libs64) -> None:
    c, _, _ = libs64
    big = 2**40
    assert c.add_i64(big, big + 1) == 2 * big + 1
    assert c.echo_u8(255) == 255
    assert c.half(3.0) == pytest.approx(1.5)
    assert c.is_true(True) == 1
    assert c.is_true(False) == 0
    first = c.count_calls()
    assert c.count_calls() == first + 1


def test_c_sleep_ms_really_sleeps(libs64) -> None:
    c, _, _ = libs64
    start = time.perf_counter()
    c.sleep_ms(50)
    assert time.perf_counter() - start >= 0.045


def test_cpp_library_64(libs64) -> None:
    _, cpp, _ = libs64
    assert cpp.cpp_add(40, 2) == 42
    assert cpp.cpp_mean(doubles(1.0, 2.0, 3.0, 4.0), 4) == pytest.approx(2.5)
    assert cpp.cpp_mean(doubles(), 0) == 0.0
    assert cpp.cpp_pointer_size() == 8


def test_fortran_library_64(libs64) -> None:
    _, _, f = libs64
    assert f.f_add(2, 3) == 5
    assert f.f_sum(doubles(1.0, 2.0, 3.5), 3) == pytest.approx(6.5)
    assert f.f_sum(doubles(1.0, 2.0, 3.5), 2) == pytest.approx(3.0)
    assert f.f_sum(doubles(), 0) == 0.0
    assert f.f_pointer_size() == 8


def test_crash_kills_only_its_process(built: Path) -> None:
    code = "import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); lib.crash(); print('survived')"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(built / "64" / "libdemo.so")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stdout, proc.stderr)
    assert "survived" not in proc.stdout


def test_wrapper_in_process(built: Path, monkeypatch) -> None:
    """DemoWrapper against the 64-bit library, with the project's Server32
    (the real 32-bit use goes through the workers)."""
    monkeypatch.syspath_prepend(str(EXAMPLES / "wrappers"))
    import demo_wrapper

    w = demo_wrapper.DemoWrapper()
    bits = struct.calcsize("P") * 8
    assert Path(w.path) == built / str(bits) / "libdemo.so"
    assert w.add(2, 3) == 5
    assert w.pointer_size() == struct.calcsize("P")
    assert w.scale_sum([1.0, 2.0, 3.5], 2.0) == pytest.approx(13.0)
    assert w.greet() == f"hello from {bits}-bit C"
    first = w.count_calls()
    assert w.count_calls() == first + 1
    with pytest.raises(ValueError, match="boom"):
        w.fail("boom")


# --------------------------------------- 32-bit builds in a real 32-bit process


def _runtime32() -> tuple[list[str], dict[str, str]]:
    """(command, env) of the project's 32-bit Python; a missing one fails the test."""
    interp = runtime32.load()
    return interp.command, runtime32.command_env(interp, [])


CHECK32 = textwrap.dedent(
    """
    import ctypes, struct, sys
    d = sys.argv[1]
    assert struct.calcsize("P") == 4, struct.calcsize("P")
    c = ctypes.CDLL(d + "/libdemo.so")
    cpp = ctypes.CDLL(d + "/libdemo_cpp.so")
    f = ctypes.CDLL(d + "/libdemo_f.so")
    arr = (ctypes.c_double * 3)(1.0, 2.0, 3.5)
    c.scale_sum.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int, ctypes.c_double]
    c.scale_sum.restype = ctypes.c_double
    c.greet.restype = ctypes.c_char_p
    c.add_i64.argtypes = [ctypes.c_int64, ctypes.c_int64]
    c.add_i64.restype = ctypes.c_int64
    cpp.cpp_mean.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int]
    cpp.cpp_mean.restype = ctypes.c_double
    f.f_sum.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int]
    f.f_sum.restype = ctypes.c_double
    out = {
        "pointer_size": c.pointer_size(),
        "cpp_pointer_size": cpp.cpp_pointer_size(),
        "f_pointer_size": f.f_pointer_size(),
        "add": c.add(2, 3),
        "add_i64": c.add_i64(2**40, 1),
        "scale_sum": c.scale_sum(arr, 3, 2.0),
        "greet": c.greet().decode(),
        "cpp_mean": cpp.cpp_mean(arr, 3),
        "f_add": f.f_add(2, 3),
        "f_sum": f.f_sum(arr, 3),
    }
    print(repr(out))
    """
)


def test_32bit_builds_in_32bit_python(built: Path) -> None:
    command, env = _runtime32()
    proc = subprocess.run(
        [*command, "-c", CHECK32, str(built / "32")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert out["pointer_size"] == 4
    assert out["cpp_pointer_size"] == 4
    assert out["f_pointer_size"] == 4
    assert out["add"] == 5
    assert out["add_i64"] == 2**40 + 1
    assert out["scale_sum"] == pytest.approx(13.0)
    assert out["greet"] == "hello from 32-bit C"
    assert out["cpp_mean"] == pytest.approx(6.5 / 3)
    assert out["f_add"] == 5
    assert out["f_sum"] == pytest.approx(6.5)


# ------------- structs, arrays, out-parameters and text, called directly at both bitnesses


@pytest.fixture(scope="module", params=[64, 32], ids=["64-bit in process", "32-bit runtime"])
def observed(request: pytest.FixtureRequest, built: Path) -> dict[str, Any]:
    """What tests/libcalls.py sees calling one build: the same ctypes calls on each, no worker involved."""
    if request.param == 64:
        if struct.calcsize("P") != 8:
            pytest.skip("the test process is not 64-bit")
        return libcalls.observe(str(built / "64"))
    command, env = _runtime32()
    proc = subprocess.run(
        [*command, libcalls.__file__, str(built / "32")], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = ast.literal_eval(proc.stdout)
    return result


def test_notebook_structs_by_value_and_by_pointer(observed: dict[str, Any]) -> None:
    notebook = observed["notebook"]
    assert notebook["add"] == (5.0, 7.0)
    assert notebook["swap"] == ((-1.0, 0.5), (3.0, 4.0))


def test_notebook_sum_reads_n_doubles(observed: dict[str, Any]) -> None:
    notebook = observed["notebook"]
    assert (notebook["sum"], notebook["sum_first_3"], notebook["sum_none"]) == (32.0, 6.0, 0.0)


def test_notebook_titlecase_capitalises_each_word_in_place(observed: dict[str, Any]) -> None:
    assert observed["notebook"]["titlecase"] == "The Quick  Brown\tFox, 2nd Edition"


def test_notebook_tokenize_cuts_long_tokens_and_stops_at_20_rows(observed: dict[str, Any]) -> None:
    """Each case: (count, the rows written, the row after the caller's 20, which must keep its sentinel)."""
    notebook = observed["notebook"]
    words = [word.encode() for word in libcalls.SENTENCE.split()]
    assert notebook["tokenize"] == (8, words, b"sentinel")
    assert notebook["tokenize_runs"] == (2, [b"a", b"b"], b"sentinel")
    assert notebook["tokenize_long"] == (2, [b"x" * 19, b"y"], b"sentinel")
    assert notebook["tokenize_many"] == (20, [str(i).encode() for i in range(20)], b"sentinel")
    assert notebook["tokenize_empty"] == (0, [], b"sentinel")


def test_notebook_mult_writes_the_product_and_nothing_else(observed: dict[str, Any]) -> None:
    """c's first 2 x 3 cells, -1.0 where mult must not write."""
    notebook = observed["notebook"]
    untouched = [[-1.0] * 3] * 2
    assert notebook["mult"] == [[19.0, 22.0, -1.0], [43.0, 50.0, -1.0]]
    assert notebook["mult_1x3_3x2"] == [[4.0, 5.0, -1.0], [-1.0, -1.0, -1.0]]
    assert notebook["mult_too_wide"] == untouched
    assert notebook["mult_negative"] == untouched


@pytest.mark.parametrize("library", libcalls.LIBRARIES)
def test_in_place_and_output_arrays(observed: dict[str, Any], library: str) -> None:
    got = observed[library]
    assert got["scale"] == [2.0, 4.0, 6.0]
    assert got["scale_first_2"] == [-0.5, -1.0, 3.0]
    assert got["scale_none"] == [1.0]
    assert got["fill_squares"] == [0.0, 1.0, 4.0, 9.0, -1.0]  # -1.0: the element after n, untouched
    assert got["fill_squares_none"] == [-1.0]


@pytest.mark.parametrize("library", libcalls.LIBRARIES)
def test_out_parameters(observed: dict[str, Any], library: str) -> None:
    """(return, q, r) with q and r starting at 99: truncated toward zero as in C; -1 leaves them alone."""
    assert observed[library]["divmod"] == [
        (0, 3, 2),
        (0, -3, -2),
        (0, -3, 2),
        (-1, 99, 99),
        (-1, 99, 99),
        (0, libcalls.INT_MIN, 0),
    ]


@pytest.mark.parametrize("library", libcalls.LIBRARIES)
def test_text_into_the_callers_buffer(observed: dict[str, Any], library: str) -> None:
    """(return, the 16-byte buffer): the copy, its NUL, then the # the call must not touch."""
    got = observed[library]
    assert got["upper"] == (12, b"HELLO, WORLD\0##\0")
    assert got["upper_cut"] == (5, b"HELLO\0" + b"#" * 9 + b"\0")
    assert got["upper_one"] == (0, b"\0" + b"#" * 14 + b"\0")
    assert got["upper_zero"] == (0, b"#" * 15 + b"\0")
    assert got["upper_bytes"] == (7, "CAFé 1".encode() + b"\0" + b"#" * 7 + b"\0")
