"""dllpool installed as a package (not run from the checkout), used from another folder.

A fresh virtualenv gets ``pip install <copy of the repository>``; then, with
a fresh HOME and the working directory outside the checkout, ``dllpool
runtime32 setup`` provisions into the per-user location, ``dllpool demo``
copies the shipped configuration and demo sources into the user's demo tree,
builds the libraries there and runs the pool, and the README's Python
example runs as written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT
from .test_readme import run_readme_example

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the demo build makes Linux .so files"),
]


def _run(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """(venv bin folder, environment, a working directory outside the checkout)."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".runtime32", "build", ".make", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    home = base / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLLPOOL_", "VIRTUAL_ENV", "PYTHON", "XDG_"))}
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    env["HOME"] = str(home)
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env, base)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)], env, base)
    shutil.rmtree(source)  # the installed package must not need its source folder
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return venv / "bin", env, elsewhere


def test_runtime32_setup_provisions_into_the_per_user_location(installed: tuple[Path, dict[str, str], Path]) -> None:
    bin_dir, env, cwd = installed
    _run([str(bin_dir / "dllpool"), "runtime32", "setup"], env, cwd)
    prefix = Path(env["HOME"]) / ".local" / "share" / "dllpool" / "runtime32"
    assert (prefix / "runtime32.json").is_file()
    info = json.loads(_run([str(bin_dir / "dllpool"), "runtime32", "info", "--json"], env, cwd).stdout)
    assert info["pointer_size"] == 4
    assert info["executable"].startswith(str(prefix))
    assert not (cwd / ".runtime32").exists()
    again = _run([str(bin_dir / "dllpool"), "runtime32", "setup"], env, cwd).stdout
    assert "already in place" in again
    refreshed = _run([str(bin_dir / "dllpool"), "runtime32", "setup", "--refresh"], env, cwd).stdout
    assert "installed" in refreshed, "--refresh rebuilds the runtime from the archive"
    assert json.loads(_run([str(bin_dir / "dllpool"), "runtime32", "info", "--json"], env, cwd).stdout) == info


def test_demo_builds_its_libraries_from_the_shipped_sources_and_runs(
    installed: tuple[Path, dict[str, str], Path],
) -> None:
    bin_dir, env, cwd = installed
    report = json.loads(_run([str(bin_dir / "dllpool"), "demo", "--json"], env, cwd).stdout)
    assert report["ok"], report["checks"]
    assert {w["pointer_size"] for w in report["workers"]} == {4}
    tree = Path(env["HOME"]) / ".local" / "share" / "dllpool" / "demo"
    assert (tree / "config" / "pool.toml").is_file()
    for bits in (32, 64):
        assert (tree / "examples" / "build" / str(bits) / "libdemo.so").is_file()
    assert sorted(p.name for p in cwd.iterdir()) == []  # nothing written to the working directory


def test_readme_example_runs_from_any_folder(installed: tuple[Path, dict[str, str], Path]) -> None:
    bin_dir, env, cwd = installed
    _run([str(bin_dir / "dllpool"), "setup"], env, cwd)
    run_readme_example(str(bin_dir / "python"), cwd, env)
