"""The 32-bit runtime: provisioned for real, then proved 32-bit from the outside.

No mocks: the session fixture runs the real (idempotent) setup.  Outside CI a
machine that cannot host it (not root, not Debian) skips those tests; with
CI=true a missing runtime is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker import locations, runtime32
from broker.runtime32 import Interpreter
from protocol.errors import RuntimeMissing

ROOT = Path(__file__).resolve().parent.parent


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def interp() -> Interpreter:
    """The project's 32-bit interpreter, provisioned if needed."""
    try:
        return runtime32.setup()
    except RuntimeMissing as exc:
        if _in_ci():
            pytest.fail(f"CI needs the 32-bit runtime: {exc}")
        pytest.skip(f"no 32-bit runtime on this machine: {exc}")


def test_describe_reports_a_32_bit_python_with_pyzmq_and_msgpack(interp: Interpreter) -> None:
    info = runtime32.describe(runtime32.load())
    assert info["pointer_size"] == 4
    assert info["bits"] == 32
    assert str(info["platform"]).endswith(("i686", "win32"))
    assert str(info["version"]).startswith("3.")
    assert info["pyzmq"] and info["libzmq"] and info["msgpack"]
    assert runtime32.load() == interp


def test_interpreter_binary_is_32_bit_elf(interp: Interpreter) -> None:
    assert runtime32.check_elf_bits(os.path.realpath(runtime32.load().executable)) == 32


def test_running_worker_process_is_32_bit(interp: Interpreter) -> None:
    """What a worker really runs, read from /proc/<pid>/exe while it is alive."""
    proc = subprocess.Popen(
        [*interp.command, "-s", "-c", "import sys, zmq, msgpack; sys.stdin.read()"],
        env=runtime32.command_env(interp, []),
        stdin=subprocess.PIPE,
    )
    try:
        assert runtime32.check_elf_bits(f"/proc/{proc.pid}/exe") == 32
    finally:
        proc.communicate(b"", timeout=30)
    assert proc.returncode == 0


def test_second_setup_does_nothing(interp: Interpreter) -> None:
    result = runtime32.provision()
    assert result.actions == ()  # no apt, no download, no unpacking
    assert result.interpreter == interp
    assert result.seconds < 5  # a behaviour guard (no apt ran), not a speed target


def test_setup_leaves_the_runtime_compiled(interp: Interpreter) -> None:
    """Unpacked Debian packages have no bytecode: without it every zygote compiles the standard library it
    imports (when PYTHONDONTWRITEBYTECODE is set, or the folder is read-only) on each start."""
    tag = _cache_tag(interp)
    lib = Path(runtime32.default_prefix()) / "root" / "usr" / "lib"
    assert list(lib.glob(f"python3*/__pycache__/typing.{tag}.pyc"))
    assert list(lib.glob(f"python3*/json/__pycache__/decoder.{tag}.pyc"))


