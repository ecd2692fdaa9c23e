"""Checks of the arguments best-of-N and FK steering share: prompts, metadata, counts, prompt embeddings."""

import torch


# Call arguments steering sets itself: one image per (prompt, particle), seeded, as tensors, through our callback.
MANAGED_CALL_ARGUMENTS = (
    "prompt",
    "num_images_per_prompt",
    "generator",
    "latents",
    "output_type",
    "return_dict",
    "callback_on_step_end",
    "callback_on_step_end_tensor_inputs",
)


def check_prompts(prompts) -> list[str]:
    """A prompt or a non-empty list of prompts, as a list."""
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a string or a non-empty list of strings, not {prompts!r}.")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompts[{index}] is a {type(prompt).__name__}, not a string.")
    return list(prompts)


def check_count(value, name: str) -> int:
    """A positive integer, or a clear error naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, not {value!r}.")
    return value


def per_image(values: list, count: int) -> list:
    """`values` (one per prompt) repeated for each of the prompt's `count` images, prompt-major like the pipeline."""
    return [value for value in values for _ in range(count)]


def check_metadata(metadata, num_prompts: int) -> list[dict]:
    """One metadata dict per prompt: None (empty dicts), one dict for all prompts, or a list of one per prompt."""
    if metadata is None:
        return [{} for _ in range(num_prompts)]
    if isinstance(metadata, dict):
        return [metadata] * num_prompts
    if not isinstance(metadata, (list, tuple)) or len(metadata) != num_prompts:
        length = len(metadata) if isinstance(metadata, (list, tuple)) else type(metadata).__name__
        raise ValueError(f"metadata must be a dict or a list of one dict per prompt ({num_prompts}), not {length}.")
    return list(metadata)


def prompt_arguments(prompts: list[str], call_kwargs: dict) -> dict:
    """`{"prompt": prompts}`, or nothing when the call passes `prompt_embeds` (one row per prompt, checked)."""
    embeds = call_kwargs.get("prompt_embeds")
    if embeds is None:
        return {"prompt": prompts}
    if not torch.is_tensor(embeds) or embeds.shape[0] != len(prompts):
        rows = embeds.shape[0] if torch.is_tensor(embeds) else type(embeds).__name__
        raise ValueError(
            f"prompt_embeds has {rows} rows for {len(prompts)} prompts: give one row per prompt (the prompts "
            "still go to the reward)."
        )
    return {}
