"""`llava-reward evaluate` on tiny saved models and real image files.

End-to-end runs and the interrupted run are real subprocesses of the installed console script (a run is killed as a
user's would be); error cases go through the command's `main` in this process, which is what the console script
calls, to spare each one the seconds of importing torch and transformers.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward.cli import build_parser
from llava_reward.cli import main
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm


VENV_BIN = Path(sys.executable).parent
LLAVA_REWARD = VENV_BIN / "llava-reward"
MJBENCH_HUMAN = Path("/work/shared/data/mjbench_quality/human")
needs_mjbench = pytest.mark.skipif(not MJBENCH_HUMAN.is_dir(), reason="the shared MJ-Bench data is not on this machine")


def run_cli(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run([str(LLAVA_REWARD), *map(str, arguments)], capture_output=True, text=True, timeout=300)


def scored_ids(output: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (output / "scores.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for name, config_fields in [("bt", {}), ("gpm", {"objective": "gpm", "reward_dim": 2})]:
        vlm, vlm_processor = tiny_vlm("llava")
        torch.manual_seed(0)
        folders[name] = tmp_path_factory.mktemp(name)
        LlavaRewardModel.from_vlm(vlm, **config_fields).save_pretrained(folders[name])
        LlavaRewardProcessor.from_vlm_processor(vlm_processor).save_pretrained(folders[name])
    return folders


@pytest.fixture
def tifa(tmp_path) -> Path:
    """A TIFA160-format file: items of two prompts, each image with its human rating; image 2 is missing."""
    for index, image in enumerate(tiny_images(4, seed=7)):
        if index != 2:
            image.save(tmp_path / f"{index}.png")
    rows = [
        {"text_id": f"t{index // 2}", "image_path": f"{index}.png", "text": f"prompt {index // 2}", "human_avg": rating}
        for index, rating in enumerate([1.0, 3.5, 2.0, 5.0])
    ]
    (tmp_path / "tifa160.json").write_text(json.dumps(rows))
    return tmp_path / "tifa160.json"


def test_evaluate_is_a_registered_subcommand():
    args = build_parser().parse_args(["evaluate", "--model", "m", "--benchmark", "tifa160", "--data", "d", "--output", "o"])
    assert (args.command, args.benchmark, args.batch_size, args.skip_bad, args.pos_label) == ("evaluate", "tifa160", 8, False, 1)


@needs_mjbench
def test_evaluate_mjbench_human_writes_the_four_outputs(models, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        "evaluate", "--model", models["bt"], "--benchmark", "mjbench", "--data", MJBENCH_HUMAN, "--output", out,
        "--limit", "4", "--batch-size", "4", "--bootstrap", "100",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "llava-reward evaluate: mjbench, 4 rows: accuracy_with_ties " in result.stderr
    assert {path.name for path in out.iterdir()} == {"metrics.json", "report.md", "scores.jsonl", "reward_histogram.png", "reliability.png"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == str(models["bt"]) and metrics["data"] == str(MJBENCH_HUMAN)
    assert metrics["num_rows"] == 4 and metrics["package_version"] == "0.1.0"
    assert metrics["protocol"] == {"tie_threshold": 0.0, "num_bootstrap": 100, "seed": 0, "num_bins": 10, "limit": 4}
    assert metrics["model_options"] == {"subfolder": None, "dtype": None}
    assert scored_ids(out) == ["0", "1", "2", "3"]
    report = (out / "report.md").read_text()
    ours = metrics["results"]["overall"]["accuracy_with_ties"]
    assert f"| human | accuracy w/ tie | HPS v2.1 | 0.980 | {ours:.3f} |" in report


@needs_mjbench
def test_a_killed_run_resumes_where_it_stopped(models, tmp_path):
    out = tmp_path / "out"
    command = [str(LLAVA_REWARD), "evaluate", "--model", str(models["bt"]), "--benchmark", "mjbench",
               "--data", str(MJBENCH_HUMAN), "--output", str(out), "--limit", "12", "--batch-size", "2", "--bootstrap", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scores = out / "scores.jsonl"
    while process.poll() is None and not (scores.is_file() and scores.read_text().count("\n") >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be interrupted"
    scored_before = scores.read_text().count("\n")  # complete lines; a line cut by the kill is rescored
    assert 2 <= scored_before < 12

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resumed: {scored_before} rows were already scored" in result.stderr
    assert scored_ids(out) == [str(index) for index in range(12)]
    assert json.loads((out / "metrics.json").read_text())["results"]["overall"]["num_pairs"] == 12


def evaluate_in_process(capsys, *arguments) -> tuple[int, str]:
    """`llava-reward evaluate ARGUMENTS` through the command's `main` (no new process): (exit code, stderr)."""
    try:
        code = main(["evaluate", *map(str, arguments)])
    except SystemExit as exit:  # argparse usage errors
        code = exit.code
    return code, capsys.readouterr().err


