"""msl-loadlib code runs with only its import lines changed (issue 10, item 1).

The assertions of msl-loadlib's own tests/test_server32.py, test_server32_property.py and
test_server32_shutdown.py (MIT License, Copyright (c) Measurement Standards Laboratory of New Zealand) on its
shipped example pairs, whose prebuilt 32-bit Linux libraries come from the msl-loadlib wheel on the package
index (fetched once into tests/msl_examples by :func:`msl_libraries`); and its documented examples.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from client import Client64, ConfigError, Server32Error
from protocol.errors import LibraryLoadError, PoolStartError
from workers32 import Server32

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "msl_examples"
MSL_VERSION = "1.1.0"
LIBRARIES = ("cpp_lib32.so", "fortran_lib32.so")


@pytest.fixture(scope="module", autouse=True)
def msl_libraries() -> None:
    """msl-loadlib's prebuilt 32-bit example libraries next to its example modules, from its wheel."""
    if all((EXAMPLES / name).is_file() for name in LIBRARIES):
        return
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"),
                *("--platform", "manylinux1_x86_64", f"msl-loadlib=={MSL_VERSION}", "-d", folder),
            ],
            check=True,
        )
        (wheel,) = Path(folder).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name in LIBRARIES:
                (EXAMPLES / name).write_bytes(archive.read(f"msl/examples/loadlib/{name}"))


# --- msl-loadlib's tests/test_server32.py -------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples() -> Iterator[dict[str, Any]]:
    from tests.msl_examples import Cpp64, Echo64, Fortran64

    c, f, e = Cpp64(), Fortran64(), Echo64()
    yield {"c": c, "f": f, "e": e}
    for obj in (c, f, e):
        _ = obj.shutdown_server32()


def test_lib_name(examples: dict[str, Any]) -> None:
    def get_name(path: str) -> str:
        return Path(path).name.split(".")[0]

    c, f = examples["c"], examples["f"]
    assert get_name(c.lib32_path) == "cpp_lib32"
    assert get_name(f.lib32_path) == "fortran_lib32"


def test_server_version() -> None:
    assert Server32.version().startswith("Python")


def test_cpp(examples: dict[str, Any]) -> None:
    from tests.msl_examples import FourPoints, Point

    c = examples["c"]
    assert c.add(1, 2) == 3
    assert c.add(-1000, -2) == -1002
    assert pytest.approx(c.subtract(20.0, 10.0)) == 10.0
    assert pytest.approx(c.subtract(90.0, 100.0)) == -10.0
    assert pytest.approx(c.add_or_subtract(0.1234, -0.1234, do_addition=True)) == 0.0
    assert pytest.approx(c.add_or_subtract(123.456, 23.456, do_addition=False)) == 100.0

    a = 3.1415926
    values = [float(x) for x in range(100)]
    c_values = c.scalar_multiply(a, values)
    for i in range(len(values)):
        assert pytest.approx(c_values[i]) == a * values[i]

    assert c.reverse_string_v1("1234567890") == "0987654321"
    assert c.reverse_string_v2("&* 1 j z|x cba[") == "[abc x|z j 1 *&"

    fp = FourPoints(Point(0, 0), Point(0, 1), Point(1, 1), Point(1, 0))
    assert c.distance_4_points(fp) == 4.0

    assert c.circumference(0.5, 0) == 0.0
    assert c.circumference(0.5, 2) == 2.0
    assert c.circumference(0.5, 2**16) == pytest.approx(math.pi)
    assert c.circumference(1.0, 2**16) == pytest.approx(2.0 * math.pi)


