"""LLaVA-Reward: vision-language reward models for text-to-image generation, Hugging Face native.

Importing this package registers LLaVA-Reward with transformers: `AutoConfig`, `AutoModel` and `AutoProcessor` load
saved reward models (full models and adapter perspectives alike), and `transformers.pipeline("text-to-image-reward")`
scores (prompt, image) pairs.

Example:
    >>> import llava_reward
    >>> scorer = llava_reward.load("default")  # the embedded fidelity model  # doctest: +SKIP
    >>> scorer("a red apple on a table", ["apple.png", "melted_apple.png"])  # doctest: +SKIP
    tensor([ 0.4261, -0.0623])
"""

from transformers import AutoModel
from transformers import AutoProcessor

from .configuration import LlavaRewardConfig
from .families import FAMILIES
from .families import VlmFamily
from .families import get_family
from .loading import load
from .modeling_llava_reward import LlavaRewardModel
from .modeling_llava_reward import LlavaRewardOutput
from .multi_perspective import MultiPerspectiveScorer
from .multi_perspective import load_perspectives
from .pipeline import TextToImageRewardPipeline
from .pipeline import register_pipeline
from .processing_llava_reward import LlavaRewardProcessor
from .scoring import LlavaRewardScorer


AutoModel.register(LlavaRewardConfig, LlavaRewardModel, exist_ok=True)
AutoProcessor.register(LlavaRewardConfig, LlavaRewardProcessor, exist_ok=True)
register_pipeline()

__all__ = [
    "FAMILIES",
    "LlavaRewardConfig",
    "LlavaRewardModel",
    "LlavaRewardOutput",
    "LlavaRewardProcessor",
    "LlavaRewardScorer",
    "MultiPerspectiveScorer",
    "TextToImageRewardPipeline",
    "VlmFamily",
    "get_family",
    "load",
    "load_perspectives",
]
