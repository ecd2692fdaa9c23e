"""`transformers.pipeline("text-to-image-reward", model=...)`: rewards of (prompt, image) pairs.

Registered with transformers' `PIPELINE_REGISTRY` when `llava_reward` is imported. The pipeline loads the model
with `AutoModel` (full models and adapter perspectives alike) and its `LlavaRewardProcessor` with `AutoProcessor`;
`device=` and `dtype=` work as for every pipeline. Inputs are batched `batch_size` pairs per forward by the
processor itself (prompts padded, images of any size), so a batch gives the rewards its pairs give one by one.

Example:
    >>> import llava_reward
    >>> from transformers import pipeline
    >>> reward = pipeline("text-to-image-reward", model="me/llava-reward-qwen/alignment")  # doctest: +SKIP
    >>> reward(["cat.png", "dog.png"], prompts="a photo of a cat", batch_size=8)  # doctest: +SKIP
    [{'prompt': 'a photo of a cat', 'reward': 1.53}, {'prompt': 'a photo of a cat', 'reward': -0.41}]
"""

from transformers import AutoModel
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .image_inputs import as_image_list


TASK = "text-to-image-reward"


class TextToImageRewardPipeline(Pipeline):
    r"""
    Rewards of (prompt, image) pairs from a LLaVA-Reward model.

    Call it with `images` (one image or a list: paths, PIL images, arrays, tensors) and `prompts` (one prompt for all
    images, or one per image), or with a list of `{"image": ..., "prompt": ...}` dicts. Returns one
    `{"prompt", "reward"}` dict per pair (a list for GPM embeddings), or a single dict for a single image.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __call__(self, images, prompts=None, *, batch_size: int | None = None, **kwargs):
        single = not isinstance(images, (list, tuple)) and not (hasattr(images, "ndim") and images.ndim == 4)
        pairs = _pairs(images, prompts)
        size = max(1, batch_size or self._batch_size or 1)
        chunks = [pairs[start : start + size] for start in range(0, len(pairs), size)]
        # One chunk is one forward: the processor pads and batches it (the DataLoader's collation cannot).
        outputs = super().__call__(chunks, batch_size=1, **kwargs)
        results = [result for chunk in outputs for result in chunk]
        return results[0] if single else results

    def _sanitize_parameters(self, **kwargs):
        return {}, {}, {}

    def preprocess(self, chunk: list[dict]):
        inputs = dict(self.processor([pair["prompt"] for pair in chunk], [pair["image"] for pair in chunk]))
        return {"inputs": inputs, "prompts": [pair["prompt"] for pair in chunk]}

    def _forward(self, model_inputs: dict) -> dict:
        dtype = self.model.dtype
        inputs = {
            key: value.to(dtype) if value.is_floating_point() else value
            for key, value in model_inputs["inputs"].items()
        }
        return {"rewards": self.model(**inputs).rewards, "prompts": model_inputs["prompts"]}

    def postprocess(self, model_outputs: dict) -> list[dict]:
        rewards = model_outputs["rewards"].float().cpu()
        return [{"prompt": prompt, "reward": reward.tolist()} for prompt, reward in zip(model_outputs["prompts"], rewards)]


def _pairs(images, prompts) -> list[dict]:
    """`[{"image", "prompt"}]` from images and prompts (one prompt serves all images), or from such dicts."""
    images = as_image_list(images)
    if prompts is None and all(isinstance(item, dict) and {"image", "prompt"} <= item.keys() for item in images):
        return [{"image": item["image"], "prompt": item["prompt"]} for item in images]
    if prompts is None:
        raise ValueError('Pass `prompts=` (one for all images, or one per image), or {"image", "prompt"} dicts.')
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompts) == 1 and len(images) > 1:
        prompts = prompts * len(images)
    if len(prompts) != len(images):
        raise ValueError(f"Got {len(prompts)} prompts and {len(images)} images: pass one prompt per image, or one.")
    return [{"image": image, "prompt": prompt} for image, prompt in zip(images, prompts)]


def register_pipeline() -> None:
    """Make `pipeline("text-to-image-reward", ...)` build a `TextToImageRewardPipeline` (idempotent)."""
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=TextToImageRewardPipeline, pt_model=AutoModel, type="multimodal")


__all__ = ["TASK", "TextToImageRewardPipeline", "register_pipeline"]
