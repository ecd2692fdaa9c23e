"""Smoke test of `benchmarks/gpu_check.py --tiny`: every section runs on this machine and the report is complete.

The check is meant for a GPU (paper-size model); here it runs its tiny settings on the CPU. Nothing looks at a timing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    results = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu", "--results-dir",
         str(results)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((results / "gpu_check_tiny.json").read_text())
    assert (results / "gpu_check_tiny.md").read_text() == report["table"]
    return report


def test_scoring_rows_time_every_batch_size(report):
    assert [row["batch"] for row in report["scoring"]] == [1, 2]
    for row in report["scoring"]:
        assert row["attention"] == "sdpa" and row["visual_tokens"] > 0
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["forward"]["median_s"])
        assert row["over_paper"] == pytest.approx(row["seconds_per_evaluation"] / 0.35)
    assert any("flash attention: not measured" in note for note in report["notes"])


def test_training_steps_run_with_and_without_checkpointing(report):
    rows = report["training"]
    settings = [(row["image_px"], row["checkpointing"]) for row in rows]
    assert settings == [(64, True), (64, False), (32, True), (32, False)]
    for row in rows:
        assert row["status"] == "ok" and row["result"]["median_s"] > 0 and row["trainable_parameters"] > 0


def test_bf16_rewards_follow_fp32_ones(report):
    (row,) = report["precision"]
    assert row["images"] == 8 and row["max_abs_difference"] > 0  # bf16 really ran
    assert row["pearson"] > 0.9 and row["mean_abs_difference"] < row["reward_std_fp32"]


def test_paths_a_single_device_cannot_run_are_skipped_with_a_reason(report):
    paths = {row["path"]: row for row in report["paths"]}
    two_gpus = paths["FSDP2 / ZeRO-3 / DDP across 2 GPUs"]
    assert two_gpus["status"] == "skipped" and "needs 2 devices" in two_gpus["message"]
    zero3 = paths["DeepSpeed ZeRO-3, 1 process"]
    assert zero3["status"] == "skipped" and zero3["message"] in ("deepspeed is not installed", "DeepSpeed needs CUDA")