def test_fortran(examples: dict[str, Any]) -> None:
    f = examples["f"]
    assert f.sum_8bit(-(2**7), 1) == -127
    assert f.sum_16bit(2**15 - 1, -1) == 32766
    assert f.sum_32bit(123456788, 1) == 123456789
    assert f.sum_64bit(-(2**63), 1) == -9223372036854775807
    assert pytest.approx(f.multiply_float32(40.874, -1284.131)) == -52487.570494
    assert pytest.approx(f.multiply_float64(1.1e100, 2.1e200)) == 2.31e300
    assert f.is_positive(1e-100)
    assert not f.is_positive(-1e-100)
    assert f.add_or_subtract(1000, 2000, do_addition=True) == 3000
    assert f.add_or_subtract(1000, 2000, do_addition=False) == -1000
    assert int(f.factorial(0)) == 1
    assert int(f.factorial(1)) == 1
    assert int(f.factorial(5)) == 120
    assert pytest.approx(f.standard_deviation([float(val) for val in range(1, 10)])) == 2.73861278752583
    assert pytest.approx(f.besselJ0(8.0)) == 0.171650807137
    assert f.reverse_string("hello world!") == "!dlrow olleh"

    a = [float(val) for val in range(1, 1000)]
    b = [3.0 * val for val in range(1, 1000)]
    f_values = f.add_1d_arrays(a, b)
    for i in range(len(a)):
        assert pytest.approx(f_values[i]) == a[i] + b[i]

    f_mat = f.matrix_multiply([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert pytest.approx(f_mat[0][0]) == 22.0
    assert pytest.approx(f_mat[0][1]) == 28.0
    assert pytest.approx(f_mat[1][0]) == 49.0
    assert pytest.approx(f_mat[1][1]) == 64.0


def test_echo(examples: dict[str, Any]) -> None:
    e = examples["e"]
    args, kwargs = e.send_data(True)
    assert args[0]
    assert isinstance(args[0], bool)
    assert not kwargs

    args, kwargs = e.send_data(x=1.0)
    assert not args
    assert kwargs == {"x": 1.0}

    x = list(range(100))
    y = range(9999)
    my_dict = {"x": x, "y": y, "text": "abcd 1234 wxyz"}
    args, kwargs = e.send_data(111, 2.3, complex(-1.2, 2.30), (1, 2), x=x, y=y, my_dict=my_dict)
    assert args[0] == 111
    assert args[1] == 2.3
    assert args[2] == complex(-1.2, 2.30)
    assert args[3] == (1, 2)
    assert kwargs["x"] == x
    assert kwargs["y"] == y
    assert kwargs["my_dict"] == my_dict


def test_server32_error(examples: dict[str, Any]) -> None:
    c = examples["c"]
    with pytest.raises(Server32Error) as info:
        _ = c.add("hello", "world")
    err = info.value
    assert err.name == "ArgumentError"
    assert "argument 1: TypeError:" in err.value
    assert err.traceback.endswith("result: int = self.lib.add(a, b)")


def test_keyword_arguments_named_like_call_options_reach_the_server(examples: dict[str, Any]) -> None:
    assert examples["e"].send_data(timeout=1.5) == ((), {"timeout": 1.5})


def test_one_client64_from_many_threads(examples: dict[str, Any]) -> None:
    c = examples["c"]
    with ThreadPoolExecutor(8) as executor:
        sums = list(executor.map(lambda i: c.add(i, i), range(400)))
    assert sums == [2 * i for i in range(400)]


# --- msl-loadlib's tests/test_server32_property.py ----------------------------------------------------------


class Property64(Client64):
    def __init__(self) -> None:
        super().__init__(EXAMPLES / "property32.py")

        self.CONSTANT: int = self.request32("CONSTANT")
        self.three: int = self.request32("three")

    def add(self, a: int, b: int) -> int:
        reply: int = self.request32("add", a, b)
        return reply

    def subtract(self, a: float, b: float) -> float:
        reply: float = self.request32("subtract", a, b)
        return reply

    @property
    def seven(self) -> int:
        reply: int = self.request32("seven")
        return reply

    @property
    def parameters(self) -> dict[str, int | str | complex]:
        reply: dict[str, int | str | complex] = self.request32("parameters")
        return reply

    @property
    def foo(self) -> int:
        reply: int = self.request32("foo")
        return reply

    def multiple(self) -> tuple[int, str, complex]:
        reply: tuple[int, str, complex] = self.request32("multiple")
        return reply


def test_request_property() -> None:
    with Property64() as p:
        assert p.subtract(100, 100) == 0
        assert p.CONSTANT == 2
        assert p.three == 3
        assert p.seven == 7
        assert p.parameters == {"one": 1, "string": "hey", "complex": 7j}
        assert p.multiple() == (1, "hey", 7j)

        with pytest.raises(Server32Error, match=r"'Property32' object has no attribute 'add'"):
            _ = p.add(1, 2)

        with pytest.raises(Server32Error, match=r"'Property32' object has no attribute 'foo'"):
            _ = p.foo


# --- msl-loadlib's tests/test_server32_shutdown.py ----------------------------------------------------------


def test_killed() -> None:
    class Hangs(Client64):
        def __init__(self) -> None:
            super().__init__(EXAMPLES / "shutdown_hangs.py")

        def add(self, x: int, y: int) -> int:
            reply: int = self.request32("add", x, y)
            return reply

    with Hangs() as hangs:
        assert hangs.add(1, 1) == 2
        with pytest.warns(UserWarning, match=r"killed the 32-bit server using brute force") as warn_info:
            _ = hangs.shutdown_server32(kill_timeout=2)

        assert len(warn_info.list) == 1
        assert warn_info.list[0].filename == __file__


# --- msl-loadlib's documented examples (its "Client64" and "Server32" pages) ----------------------------------


class MyClient(Client64):
    """Call a function in 'my_lib.dll' via the 'MyServer' wrapper."""

    def __init__(self, **kwargs: Any) -> None:
        # Specify the name of the Python module to execute on the 32-bit server (i.e., 'my_server')
        super(MyClient, self).__init__(module32="my_server", append_sys_path=EXAMPLES, **kwargs)  # noqa: UP008

    def add(self, a: int, b: int) -> int:
        # The Client64 class has a 'request32' method to send a request to the 32-bit server
        # Send the 'a' and 'b' arguments to the 'add' method in MyServer
        return self.request32("add", a, b)  # type: ignore[no-any-return]

    def version(self) -> int:
        # Send a request to the 'version' method in MyServer
        return self.request32("version")  # type: ignore[no-any-return]


class ForwardingClient(Client64):
    """msl-loadlib's FAQ pattern: every attribute not defined here becomes a request to the server."""

    def __init__(self) -> None:
        super().__init__("my_server", append_sys_path=EXAMPLES)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def send(*args: Any, **kwargs: Any) -> Any:
            return self.request32(name, *args, **kwargs)

        return send


def test_documented_my_client(tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    with MyClient(marker=str(marker), ratio=0.5, count=3) as c:
        assert c.add(1, 2) == 3
        assert c.version() == 10203
        assert c.request32("kwarg_types") == {"marker": "str", "ratio": "float", "count": "int"}
        assert Path(c.lib32_path).name == "libdemo.so"
    assert marker.read_text() == "closed"  # shutdown_handler ran as the worker stopped


def test_forwarding_client_and_errors() -> None:
    c = ForwardingClient()
    try:
        assert c.add(-5, 3) == -2
        with pytest.raises(Server32Error) as info:
            c.no_such_method(1)
        assert info.value.name == "AttributeError"
        with pytest.raises(Server32Error) as info:
            c.add(1)
        assert info.value.name == "TypeError"
        assert "missing a required argument" in info.value.value or "missing" in info.value.value
        with pytest.raises(Server32Error, match="not a public attribute"):
            c.request32("_private")
    finally:
        c.shutdown_server32()
    with pytest.raises(Server32Error, match="closed"):
        c.add(1, 2)


def test_meaningless_options_warn() -> None:
    with pytest.warns(UserWarning, match="'protocol' has no effect"):
        c = MyClient(protocol=5)
    try:
        assert c.add(2, 2) == 4
    finally:
        c.shutdown_server32()


def test_append_environ_path_reaches_the_workers_path_and_add_dll_directory_is_taken(tmp_path: Path) -> None:
    extra = tmp_path / "dlls"
    extra.mkdir()
    client = Client64("environ32", append_sys_path=EXAMPLES, append_environ_path=[extra], add_dll_directory=extra)
    try:
        assert client.request32("path_entries")[-1] == str(extra)
    finally:
        client.shutdown_server32()


def test_workers_option_starts_that_many_workers() -> None:
    with MyClient(workers=2) as c:
        assert c._pool is not None
        assert len(c._pool.worker_pids()) == 2
        with ThreadPoolExecutor(4) as executor:
            assert list(executor.map(lambda i: c.add(i, 1), range(100))) == list(range(1, 101))


def test_a_structure_is_rebuilt_only_from_the_server_modules_own_classes(examples: dict[str, Any]) -> None:
    from protocol.codec import StructFields

    c = examples["c"]
    point = StructFields("Point", {"x": 0.0, "y": 1.0})
    assert c.request32("distance_4_points", StructFields("FourPoints", {"points": [point] * 4})) == 0.0
    refused = [
        (StructFields("Cpp32", {}), "defines no ctypes Structure 'Cpp32'"),
        (StructFields("Popen", {"args": "sh"}), "defines no ctypes Structure 'Popen'"),
        (StructFields("FourPoints", {"points": [point] * 5}), "holds 4 items; 5 were sent"),
        (StructFields("FourPoints", {"points": [point] * 4, "extra": 1}), "has fields"),
        (StructFields("FourPoints", {"points": [StructFields("NPoints", {"n": 1})] * 4}), "NPoints was sent"),
    ]
    for value, message in refused:
        with pytest.raises(Server32Error, match=message):
            c.request32("distance_4_points", value)


def test_a_client64_on_a_running_broker() -> None:
    from broker import Pool

    service = {"module": "my_server", "class": "MyServer", "path": [str(EXAMPLES)], "workers": 2}
    with Pool.from_config({"services": {"mine": service}}) as pool:
        c = Client64("my_server", address=pool.address, service="mine")
        try:
            assert c.request32("add", 20, 22) == 42
            assert Path(c.lib32_path).name == "libdemo.so"
        finally:
            c.shutdown_server32()
        assert len(pool.worker_pids("mine")) == 2  # the pool is the caller's: shutting the client leaves it be
        with pytest.raises(ConfigError, match="options are its configuration's"):
            Client64("my_server", address=pool.address, service="mine", ratio=0.5)


def test_a_server_that_cannot_start_fails_the_client_at_once(tmp_path: Path) -> None:
    (tmp_path / "no_lib.py").write_text(
        "from workers32 import Server32\n\n"
        "class NoLib(Server32):\n"
        "    def __init__(self, host, port):\n"
        "        super().__init__('missing_lib', 'cdll', host, port)\n"
    )
    (tmp_path / "busy.py").write_text(
        "from workers32 import Server32\n\n"
        "class Busy(Server32):\n"
        "    def __init__(self, host, port):\n"
        "        raise RuntimeError('device busy')\n"
    )
    (tmp_path / "plain.py").write_text("class NotAServer:\n    pass\n")
    (tmp_path / "broken.py").write_text("class (:\n")
    with pytest.raises(LibraryLoadError, match=r"missing_lib\.so"):
        Client64(tmp_path / "no_lib.py")
    with pytest.raises(PoolStartError, match="constructor failed"):
        Client64("busy", append_sys_path=tmp_path)
    with pytest.raises(ConfigError, match="does not contain a class that is a subclass of Server32"):
        Client64("plain", append_sys_path=[tmp_path])
    with pytest.raises(ConfigError, match="cannot read module"):
        Client64("broken", append_sys_path=[tmp_path])
