"""Inference-time scaling of diffusers pipelines with a reward: best-of-N and Feynman-Kac (FK) steering; and reward
fine-tuning of their denoiser by backpropagation (ReFL / DRaFT-K, `reward_finetune`).

Needs the `diffusion` extra (`pip install llava-reward[diffusion]`, i.e. diffusers).

Example:
    >>> from llava_reward.steering import best_of_n, fk_steering
    >>> from llava_reward.steering.testing import tiny_sd_pipeline
    >>> pipe = tiny_sd_pipeline()
    >>> brightness = lambda images, prompts, metadata: (images.mean(dim=(1, 2, 3)), {})
    >>> fk_steering(pipe, "a cat", brightness, num_particles=4, num_inference_steps=6).best_images.shape
    torch.Size([1, 3, 16, 16])

With a reward model: `fk_steering(pipe, prompts, LlavaRewardScorer.from_pretrained(path), lmbda=10)`.
"""

try:
    import diffusers  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("Steering needs diffusers: pip install 'llava-reward[diffusion]'.") from error

from .best_of_n import best_of_n
from .finetune import RewardFinetuneOutput
from .finetune import differentiable_reward
from .finetune import reward_finetune
from .fk import POTENTIALS
from .fk import FKResampler
from .fk import fk_steering
from .fk import resampling_schedule
from .hooks import decode_latents
from .hooks import particle_generators
from .hooks import resampling_generators
from .output import ResamplingStep
from .output import SteeringOutput
from .rewards import WeightedReward
from .rewards import as_reward_fn


__all__ = [
    "POTENTIALS",
    "FKResampler",
    "ResamplingStep",
    "RewardFinetuneOutput",
    "SteeringOutput",
    "WeightedReward",
    "as_reward_fn",
    "best_of_n",
    "decode_latents",
    "differentiable_reward",
    "fk_steering",
    "particle_generators",
    "resampling_generators",
    "resampling_schedule",
    "reward_finetune",
]
