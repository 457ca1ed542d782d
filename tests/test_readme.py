"""The README's Python example runs as printed, from any working directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def run_readme_example(python: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run the README's first Python block with ``python`` in ``cwd`` and check what it prints."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", readme, re.S)
    assert example is not None
    result = subprocess.run(
        [python, "-c", example.group(1)], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "5 4"
    assert lines[1] == "999000"
    assert lines[2] == "9999900000"
    assert lines[3].startswith("ValueError") and "Traceback" in result.stdout


def test_the_readme_example_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    run_readme_example(sys.executable, tmp_path)
