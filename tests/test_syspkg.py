"""The one provisioning path (broker/syspkg.py), driven through a stub ``apt-get`` first on PATH.

The stub logs every invocation; its ``update`` fails the way a mirror in
mid-sync does, and its ``install`` either "installs" (creates a marker file per
package, which is what the requirements check) or fails.  The real dpkg-query
stays in place: only apt's network side is replaced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from broker import demolibs, syspkg
from protocol.errors import RuntimeMissing

from .conftest import ROOT

_STUB = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    root = {root!r}
    args = sys.argv[1:]
    with open(os.path.join(root, "calls.jsonl"), "a") as log:
        log.write(json.dumps(args) + "\\n")
    if args[0] == "update" and {update_fails!r}:
        sys.stderr.write("E: Failed to fetch http://deb.debian.org/debian-security/dists/bookworm-security/main/"
                         "binary-i386/Packages.xz  File has unexpected size (346968 != 364028). "
                         "Mirror sync in progress?\\n")
        sys.exit(100)
    if args[0] == "install":
        if {install_fails!r}:
            sys.stderr.write("E: Unable to locate package " + args[-1] + "\\n")
            sys.exit(100)
        skip = False
        for arg in args[1:]:
            if skip or arg.startswith("-"):
                skip = arg == "-o"
                continue
            open(os.path.join(root, "installed", arg), "w").close()
    """
)


@pytest.fixture()
def stub_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A factory: writes the stub ``apt-get``, puts it first on PATH, returns (requirements, calls())."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # the stub needs no root; the code under test checks for it

    def make(*, update_fails: bool = True, install_fails: bool = False, missing: tuple[str, ...] = ("pkg-a", "pkg-b")):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (tmp_path / "installed").mkdir()
        stub = bin_dir / "apt-get"
        settings = {"update_fails": update_fails, "install_fails": install_fails}
        stub.write_text(_STUB.format(python=sys.executable, root=str(tmp_path), **settings))
        stub.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        for name in ("pkg-present",):
            (tmp_path / "installed" / name).touch()
        requirements = [
            syspkg.Requirement(name, (tmp_path / "installed" / name).exists) for name in ("pkg-present", *missing)
        ]

        def calls() -> list[list[str]]:
            log = tmp_path / "calls.jsonl"
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

        return requirements, calls

    return make


def test_a_failed_update_is_a_warning_and_the_install_still_runs(stub_apt, caplog: pytest.LogCaptureFixture) -> None:
    requirements, calls = stub_apt(update_fails=True)
    with caplog.at_level(logging.WARNING, logger="broker.syspkg"):
        actions = syspkg.provide(requirements, syspkg.Apt(), purpose="build the demo libraries")
    assert actions == ["apt-get update", "apt-get install pkg-a pkg-b"]
    assert all(r.present() for r in requirements)
    assert [c[0] for c in calls()] == ["update", "install"]
    assert calls()[1][-2:] == ["pkg-a", "pkg-b"]  # only what was missing
    assert "Mirror sync in progress?" in caplog.text and "carrying on" in caplog.text


def test_a_failed_install_names_the_packages_and_the_command_to_run_by_hand(stub_apt) -> None:
    requirements, _ = stub_apt(update_fails=True, install_fails=True)
    with pytest.raises(RuntimeMissing) as caught:
        syspkg.provide(requirements, syspkg.Apt(), purpose="build the demo libraries")
    message = str(caught.value)
    assert "could not install pkg-a pkg-b (to build the demo libraries)" in message
    assert "Unable to locate package pkg-b" in message  # apt's own reason
    assert "after a failed refresh" in message  # and that the lists may be stale
    assert "apt-get install -y --no-install-recommends pkg-a pkg-b` by hand" in message
    assert "pkg-present" not in message


def test_nothing_missing_means_no_apt_at_all(stub_apt) -> None:
    requirements, calls = stub_apt(missing=())
    assert syspkg.provide(requirements, syspkg.Apt(), purpose="anything") == []
    assert calls() == []


def test_update_runs_at_most_once_per_setup(stub_apt, tmp_path: Path) -> None:
    """The runtime and the toolchain share one Apt: the second provide() does not refresh again."""
    requirements, calls = stub_apt(update_fails=False)
    apt = syspkg.Apt()
    syspkg.provide(requirements[:2], apt, purpose="first")
    syspkg.provide(requirements, apt, purpose="second")
    assert [c[0] for c in calls()] == ["update", "install", "install"]


def test_without_root_the_error_says_what_to_run(stub_apt, monkeypatch: pytest.MonkeyPatch) -> None:
    requirements, calls = stub_apt()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeMissing, match=r"needs root .*apt-get install -y --no-install-recommends pkg-a pkg-b"):
        syspkg.provide(requirements, syspkg.Apt(), purpose="build the demo libraries")
    assert calls() == []


def test_the_demo_build_gets_a_missing_compiler_through_the_same_path(
    stub_apt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The build of a fresh demo tree whose 32-bit C compiler "is missing" until the stub installs gcc-multilib:
    the failed refresh is a warning, the package is installed, and the real compilers then build all six."""
    _, calls = stub_apt(update_fails=True, missing=())
    marker = tmp_path / "installed" / "gcc-multilib"
    real_probe = demolibs._probe
    monkeypatch.setattr(
        demolibs, "_probe", lambda lang, bits: marker.exists() if lang.packages[bits] == "gcc-multilib" else True
    )
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "examples", tree / "examples", ignore=shutil.ignore_patterns("build"))
    with caplog.at_level(logging.WARNING, logger="broker.syspkg"):
        result = demolibs.build(tree)
    assert [c[0] for c in calls()] == ["update", "install"]
    assert calls()[1][-1] == "gcc-multilib"
    assert result.actions == ("apt-get update", "apt-get install gcc-multilib")
    assert len(result.built) == 8 and real_probe(demolibs._C, 32)
    assert "Mirror sync in progress?" in caplog.text
