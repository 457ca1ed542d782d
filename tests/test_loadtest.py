"""``dllpool loadtest`` and ``client.loadtest``, against a real pool of 32-bit demo workers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import Pool
from broker.cli import main
from client.loadtest import CallSpec, LoadProgress, LoadResult, LoadTest, Scenario

from .conftest import ROOT, demo_service

LOADTEST = [sys.executable, "-m", "broker.cli", "loadtest"]


@pytest.fixture(scope="module")
def demo_pool() -> Iterator[Pool]:
    """Two demo workers, with the broker in a process of its own (as `dllpool loadtest` starts a pool)."""
    with Pool.from_config({"services": {"demo": demo_service(workers=2)}}, broker="process") as running:
        yield running


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOADTEST, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_json_has_every_figure_and_the_plot_decodes(demo_pool: Pool, tmp_path: Path) -> None:
    out, png = tmp_path / "run.json", tmp_path / "run.png"
    result = loadtest(
        *("--address", demo_pool.address, "--clients", "2", "--in-flight", "2", "--duration", "2"),
        *("--json", str(out), "--plot", str(png), "demo", "add", "1", "2"),
    )
    assert result.returncode == 0, result.stderr
    assert "calls/s" in result.stdout and "p99.9" in result.stdout  # the table
    data = json.loads(out.read_text())
    assert data["calls"] > 0 and data["ok"] == data["calls"]
    assert data["errors"] == {} and data["error_count"] == 0
    assert 1.9 < data["wall_seconds"] < 3
    assert data["calls_per_second"] == pytest.approx(data["calls"] / data["wall_seconds"])
    latency = data["latency_us"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert data["settings"]["scenario"] == "demo.add(1, 2)" and data["settings"]["mode"] == "closed"
    assert sum(s["calls"] for s in data["seconds"]) == data["calls"]
    assert [s["second"] for s in data["seconds"]] == list(range(len(data["seconds"])))
    assert LoadResult.from_dict(data).histogram.get_total_count() == data["calls"]

    from matplotlib.image import imread

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(png).shape
    assert width >= 600 and height >= 600


def test_open_loop_holds_the_rate_and_reports_progress(demo_pool: Pool) -> None:
    seen: list[LoadProgress] = []
    test = LoadTest(demo_pool.address, ("demo", "add", [1, 2]), clients=2, rate=200, duration=2)
    result = test.run(progress=seen.append)
    assert result.calls == 400 and result.error_count == 0  # the schedule: 200/s for 2 s
    assert result.calls_per_second == pytest.approx(200, rel=0.1)
    assert result.settings["mode"] == "open"
    assert seen and [p.calls for p in seen] == sorted(p.calls for p in seen)
    assert 0 < seen[-1].fraction <= 1


def test_open_loop_latency_counts_from_the_intended_send_time(demo_pool: Pool) -> None:
    """One sender allowed one call at a time, scheduled every 25 ms, of calls that take 50 ms: it falls
    behind, and the n-th answer comes about 25 n ms after the n-th call was meant to go out."""
    test = LoadTest(demo_pool.address, ("demo", "sleep_ms", [50]), rate=40, in_flight=1, requests=16)
    result = test.run()
    assert result.calls == 16 and result.error_count == 0
    assert result.latency_us["max"] > 300_000  # far above the 50 ms a call takes: the queue is counted
    assert result.latency_us["p50"] < result.latency_us["max"]


def test_errors_are_counted_by_type(demo_pool: Pool) -> None:
    mixed = Scenario([CallSpec("demo", "add", (1, 2), weight=3), CallSpec("demo", "nope")])
    result = LoadTest(demo_pool.address, mixed, clients=2, in_flight=2, requests=200).run()
    assert result.calls == 200
    assert set(result.errors) == {"UnknownMethod"} and 0 < result.errors["UnknownMethod"] < 200
    assert result.histogram.get_total_count() == result.ok  # latencies are the successful calls'

    slow = LoadTest(demo_pool.address, ("demo", "sleep_ms", [400]), clients=2, requests=2, timeout=0.1).run()
    assert slow.errors == {"Timeout": 2} and slow.ok == 0


def test_results_merge_into_their_sum(demo_pool: Pool) -> None:
    first = LoadTest(demo_pool.address, ("demo", "add", [1, 2]), requests=150).run()
    second = LoadTest(demo_pool.address, ("demo", "nope", []), requests=50).run()
    merged = LoadResult.from_json(first.merge(second).to_json())
    assert merged.calls == 200 and merged.errors == {"UnknownMethod": 50}
    assert merged.histogram.get_total_count() == first.histogram.get_total_count() == 150
    assert merged.latency_us == first.latency_us  # only the first made successful calls
    assert sum(s.calls for s in merged.seconds) == 200
    assert merged.started_at == first.started_at
    assert merged.wall_seconds >= second.started_at + second.wall_seconds - first.started_at - 1e-6


def test_processes_share_the_clients_and_merge(demo_pool: Pool) -> None:
    test = LoadTest(demo_pool.address, ("demo", "add", [1, 2]), clients=2, in_flight=2, processes=2, requests=300)
    result = test.run()
    assert result.calls == 300 and result.error_count == 0
    assert result.histogram.get_total_count() == 300
    assert result.settings["processes"] == 2 and result.settings["clients"] == 2
    with pytest.raises(ValueError, match="JSON values"):  # the children get the calls as JSON
        LoadTest(demo_pool.address, ("demo", "str_len", [b"abc"]), clients=2, processes=2)


def test_exit_status_follows_max_errors(demo_pool: Pool) -> None:
    failing = ("--address", demo_pool.address, "--requests", "20", "--quiet", "demo", "nope")
    failed = loadtest(*failing)
    assert failed.returncode == 1
    assert "20 of 20 calls failed (UnknownMethod 20), more than --max-errors 0" in failed.stderr
    assert loadtest(*failing, "--max-errors", "20").returncode == 0


def test_scenario_file(demo_pool: Pool, tmp_path: Path) -> None:
    path = tmp_path / "mix.toml"
    path.write_text(
        '[[call]]\nservice = "demo"\nmethod = "add"\nargs = [1, 2]\nweight = 3\n\n'
        '[[call]]\nservice = "demo"\nmethod = "pointer_size"\n'
    )
    scenario = Scenario.from_toml(path)
    assert [(c.method, c.weight) for c in scenario.calls] == [("add", 3.0), ("pointer_size", 1.0)]
    shipped = Scenario.from_toml(ROOT / "examples" / "loadtest_mix.toml")
    assert {c.method for c in shipped.calls} == {"add", "scale_sum", "sleep_ms"}
    assert LoadTest(demo_pool.address, scenario, requests=40).run().calls == 40
    path.write_text('[[call]]\nservice = "demo"\nweight = 0\n')
    with pytest.raises(ValueError, match="call 1"):
        Scenario.from_toml(path)

    script = tmp_path / "mix.py"
    script.write_text(
        "from client import CallSpec\nscenario = [CallSpec('demo', 'add', (i, i), weight=i) for i in (1, 2, 3)]\n"
    )
    assert [c.args for c in Scenario.from_file(script).calls] == [(1, 1), (2, 2), (3, 3)]
    script.write_text("scenario = 42\n")
    with pytest.raises(ValueError, match="must set scenario"):
        Scenario.from_file(script)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "ipc:///nowhere", "demo"], "METHOD"),
        (["--address", "ipc:///nowhere", "demo", "add", "x"], "JSON literal"),
        (["--address", "ipc:///nowhere", "-c", "pool.toml", "demo", "add"], "not both"),
        (["--address", "ipc:///nowhere", "--processes", "3", "demo", "add", "1", "2"], "at least as many clients"),
        (["--duration", "1", "--requests", "5", "demo", "add"], "not allowed with"),
        (["--address", "ipc:///nowhere", "--rate", "0", "demo", "add"], "must be > 0"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loadtest", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_ramp_example_runs(demo_pool: Pool) -> None:
    script = ROOT / "examples" / "loadtest_ramp.py"
    args = ["--address", demo_pool.address, "--rates", "100", "200", "--seconds", "0.5"]
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "all steps: 150 calls" in result.stdout


def test_stop_ends_a_run_early_with_what_ran(demo_pool: Pool) -> None:
    test = LoadTest(demo_pool.address, ("demo", "add", [1, 2]), clients=2, duration=60)
    result = test.run(progress=lambda progress: test.stop())
    assert result.interrupted and result.calls > 0 and result.error_count == 0
    assert result.wall_seconds < 30
