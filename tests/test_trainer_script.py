"""The training script: recipes, overrides, `llava-reward train`, `--resume`, and a real two-process DDP run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llava_reward import LlavaRewardScorer
from llava_reward.cli import main as cli_main
from llava_reward.trainers.train import RecipeError
from llava_reward.trainers.train import load_recipe
from llava_reward.trainers.train import main
from llava_reward.trainers.train import parse_overrides


REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configuration" / "recipes").glob("*.yaml"))
DEMO_RECIPE = REPO / "configuration" / "recipes" / "default_fidelity.yaml"  # `llava-reward demo` fills in its paths
VENV_BIN = Path(sys.executable).parent


pytestmark = pytest.mark.usefixtures("one_intraop_thread")


@pytest.mark.parametrize("recipe", [path for path in RECIPES if path != DEMO_RECIPE],
                         ids=[path.stem for path in RECIPES if path != DEMO_RECIPE])
def test_every_recipe_is_valid(recipe):
    loaded = load_recipe(recipe, {"use_cpu": True})  # on a machine without GPU, as CI is
    assert loaded.model.base_model and loaded.data.train and loaded.training.output_dir
    if recipe.stem != "tiny":  # the paper's settings
        args = loaded.training
        assert (args.tuning, args.lora_r, args.lora_alpha, args.lora_dropout) == ("lora", 128, 256, 0.05)
        # The paper's global batch of 32 pairs: 8 x 4 on one process, or 1 x 4 on each of 8 (the 32B / 72B recipes).
        processes = 8 if recipe.stem.startswith(("qwen2_5_vl_32b", "qwen2_5_vl_72b")) else 1
        assert args.learning_rate == 2e-4
        assert processes * args.per_device_train_batch_size * args.gradient_accumulation_steps == 32
        assert args.num_train_epochs == 1 and args.tau == 0.1
        assert args.objective == ("ce" if "safety" in recipe.stem else "bt")
        assert loaded.model.perspective in recipe.stem and loaded.model.trust_remote_code == ("phi" in recipe.stem)


def test_the_demo_recipe_is_valid_once_the_demo_fills_in_its_paths(tmp_path):
    with pytest.raises(RecipeError, match=r"`model.base_model` is required"):
        load_recipe(DEMO_RECIPE)
    filled = {"model.base_model": "backbone", "data.train": "pairs.json", "training.output_dir": str(tmp_path)}
    loaded = load_recipe(DEMO_RECIPE, filled)
    assert (loaded.model.perspective, loaded.training.objective, loaded.training.use_cpu) == ("fidelity", "bt", True)
    assert loaded.model.trust_remote_code is False and loaded.training.max_steps > 0


def test_accelerate_configs_cover_ddp_fsdp_and_zero():
    import yaml

    kinds = {
        path.stem: yaml.safe_load(path.read_text()) for path in (REPO / "configuration" / "accelerate").glob("*.yaml")
    }
    assert {config["distributed_type"] for config in kinds.values()} == {"MULTI_GPU", "FSDP", "DEEPSPEED"}
    assert sorted(
        config["deepspeed_config"]["zero_stage"] for config in kinds.values() if "deepspeed_config" in config
    ) == [2, 3]


def test_overrides_reach_every_section_and_parse_as_yaml_1_2(tmp_path):
    recipe = load_recipe(
        REPO / "configuration" / "recipes" / "tiny.yaml",
        parse_overrides(
            ["--learning_rate", "1e-4", "--model.base_model=/x", "--data.train", "t.json", "--eval_strategy", "no"]
        ),
    )
    assert recipe.training.learning_rate == 1e-4 and recipe.training.eval_strategy == "no"
    assert recipe.model.base_model == "/x" and recipe.data.train == "t.json"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--learning_rat", "1"], r"unknown key 'learning_rat'\. Did you mean learning_rate"),
        (["--model.hed", "linear"], r"\[model\]: unknown key 'hed'\. Did you mean head"),
        (["--optim.lr", "1"], r"unknown section 'optim'"),
        (["--tuning", "qlora"], r"\[training\]: `tuning` must be one of"),
        (["--max_steps"], r"--max_steps needs a value"),
        (["learning_rate", "1"], r"Expected --key value, got 'learning_rate'"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(REPO / "configuration" / "recipes" / "tiny.yaml", parse_overrides(overrides))


def run(args, cwd, **env):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=environment, timeout=300)


TINY = str(REPO / "configuration" / "recipes" / "tiny.yaml")
QUICK = ["--max_steps", "4", "--save_steps", "2", "--eval_steps", "2", "--per_device_train_batch_size", "2"]


def test_cli_trains_the_tiny_recipe_and_resumes(workdir, monkeypatch):
    result = run([str(VENV_BIN / "llava-reward"), "train", "--config", TINY, *QUICK], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    output = workdir / "tiny-task" / "reward"
    assert "parameters trainable" in result.stdout and "saved the trained overall reward model" in result.stdout
    assert {"checkpoint-2", "checkpoint-4"} <= {path.name for path in output.iterdir()}
    scores = LlavaRewardScorer.from_pretrained(output).score(
        "a red square", [str(next((workdir / "tiny-task" / "images").iterdir()))]
    )
    assert scores.shape == (1,)

    # --resume continues from checkpoint-4 up to the new max_steps (in-process, through the same entry point):
    # steps 1-4 are not run again, so their checkpoints are not rewritten.
    first_run = (output / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns
    monkeypatch.chdir(workdir)
    assert main(["--config", TINY, *QUICK, "--max_steps", "6", "--resume"]) == 0
    state = json.loads((output / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert (output / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns == first_run


def test_cli_reports_bad_input_in_one_line(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    (tmp_path / "pairs.json").write_text(
        json.dumps([{"prompt": "p", "chosen_path": "gone.png", "reject_path": "x.png"}])
    )
    assert cli_main(["train", "--config", TINY, "--data.train", str(tmp_path / "pairs.json")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("llava-reward train: error:") and error.count("\n") == 1  # one line, no traceback
    assert "pairs.json row 0: 'chosen_path': image file 'gone.png' not found" in error

    assert cli_main(["train", "--config", TINY, "--output_dir", str(tmp_path / "new"), "--resume"]) == 1
    assert "--resume: no checkpoint to resume from" in capsys.readouterr().err

    assert cli_main(["train", "--config", TINY, "--learning_rat", "1"]) == 1
    assert "unknown key 'learning_rat'. Did you mean learning_rate?" in capsys.readouterr().err


DRIVER = """
import json, os, sys
from pathlib import Path
from safetensors.torch import save_file
from llava_reward.trainers.train import load_recipe, parse_overrides, train

