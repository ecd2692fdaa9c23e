"""The digits testbed of examples/digits: disjoint splits, published-format pairs, a cached standard pipeline that
steering runs on, and a cached judge (tiny training budgets: the real ones are measured by examples/digits)."""

import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "digits"))
import digits  # noqa: E402

from llava_reward.steering import fk_steering  # noqa: E402
from llava_reward.trainers.data import load_preference_data  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread(one_intraop_thread):
    yield


def test_splits_are_disjoint_stratified_and_cover_every_digit_once():
    splits = digits.load_splits()
    assert sum(len(split.labels) for split in splits.values()) == 1797
    rows = torch.cat([split.digits.flatten(1) for split in splits.values()])
    assert torch.unique(rows, dim=0).shape[0] == torch.unique(torch.cat([rows, rows]), dim=0).shape[0]
    for name, split in splits.items():
        counts = torch.bincount(split.labels, minlength=10).float()
        share = counts / torch.bincount(torch.cat([s.labels for s in splits.values()]), minlength=10)
        assert torch.allclose(share, torch.full((10,), digits.SPLIT_FRACTIONS[name]), atol=0.01), name
    again = digits.load_splits()
    assert all(torch.equal(again[name].digits, split.digits) for name, split in splits.items())


def test_pixels_are_dark_ink_on_white_rgb():
    pixels = digits.to_pixels(torch.tensor([[[0.0] * 8] * 8, [[1.0] * 8] * 8]), 32)
    assert pixels.shape == (2, 3, 32, 32)
    assert pixels[0].min() == 1.0 and pixels[1].max() == 0.0


def test_alignment_pairs_load_as_published_pairs(tmp_path):
    split = digits.load_splits()["test"]
    path = digits.write_alignment_pairs(split, tmp_path, "test", rejections=2)
    rows = json.loads(path.read_text())
    assert len(rows) == 2 * len(split.labels)
    assert all(row["prompt"] == f"a handwritten digit {row['chosen_digit']}" for row in rows)
    assert all(row["chosen_digit"] != row["reject_digit"] for row in rows)
    dataset = load_preference_data(path)
    assert len(dataset) == len(rows) and set(dataset.column_names) >= {"prompt", "chosen", "rejected"}
    assert Path(dataset[0]["chosen"]).is_file()


def test_generator_is_a_cached_standard_pipeline_that_steering_runs_on(tmp_path):
    settings = digits.GeneratorSettings(vae_steps=2, unet_steps=2, batch_size=4)
    messages = []
    folder = digits.trained_generator(tmp_path, settings, log=messages.append)
    assert any("training the generator" in message for message in messages)
    assert json.loads((folder / "settings.json").read_text())["unet_steps"] == 2
    messages.clear()
    assert digits.trained_generator(tmp_path, settings, log=messages.append) == folder  # cached: no training
    assert messages == [f"generator: cached in {folder}"]

    pipe = digits.load_generator(folder)
    assert type(pipe) is StableDiffusionPipeline
    brightness = lambda images, prompts, metadata: (images.mean(dim=(1, 2, 3)), {})
    out = fk_steering(pipe, [digits.prompt_for(3)], brightness, num_particles=2, num_inference_steps=3)
    assert out.images.shape == (1, 2, 3, 32, 32)


def test_judge_is_cached_and_scores_held_out_digits(tmp_path):
    settings = digits.JudgeSettings(epochs=1)
    judge, metrics = digits.trained_judge(tmp_path, settings, log=lambda message: None)
    assert metrics["train_images"] == 360 and metrics["test_images"] == 359
    again, _ = digits.trained_judge(tmp_path, settings, log=lambda message: pytest.fail("retrained"))
    images = digits.load_splits()["test"].pixels()[:16]
    assert torch.equal(judge.classify(images), again.classify(images))


@pytest.mark.parametrize("settings", [digits.RewardSettings(), digits.RewardSettings(tuning="lora", hidden_layer=5)])
def test_reward_recipe_is_a_valid_llava_reward_train_recipe(tmp_path, settings):
    import yaml

    from llava_reward.trainers.train import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(digits.recipe(tmp_path / "base", Path("train.json"), Path("model"), settings)))
    recipe = load_recipe(path)
    assert recipe.training.tau == settings.tau and recipe.training.tuning == settings.tuning
    assert recipe.model.head == settings.head and recipe.training.max_steps == settings.max_steps