def test_compile_bytecode_writes_the_interpreters_own_pyc(interp: Interpreter, tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (tmp_path / "pkg" / "broken.py").write_text("def (\n")  # left out (logged); the rest is compiled
    assert runtime32.compile_bytecode(interp, [tmp_path / "pkg", tmp_path / "missing"])
    assert [p.name for p in (tmp_path / "pkg" / "__pycache__").iterdir()] == [f"mod.{_cache_tag(interp)}.pyc"]


def test_bytecode_is_left_alone_where_there_is_no_private_runtime(interp: Interpreter, tmp_path: Path) -> None:
    """Another interpreter (Windows' launcher, a configured python32) has no standard library of ours to compile."""
    assert runtime32._ensure_bytecode(tmp_path, interp) == []
    assert list(tmp_path.iterdir()) == []


def _cache_tag(interp: Interpreter) -> str:
    code = "import sys; print(sys.implementation.cache_tag)"
    done = subprocess.run(
        [*interp.command, "-c", code], env=runtime32.command_env(interp, []), capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_64_bit_pyzmq_never_reaches_the_32_bit_process(interp: Interpreter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with the 64-bit venv exported, the worker imports the i686 zmq from its own site folder."""
    import zmq  # the 64-bit one, for its site-packages folder

    site_packages = str(Path(zmq.__file__).parent.parent)
    monkeypatch.setenv("PYTHONPATH", site_packages)
    monkeypatch.setenv("VIRTUAL_ENV", str(Path(sys.executable).parent.parent))
    project = str(ROOT)
    env = runtime32.command_env(interp, [project])
    assert "VIRTUAL_ENV" not in env
    assert env["PYTHONNOUSERSITE"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep) == [*interp.path, project]
    out = subprocess.run(
        [*interp.command, "-c", "import json, struct, zmq; print(json.dumps([zmq.__file__, struct.calcsize('P')]))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    zmq_file, pointer_size = json.loads(out)
    assert pointer_size == 4
    assert zmq_file.startswith(interp.path[0] + os.sep)


def test_command_env_refuses_a_folder_that_shadows_zmq() -> None:
    import zmq

    with pytest.raises(ValueError, match="zmq"):
        runtime32.command_env(Interpreter(sys.executable), [str(Path(zmq.__file__).parent.parent)])


def test_command_env_without_path_drops_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere/64-bit")
    monkeypatch.setenv("PYTHONHOME", "/somewhere")
    env = runtime32.command_env(Interpreter(sys.executable, {"EXTRA": "1"}, ()), [])
    assert "PYTHONPATH" not in env and "PYTHONHOME" not in env
    assert env["EXTRA"] == "1"


def test_check_elf_bits_of_this_python() -> None:
    assert runtime32.check_elf_bits(os.path.realpath(sys.executable)) == 64


def test_check_elf_bits_rejects_other_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a program\n")
    with pytest.raises(ValueError):
        runtime32.check_elf_bits(text)
    with pytest.raises(ValueError):
        runtime32.check_elf_bits(Path(__file__))


@pytest.mark.parametrize(("machine", "bits"), [(0x14C, 32), (0x8664, 64)])
def test_check_elf_bits_reads_pe_headers(tmp_path: Path, machine: int, bits: int) -> None:
    dll = bytearray(0x100)
    dll[:2] = b"MZ"
    dll[0x3C:0x40] = (0x80).to_bytes(4, "little")
    dll[0x80:0x86] = b"PE\0\0" + machine.to_bytes(2, "little")
    path = tmp_path / "vendor.dll"
    path.write_bytes(bytes(dll))
    assert runtime32.check_elf_bits(path) == bits


def test_load_of_an_empty_prefix_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(RuntimeMissing, match="dllpool runtime32 setup"):
        runtime32.load(tmp_path)


def test_load_of_a_broken_manifest_says_how_to_fix_it(tmp_path: Path) -> None:
    (tmp_path / "runtime32.json").write_text('{"format": 1, "executable": 42}')
    with pytest.raises(RuntimeMissing, match="dllpool runtime32 setup"):
        runtime32.load(tmp_path)


def test_default_prefix_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DLLPOOL_RUNTIME32", raising=False)
    assert runtime32.default_prefix() == ROOT / ".runtime32"
    assert locations.checkout_root() == ROOT
    monkeypatch.setenv("DLLPOOL_RUNTIME32", str(tmp_path))
    assert runtime32.default_prefix() == tmp_path.resolve()


def test_describe_a_user_named_interpreter() -> None:
    """from_executable: this 64-bit Python (it has pyzmq and msgpack) is described as such."""
    info = runtime32.describe(runtime32.from_executable(sys.executable))
    assert info["pointer_size"] == 8
    assert info["bits"] == 64


def test_describe_an_interpreter_without_pyzmq_fails_clearly(interp: Interpreter) -> None:
    """The bare Debian interpreter, without the wheel folder: no zmq, and the message says so."""
    with pytest.raises(RuntimeMissing, match="import zmq"):
        runtime32.describe(Interpreter(interp.executable, interp.env, (), interp.args))


def test_describe_an_interpreter_that_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeMissing, match="did not start"):
        runtime32.describe(Interpreter(str(tmp_path / "python32")))


def test_from_executable_of_a_missing_interpreter() -> None:
    with pytest.raises(RuntimeMissing, match="not found"):
        runtime32.from_executable("/nonexistent/python32.exe")