recipe = load_recipe(sys.argv[1], parse_overrides(sys.argv[2:]))
trainer = train(recipe)  # what `python -m llava_reward.trainers.train` runs, on every rank
rank = int(os.environ.get("RANK", "0"))
output = Path(recipe.training.output_dir)
losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
(output / f"rank{rank}.json").write_text(json.dumps({"losses": losses, "world_size": trainer.args.world_size}))
trainable = {name: p.detach().contiguous() for name, p in trainer.model.named_parameters() if p.requires_grad}
save_file(trainable, output / f"rank{rank}.safetensors")
"""


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(workdir, tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    common = [TINY, "--max_steps", "4", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no"]
    ddp = run(
        [
            str(VENV_BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            str(tmp_path / "driver.py"),
            *common,
            "--per_device_train_batch_size",
            "2",
            "--output_dir",
            str(tmp_path / "ddp"),
        ],
        workdir,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run(
        [
            sys.executable,
            str(tmp_path / "driver.py"),
            *common,
            "--per_device_train_batch_size",
            "4",
            "--output_dir",
            str(tmp_path / "one"),
        ],
        workdir,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    ranks = [json.loads((tmp_path / "ddp" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    reference = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert [rank["world_size"] for rank in ranks] == [2, 2] and reference["world_size"] == 1
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == 4  # both ranks agree
    assert ranks[0]["losses"] == pytest.approx(reference["losses"], rel=1e-4, abs=1e-6)

    weights = [load_file(tmp_path / "ddp" / f"rank{rank}.safetensors") for rank in (0, 1)]
    expected = load_file(tmp_path / "one" / "rank0.safetensors")
    assert weights[0].keys() == expected.keys() and any("lora_A" in name for name in expected)
    for name, value in expected.items():
        assert torch.equal(weights[0][name], weights[1][name]), name  # DDP keeps the replicas identical
        # Adam divides each gradient by its own running magnitude, which turns the last-bit differences of DDP's
        # reduction order into weight differences up to ~2e-5 after 4 steps at lr 5e-3 (measured on two machines):
        # 1 % of one step, far from any real divergence.
        torch.testing.assert_close(weights[0][name], value, atol=5e-5, rtol=1e-4, msg=name)
    assert (tmp_path / "ddp" / "reward_head.safetensors").is_file()  # rank 0 saved the bundle
