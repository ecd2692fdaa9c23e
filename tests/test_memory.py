"""`trainers.memory`: exact parameter counts from the meta device, and the per-GPU memory arithmetic of each set-up."""

import json

import pytest

from llava_reward import LlavaRewardModel
from llava_reward.testing import tiny_vlm
from llava_reward.trainers.memory import SETUPS
from llava_reward.trainers.memory import backbone_config
from llava_reward.trainers.memory import count_parameters
from llava_reward.trainers.memory import estimate_memory
from llava_reward.trainers.memory import main
from llava_reward.trainers.memory import qwen_image_tokens
from llava_reward.trainers.trainer import LlavaRewardTrainingConfig
from llava_reward.trainers.trainer import count_parameters as count_built
from llava_reward.trainers.trainer import prepare_for_training


def test_meta_device_counts_equal_a_built_model():
    vlm, _ = tiny_vlm("qwen2_5_vl")
    counts = count_parameters(vlm.config, lora_r=8)
    model = LlavaRewardModel.from_vlm(vlm, objective="bt")
    args = LlavaRewardTrainingConfig(output_dir="unused", lora_r=8, lora_alpha=16, use_cpu=True)
    trainable, total = count_built(prepare_for_training(model, args))
    assert (counts.trainable, counts.frozen) == (trainable, total - trainable)
    assert counts.lora + counts.projector + counts.head == counts.trainable and counts.lora > 0


def test_qwen2_5_vl_7b_counts_are_the_documented_ones():
    counts = count_parameters(backbone_config("qwen2_5_vl_7b"))
    # docs/training.md: 406.1 M trainable = LoRA 323.0 M + projector 44.6 M + SkipCA and head 38.5 M
    assert [round(n / 1e6, 1) for n in (counts.trainable, counts.lora, counts.projector, counts.head)] == [
        406.1, 323.0, 44.6, 38.5
    ]
    assert round((counts.trainable + counts.frozen) / 1e9, 2) == 8.11


def test_visual_tokens_follow_qwens_28_px_grid():
    vision = backbone_config("qwen2_5_vl_7b").vision_config
    assert qwen_image_tokens(1024, vision) == 37 * 37  # 1024 px -> 1036 px -> 37 x 37 merged patches
    assert qwen_image_tokens(448, vision) == 16 * 16
    assert qwen_image_tokens(20000, vision) == 128 * 128  # capped at 16384 x 28 x 28 pixels


@pytest.fixture(scope="module")
def counts_7b():
    return count_parameters(backbone_config("qwen2_5_vl_7b"))


def test_each_setup_divides_what_it_shards(counts_7b):
    config = backbone_config("qwen2_5_vl_7b")
    estimates = {
        setup: estimate_memory(config, setup=setup, gpus=1 if setup == "single" else 8, counts=counts_7b)
        for setup in SETUPS
    }
    single, gib = estimates["single"], 2**30
    assert single.weights == pytest.approx((2 * counts_7b.frozen + 4 * counts_7b.trainable) / gib)
    assert single.gradients == pytest.approx(4 * counts_7b.trainable / gib)
    assert single.optimizer == pytest.approx(8 * counts_7b.trainable / gib)
    assert estimates["ddp"].gradients == pytest.approx(2 * single.gradients)  # + DDP's gradient buckets
    assert estimates["zero2"].weights == single.weights
    assert estimates["zero2"].optimizer == pytest.approx(single.optimizer / 8)
    two_layers = 2 * 2 * counts_7b.largest_layer / gib  # gathered in bf16: running + prefetched
    for sharded in ("fsdp", "zero3"):
        assert estimates[sharded].weights == pytest.approx(single.weights / 8 + two_layers)
        assert estimates[sharded].activations == single.activations  # per GPU, same pairs per GPU


def test_activations_grow_with_the_batch_and_checkpointing_saves_most_of_them(counts_7b):
    config = backbone_config("qwen2_5_vl_7b")
    on = estimate_memory(config, pairs_per_gpu=8, counts=counts_7b)
    off = estimate_memory(config, pairs_per_gpu=8, activation_checkpointing=False, counts=counts_7b)
    half = estimate_memory(config, pairs_per_gpu=4, activation_checkpointing=False, counts=counts_7b)
    assert 10 * on.activations < off.activations
    assert half.activations == pytest.approx(off.activations / 2)
    assert on.sequence_tokens == 1369 + 32 and on.total < 80 < off.total  # one 80 GB GPU needs checkpointing


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown backbone 'qwen9'"):
        backbone_config("qwen9")
    with pytest.raises(ValueError, match="setup 'single' means one GPU"):
        estimate_memory(tiny_vlm("qwen2_5_vl")[0].config, setup="single", gpus=2)


def test_the_command_prints_one_estimate_as_json(capsys, counts_7b):
    command = ["--backbone", "qwen2_5_vl_7b", "--setup", "fsdp", "--gpus", "8", "--pairs-per-gpu", "1", "--json"]
    assert main(command) == 0
    estimate = json.loads(capsys.readouterr().out)
    assert (estimate["setup"], estimate["gpus"], estimate["trainable"]) == ("fsdp", 8, counts_7b.trainable)
    assert estimate["total"] == pytest.approx(
        sum(estimate[key] for key in ("weights", "gradients", "optimizer", "activations"))
    )
    assert 4 < estimate["total"] < 7  # the recipes' table: 5.3 GiB per GPU
