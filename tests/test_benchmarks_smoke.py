"""Smoke test of the benchmark suite: every script runs once on the tiny model and writes its JSON report.

Benchmarks are not tests: nothing here looks at a timing. One subprocess runs all scripts (`run_all.py
--in-process --quick`), so torch and transformers are imported once.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_published_design import BREAKDOWN  # noqa: E402
from run_all import SCRIPTS  # noqa: E402


REPORT_KEYS = {
    "benchmark", "description", "command", "date", "duration_s", "cpu_s", "load_average", "machine", "versions", "settings", "timing",
    "memory", "models", "notes", "results", "table",
}
TIMING_KEYS = {"median_s", "q1_s", "q3_s", "runs_s"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    results_dir = tmp_path_factory.mktemp("results")
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--in-process", "--quick", "--threads", "1",
         "--results-dir", str(results_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {path.stem.removesuffix("_quick"): json.loads(path.read_text()) for path in results_dir.glob("*.json")}


def _timings(value):
    """Every timing dict nested anywhere in a result row."""
    if isinstance(value, dict):
        if TIMING_KEYS <= value.keys():
            yield value
        else:
            for item in value.values():
                yield from _timings(item)


def test_every_script_writes_a_complete_report(reports):
    assert set(reports) == set(SCRIPTS)
    for name, report in reports.items():
        assert REPORT_KEYS <= report.keys(), name
        assert report["benchmark"] == name
        assert report["settings"]["quick"] is True and report["settings"]["repeats"] == 2
        assert report["versions"]["torch"] and report["versions"]["transformers"]
        assert report["machine"]["logical_cores"] >= 1
        assert list(report["models"]) == ["tiny"]
        assert report["results"], name
        assert report["table"].count("\n") == len(report["results"]) + 1  # header, rule, one line per row
        for row in report["results"]:
            assert row["model"] == "tiny"
            timings = list(_timings(row))
            assert timings, (name, row)
            for timing in timings:
                assert len(timing["runs_s"]) == 2
                assert timing["q1_s"] <= timing["median_s"] <= timing["q3_s"]
                assert all(run > 0 for run in timing["runs_s"])


def test_memory_is_measured_on_this_machine(reports):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak memory is measured through /proc (Linux) or CUDA")
    peaks = [row["result"]["peak_mb"] for row in reports["early_exit"]["results"]]
    assert all(isinstance(peak, float) and peak >= 0 for peak in peaks)


def test_the_published_design_and_ours_compute_the_same_rewards(reports):
    # The comparison is only fair if both read the same weights: their rewards must agree (the step-by-step
    # variants of the published design included).
    for row in reports["published_design"]["results"]:
        assert row["max_reward_difference"] < 1e-4
        assert set(row["results"]) == {"published", "ours", *BREAKDOWN}


def test_multi_perspective_rewards_equal_separate_scorers(reports):
    rows = reports["multi_perspective"]["results"]
    assert {row["perspectives"] for row in rows} == {1, 2}
    assert all(row["max_reward_difference"] < 1e-4 for row in rows)


def test_early_exit_keeps_only_the_layers_it_reads(reports):
    for row in reports["early_exit"]["results"]:
        assert row["decoder_layers_kept"] == row["hidden_layer"]
