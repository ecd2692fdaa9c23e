"""`llava-reward score/compare --output F` never loses the user's file (issue 15, case 8).

F used to be truncated when the run started: a run that failed at row 9 left F with rows 0-7 only, and `--output`
equal to `--input` destroyed the input. F is now written through a partial file beside it and replaced only when the
run succeeds; a failed run says where the lines it wrote are. These run `main(argv)` in this process (what the
console script runs); the interrupted run gets a real SIGINT (Ctrl-C).
"""

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward.cli import main
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm
from llava_reward.testing import write_bad_image_files


OLD = '{"an old result": "the user keeps it"}\n'


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    vlm, vlm_processor = tiny_vlm("llava")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    LlavaRewardModel.from_vlm(vlm).save_pretrained(folder)
    LlavaRewardProcessor.from_vlm_processor(vlm_processor).save_pretrained(folder)
    return folder


def write_rows(folder: Path, count: int, bad_row: int | None = None) -> Path:
    """`count` unpaired rows with real images; row `bad_row` names a truncated PNG (found only when it is decoded,
    in the middle of the run)."""
    for index, image in enumerate(tiny_images(count, seed=5)):
        image.save(folder / f"{index}.png")
    truncated = write_bad_image_files(folder)["truncated"]
    rows = [
        {"prompt": f"image {index}", "path": truncated.name if index == bad_row else f"{index}.png", "label": 1}
        for index in range(count)
    ]
    (folder / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "rows.jsonl"


def run(*arguments) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(argument) for argument in arguments])
    return code, stderr.getvalue()


def partial_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.partial-*"))


def test_a_run_that_fails_midway_leaves_the_old_output_and_says_where_its_lines_are(model, tmp_path):
    rows = write_rows(tmp_path, 12, bad_row=9)
    output = tmp_path / "out.jsonl"
    output.write_text(OLD)

    code, stderr = run("score", "--model", model, "--input", rows, "--output", output, "--batch-size", "2")

    assert code == 1 and "Traceback" not in stderr
    assert "llava-reward score: error: " in stderr and "row 9" in stderr
    assert output.read_text() == OLD  # untouched
    [partial] = partial_files(tmp_path)
    assert f"{output} was left as it was; the lines written before it stopped are in {partial}." in stderr
    assert [json.loads(line)["row"] for line in partial.read_text().splitlines()] == list(range(8))


def test_a_successful_run_replaces_the_output_keeping_its_permissions(model, tmp_path):
    rows = write_rows(tmp_path, 3)
    output = tmp_path / "out.jsonl"
    output.write_text(OLD)
    os.chmod(output, 0o640)

    code, stderr = run("score", "--model", model, "--input", rows, "--output", output)

    assert code == 0, stderr
    assert [json.loads(line)["row"] for line in output.read_text().splitlines()] == [0, 1, 2]
    assert output.stat().st_mode & 0o777 == 0o640
    assert partial_files(tmp_path) == []


@pytest.mark.parametrize("which", ["--input", "an image of a row", "an IMAGE argument"])
def test_output_that_is_an_input_is_refused_and_the_input_kept(model, tmp_path, which):
    rows = write_rows(tmp_path, 12, bad_row=9)
    if which == "--input":
        target, arguments = rows, ["score", "--input", rows]
    elif which == "an image of a row":
        target, arguments = tmp_path / "3.png", ["score", "--input", rows]
    else:
        target, arguments = tmp_path / "0.png", ["compare", "--prompt", "a", tmp_path / "0.png", tmp_path / "1.png"]
    before = target.read_bytes()
    os.symlink(target, tmp_path / "link")  # the same file under another name is caught too

    code, stderr = run(*arguments, "--model", model, "--output", tmp_path / "link")

    assert code == 1 and "Traceback" not in stderr
    assert f"--output {tmp_path / 'link'} is also an input ({target}): writing it would destroy it." in stderr
    assert target.read_bytes() == before and partial_files(tmp_path) == []


def test_output_onto_a_folder_is_refused_before_the_model_loads(model, tmp_path):
    rows = write_rows(tmp_path, 1)
    code, stderr = run("score", "--model", tmp_path / "no-model", "--input", rows, "--output", tmp_path)
    assert code == 1 and f"--output {tmp_path}: is a folder; name the file to write." in stderr


def test_ctrl_c_leaves_the_old_output(model, tmp_path, sigint_when):
    rows = write_rows(tmp_path, 400)
    output = tmp_path / "out.jsonl"
    output.write_text(OLD)
    sigint_when(lambda: any(path.stat().st_size for path in partial_files(tmp_path)))  # once lines are written

    code, stderr = run("score", "--model", model, "--input", rows, "--output", output, "--batch-size", "1")

    assert code == 130 and "Traceback" not in stderr
    assert stderr.rstrip().endswith("llava-reward score: interrupted")  # score cannot resume: no hint
    assert output.read_text() == OLD
    [partial] = partial_files(tmp_path)
    assert f"{output} was left as it was; the lines written before it stopped are in {partial}." in stderr
