"""What best-of-N and FK steering return: every candidate, its reward, the chosen one, and the resampling history."""

from dataclasses import dataclass
from dataclasses import field

import numpy as np
import torch
from PIL import Image
from PIL import ImageDraw


@dataclass
class ResamplingStep:
    r"""
    One scheduled resampling step of FK steering (P prompts, N particles each).

    Args:
        step (`int`): index of the denoising step (0 = the first, noisiest one).
        timestep (`float`): the scheduler's timestep at that step.
        rewards (`torch.Tensor` of shape `(P, N)`): each particle's reward before resampling (on its decoded x0
            prediction; at the last step on the final sample).
        log_weights (`torch.Tensor` of shape `(P, N)`): the normalised log importance weights resampling drew from.
        ess (`torch.Tensor` of shape `(P,)`): effective sample size `1 / sum(w ** 2)` of each prompt's particles.
        resampled (`torch.Tensor` of shape `(P,)`, bool): whether each prompt's particles were resampled.
        indices (`torch.Tensor` of shape `(P, N)`): the parent of each new particle among its prompt's particles
            (the identity where nothing was resampled).
        info (`dict`): what the reward function returned beside the rewards.
    """

    step: int
    timestep: float
    rewards: torch.Tensor
    log_weights: torch.Tensor
    ess: torch.Tensor
    resampled: torch.Tensor
    indices: torch.Tensor
    info: dict = field(default_factory=dict)


@dataclass
class SteeringOutput:
    r"""
    Result of `best_of_n` or `fk_steering` for P prompts with N candidates (particles) each.

    Args:
        prompts (`list[str]`): the P prompts.
        images (`torch.Tensor` of shape `(P, N, 3, H, W)`): every final candidate, float in [0, 1].
        rewards (`torch.Tensor` of shape `(P, N)`): each final candidate's reward.
        best (`torch.Tensor` of shape `(P,)`): index of each prompt's highest-reward candidate.
        history (`list[ResamplingStep]`): FK steering's resampling steps, in order (empty for best-of-N).
        timings (`dict`): `total_s` (wall time of the call), `reward_s` (time inside the reward function),
            `decode_s` (VAE decodes done for the reward), `reward_calls`, `rewarded_images`.
        sampler (`str`): the scheduler and its randomness as it ran, e.g. `"DDIMScheduler(eta=1.0)"`.
    """

    prompts: list[str]
    images: torch.Tensor
    rewards: torch.Tensor
    best: torch.Tensor
    history: list[ResamplingStep]
    timings: dict
    sampler: str

    @property
    def best_images(self) -> torch.Tensor:
        """`(P, 3, H, W)`: each prompt's highest-reward image."""
        return self.images[torch.arange(len(self.prompts)), self.best]

    @property
    def best_rewards(self) -> torch.Tensor:
        """`(P,)`: the reward of each prompt's highest-reward image."""
        return self.rewards[torch.arange(len(self.prompts)), self.best]

    def grid(self, prompt: int = 0, *, height: int = 128) -> Image.Image:
        """Prompt `prompt`'s candidates side by side (`height` pixels high), each captioned with its reward, the
        chosen one (`best`) framed in green and captioned "best"; the prompt above them."""
        return candidate_grid(
            self.to_pil()[prompt], self.rewards[prompt].tolist(), int(self.best[prompt]), self.prompts[prompt],
            height=height,
        )

    def to_pil(self) -> list[list[Image.Image]]:
        """Every candidate as a PIL image: `[prompt][candidate]`."""
        pixels = (self.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
        return [[Image.fromarray(np.ascontiguousarray(image)) for image in row] for row in pixels]


def candidate_grid(
    images: list[Image.Image], rewards: list[float], chosen: int, title: str = "", *, height: int = 128
) -> Image.Image:
    """`images` side by side, scaled to `height` pixels, under `title`, each captioned `k: reward`; the `chosen` one
    framed in green and captioned `best k: reward`.

    Example:
        >>> from PIL import Image
        >>> tiles = [Image.new("RGB", (16, 16), "gray")] * 3
        >>> candidate_grid(tiles, [0.1, 0.7, 0.2], chosen=1, title="a cat").size
        (408, 176)
    """
    pad, header, caption, green = 6, 20, 16, (0, 150, 0)
    widths = [max(1, round(image.width * height / image.height)) for image in images]
    grid = Image.new("RGB", (sum(widths) + pad * (len(images) + 1), header + height + caption + 2 * pad), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((pad, 4), title, fill="black")
    left, top = pad, header + pad
    for index, (image, width, reward) in enumerate(zip(images, widths, rewards)):
        # Small images are enlarged pixel by pixel (nearest): interpolation would blur what the reward saw.
        resample = Image.NEAREST if image.height < height else Image.BICUBIC
        grid.paste(image.convert("RGB").resize((width, height), resample), (left, top))
        best = index == chosen
        if best:
            draw.rectangle([left - 3, top - 3, left + width + 2, top + height + 2], outline=green, width=3)
        draw.text((left, top + height + 4), f"{'best ' if best else ''}{index}: {reward:.4g}",
                  fill=green if best else "black")
        left += width + pad
    return grid
