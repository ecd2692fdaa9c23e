"""Best-of-N: generate N candidates per prompt in one batched, seeded pipeline call, keep the highest-reward one.

Example:
    >>> from llava_reward.steering import best_of_n
    >>> from llava_reward.steering.testing import tiny_sd_pipeline
    >>> brightness = lambda images, prompts, metadata: (images.mean(dim=(1, 2, 3)), {})
    >>> out = best_of_n(tiny_sd_pipeline(), ["a cat", "a dog"], brightness, n=4, num_inference_steps=2)
    >>> out.images.shape, out.best_images.shape
    (torch.Size([2, 4, 3, 16, 16]), torch.Size([2, 3, 16, 16]))
"""

import time

from .arguments import MANAGED_CALL_ARGUMENTS
from .arguments import check_count
from .arguments import check_metadata
from .arguments import check_prompts
from .arguments import per_image
from .arguments import prompt_arguments
from .hooks import StepCapture
from .hooks import check_pipeline
from .hooks import particle_generators
from .output import SteeringOutput
from .rewards import as_reward_fn


def best_of_n(pipe, prompts, reward, n: int = 4, *, metadata=None, seed: int = 0, **pipeline_kwargs) -> SteeringOutput:
    r"""
    Generate `n` candidates per prompt and rank them by `reward`.

    Args:
        pipe: any diffusers text-to-image pipeline taking `num_images_per_prompt` (any scheduler).
        prompts (`str` or `list[str]`): P prompts.
        reward: see `as_reward_fn`; called once, on all P x n final images.
        n (`int`): candidates per prompt.
        metadata (`dict` or list of one `dict` per prompt, *optional*): passed to the reward for each image.
        seed (`int`): candidate k of prompt p starts from the noise of `particle_generators(seed, P, n)`, so the
            candidates of best-of-2 are the first two of best-of-4, and FK steering with the same seed starts its
            particles from the same noise.
        **pipeline_kwargs: passed to the pipeline (`num_inference_steps`, `guidance_scale`, `eta`, ...).
    """
    start_time = time.perf_counter()
    prompts = check_prompts(prompts)
    num_prompts, n = len(prompts), check_count(n, "n")
    metadata = check_metadata(metadata, num_prompts)
    reward_fn = as_reward_fn(reward)
    check_pipeline(pipe, pipeline_kwargs, MANAGED_CALL_ARGUMENTS)
    generators = particle_generators(seed, num_prompts, n)
    with StepCapture(pipe.scheduler, generators):  # seeds sampler noise where the pipeline passes no generator
        images = pipe(
            **prompt_arguments(prompts, pipeline_kwargs),
            **pipeline_kwargs,
            num_images_per_prompt=n,
            generator=generators,
            output_type="pt",
        ).images.float()
    reward_start = time.perf_counter()
    rewards, info = reward_fn(images, per_image(prompts, n), per_image(metadata, n))
    reward_seconds = time.perf_counter() - reward_start
    rewards = rewards.view(num_prompts, n)
    eta = f"(eta={pipeline_kwargs['eta']})" if "eta" in pipeline_kwargs else ""
    return SteeringOutput(
        prompts=prompts,
        images=images.reshape(num_prompts, n, *images.shape[1:]),
        rewards=rewards,
        best=rewards.argmax(dim=1),
        history=[],
        timings={
            "total_s": time.perf_counter() - start_time, "reward_s": reward_seconds, "decode_s": 0.0,
            "reward_calls": 1, "rewarded_images": len(images), "reward_info": info,
        },
        sampler=type(pipe.scheduler).__name__ + eta,
    )
