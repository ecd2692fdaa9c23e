"""`llava-reward train`: resume after a kill in the middle of a checkpoint save, Ctrl-C, and one-line errors for
bad output folders, bases, model fields and data (issue 15, cases 9 and 11).

The killed run is a real process that sends itself a SIGKILL in the middle of saving checkpoint-6 (after its weights
and optimizer, before its random states and trainer_state.json); the interrupted run gets a real SIGINT (Ctrl-C).
The rest (the resumed run too) runs the command's `main(argv)` in this process.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llava_reward import LlavaRewardScorer
from llava_reward.cli import main as cli_main
from llava_reward.trainers.train import RecipeError
from llava_reward.trainers.train import resume_checkpoint


REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configuration" / "recipes" / "tiny.yaml")
QUICK = ["--max_steps", "6", "--save_steps", "2", "--eval_strategy", "no", "--per_device_train_batch_size", "2"]

pytestmark = pytest.mark.usefixtures("one_intraop_thread")

# `python -m llava_reward.trainers.train`, except that the save of checkpoint KILL_AT_STEP is cut short by a SIGKILL.
KILLED_DURING_SAVE = """
import os, signal, sys
from transformers import Trainer
from llava_reward.trainers.train import main

kill_at = int(os.environ["KILL_AT_STEP"])
save_rng_state = Trainer._save_rng_state

def save_rng_state_or_die(self, output_dir):
    if self.state.global_step == kill_at:  # weights and optimizer of this checkpoint are written, the rest is not
        os.kill(os.getpid(), signal.SIGKILL)
    return save_rng_state(self, output_dir)

