"""Feynman-Kac (FK) steering of any diffusers text-to-image pipeline (Singhal et al., 2025).

N particles per prompt denoise side by side (one batch). At scheduled steps each particle's x0 prediction is
decoded and rewarded; particles are weighted by a potential of their rewards and multinomially resampled within
their prompt, so high-reward trajectories multiply and low-reward ones die out. Only diffusers' own hooks are used
(see `steering.hooks`).

Example:
    >>> from llava_reward.steering import fk_steering
    >>> from llava_reward.steering.testing import tiny_sd_pipeline
    >>> brightness = lambda images, prompts, metadata: (images.mean(dim=(1, 2, 3)), {})
    >>> out = fk_steering(tiny_sd_pipeline(), ["a cat", "a dog"], brightness, num_particles=4, num_inference_steps=6)
    >>> out.images.shape, out.rewards.shape, [record.step for record in out.history]
    (torch.Size([2, 4, 3, 16, 16]), torch.Size([2, 4]), [1, 2, 3, 4, 5])
"""

import math
import time
from dataclasses import dataclass

import torch

from .arguments import MANAGED_CALL_ARGUMENTS
from .arguments import check_count
from .arguments import check_metadata
from .arguments import check_prompts
from .arguments import per_image
from .arguments import prompt_arguments
from .hooks import StepCapture
from .hooks import check_pipeline
from .hooks import decode_latents
from .hooks import num_inference_steps
from .hooks import particle_generators
from .hooks import reindex_particles
from .hooks import resampling_generators
from .hooks import scheduler_swapped
from .hooks import stochastic_sampler
from .output import ResamplingStep
from .output import SteeringOutput
from .rewards import as_reward_fn


POTENTIALS = ("max", "add", "diff", "rt")


@dataclass
class Resampling:
    """What one `FKResampler.step` decided for P prompts of N particles (shapes as in `ResamplingStep`)."""

    indices: torch.Tensor  # (P, N) parent of each particle within its prompt
    log_weights: torch.Tensor  # (P, N) normalised
    ess: torch.Tensor  # (P,)
    resampled: torch.Tensor  # (P,) bool


class FKResampler:
    r"""
    The FK potentials and multinomial resampling of P independent sets of N particles (no model involved).

    At each resampling step with rewards `r` (and `r_prev`, each particle's carried reward, initially
    `reward_min_value`), the potential is `G = exp(lmbda * v)` with `v = max(r, r_prev)` (max), `r + r_prev` (add),
    `r - r_prev` (diff) or `r` (rt); at the last step max/add/rt use `exp(lmbda * v) / prod(G so far)` instead,
    so that the final particles target the reward-tilted distribution. The carried reward becomes `v` (`r` for
    diff and rt). Weights accumulate in log space (NaN counts as weight 0; if all of a prompt's weights vanish they
    are uniform; infinite ones share the mass) until the particles are resampled, which happens at every step, or
    with `adaptive=True` only where the effective sample size `1 / sum(w ** 2)` is below N / 2.

    Args:
        num_prompts (`int`), num_particles (`int`): P and N.
        potential (`str`): `"max"`, `"add"`, `"diff"` or `"rt"`.
        lmbda (`float`): the inverse temperature of the potential (0: no steering).
        adaptive (`bool`): resample only when the effective sample size falls below N / 2.
        reward_min_value (`float`): the carried reward before the first step (`-inf` allowed for max only).
        generators (list of `torch.Generator`, *optional*): one per prompt, for its multinomial draws.

    Example:
        >>> resampler = FKResampler(1, 4, potential="diff", lmbda=100.0)
        >>> resampler.step(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), last=False).indices
        tensor([[1, 1, 1, 1]])
    """

    def __init__(
        self,
        num_prompts: int,
        num_particles: int,
        *,
        potential: str = "max",
        lmbda: float = 10.0,
        adaptive: bool = False,
        reward_min_value: float = 0.0,
        generators: list[torch.Generator] | None = None,
    ):
        if potential not in POTENTIALS:
            raise ValueError(f"potential must be one of {', '.join(POTENTIALS)}, not {potential!r}.")
        if not isinstance(lmbda, (int, float)) or not math.isfinite(lmbda):
            raise ValueError(f"lmbda must be a finite number, not {lmbda!r}.")
        if math.isnan(reward_min_value) or (math.isinf(reward_min_value) and potential != "max"):
            raise ValueError(f"reward_min_value={reward_min_value} is only allowed as -inf with the max potential.")
        if generators is not None and len(generators) != num_prompts:
            raise ValueError(f"Give one generator per prompt ({num_prompts}), not {len(generators)}.")
        self.shape = (check_count(num_prompts, "num_prompts"), check_count(num_particles, "num_particles"))
        self.potential, self.lmbda, self.adaptive = potential, float(lmbda), adaptive
        self.generators = generators or [None] * num_prompts
        self.previous = torch.full(self.shape, float(reward_min_value), dtype=torch.float64)  # carried reward
        self.log_weights = torch.zeros(self.shape, dtype=torch.float64)  # accumulated since the last resampling
        self.log_product = torch.zeros(self.shape, dtype=torch.float64)  # log prod of potentials along a lineage

    def step(self, rewards: torch.Tensor, *, last: bool) -> Resampling:
        """Weigh the particles by their `rewards` (P, N) and resample them; returns the decision."""
        rewards = torch.as_tensor(rewards, dtype=torch.float64).reshape(self.shape)
        carried = {"max": torch.maximum(rewards, self.previous), "add": rewards + self.previous}.get(
            self.potential, rewards
        )
        if self.potential == "diff":
            log_potential = self.lmbda * (rewards - self.previous)
        elif last:
            log_potential = self.lmbda * carried - self.log_product
        else:
            log_potential = self.lmbda * carried
        log_potential = torch.where(torch.isnan(log_potential), -math.inf, log_potential)
        log_weights = self.log_weights + log_potential
        weights = normalized_weights(log_weights)  # (P, N)
        ess = 1.0 / weights.pow(2).sum(-1)
        resampled = ess < self.shape[1] / 2 if self.adaptive else torch.ones(self.shape[0], dtype=torch.bool)
        indices = torch.arange(self.shape[1]).repeat(self.shape[0], 1)
        for prompt in torch.nonzero(resampled).flatten().tolist():
            indices[prompt] = torch.multinomial(
                weights[prompt], self.shape[1], replacement=True, generator=self.generators[prompt]
            )
        self.previous = carried.gather(1, indices)
        self.log_product = (self.log_product + log_potential).gather(1, indices)
        self.log_weights = torch.where(resampled[:, None], 0.0, log_weights)  # not resampled: indices are identity
        return Resampling(indices=indices, log_weights=weights.log(), ess=ess, resampled=resampled)


