"""LLaVA-Reward: vision-language reward models for text-to-image generation, Hugging Face native.

Importing this package registers `llava_reward` with `AutoConfig` and `AutoModel`.
"""

from transformers import AutoModel
from transformers import AutoProcessor

from .configuration import LlavaRewardConfig
from .families import FAMILIES
from .families import VlmFamily
from .families import get_family
from .modeling_llava_reward import LlavaRewardModel
from .modeling_llava_reward import LlavaRewardOutput
from .multi_perspective import MultiPerspectiveScorer
from .multi_perspective import load_perspectives
from .processing_llava_reward import LlavaRewardProcessor
from .scoring import LlavaRewardScorer


AutoModel.register(LlavaRewardConfig, LlavaRewardModel, exist_ok=True)
AutoProcessor.register(LlavaRewardConfig, LlavaRewardProcessor, exist_ok=True)

__all__ = [
    "FAMILIES",
    "LlavaRewardConfig",
    "LlavaRewardModel",
    "LlavaRewardOutput",
    "LlavaRewardProcessor",
    "LlavaRewardScorer",
    "MultiPerspectiveScorer",
    "VlmFamily",
    "get_family",
    "load_perspectives",
]
