"""Training options of the default model's recipes: LoRA in the vision encoder's last blocks, starting from a
trained perspective (`init_from`, e.g. after pre-training on artifact pairs)."""

import json
import re

import pytest
import torch

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardScorer
from llava_reward.bundle import unwrap
from llava_reward.families import get_family
from llava_reward.multi_perspective import load_perspectives
from llava_reward.testing import TINY_FAMILIES
from llava_reward.testing import save_tiny_vlm
from llava_reward.testing import tiny_vlm
from llava_reward.trainers import LlavaRewardTrainer
from llava_reward.trainers import LlavaRewardTrainingConfig
from llava_reward.trainers.data import load_preference_data
from llava_reward.trainers.synthetic import write_colour_task
from llava_reward.trainers.train import load_recipe
from llava_reward.trainers.train import train


pytestmark = pytest.mark.usefixtures("one_intraop_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(save_tiny_vlm("llava", tmp_path_factory.mktemp("base")))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_colour_task(tmp_path_factory.mktemp("task"), train_pairs=16, eval_pairs=8)


def make_trainer(base, task, output_dir, **fields):
    torch.manual_seed(0)
    model = LlavaRewardModel.from_vlm(base, objective="bt")
    settings = dict(output_dir=str(output_dir), use_cpu=True, max_steps=3, per_device_train_batch_size=2,
                    learning_rate=5e-3, lora_r=4, lora_alpha=8, lora_dropout=0.0, save_strategy="no", report_to="none",
                    disable_tqdm=True, seed=0)
    args = LlavaRewardTrainingConfig(**{**settings, **fields})
    return LlavaRewardTrainer(model, args, train_dataset=load_preference_data(task["train_pairs"]))


# ---- LoRA in the vision encoder -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_vision_lora_targets_are_the_linear_layers_of_the_last_vision_blocks(family):
    vlm, _ = tiny_vlm(family)
    rules = get_family(vlm.config.model_type)
    path, used = rules.vision_blocks(vlm)
    target = re.compile(rules.vision_lora_target_modules(vlm, 1))
    matched = {name for name, _ in vlm.named_modules() if target.fullmatch(f"vlm.{name}")}
    expected = {f"{path}.{used - 1}.{name}" for name, module in vlm.get_submodule(path)[used - 1].named_modules()
                if isinstance(module, torch.nn.Linear)}
    assert matched == expected and len(expected) >= 4  # attention and MLP projections of that block, nothing else
    lm_target = re.compile(rules.lora_target_modules)
    assert not any(lm_target.fullmatch(f"vlm.{name}") for name in matched)
    with pytest.raises(ValueError, match=f"has {used} blocks feeding the image features; cannot adapt the last 9"):
        rules.vision_lora_target_modules(vlm, 9)


def test_lora_vision_blocks_trains_the_last_vision_block_and_reloads(base, task, tmp_path):
    output_dir = tmp_path / "repo" / "fidelity"
    trainer = make_trainer(base, task, output_dir, lora_vision_blocks=1)
    model = unwrap(trainer.model)
    path, used = model.family.vision_blocks(model.vlm)
    vision_lora = {name for name, parameter in trainer.model.named_parameters()
                   if "lora_" in name and ".vision_tower." in name}
    assert vision_lora and all(f".{path}.{used - 1}." in name for name in vision_lora)
    before = {name: parameter.detach().clone() for name, parameter in trainer.model.named_parameters()}
    trainer.train()
    trainer.save_model()
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(after[name], before[name]) for name in vision_lora)  # trained, not just attached
    frozen_vision = [name for name in before if ".vision_tower." in name and "lora_" not in name]
    assert all(torch.equal(after[name], before[name]) for name in frozen_vision)

    rows = load_preference_data(task["train_pairs"])[:3]
    with torch.no_grad():
        expected = model.eval()(**trainer.processing_class(rows["prompt"], rows["chosen"])).rewards
    # The vision LoRA is restored on load, by the scorer and by the multi-perspective loader (which must not share
    # the vision encoder's output with other perspectives).
    scores = LlavaRewardScorer.from_pretrained(output_dir).score(rows["prompt"], rows["chosen"])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)
    scores = load_perspectives(tmp_path / "repo", ["fidelity"]).score(rows["prompt"], rows["chosen"])["fidelity"]
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)


def test_without_lora_vision_blocks_the_vision_encoder_has_no_adapter(base, task, tmp_path):
    trainer = make_trainer(base, task, tmp_path)
    assert not any("lora_" in name and ".vision_tower." in name for name, _ in trainer.model.named_parameters())


@pytest.mark.parametrize(
    ("fields", "message"),
    [(dict(lora_vision_blocks=-1), "`lora_vision_blocks` must be >= 0"),
     (dict(lora_vision_blocks=2, tuning="head"), "only applies to tuning='lora'")],
)
def test_lora_vision_blocks_rejects_invalid_values(fields, message):
    with pytest.raises(ValueError, match=message):
        LlavaRewardTrainingConfig(output_dir="out", use_cpu=True, **fields)


# ---- init_from ----------------------------------------------------------------------------------------------------


def recipe(base, train_file, output_dir, **overrides):
    settings = {"model.base_model": base, "data.train": str(train_file), "training.output_dir": str(output_dir),
                "training.max_steps": 2, "training.per_device_train_batch_size": 2, "training.lora_r": 4,
                "training.lora_alpha": 8, "training.use_cpu": True, "training.save_strategy": "no",
                "training.report_to": "none", "training.disable_tqdm": True, "training.eval_strategy": "no",
                "data.eval": None, **overrides}
    return load_recipe("tiny", settings)


def test_init_from_starts_from_the_trained_weights_and_records_their_data(base, task, tmp_path):
    first = train(recipe(base, task["train_pairs"], tmp_path / "pretrained"))
    start = {"model.init_from": str(tmp_path / "pretrained"), "training.max_steps": 0}
    second = train(recipe(base, task["eval_pairs"], tmp_path / "finetuned", **start))
    # Zero steps: the model is exactly the one it started from.
    trained = {name: value for name, value in first.model.named_parameters() if value.requires_grad}
    started = dict(second.model.named_parameters())
    for name, value in trained.items():
        torch.testing.assert_close(started[name], value, msg=name)
    record = json.loads((tmp_path / "finetuned" / "training_data.json").read_text())
    pretrained = json.loads((tmp_path / "pretrained" / "training_data.json").read_text())
    assert set(pretrained["image_fingerprints"]) < set(record["image_fingerprints"])
    assert record["sources"] == [str(task["eval_pairs"]), f"initialised from {tmp_path / 'pretrained'}"]


def test_init_from_a_model_with_other_lora_settings_is_refused(base, task, tmp_path):
    train(recipe(base, task["train_pairs"], tmp_path / "pretrained"))
    with pytest.raises(ValueError, match="its weights do not match this model's"):
        train(recipe(base, task["train_pairs"], tmp_path / "b", **{"model.init_from": str(tmp_path / "pretrained"),
                                                                   "training.lora_vision_blocks": 1}))
    with pytest.raises(ValueError, match="expected an adapter bundle"):
        train(recipe(base, task["train_pairs"], tmp_path / "c", **{"model.init_from": str(tmp_path)}))