def normalized_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension that survives -inf rows (uniform) and +inf entries (they share the mass)."""
    infinite = torch.isposinf(log_weights)
    top = log_weights.amax(-1, keepdim=True)
    weights = torch.exp(log_weights - top)
    weights = torch.where(infinite.any(-1, keepdim=True), infinite.to(weights.dtype), weights)
    weights = torch.where(torch.isneginf(top), torch.ones_like(weights), weights)
    return weights / weights.sum(-1, keepdim=True)


def resampling_schedule(steps: int, start: int | None, end: int | None, frequency: int | None) -> list[int]:
    """The steps that resample: `range(start, end + 1, frequency)` and always the last one.

    Defaults follow the reference's SDXL setting (steps 20 to 80 every 20 of 100): start and frequency a fifth of
    the schedule, end four fifths.
    """
    start = round(steps / 5) if start is None else start
    end = round(4 * steps / 5) if end is None else end
    frequency = max(1, round(steps / 5)) if frequency is None else frequency
    check_count(frequency, "resample_frequency")
    for name, value in (("resampling_t_start", start), ("resampling_t_end", end)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < steps:
            raise ValueError(f"{name}={value!r} is outside the schedule's steps 0..{steps - 1}.")
    if start > end:
        raise ValueError(f"resampling_t_start={start} is after resampling_t_end={end}.")
    return sorted(set(range(start, end + 1, frequency)) | {steps - 1})


class FKCallback:
    """The `callback_on_step_end` that rewards, weighs and resamples the particles at the scheduled steps."""

    def __init__(self, *, resampler, capture, reward_fn, prompts, metadata, schedule, steps, height, width):
        self.resampler, self.capture, self.reward_fn = resampler, capture, reward_fn
        self.prompts, self.metadata = prompts, metadata  # one per image
        self.schedule, self.steps, self.size = set(schedule), steps, (height, width)
        self.history: list[ResamplingStep] = []
        self.final_rewards: torch.Tensor | None = None
        self.timings = {"reward_s": 0.0, "decode_s": 0.0, "reward_calls": 0, "rewarded_images": 0}

    def __call__(self, pipe, step: int, timestep, tensors: dict) -> dict:
        if step == 0 and getattr(pipe, "num_timesteps", self.steps) != self.steps:
            raise ValueError(f"The pipeline runs {pipe.num_timesteps} steps, not the {self.steps} steering planned.")
        if step not in self.schedule:
            return {}
        last = step == self.steps - 1
        # At the last step the reward sees the final sample, which the pipeline decodes into the returned images.
        target = tensors["latents"] if last else self.capture.x0
        if target is None:
            raise RuntimeError(f"{type(pipe.scheduler).__name__}.step returned no x0 prediction to reward.")
        rewards, info = self._reward(pipe, target)
        decision = self.resampler.step(rewards, last=last)
        rewards = rewards.view(decision.indices.shape)
        self.history.append(
            ResamplingStep(
                step=step, timestep=float(timestep), rewards=rewards, log_weights=decision.log_weights.float(),
                ess=decision.ess.float(), resampled=decision.resampled, indices=decision.indices, info=info,
            )
        )
        if last:
            self.final_rewards = rewards.gather(1, decision.indices)
        if not decision.resampled.any():
            return {}
        num_prompts, num_particles = decision.indices.shape
        flat_index = (decision.indices + num_particles * torch.arange(num_prompts)[:, None]).flatten()
        return reindex_particles(tensors, flat_index, num_prompts * num_particles)

    def _reward(self, pipe, latents: torch.Tensor) -> tuple[torch.Tensor, dict]:
        start = time.perf_counter()
        images = decode_latents(pipe, latents, *self.size)
        decoded = time.perf_counter()
        rewards, info = self.reward_fn(images, self.prompts, self.metadata)
        self.timings["decode_s"] += decoded - start
        self.timings["reward_s"] += time.perf_counter() - decoded
        self.timings["reward_calls"] += 1
        self.timings["rewarded_images"] += len(images)
        return rewards, info


def fk_steering(
    pipe,
    prompts,
    reward,
    *,
    num_particles: int = 4,
    potential: str = "max",
    lmbda: float = 10.0,
    resampling_t_start: int | None = None,
    resampling_t_end: int | None = None,
    resample_frequency: int | None = None,
    adaptive_resampling: bool = False,
    reward_min_value: float = 0.0,
    metadata=None,
    seed: int = 0,
    **pipeline_kwargs,
) -> SteeringOutput:
    r"""
    Generate with Feynman-Kac steering: `num_particles` particles per prompt, resampled by reward.

    Args:
        pipe: a diffusers text-to-image pipeline (Stable Diffusion, SDXL, SD3, Flux, ... any with
            `callback_on_step_end`) whose scheduler can sample stochastically: DDIM (run with `eta=1` unless
            `eta` is given), DDPM, Euler ancestral, or flow-matching Euler (run with its stochastic sampling).
        prompts (`str` or `list[str]`): P prompts; each gets its own N particles, never mixed with another's.
        reward: see `as_reward_fn`: a `reward_fn(images, prompts, metadata) -> (rewards, info)` callable, a
            `LlavaRewardScorer`, or a `WeightedReward`. Called only at the resampling steps, on every particle.
        num_particles (`int`): N.
        potential (`str`), lmbda (`float`), adaptive_resampling (`bool`), reward_min_value (`float`): see
            `FKResampler`.
        resampling_t_start, resampling_t_end, resample_frequency (`int`, *optional*): resample at the denoising
            steps `range(start, end + 1, frequency)` (0 = the first step) and at the last step; see
            `resampling_schedule` for the defaults.
        metadata (`dict` or list of one `dict` per prompt, *optional*): passed to the reward for each image.
        seed (`int`): the randomness of the call (initial noise, sampler noise and resampling draws), see
            `particle_generators` and `resampling_generators`.
        **pipeline_kwargs: passed to the pipeline (`num_inference_steps`, `guidance_scale`, `height`, `width`,
            `eta`, `prompt_embeds`, ...), except the arguments steering sets itself.

    Returns:
        `SteeringOutput`: all final particles and their rewards (the rewards of the last step, which scores the
        final samples), the best particle per prompt, and the history of every resampling step.
    """
    start_time = time.perf_counter()
    prompts = check_prompts(prompts)
    num_prompts, num_particles = len(prompts), check_count(num_particles, "num_particles")
    metadata = check_metadata(metadata, num_prompts)
    reward_fn = as_reward_fn(reward)
    check_pipeline(pipe, pipeline_kwargs, MANAGED_CALL_ARGUMENTS)
    steps = num_inference_steps(pipe, pipeline_kwargs)
    schedule = resampling_schedule(steps, resampling_t_start, resampling_t_end, resample_frequency)
    resampler = FKResampler(
        num_prompts, num_particles, potential=potential, lmbda=lmbda, adaptive=adaptive_resampling,
        reward_min_value=reward_min_value, generators=resampling_generators(seed, num_prompts),
    )
    call_kwargs, scheduler, sampler = stochastic_sampler(pipe, pipeline_kwargs)
    generators = particle_generators(seed, num_prompts, num_particles)
    with scheduler_swapped(pipe, scheduler), StepCapture(pipe.scheduler, generators) as capture:
        callback = FKCallback(
            resampler=resampler, capture=capture, reward_fn=reward_fn, prompts=per_image(prompts, num_particles),
            metadata=per_image(metadata, num_particles), schedule=schedule, steps=steps,
            height=call_kwargs.get("height"), width=call_kwargs.get("width"),
        )
        images = pipe(
            **prompt_arguments(prompts, call_kwargs),
            **call_kwargs,
            num_images_per_prompt=num_particles,
            generator=generators,
            output_type="pt",
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=list(pipe._callback_tensor_inputs),
        ).images
    images = images.float().reshape(num_prompts, num_particles, *images.shape[1:])
    return SteeringOutput(
        prompts=prompts,
        images=images,
        rewards=callback.final_rewards,
        best=callback.final_rewards.argmax(dim=1),
        history=callback.history,
        timings={"total_s": time.perf_counter() - start_time, **callback.timings},
        sampler=sampler,
    )
