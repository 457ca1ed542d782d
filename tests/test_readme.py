"""The README's Python example runs as printed."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import ROOT


def test_the_readme_example_runs_and_prints_what_it_says() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", readme, re.S)
    assert example is not None
    result = subprocess.run(
        [sys.executable, "-c", example.group(1)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "5 4"
    assert lines[1] == "999000"
    assert lines[2].startswith("ValueError") and "Traceback" in result.stdout
