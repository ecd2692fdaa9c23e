"""`llava-reward generate`: a tiny saved Stable Diffusion pipeline, steered by a tiny saved reward model; the files
written, rewards that are those of the written images, one-line errors before the models load, the output folder's
safety, and a real console-script run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava_reward.cli import main
from llava_reward.steering import fk_steering
from llava_reward.steering.testing import tiny_sd_pipeline


PROMPTS = ["a cat", "a dog"]


@pytest.fixture(autouse=True)
def one_thread(one_intraop_thread):
    yield


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A tiny SD pipeline (DDIM) and one with a deterministic scheduler, saved as a user's folders, and a tiny
    alignment reward model (an adapter bundle on a tiny LLaVA base)."""
    from diffusers import EulerDiscreteScheduler

    from llava_reward.testing import save_tiny_perspective
    from llava_reward.testing import save_tiny_vlm

    root = tmp_path_factory.mktemp("generate")
    pipe = tiny_sd_pipeline()
    pipe.save_pretrained(root / "sd")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(root / "sd-euler")
    base = save_tiny_vlm("llava", root / "base")
    save_tiny_perspective(base, root / "reward", perspective="alignment", seed=3)
    (root / "prompts.txt").write_text("a cat\n\n  a dog  \n")
    return {"root": root, "sd": root / "sd", "euler": root / "sd-euler", "reward": root / "reward",
            "prompts": root / "prompts.txt"}


def generate(saved, output, *options) -> int:
    return main(["generate", "--pipeline", str(saved["sd"]), "--reward", str(saved["reward"]), "--output",
                 str(output), "--num-inference-steps", "4", "--progress", "none", *options])


def scorer(saved):
    import llava_reward

    return llava_reward.load(saved["reward"])


def png_rewards(saved, output: Path, record: dict) -> torch.Tensor:
    """The reward model's scores of the PNG files written for one prompt."""
    images = [Image.open(output / name).convert("RGB") for name in record["images"]]
    return scorer(saved).score(record["prompt"], images)


def test_best_of_writes_every_candidate_a_grid_and_rewards_of_the_written_images(saved, tmp_path):
    output = tmp_path / "out"
    assert generate(saved, output, "--prompts", str(saved["prompts"]), "--best-of", "3", "--seed", "5") == 0
    results = json.loads((output / "generate.json").read_text())
    assert results["kind"] == "llava-reward generate" and results["method"] == "best-of-n"
    assert [record["prompt"] for record in results["prompts"]] == PROMPTS
    assert [record["seed"] for record in results["prompts"]] == [5, 6]
    assert results["reward"]["perspective"] == "alignment" and results["num_inference_steps"] == 4
    for record in results["prompts"]:
        assert len(record["images"]) == 3 and record["history"] == []
        rewards = torch.tensor(record["rewards"])
        assert record["chosen"] == rewards.argmax().item()
        # The PNGs are the images the reward saw, rounded to 8 bits: their rewards agree to that rounding.
        torch.testing.assert_close(png_rewards(saved, output, record), rewards, atol=2e-3, rtol=0)
        assert rewards.max() - rewards.min() > 2e-2  # so that the comparison above tells the candidates apart
        with Image.open(output / record["grid"]) as grid:
            assert grid.height == 20 + 128 + 16 + 12 and grid.width == 3 * 128 + 4 * 6
    assert sorted(path.name for path in output.iterdir()) == ["generate.json", "prompt-000", "prompt-001"]


def test_fk_writes_the_history_and_the_final_rewards_of_the_written_images(saved, tmp_path):
    output = tmp_path / "out"
    options = ["--prompt", PROMPTS[1], "--fk-particles", "3", "--fk-lmbda", "50", "--fk-resampling-t-start", "1",
               "--fk-resample-frequency", "2", "--seed", "2"]
    assert generate(saved, output, *options) == 0
    results = json.loads((output / "generate.json").read_text())
    assert results["method"] == "fk" and results["sampler"] == "DDIMScheduler(eta=1.0)"
    assert results["fk"]["resampling_steps"] == [1, 3] and results["fk"]["lmbda"] == 50.0
    assert results["fk"]["reward_min_value"] == "-inf"  # the command's default with max: negative rewards count
    (record,) = results["prompts"]
    assert [step["step"] for step in record["history"]] == [1, 3]
    for step in record["history"]:
        assert 1.0 <= step["ess"] <= 3.0 and sum(step["weights"]) == pytest.approx(1.0)
        assert all(0 <= parent < 3 for parent in step["parents"]) and step["resampled"]
    # The last resampling step scores the final samples: the final rewards are its rewards, taken at the parents.
    last = record["history"][-1]
    assert record["rewards"] == [last["rewards"][parent] for parent in last["parents"]]
    torch.testing.assert_close(png_rewards(saved, output, record), torch.tensor(record["rewards"]), atol=2e-3, rtol=0)

    # The same images as the library call with the prompt's seed (and the command's default floor, -inf).
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(saved["sd"])
    out = fk_steering(pipe, PROMPTS[1], scorer(saved), num_particles=3, lmbda=50.0, resampling_t_start=1,
                      resample_frequency=2, reward_min_value=float("-inf"), seed=2, num_inference_steps=4)
    assert [list(image.getdata()) for image in out.to_pil()[0]] == [
        list(Image.open(output / name).getdata()) for name in record["images"]
    ]


