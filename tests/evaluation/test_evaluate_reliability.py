"""`llava-reward evaluate` resumes only with the same weights, never shares its output folder with another run, and
reports bad output folders, devices and all-tie data in one line (issue 15, cases 4, 10 and 11).

The first of two concurrent runs is a real process of the console script, SIGKILLed; an interrupted run gets a real
SIGINT (Ctrl-C); the rest runs the command's `main(argv)` in this process.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward import LlavaRewardScorer
from llava_reward.cli import main
from llava_reward.evaluation import Evaluation
from llava_reward.image_inputs import InputError
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm


LLAVA_REWARD = Path(sys.executable).parent / "llava-reward"


def save_model(folder: Path, seed: int) -> Path:
    """A tiny reward model; another `seed` gives other head weights (a model "retrained" into the same folder)."""
    vlm, vlm_processor = tiny_vlm("llava")
    torch.manual_seed(seed)
    LlavaRewardModel.from_vlm(vlm).save_pretrained(folder)
    LlavaRewardProcessor.from_vlm_processor(vlm_processor).save_pretrained(folder)
    return folder


def write_pairs(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(tiny_images(2, seed=9)):
        image.save(folder / f"{index}.png")
    rows = [{"prompt": f"pair {index}", "chosen_path": "0.png", "reject_path": "1.png"} for index in range(count)]
    (folder / "pairs.json").write_text(json.dumps(rows))
    return folder / "pairs.json"


class Interrupting:
    """A scorer that raises KeyboardInterrupt on its `interrupt_at`-th call (a run stopped midway)."""

    def __init__(self, scorer, interrupt_at: int):
        self.scorer, self.model, self.interrupt_at, self.calls = scorer, scorer.model, interrupt_at, 0

    def score(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return self.scorer.score(*args, **kwargs)


def run_cli(*arguments) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(argument) for argument in arguments])
    return code, stderr.getvalue()


def scored_ids(output: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (output / "scores.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------- case 4: the model is its weights


def test_resuming_after_the_model_was_retrained_into_the_same_folder_is_refused(tmp_path):
    model, pairs, output = tmp_path / "model", write_pairs(tmp_path / "data", 6), tmp_path / "out"
    save_model(model, seed=0)
    with pytest.raises(KeyboardInterrupt):
        Evaluation("pairwise", pairs, output).run(
            Interrupting(LlavaRewardScorer.from_pretrained(model), interrupt_at=3), model=str(model), batch_size=2
        )
    assert len(scored_ids(output)) == 2  # two batches of one pair scored by the first model

    save_model(model, seed=1)  # retrained: same folder, same config, other weights
    retrained = LlavaRewardScorer.from_pretrained(model)
    with pytest.raises(InputError, match=r"holds the scores of other weights: the model at .* changed since they "
                                         r"were scored \(weights fingerprint then sha256:\w+, now sha256:\w+\)"):
        Evaluation("pairwise", pairs, output).run(retrained, model=str(model), batch_size=2)
    assert len(scored_ids(output)) == 2  # nothing mixed in

    metrics = Evaluation("pairwise", pairs, output).run(retrained, model=str(model), batch_size=2, overwrite=True)
    assert metrics["num_rows"] == 6 and len(scored_ids(output)) == 6


def test_the_same_weights_saved_again_resume(tmp_path):
    model, pairs, output = tmp_path / "model", write_pairs(tmp_path / "data", 6), tmp_path / "out"
    save_model(model, seed=0)
    with pytest.raises(KeyboardInterrupt):
        Evaluation("pairwise", pairs, output).run(
            Interrupting(LlavaRewardScorer.from_pretrained(model), interrupt_at=2), model=str(model), batch_size=2
        )
    save_model(model, seed=0)  # rewritten, bit for bit the same weights
    evaluation = Evaluation("pairwise", pairs, output)
    evaluation.run(LlavaRewardScorer.from_pretrained(model), model=str(model), batch_size=2)
    assert evaluation.num_resumed == 1 and sorted(scored_ids(output)) == [str(index) for index in range(6)]


# ------------------------------------------------------------- case 10 and Ctrl-C: one run per folder, resumable


def wait_for_rows(output: Path, process: subprocess.Popen, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (output / "scores.jsonl").is_file() and (output / "scores.jsonl").read_text().count("\n") >= 2:
            return
        time.sleep(0.2)
    raise AssertionError(f"the first run scored nothing in time: {process.communicate()[1][-2000:]}")


def evaluate_command(model: Path, pairs: Path, output: Path) -> list:
    return ["evaluate", "--model", model, "--benchmark", "pairwise", "--data", pairs, "--output", output,
            "--batch-size", "2", "--bootstrap", "10"]


def test_a_second_run_on_the_same_folder_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
    model, pairs, output = save_model(tmp_path / "model", seed=0), write_pairs(tmp_path / "data", 3000), tmp_path / "out"
    command = evaluate_command(model, pairs, output)
    first = subprocess.Popen([LLAVA_REWARD, *map(str, command)], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for_rows(output, first)

        code, stderr = run_cli(*command)

        assert code == 1 and "Traceback" not in stderr, stderr
        assert f"llava-reward evaluate: error: {output} is being written by another evaluation run (pid {first.pid} " \
               f"on " in stderr and "wait for it to finish, or choose another output folder." in stderr
    finally:
        first.kill()  # SIGKILL: the first run gets no chance to release anything
        first.communicate(timeout=60)

    code, stderr = run_cli(*command, "--limit", "20")  # resumes (the first 20 rows: a quick rerun)

    assert code == 0, stderr
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["num_rows"] == 20
    assert len(scored_ids(output)) == len(set(scored_ids(output)))  # no row written twice


def test_ctrl_c_exits_130_saying_a_rerun_resumes(tmp_path, sigint_when):
    model, pairs, output = save_model(tmp_path / "model", seed=0), write_pairs(tmp_path / "data", 3000), tmp_path / "out"
    scores = output / "scores.jsonl"
    sigint_when(lambda: scores.is_file() and scores.read_text().count("\n") >= 2)

    code, stderr = run_cli(*evaluate_command(model, pairs, output))

    assert code == 130 and "Traceback" not in stderr
    assert stderr.rstrip().endswith("llava-reward evaluate: interrupted; rerun the same command to resume (the rows "
                                    "scored so far are kept in scores.jsonl)")
    scored = len(scored_ids(output))
    code, stderr = run_cli(*evaluate_command(model, pairs, output), "--limit", str(scored + 3))
    assert code == 0 and f"resumed: {scored} rows were already scored" in stderr


# ------------------------------------------------------------------------------- case 11: one-line errors


def test_an_output_that_cannot_be_a_folder_is_named_before_the_model_loads(tmp_path):
    pairs = write_pairs(tmp_path / "data", 2)
    (tmp_path / "a_file").write_text("the user's file")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    missing_model = tmp_path / "no-model"  # never loaded: the folder is checked first
    for output, message in [
        (tmp_path / "a_file", "a_file: cannot be the output folder: it is a file, not a folder."),
        (tmp_path / "a_file" / "out", "out: cannot create the output folder (Not a directory)."),
        (tmp_path / "loop", "loop: cannot be the output folder: it is a symbolic link loop"),
    ]:
        code, stderr = run_cli("evaluate", "--model", missing_model, "--benchmark", "pairwise", "--data", pairs,
                               "--output", output)
        assert code == 1 and stderr.startswith("llava-reward evaluate: error: ") and message in stderr, stderr
        assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert (tmp_path / "a_file").read_text() == "the user's file"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine or torch build without CUDA")
@pytest.mark.parametrize("command", ["evaluate", "score"])
def test_device_cuda_without_cuda_is_one_line(tmp_path, command):
    model, pairs = save_model(tmp_path / "model", seed=0), write_pairs(tmp_path / "data", 2)
    arguments = {
        "evaluate": ["--benchmark", "pairwise", "--data", pairs, "--output", tmp_path / "out"],
        "score": ["--prompt", "a", tmp_path / "data" / "0.png"],
    }[command]
    code, stderr = run_cli(command, "--model", model, "--device", "cuda", *arguments)
    assert code == 1 and "Traceback" not in stderr
    assert f"llava-reward {command}: error: --device cuda: no cuda device is available (torch " in stderr
    assert "use --device cpu." in stderr


def test_an_mjbench_folder_of_ties_only_says_so(tmp_path):
    examples = tmp_path / "ties" / "examples_ties"
    examples.mkdir(parents=True)
    for index, image in enumerate(tiny_images(2, seed=1)):
        image.save(examples / f"{index}.png")
    rows = [{"caption": f"c{index}", "image_0": "0.png", "image_1": "1.png", "label_0": 0.5} for index in range(3)]
    (tmp_path / "ties" / "captions.json").write_text(json.dumps(rows))
    code, stderr = run_cli("evaluate", "--model", tmp_path / "no-model", "--benchmark", "mjbench",
                           "--data", tmp_path / "ties", "--output", tmp_path / "out")
    assert code == 1 and "Traceback" not in stderr
    assert stderr == (f"llava-reward evaluate: error: {tmp_path / 'ties'}: no row to score: all 3 rows are human ties "
                      "(label_0 = 0.5), which prefer neither image.\n")


@pytest.mark.parametrize(
    "content, message",
    [
        (b'[{"prompt": "caf\xe9", "chosen_path": "0.png", "reject_path": "1.png"}]',
         "row 0: contains bytes that are not valid UTF-8."),
        (b'[{"prompt": "a", "chosen_path": "0.png", "reject_path": "1.png", "c_rate": "high", "r_rate": 1}]',
         "row 0: 'c_rate' must be a finite number, got 'high'."),
        (b'[42]', "row 0: expected a JSON object, got int."),
    ],
    ids=["not UTF-8", "c_rate not a number", "not an object"],
)
def test_bad_evaluation_rows_are_named_with_their_file_and_skippable(tmp_path, content, message):
    model, data = save_model(tmp_path / "model", seed=0), tmp_path / "data"
    pairs = write_pairs(data, 1)
    good = json.loads(pairs.read_text())[0]
    (data / "bad.json").write_bytes(content[:-1] + b", " + json.dumps(good).encode() + b"]")
    command = ["evaluate", "--model", model, "--benchmark", "pairwise", "--data", data / "bad.json"]

    code, stderr = run_cli(*command, "--output", tmp_path / "stopped")
    assert code == 1 and "Traceback" not in stderr and stderr.count("\n") == 1
    assert f"llava-reward evaluate: error: {data / 'bad.json'} {message} (--skip-bad skips bad rows)" in stderr

    code, stderr = run_cli(*command, "--output", tmp_path / "skipped", "--skip-bad", "--bootstrap", "10")
    assert code == 0, stderr
    assert f"skipped row 0: {message.removeprefix('row 0: ')}" in stderr
    assert scored_ids(tmp_path / "skipped") == ["1"]


def test_a_malformed_jsonl_line_is_named(tmp_path):
    model, data = save_model(tmp_path / "model", seed=0), tmp_path / "data"
    good = json.loads(write_pairs(data, 1).read_text())[0]
    (data / "bad.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    code, stderr = run_cli("evaluate", "--model", model, "--benchmark", "pairwise", "--data", data / "bad.jsonl",
                           "--output", tmp_path / "out")
    assert code == 1 and "Traceback" not in stderr
    assert f"{data / 'bad.jsonl'} row 1: not valid JSON (Expecting property name" in stderr
