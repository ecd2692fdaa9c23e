"""High-level scoring: prompts and images in, rewards and preferences out.

Example:
    >>> from llava_reward import LlavaRewardModel, LlavaRewardProcessor, LlavaRewardScorer
    >>> from llava_reward.testing import tiny_vlm, tiny_images
    >>> vlm, vlm_processor = tiny_vlm("llava")
    >>> scorer = LlavaRewardScorer(LlavaRewardModel.from_vlm(vlm), LlavaRewardProcessor.from_vlm_processor(vlm_processor))
    >>> scorer.score("a red cat", tiny_images(3)).shape
    torch.Size([3])
"""

import os
import sys
import threading
from contextlib import contextmanager

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from .bundle import is_adapter_bundle
from .bundle import model_folder
from .image_inputs import InputError
from .image_inputs import as_image_list
from .image_inputs import load_image
from .modeling_llava_reward import LlavaRewardModel
from .objectives import Objective
from .objectives import get_objective
from .pixels import pixel_inputs
from .processing_llava_reward import LlavaRewardProcessor
from .progress import iterate
from .provenance import read_training_data


class LlavaRewardScorer:
    r"""
    Scores (prompt, image) pairs with a LLaVA-Reward model: batched, in input order, without gradients.

    Args:
        model (`LlavaRewardModel`): the reward model (put in `eval()` mode).
        processor (`LlavaRewardProcessor`): its processor.
        device (`str` or `torch.device`, *optional*): where to run; defaults to where the model is.
        dtype (`torch.dtype` or `str`, *optional*): cast the model (e.g. `"bfloat16"`); inputs follow it.
        progress (`bool` or `"plain"`, *optional*): show a progress bar; defaults to on for long inputs on a terminal;
            `"plain"` prints a line every 10 batches instead (for logs).
    """

    def __init__(
        self,
        model: LlavaRewardModel,
        processor: LlavaRewardProcessor,
        *,
        device=None,
        dtype=None,
        progress: bool | None = None,
    ):
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.model = model.to(device=device, dtype=dtype).eval() if (device or dtype) else model.eval()
        self.processor = processor
        self.progress = progress
        # The fingerprints of the images the model was trained on, when it records them (`llava_reward.provenance`).
        self.training_images: frozenset[str] | None = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        device=None,
        dtype=None,
        base=None,
        progress: bool | None = None,
        trust_remote_code: bool = False,
    ) -> "LlavaRewardScorer":
        """Load a saved reward model (full model or adapter perspective) from a folder or a Hub repo (+ subfolder).

        `base` overrides the base VLM an adapter perspective names (a local path, Hub id or loaded model).
        """
        folder = model_folder(path_or_repo, subfolder=subfolder, revision=revision)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        options = {"base_model": base} if is_adapter_bundle(folder) else {}
        model = LlavaRewardModel.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code, **options)
        scorer = cls(model, LlavaRewardProcessor.from_pretrained(folder), device=device, progress=progress)
        scorer.training_images = read_training_data(folder)
        return scorer

    @property
    def objective(self) -> str:
        """The name of the model's objective (`"bt"`, `"gpm"` or `"ce"`; see `llava_reward.objectives`)."""
        return self.model.config.objective

    @property
    def tau(self) -> float:
        return self.model.config.tau

    def _objective(self) -> Objective:
        return get_objective(self.objective)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def score(self, prompts, images, *, batch_size: int = 8, progress: bool | None = None) -> torch.Tensor:
        """Rewards for `prompts[i]` with `images[i]` (one prompt may serve all images), in input order.

        Returns a float32 CPU tensor of shape `(N,)` (BT, CE) or `(N, D)` (GPM embeddings).
        """
        prompts, image_list = self.processor.pair(prompts, as_image_list(images))  # validates every prompt up front
        # Truncated here, where warnings can name the input's index; the per-batch calls then find nothing to cut.
        prompts = [self.processor.truncate_prompt(prompt, index) for index, prompt in enumerate(prompts)]
        show = self.progress if progress is None else progress
        show = (len(image_list) > batch_size and sys.stderr.isatty()) if show is None else show
        rewards = []
        starts = range(0, len(image_list), batch_size)
        for start in iterate(starts, total=len(starts), desc="scoring", progress=show):
            chunk = range(start, min(start + batch_size, len(image_list)))
            batch_images = [load_image(image_list[index], index) for index in chunk]  # errors name the input index
            try:
                inputs = self.processor([prompts[index] for index in chunk], batch_images)
            except InputError as error:  # its indices count from the batch's first input
                raise InputError(f"in the batch of inputs {chunk.start} to {chunk.stop - 1}: {error}") from None
            rewards.append(self.model(**self._to_model(inputs)).rewards.float().cpu())
        return torch.cat(rewards)

    def __call__(self, prompts, images, **kwargs) -> torch.Tensor:
        """`scorer(prompts, images)` is `scorer.score(prompts, images)`."""
        return self.score(prompts, images, **kwargs)

    def score_matrix(self, prompts, images, *, batch_size: int = 8, progress: bool | None = None) -> torch.Tensor:
        """Rewards of every prompt with every image: `(P, N)` (or `(P, N, D)` for GPM), row p for `prompts[p]`.

        `score` pairs element-wise (prompt i with image i); this is the cross product, e.g. to see which prompt an
        image matches best. Each image is read once.
        """
        prompts = [prompts] if isinstance(prompts, (str, bytes)) else list(prompts)
        loaded = [load_image(image, index) for index, image in enumerate(as_image_list(images))]
        rewards = self.score(
            [prompt for prompt in prompts for _ in loaded], loaded * len(prompts), batch_size=batch_size,
            progress=progress,
        )
        return rewards.reshape(len(prompts), len(loaded), *rewards.shape[1:])

    def compare(self, prompt: str, image_a, image_b) -> float:
        """P(image_a preferred over image_b | prompt), with the objective's formula and temperature."""
        rewards = self.score(prompt, [image_a, image_b])
        return self._objective().preference_probability(rewards[0], rewards[1], self.tau).item()

    def preference_matrix(self, prompt: str, images, *, batch_size: int = 8) -> torch.Tensor:
        """(N, N) matrix of P(images[i] preferred over images[j] | prompt)."""
        rewards = self.score(prompt, images, batch_size=batch_size)
        return self._objective().preference_probability(rewards[:, None], rewards[None, :], self.tau)

    def rank(self, prompt: str, images, *, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of `images` best-first, and the scores they were ranked by.

        BT/CE rank by reward. GPM preferences need not be transitive, so GPM ranks by Copeland score: wins minus
        losses over all pairs (P > 0.5 is a win), ties broken by the summed preference probability
        (`Objective.ranking_scores`).
        """
        rewards = self.score(prompt, images, batch_size=batch_size)
        scores = self._objective().ranking_scores(rewards, self.tau)
        return torch.argsort(scores, descending=True, stable=True), scores

    def score_pixels(self, pixels: torch.Tensor, prompts, *, quantize: bool = False) -> torch.Tensor:
        r"""
        Rewards for `prompts[i]` with `pixels[i]` that carry gradients to `pixels`: the reward for ReFL, DRaFT or
        AlignProp fine-tuning of a generator by backpropagation.

        Args:
            pixels (`torch.Tensor` of shape `(B, 3, H, W)`): floats in [0, 1] (e.g. a VAE's decoded output
                `(x / 2 + 0.5).clamp(0, 1)`), any device and float dtype, `requires_grad` allowed.
            prompts (`str` or list of `str`): one per image, or one for all.
            quantize (`bool`, defaults to `False`): see `llava_reward.pixels.preprocess_pixels`; `True` scores
                exactly what `score()` scores for these images (8-bit rounding, straight-through gradients).

        Returns:
            `torch.Tensor`: rewards of shape `(B,)` (`(B, D)` for GPM) in float32 (float64 for a float64 model) on
            the model's device, in the graph (no `inference_mode`; under `torch.no_grad()` they carry no graph).

        The image preprocessing of the model's family runs in torch (`llava_reward.pixels`, parity with the PIL path
        measured per family); a family whose preprocessing has no differentiable counterpart raises
        `NotDifferentiableError`. `torch.autocast` applies to the model (preprocessing stays in full precision).
        Activation checkpointing (`scorer.model.activation_checkpointing_enable()`) applies although the scorer keeps
        the model in eval mode (`checkpointing_in_eval_mode`). Threads may share one scorer, as for `score`.

        Example:

        ```python
        >>> import torch
        >>> from llava_reward import LlavaRewardModel, LlavaRewardProcessor, LlavaRewardScorer
        >>> from llava_reward.testing import tiny_vlm
        >>> vlm, vlm_processor = tiny_vlm("qwen2_5_vl")
        >>> model = LlavaRewardModel.from_vlm(vlm)
        >>> scorer = LlavaRewardScorer(model, LlavaRewardProcessor.from_vlm_processor(vlm_processor))
        >>> pixels = torch.rand(2, 3, 32, 32, requires_grad=True)
        >>> scorer.score_pixels(pixels, "a red cat").sum().backward()
        >>> pixels.grad.shape, bool(pixels.grad.abs().sum() > 0)
        (torch.Size([2, 3, 32, 32]), True)
        ```"""
        inputs = pixel_inputs(self.processor, prompts, pixels, quantize=quantize)
        with checkpointing_in_eval_mode(self.model):
            rewards = self.model(**self._to_model(inputs)).rewards
        return rewards.to(torch.promote_types(rewards.dtype, torch.float32))

    def reward_fn(
        self, images, prompts, metadata=None, *, batch_size: int = 8, differentiable: bool = False
    ) -> tuple[torch.Tensor, dict]:
        """The reward function RL and steering loops call (DDPO, flow_grpo, FK steering; ReFL / DRaFT / AlignProp
        with `differentiable=True`).

        `images`: a list of PIL images or an NCHW float tensor in [0, 1]; `prompts`: one per image (or one).
        Returns `(scores, info)`: a float32 tensor of shape `(N,)` and a dict describing the reward. By default the
        scores are on the CPU, without gradients. With `differentiable=True`, `images` must be the float tensor,
        scored in one batch by `score_pixels`: the scores stay on the model's device with gradients to `images`.
        """
        if not self._objective().scalar:
            raise ValueError(
                f"A {self.objective!r} model outputs preference embeddings, not scalar rewards: use rank() or compare()."
            )
        if differentiable:
            if not (isinstance(images, torch.Tensor) and images.is_floating_point()):
                raise InputError(
                    "reward_fn(differentiable=True) needs the images as a float tensor of shape (N, 3, H, W) in "
                    f"[0, 1], got {type(images).__name__}."
                )
            scores = self.score_pixels(images, prompts)
        else:
            scores = self.score(prompts, images, batch_size=batch_size, progress=False)
        return scores, {"objective": self.objective, "perspective": self.model.config.perspective}

    def _to_model(self, inputs) -> dict:
        dtype = self.model.dtype
        return {
            key: value.to(self.device, dtype=dtype if value.is_floating_point() else None)
            for key, value in inputs.items()
        }


# How many calls are inside `checkpointing_in_eval_mode` per layer: the first to enter switches the layer to training
# mode, the last to leave switches it back, so that concurrent calls (threads sharing one scorer) never switch it off
# under one another's forward.
_CHECKPOINTING_CALLS: dict[torch.nn.Module, int] = {}
_CHECKPOINTING_LOCK = threading.Lock()


@contextmanager
def checkpointing_in_eval_mode(model: torch.nn.Module):
    """Let activation checkpointing run while `model` is in eval mode.

    transformers checkpoints a layer only when `layer.gradient_checkpointing and layer.training`; the scorer keeps
    the model in eval mode (no dropout). The checkpointed layers alone are put in training mode for the call: their
    own forward reads `training` for nothing else, and their submodules (attention and MLP dropout) stay in eval, so
    the numbers do not change (a concurrent `score` under `inference_mode` that sees the flag runs the same layers
    through the checkpoint function, which then stores nothing). Reference-counted per layer: thread-safe.

    Example:
        >>> from llava_reward import LlavaRewardModel
        >>> from llava_reward.testing import tiny_vlm
        >>> model = LlavaRewardModel.from_vlm(tiny_vlm("llava")[0]).eval()
        >>> model.activation_checkpointing_enable()
        >>> with checkpointing_in_eval_mode(model):
        ...     pass   # model(**inputs) here recomputes its decoder layers in the backward
    """
    layers = [
        module
        for module in model.modules()
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing
    ]
    with _CHECKPOINTING_LOCK:
        layers = [layer for layer in layers if layer in _CHECKPOINTING_CALLS or not layer.training]
        for layer in layers:
            _CHECKPOINTING_CALLS[layer] = _CHECKPOINTING_CALLS.get(layer, 0) + 1
            layer.training = True
    try:
        yield
    finally:
        with _CHECKPOINTING_LOCK:
            for layer in layers:
                _CHECKPOINTING_CALLS[layer] -= 1
                if not _CHECKPOINTING_CALLS[layer]:
                    del _CHECKPOINTING_CALLS[layer]
                    layer.training = False


def score_rows(scorer, rows: list[tuple[list, list]], *, batch_size: int = 8) -> list:
    """Score several rows at once, each its prompts with its images (one prompt per image, or one for all).

    Returns, in order, each row's rewards (`(n,)` or `(n, D)`), or the `InputError` that row raised: a batch the
    scorer refuses (an unreadable image, one the image processor cannot take) is retried row by row, so that a bad
    image costs its own row only. `scorer` is a `LlavaRewardScorer` (or anything with its `score`).

    Example:
        >>> from llava_reward import LlavaRewardModel, LlavaRewardProcessor, LlavaRewardScorer
        >>> from llava_reward.scoring import score_rows
        >>> from llava_reward.testing import tiny_vlm, tiny_images
        >>> vlm, vlm_processor = tiny_vlm("llava")
        >>> scorer = LlavaRewardScorer(LlavaRewardModel.from_vlm(vlm), LlavaRewardProcessor.from_vlm_processor(vlm_processor))
        >>> results = score_rows(scorer, [(["a cat"], tiny_images(2)), (["a dog"], ["missing.png"])])
        >>> results[0].shape, type(results[1]).__name__
        (torch.Size([2]), 'InputError')
    """
    prompts = [prompt for row_prompts, row_images in rows for prompt in _per_image(row_prompts, row_images)]
    images = [image for _, row_images in rows for image in row_images]
    try:
        rewards = scorer.score(prompts, images, batch_size=batch_size, progress=False)
    except InputError as error:
        if len(rows) == 1:
            return [error]
        return [result for row in rows for result in score_rows(scorer, [row], batch_size=batch_size)]
    return list(rewards.split([len(row_images) for _, row_images in rows]))


def _per_image(prompts: list, images: list) -> list:
    return list(prompts) * len(images) if len(prompts) == 1 else list(prompts)
