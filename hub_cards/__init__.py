"""Sharing LLaVA-Reward perspectives on the Hugging Face Hub: model cards, push, and conversion of the published
checkpoints. (Loading several perspectives on one base is inference: `llava_reward.load_perspectives`.)

Example:
    >>> from llava_reward.hub_cards import push_perspective
    >>> push_perspective("outputs/fidelity", "me/llava-reward-qwen", "fidelity")  # doctest: +SKIP
"""

from .cards import render_perspective_card
from .cards import render_repo_card
from .convert_original import convert_original_checkpoint
from .push import push_perspective


__all__ = [
    "convert_original_checkpoint",
    "push_perspective",
    "render_perspective_card",
    "render_repo_card",
]
