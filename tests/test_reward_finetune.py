"""Reward fine-tuning of a diffusers pipeline by backpropagation (`llava_reward.steering.reward_finetune`): gradients
reach the denoiser only, the weights move, an analytic reward rises on fixed seeded samples, and the pipeline is left
without hooks."""

import math

import pytest
import torch

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward import LlavaRewardScorer
from llava_reward.steering import particle_generators
from llava_reward.steering import reward_finetune
from llava_reward.steering.testing import tiny_sd_pipeline
from llava_reward.testing import tiny_vlm


CALL = dict(num_inference_steps=4, guidance_scale=4.0, eta=1.0)
PROMPTS = ["a cat", "a dog"]


def brightness(pixels, prompts):
    return pixels.mean(dim=(1, 2, 3))  # (B,), an analytic reward whose maximum is known: white images


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def fixed_samples(pipe) -> torch.Tensor:
    return pipe(PROMPTS, generator=particle_generators(7, len(PROMPTS), 1), output_type="pt", **CALL).images


@pytest.fixture
def pipe(one_intraop_thread):
    return tiny_sd_pipeline()


def test_gradients_reach_the_unet_only_and_its_weights_change(pipe):
    unet, frozen = snapshot(pipe.unet), {name: snapshot(getattr(pipe, name)) for name in ("vae", "text_encoder")}
    out = reward_finetune(pipe, PROMPTS, brightness, steps=3, grad_steps=2, learning_rate=1e-3, **CALL)

    assert [record["step"] for record in out.history] == [0, 1, 2]
    assert all(math.isfinite(record["grad_norm"]) and record["grad_norm"] > 0 for record in out.history)
    changed = [name for name, value in pipe.unet.state_dict().items() if not torch.equal(value, unet[name])]
    assert len(changed) > len(unet) // 2
    for name, before in frozen.items():  # the VAE and text encoder pass gradients, never take a step
        assert all(torch.equal(value, before[key]) for key, value in getattr(pipe, name).state_dict().items())
        assert all(parameter.grad is None for parameter in getattr(pipe, name).parameters())


@pytest.mark.parametrize("sign", [1, -1])
def test_the_reward_of_the_same_seeded_samples_moves_its_way(one_intraop_thread, sign):
    # The tiny random VAE decodes nearly flat images: brightness moves by hundredths, in the reward's direction.
    pipe = tiny_sd_pipeline()
    before = brightness(fixed_samples(pipe), PROMPTS)
    out = reward_finetune(pipe, PROMPTS, lambda pixels, prompts: sign * brightness(pixels, prompts), steps=6,
                          grad_steps=2, learning_rate=1e-2, **CALL)
    after = brightness(fixed_samples(pipe), PROMPTS)

    assert (sign * (after - before) > 0.005).all(), (before, after)
    assert out.history[-1]["reward"] > out.history[0]["reward"]


def test_the_pipeline_is_left_as_it_was(pipe):
    flags = {name: [p.requires_grad for p in module.parameters()] for name, module in pipe.components.items()
             if isinstance(module, torch.nn.Module)}
    reward_finetune(pipe, PROMPTS, brightness, steps=1, **CALL)

    assert "forward" not in pipe.unet.__dict__ and "step" not in pipe.scheduler.__dict__  # no hook left
    assert flags == {name: [p.requires_grad for p in pipe.components[name].parameters()] for name in flags}
    images = fixed_samples(pipe)
    assert not images.requires_grad  # the pipeline's own call is under no_grad again
    assert torch.equal(images, fixed_samples(pipe))


def test_runs_are_deterministic(one_intraop_thread):
    weights = []
    for _ in range(2):
        pipe = tiny_sd_pipeline()
        reward_finetune(pipe, PROMPTS, brightness, steps=2, learning_rate=1e-3, seed=3, **CALL)
        weights.append(snapshot(pipe.unet))
    assert all(torch.equal(value, weights[1][name]) for name, value in weights[0].items())


def test_lora_trains_only_the_adapter(pipe):
    from peft import LoraConfig

    pipe.unet.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
    base = {name: value for name, value in snapshot(pipe.unet).items() if "lora" not in name}
    lora = {name: value for name, value in snapshot(pipe.unet).items() if "lora" in name}
    reward_finetune(pipe, PROMPTS, brightness, steps=2, learning_rate=1e-2, **CALL)

    state = pipe.unet.state_dict()
    assert all(torch.equal(state[name], value) for name, value in base.items())
    assert any(not torch.equal(state[name], value) for name, value in lora.items())


def test_a_llava_reward_scorer_drives_the_unet(pipe):
    vlm, vlm_processor = tiny_vlm("llava")
    scorer = LlavaRewardScorer(LlavaRewardModel.from_vlm(vlm), LlavaRewardProcessor.from_vlm_processor(vlm_processor))
    reward_model = snapshot(scorer.model)
    out = reward_finetune(pipe, PROMPTS, scorer, steps=2, learning_rate=1e-3, **CALL)

    assert all(math.isfinite(record["grad_norm"]) and record["grad_norm"] > 0 for record in out.history)
    assert all(torch.equal(value, reward_model[name]) for name, value in scorer.model.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(grad_steps=0), "grad_steps must be in"),
        (dict(grad_steps=5), "grad_steps must be in"),
        (dict(steps=0), "steps >= 1"),
        (dict(output_type="pil"), "Steering sets"),
    ],
)
def test_bad_arguments_are_refused(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        reward_finetune(pipe, PROMPTS, brightness, **{**CALL, **kwargs})


def test_a_reward_without_gradients_is_refused(pipe):
    with pytest.raises(ValueError, match="without gradients"):
        reward_finetune(pipe, PROMPTS, lambda pixels, prompts: brightness(pixels, prompts).detach(), steps=1, **CALL)