def test_bad_rows_stop_the_run_or_are_skipped(models, tifa, tmp_path, capsys):
    code, stderr = evaluate_in_process(capsys, "--model", models["bt"], "--benchmark", "tifa160", "--data", tifa, "--output", tmp_path / "stop")
    assert code == 1
    assert stderr == f"llava-reward evaluate: error: {tifa} row 2: 'image_path': image file '2.png' not found (looked under {tifa.parent}). (--skip-bad skips bad rows)\n"
    assert not (tmp_path / "stop").exists()

    code, stderr = evaluate_in_process(
        capsys, "--model", models["bt"], "--benchmark", "tifa160", "--data", tifa, "--output", tmp_path / "skip", "--skip-bad"
    )
    assert code == 0, stderr
    assert "llava-reward evaluate: skipped row 2: " in stderr
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert metrics["num_rows"] == 3 and [row["id"] for row in metrics["skipped_rows"]] == ["2"]
    assert scored_ids(tmp_path / "skip") == ["0", "1", "3"]


def test_user_errors_exit_1_with_one_line_and_usage_errors_exit_2(models, tifa, tmp_path, capsys):
    common = ["--output", tmp_path / "out", "--skip-bad"]
    code, stderr = evaluate_in_process(capsys, "--model", models["gpm"], "--benchmark", "tifa160", "--data", tifa, *common)
    last_line = stderr.splitlines()[-1]  # after the model loader's progress bar
    assert code == 1 and last_line.startswith("llava-reward evaluate: error: ") and "Traceback" not in stderr
    assert "needs a scalar reward (objective 'bt' or 'ce')" in last_line
    code, stderr = evaluate_in_process(capsys, "--model", models["bt"], "--benchmark", "unpaired", "--data", tmp_path / "nowhere.json", *common)
    assert (code, stderr) == (1, f"llava-reward evaluate: error: {tmp_path / 'nowhere.json'}: no such file or folder.\n")
    code, stderr = evaluate_in_process(capsys, "--model", tmp_path / "no_model", "--benchmark", "tifa160", "--data", tifa, *common)
    assert code == 1 and "--model" in stderr and "no_model" in stderr
    code, stderr = evaluate_in_process(capsys, "--model", models["bt"], "--data", tifa, *common)
    assert code == 2 and "the following arguments are required: --benchmark" in stderr
    code, stderr = evaluate_in_process(capsys, "--model", models["bt"], "--benchmark", "tifa160", "--data", tifa, *common, "--tie-threshold", "-1")
    assert code == 2 and "--tie-threshold and --bootstrap must be >= 0" in stderr


# ----------------------------------------------------------------------------- several processes


def close(value, expected) -> bool:
    """Equal JSON values, floats to 1e-6 relative: under `accelerate launch` the same batch can round its last bit
    differently (torchrun's processes match a lone process bit for bit)."""
    if isinstance(value, float) and isinstance(expected, float):
        return math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(value, dict) and isinstance(expected, dict):
        return value.keys() == expected.keys() and all(close(value[key], expected[key]) for key in value)
    if isinstance(value, list) and isinstance(expected, list):
        return len(value) == len(expected) and all(map(close, value, expected))
    return value == expected


def same_scores(output: Path, expected: Path) -> bool:
    """The same rows, in the same order, with the same fields and (to float rounding) rewards."""
    return close(*([json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
                   for folder in (output, expected)))


def launched(launcher: list[str], arguments: list, tmp_path: Path) -> str:
    command = [*launcher, "-m", "llava_reward.cli", "evaluate", *map(str, arguments)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@needs_mjbench
def test_two_processes_write_what_one_writes_and_resume_a_folder(models, tmp_path):
    # 7 pairs in batches of 2 pairs: 4 batches, so the second process gets one batch fewer than the first.
    common = ["--model", models["bt"], "--benchmark", "mjbench", "--data", MJBENCH_HUMAN, "--limit", "7", "--batch-size", "4",
              "--bootstrap", "50"]
    alone = tmp_path / "alone"
    launched([sys.executable], [*common, "--output", alone], tmp_path)  # one thread, as each launched process has

    shared = tmp_path / "accelerate"
    # --multi_gpu starts N processes also without a GPU (gloo); `--cpu --num_processes 2` would start one.
    stderr = launched([str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
                      [*common, "--output", shared], tmp_path)
    assert stderr.count("llava-reward evaluate: model ") == 2  # both processes loaded the model
    assert stderr.count("llava-reward evaluate: mjbench, 7 rows: accuracy_with_ties") == 1  # the main process reports
    assert same_scores(shared, alone)
    metrics_alone = json.loads((alone / "metrics.json").read_text())
    assert close(json.loads((shared / "metrics.json").read_text()), metrics_alone)

    # A folder holding the first 3 rows (an interrupted one-process run) is finished by 2 torchrun processes.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(alone / "metrics.json", resumed / "metrics.json")
    lines = (alone / "scores.jsonl").read_text().splitlines(keepends=True)
    (resumed / "scores.jsonl").write_text("".join(lines[:3]) + lines[3][:10])  # and a line cut short
    stderr = launched([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"],
                      [*common, "--output", resumed], tmp_path)
    assert "resumed: 3 rows were already scored" in stderr
    assert same_scores(resumed, alone)
    assert close(json.loads((resumed / "metrics.json").read_text())["results"], metrics_alone["results"])
