"""Reward fine-tuning of a diffusers pipeline by backpropagation through its last sampling steps (ReFL / DRaFT-K).

Each training step samples a batch with the pipeline's own `__call__` (its scheduler, guidance and call arguments):
the first steps run without gradients, the last `grad_steps` keep the graph, the final latents are decoded by the
VAE in the graph, and the loss `-reward(pixels, prompts).mean()` is backpropagated into the denoiser (UNet or
transformer). No pipeline's denoising loop is copied: the call runs without the `torch.no_grad()` its decorator
sets, and a thin wrapper on the denoiser's `forward` turns gradients off for the early steps.

DRaFT-K (Clark et al., 2024) keeps the last K steps; K = 1 is ReFL-like (Xu et al., 2023, ImageReward), which
backpropagates through one step from a late timestep.
"""

import dataclasses
import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

from llava_reward.multi_perspective import MultiPerspectiveScorer
from llava_reward.scoring import LlavaRewardScorer

from .hooks import check_pipeline
from .hooks import decode_latents
from .hooks import num_inference_steps


DifferentiableReward = Callable[[torch.Tensor, list[str]], torch.Tensor]
MANAGED = ("prompt", "generator", "output_type", "callback_on_step_end", "num_images_per_prompt", "return_dict")


@dataclasses.dataclass
class RewardFinetuneOutput:
    """What `reward_finetune` did: one record per optimiser step (`step`, `reward` (batch mean), `loss`,
    `grad_norm` (before clipping), `seconds`), and the total wall time."""

    history: list[dict]
    seconds: float


def differentiable_reward(reward) -> DifferentiableReward:
    """`reward` as `fn(pixels, prompts) -> rewards (B,)` in the graph: a `LlavaRewardScorer` (its `score_pixels`) or
    any callable `reward(pixels, prompts)` returning a tensor (or `(tensor, info)`) that carries gradients."""
    if isinstance(reward, MultiPerspectiveScorer):
        raise TypeError("Reward fine-tuning needs one scalar reward: pass one perspective's LlavaRewardScorer.")
    function = reward.score_pixels if isinstance(reward, LlavaRewardScorer) else reward
    if not callable(function):
        raise TypeError(f"The reward must be a LlavaRewardScorer or a callable, not {type(reward).__name__}.")

    def reward_fn(pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        rewards = function(pixels, prompts)
        rewards = rewards[0] if isinstance(rewards, tuple) else rewards
        if not torch.is_tensor(rewards) or rewards.numel() != len(prompts):
            raise ValueError(f"The reward must return one scalar per image as a tensor of shape ({len(prompts)},).")
        if not rewards.requires_grad:
            raise ValueError("The reward returned rewards without gradients: it must stay in torch from the pixels "
                             "(no PIL, numpy or .detach()); a LlavaRewardScorer does, through score_pixels.")
        return rewards.reshape(len(prompts)).float()

    return reward_fn


def denoiser_of(pipe) -> torch.nn.Module:
    """The pipeline's denoising network: `unet` (Stable Diffusion, SDXL) or `transformer` (SD3, Flux)."""
    for name in ("unet", "transformer"):
        if isinstance(getattr(pipe, name, None), torch.nn.Module):
            return getattr(pipe, name)
    raise TypeError(f"{type(pipe).__name__} has neither a `unet` nor a `transformer` to fine-tune.")


class LastStepsWithGrad:
    """Within the context, the denoiser's forward runs without gradients except in the last `grad_steps` steps.

    The pipeline's `callback_on_step_end` (`self.callback`) advances the step count; the wrapper is an instance
    attribute, removed on exit, so the denoiser is left exactly as it was.
    """

    def __init__(self, denoiser: torch.nn.Module, total_steps: int, grad_steps: int):
        self.denoiser, self.first_with_grad, self.step = denoiser, total_steps - grad_steps, 0

    def callback(self, pipe, step: int, timestep, tensors: dict) -> dict:
        self.step = step + 1
        return {}

    def __enter__(self):
        forward = self.denoiser.forward

        def forward_with_grad_late(*args, **kwargs):
            with torch.set_grad_enabled(self.step >= self.first_with_grad):
                return forward(*args, **kwargs)

        self.denoiser.forward = forward_with_grad_late
        return self

    def __exit__(self, *exc):
        del self.denoiser.forward  # back to the class's forward
        return False


@contextmanager
def only_trained(pipe, parameters: list[torch.nn.Parameter]):
    """Within the context only `parameters` require gradients among the pipeline's modules (the VAE and the text
    encoders pass gradients without collecting them); every flag is restored on exit."""
    modules = [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]
    flags = {parameter: parameter.requires_grad for module in modules for parameter in module.parameters()}
    trained = {id(parameter) for parameter in parameters}
    try:
        for parameter in flags:
            parameter.requires_grad_(id(parameter) in trained)
        yield
    finally:
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)


def step_generators(seed: int, step: int, count: int) -> list[torch.Generator]:
    # Seeded from (seed, step, row) with a tag, so training noise never repeats the 3-entry (seed, prompt, particle)
    # streams of `particle_generators`, which evaluations use.
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([0xF17E, seed, step, row]).generate_state(1)[0]))
            for row in range(count)]