Trainer._save_rng_state = save_rng_state_or_die
sys.exit(main(sys.argv[1:]))
"""


def run(arguments, cwd, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(arguments, cwd=cwd, capture_output=True, text=True, env=environment, timeout=600)


# ------------------------------------------------------------------------------------ case 9: kill during a save


def test_resume_after_a_kill_during_a_checkpoint_save_takes_the_newest_complete_one_and_finishes(
    workdir, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "reward"
    (tmp_path / "driver.py").write_text(KILLED_DURING_SAVE)
    killed = run([sys.executable, str(tmp_path / "driver.py"), "--config", TINY, *QUICK, "--output_dir", str(output)],
                 workdir, KILL_AT_STEP="6")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (output / "checkpoint-4" / "trainer_state.json").is_file()
    assert (output / "checkpoint-6" / "optimizer.pt").is_file()  # the save had begun ...
    assert not (output / "checkpoint-6" / "trainer_state.json").exists()  # ... and was cut short

    monkeypatch.chdir(workdir)
    code = cli_main(["train", "--config", TINY, *QUICK, "--output_dir", str(output), "--resume"])  # as the command

    stdout = capsys.readouterr().out
    assert code == 0
    assert ("[llava-reward] checkpoint-6 is incomplete (no trainer_state.json: its save was interrupted): skipped; "
            "it is written again when training reaches its step") in stdout
    assert f"[llava-reward] resuming from {output / 'checkpoint-4'}" in stdout
    state = json.loads((output / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6  # finished: checkpoint-6 written again, complete
    assert "saved the trained overall reward model" in stdout
    assert LlavaRewardScorer.from_pretrained(output).score("a red square", [
        str(next((workdir / "tiny-task" / "images").iterdir()))
    ]).shape == (1,)

    # A garbage weights file or a cut-short trainer_state.json makes a checkpoint incomplete too, named as such.
    (output / "checkpoint-6" / "reward_head.safetensors").write_bytes(b"\x00garbage, not safetensors")
    state_file = output / "checkpoint-4" / "trainer_state.json"
    state_file.write_text(state_file.read_text()[:40])
    assert resume_checkpoint(True, output, announce=False) == str(output / "checkpoint-2")
    with pytest.raises(RecipeError, match=r"checkpoint-6: cannot resume from it: reward_head\.safetensors is not a "
                                          r"readable safetensors file"):
        resume_checkpoint(str(output / "checkpoint-6"), output)
    for folder in output.glob("checkpoint-*"):
        shutil.rmtree(folder) if folder.name != "checkpoint-6" else None
    with pytest.raises(RecipeError, match=r"--resume: no checkpoint to resume from in .* \(checkpoint-6 is incomplete "
                                          r"\(reward_head\.safetensors is not a readable safetensors file"):
        resume_checkpoint(True, output)


def test_ctrl_c_exits_130_and_says_how_to_resume(workdir, tmp_path, monkeypatch, capsys, sigint_when):
    output = tmp_path / "reward"
    monkeypatch.chdir(workdir)
    # checkpoint-4 begun means checkpoint-2 is finished (a trainer_state.json seen mid-write would not be readable yet)
    sigint_when(lambda: (output / "checkpoint-4").is_dir())

    code = cli_main(["train", "--config", TINY, "--max_steps", "500", "--save_steps", "2", "--eval_strategy", "no",
                     "--per_device_train_batch_size", "2", "--output_dir", str(output)])

    stderr = capsys.readouterr().err
    assert code == 130 and "Traceback" not in stderr
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"llava-reward train: interrupted; rerun with --resume to continue from {output}/"
                                "checkpoint-"), last_line


# ------------------------------------------------------------------------------------ case 11: one-line errors


def train_error(workdir, monkeypatch, capsys, *overrides) -> str:
    monkeypatch.chdir(workdir)
    code = cli_main(["train", "--config", TINY, "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
                     "--output_dir", str(workdir / "out"), *map(str, overrides)])
    error = capsys.readouterr().err.splitlines()
    assert code == 1 and error, error
    assert error[-1].startswith("llava-reward train: error: ") and "Traceback" not in "\n".join(error)
    return error[-1].removeprefix("llava-reward train: error: ")


def write_pairs(folder: Path, rows: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.json").write_text(json.dumps(rows))
    return folder / "pairs.json"


def colour_pairs(workdir: Path, count: int) -> list[dict]:
    images = workdir / "tiny-task" / "images"
    return [{"prompt": "a red square", "chosen_path": str(images / f"train_{index}_red.png"),
             "reject_path": str(images / f"train_{index}_blue.png")} for index in range(count)]


def test_an_output_dir_that_cannot_be_written(workdir, tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("the user's")
    assert train_error(workdir, monkeypatch, capsys, "--output_dir", tmp_path / "a_file") == (
        f"`training.output_dir` {tmp_path / 'a_file'}: cannot be the output folder: it is a file, not a folder."
    )
    assert train_error(workdir, monkeypatch, capsys, "--output_dir", tmp_path / "a_file" / "out") == (
        f"`training.output_dir` {tmp_path / 'a_file' / 'out'}: cannot create the output folder (Not a directory)."
    )
    assert (tmp_path / "a_file").read_text() == "the user's"


def test_a_base_model_that_does_not_exist(workdir, tmp_path, monkeypatch, capsys):
    assert train_error(workdir, monkeypatch, capsys, "--model.base_model", "./no-such-base") == (
        "`model.base_model` ./no-such-base: no such folder."
    )
    message = train_error(workdir, monkeypatch, capsys, "--model.base_model", "nobody/no-such-model")
    assert message.startswith("`model.base_model` nobody/no-such-model: cannot load it (")


def test_an_invalid_model_field_names_the_section(workdir, monkeypatch, capsys):
    message = train_error(workdir, monkeypatch, capsys, "--model.head", "mlp")
    assert message == f"{TINY} [model]: `head` must be one of ('skipca', 'linear'), got 'mlp'."


def test_a_special_token_in_a_training_prompt_is_named_by_its_data_row(workdir, tmp_path, monkeypatch, capsys):
    rows = colour_pairs(workdir, 8)
    rows[5]["prompt"] = "a red <image> square"
    pairs = write_pairs(tmp_path, rows)
    message = train_error(workdir, monkeypatch, capsys, "--data.train", pairs, "--per_device_train_batch_size", "8")
    assert message == "row 5's chosen prompt: contains the tokenizer's special token '<image>'."


def test_on_bad_image_skip_that_leaves_no_rows(workdir, tmp_path, monkeypatch, capsys):
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    pairs = write_pairs(tmp_path, [{"prompt": "a", "chosen_path": "corrupt.png", "reject_path": "corrupt.png"}] * 3)
    message = train_error(workdir, monkeypatch, capsys, "--data.train", pairs, "--data.on_bad_image", "skip")
    assert message.startswith(f"{pairs}: no rows left: the images of all 3 rows are unreadable (on_bad_image='skip'); "
                              "first: row 0, 'chosen': image 0 (")


def test_mjbench_data_of_ties_only(workdir, tmp_path, monkeypatch, capsys):
    examples = tmp_path / "ties" / "examples_ties"
    examples.mkdir(parents=True)
    for name in ("train_0_red.png", "train_0_blue.png"):
        shutil.copy(workdir / "tiny-task" / "images" / name, examples / name)
    rows = [{"caption": "c", "image_0": "train_0_red.png", "image_1": "train_0_blue.png", "label_0": 0.5}] * 2
    (tmp_path / "ties" / "captions.json").write_text(json.dumps(rows))
    message = train_error(workdir, monkeypatch, capsys, "--data.train", tmp_path / "ties")
    assert message == f"{tmp_path / 'ties'}: no usable rows: all 2 pairs are ties, which have no preference to learn."


@pytest.mark.parametrize(
    "line, problem",
    [
        (b'{"prompt": "caf\xe9", "chosen_path": "A", "reject_path": "B"}', "contains bytes that are not valid UTF-8."),
        (b'{"prompt": "a", "chosen_path": "A", "reject_path": "B", "c_rate": "x", "r_rate": 1}',
         "'c_rate' must be a finite number, got 'x'."),
        (b'{"prompt": "a", "chosen_path": ', "not valid JSON (Expecting value"),
        (b'[1, 2]', "expected a JSON object, got list."),
    ],
    ids=["not UTF-8", "c_rate not a number", "malformed line", "not an object"],
)
def test_bad_training_rows_are_named_and_skippable(workdir, tmp_path, monkeypatch, capsys, line, problem):
    good = colour_pairs(workdir, 2)
    images = workdir / "tiny-task" / "images"
    line = line.replace(b'"A"', json.dumps(str(images / "train_0_red.png")).encode())
    line = line.replace(b'"B"', json.dumps(str(images / "train_0_blue.png")).encode())
    (tmp_path / "pairs.jsonl").write_bytes(json.dumps(good[0]).encode() + b"\n" + line + b"\n" +
                                           json.dumps(good[1]).encode() + b"\n")
    message = train_error(workdir, monkeypatch, capsys, "--data.train", tmp_path / "pairs.jsonl")
    assert message.startswith(f"{tmp_path / 'pairs.jsonl'} row 1: {problem}")

    monkeypatch.chdir(workdir)
    code = cli_main(["train", "--config", TINY, "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
                     "--data.train", str(tmp_path / "pairs.jsonl"), "--data.on_bad_row", "skip",
                     "--output_dir", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "reward_head.safetensors").is_file()
