"""Sharing LLaVA-Reward perspectives on the Hugging Face Hub: model cards, push, multi-perspective loading, and
conversion of the published checkpoints.

Example:
    >>> from hub_cards import load_perspectives, push_perspective  # doctest: +SKIP
    >>> push_perspective("outputs/fidelity", "me/llava-reward-qwen", "fidelity")  # doctest: +SKIP
    >>> scorer = load_perspectives("me/llava-reward-qwen", ["alignment", "fidelity"])  # doctest: +SKIP
"""

from .cards import render_perspective_card
from .cards import render_repo_card
from .convert_original import convert_original_checkpoint
from .perspectives import MultiPerspectiveScorer
from .perspectives import load_perspectives
from .push import push_perspective


__all__ = [
    "MultiPerspectiveScorer",
    "convert_original_checkpoint",
    "load_perspectives",
    "push_perspective",
    "render_perspective_card",
    "render_repo_card",
]