def reward_finetune(
    pipe,
    prompts: str | list[str],
    reward,
    *,
    steps: int = 200,
    grad_steps: int = 1,
    batch_size: int | None = None,
    learning_rate: float = 1e-4,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    anchor: float = 0.0,
    parameters: list[torch.nn.Parameter] | None = None,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
    **call_kwargs,
) -> RewardFinetuneOutput:
    r"""
    Fine-tune `pipe`'s denoiser in place to raise `reward` on its own samples (ReFL / DRaFT-K).

    Args:
        pipe: a diffusers text-to-image pipeline with `callback_on_step_end` (Stable Diffusion, SDXL, SD3, Flux).
        prompts (`str` or list of `str`): the training prompts, taken in turn, `batch_size` per step.
        reward: a `LlavaRewardScorer` (scored through `score_pixels`) or a callable `reward(pixels, prompts)` whose
            result carries gradients to `pixels` (`(B, 3, H, W)` in [0, 1]).
        steps (`int`, defaults to 200): optimiser steps, each on one freshly sampled batch.
        grad_steps (`int`, defaults to 1): K, the last sampling steps kept in the graph (1: ReFL-like).
        batch_size (`int`, *optional*): prompts per step; defaults to all of them.
        learning_rate, weight_decay: AdamW's.
        max_grad_norm (`float`, defaults to 1.0): gradient clipping (DRaFT's choice; rewards' gradients are spiky).
        anchor (`float`, defaults to 0): weight of `sum ||theta - theta_start||^2`, a pull towards the starting
            weights that limits how far the generator drifts to please the reward (KL-free: no reference model).
        parameters (list of `torch.nn.Parameter`, *optional*): what to train; defaults to the denoiser's parameters
            that require gradients (all of them, or only the LoRA weights after `denoiser.add_adapter(...)`).
        seed (`int`): the sampling noise of step `s` is seeded from `(seed, s, row)`: reruns are identical.
        log (callable, *optional*): called with each step's record.
        **call_kwargs: passed to every pipeline call (`num_inference_steps`, `guidance_scale`, `eta`, ...).

    Returns:
        `RewardFinetuneOutput`. The pipeline keeps no hook and its modules' `requires_grad` flags are restored.

    Example:

    ```python
    >>> from llava_reward.steering import reward_finetune
    >>> from llava_reward.steering.testing import tiny_sd_pipeline
    >>> pipe = tiny_sd_pipeline()
    >>> brightness = lambda pixels, prompts: pixels.mean(dim=(1, 2, 3))
    >>> out = reward_finetune(pipe, ["a cat", "a dog"], brightness, steps=2, num_inference_steps=4, eta=1.0)
    >>> [sorted(record) for record in out.history][0]
    ['grad_norm', 'loss', 'reward', 'seconds', 'step']
    ```"""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    batch_size = batch_size or len(prompts)
    if not prompts or steps < 1 or batch_size < 1:
        raise ValueError(f"reward_finetune needs prompts, steps >= 1 and batch_size >= 1 (got {len(prompts)} "
                         f"prompts, steps={steps}, batch_size={batch_size}).")
    check_pipeline(pipe, call_kwargs, MANAGED)
    total = num_inference_steps(pipe, call_kwargs)
    if not 1 <= grad_steps <= total:
        raise ValueError(f"grad_steps must be in [1, {total}] (the number of sampling steps), not {grad_steps}.")
    reward_fn = differentiable_reward(reward)
    denoiser = denoiser_of(pipe)
    parameters = list(parameters) if parameters is not None else [p for p in denoiser.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(f"Nothing to train: no parameter of the {type(denoiser).__name__} requires gradients.")
    starts = [parameter.detach().clone() for parameter in parameters] if anchor else []
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    # `__call__` is decorated with `torch.no_grad()`; its undecorated function runs the same loop with gradients.
    sample = getattr(type(pipe).__call__, "__wrapped__", type(pipe).__call__)
    history, start = [], time.perf_counter()
    with only_trained(pipe, parameters):
        for step in range(steps):
            began = time.perf_counter()
            batch = [prompts[(step * batch_size + row) % len(prompts)] for row in range(batch_size)]
            with LastStepsWithGrad(denoiser, total, grad_steps) as hook:
                latents = sample(pipe, batch, generator=step_generators(seed, step, batch_size), output_type="latent",
                                 callback_on_step_end=hook.callback, **call_kwargs).images
            pixels = decode_latents(pipe, latents, call_kwargs.get("height"), call_kwargs.get("width"),
                                    differentiable=True)  # (B, 3, H, W) in [0, 1]
            rewards = reward_fn(pixels, batch)
            loss = -rewards.mean()
            if anchor:
                loss = loss + anchor * sum((p - p0).pow(2).sum() for p, p0 in zip(parameters, starts))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
            optimizer.step()
            record = {"step": step, "reward": rewards.mean().item(), "loss": loss.item(),
                      "grad_norm": grad_norm.item(), "seconds": time.perf_counter() - began}
            history.append(record)
            if log:
                log(record)
    optimizer.zero_grad(set_to_none=True)
    return RewardFinetuneOutput(history=history, seconds=time.perf_counter() - start)