def test_a_folder_of_other_files_is_refused_unless_overwrite_and_ours_is_replaced(saved, tmp_path, capsys):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    options = ["--prompt", "a cat", "--best-of", "2"]
    assert generate(saved, output, *options) == 1
    assert "holds files `llava-reward generate` did not write" in capsys.readouterr().err
    assert (output / "notes.txt").read_text() == "keep me"
    assert generate(saved, output, *options, "--overwrite") == 0
    assert not (output / "notes.txt").exists() and (output / "prompt-000" / "grid.png").is_file()
    assert generate(saved, output, "--prompt", "a dog", "--best-of", "2") == 0  # ours: replaced without asking
    assert json.loads((output / "generate.json").read_text())["prompts"][0]["prompt"] == "a dog"
    assert [path.name for path in tmp_path.iterdir()] == ["mine"]  # no staging folder left behind


@pytest.mark.parametrize(
    "options, message",
    [
        (["--prompts", "missing.txt", "--best-of", "2"], "--prompts missing.txt: cannot read it"),
        (["--prompt", "a", "--fk-particles", "2", "--fk-resampling-t-start", "7"],
         "--fk-resampling-t-start=7 is outside the schedule's steps 0..3"),
        (["--prompt", "a", "--best-of", "2", "--device", "cuda:7"], "--device cuda:7"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_the_models_load(saved, tmp_path, capsys, options, message):
    command = ["generate", "--pipeline", str(tmp_path / "no-pipeline"), "--reward", str(tmp_path / "no-reward"),
               "--output", str(tmp_path / "out"), "--num-inference-steps", "4", *options]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options",
    [["--best-of", "2", "--fk-lmbda", "3"], ["--best-of", "2", "--fk-particles", "2"], ["--best-of", "0"], []],
)
def test_usage_errors_exit_2(saved, tmp_path, options):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--pipeline", "p", "--reward", "r", "--output", str(tmp_path / "o"), "--prompt", "a",
              *options])
    assert exit_info.value.code == 2


def test_a_deterministic_scheduler_a_missing_pipeline_and_a_file_as_output_are_refused(saved, tmp_path, capsys):
    common = ["--reward", str(saved["reward"]), "--prompt", "a cat", "--num-inference-steps", "4"]
    assert main(["generate", "--pipeline", str(saved["euler"]), *common, "--fk-particles", "2", "--output",
                 str(tmp_path / "out")]) == 1
    assert "EulerDiscreteScheduler" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["generate", "--pipeline", str(tmp_path / "nothing"), *common, "--best-of", "2", "--output",
                 str(tmp_path / "out")]) == 1
    assert "cannot load a diffusers pipeline" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["generate", "--pipeline", str(saved["sd"]), *common, "--best-of", "2", "--output",
                 str(tmp_path / "file")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["generate", "--pipeline", str(saved["sd"]), *common, "--best-of", "2", "--output",
                 str(saved["root"]), "--overwrite"]) == 1
    assert "holds the input" in capsys.readouterr().err and saved["sd"].is_dir()


def test_the_console_command_runs_from_another_folder(saved, tmp_path):
    command = [str(Path(sys.executable).parent / "llava-reward"), "generate", "--pipeline", str(saved["sd"]),
               "--reward", str(saved["reward"]), "--prompt", "a cat", "--fk-particles", "2",
               "--num-inference-steps", "3", "--output", "out", "--progress", "plain"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "generate: prompt 1/1: chosen candidate" in done.stderr
    results = json.loads((tmp_path / "out" / "generate.json").read_text())
    assert len(results["prompts"][0]["images"]) == 2
    assert (tmp_path / "out" / "prompt-000" / "candidate-1.png").is_file()
