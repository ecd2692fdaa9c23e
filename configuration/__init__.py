"""Configuration of LLaVA-Reward: the config class, and the training recipes (`recipes/`) and accelerate configs
(`accelerate/`) the package ships, addressable by name from any directory (`named_file`).

Example:
    >>> from llava_reward.configuration import LlavaRewardConfig, named_file
    >>> LlavaRewardConfig(objective="gpm", reward_dim=2).reward_dim
    2
    >>> named_file("accelerate", "ddp").name
    'ddp.yaml'
"""

from transformers import AutoConfig

from .configuration_llava_reward import LlavaRewardConfig
from .named_files import named_file
from .named_files import names


AutoConfig.register(LlavaRewardConfig.model_type, LlavaRewardConfig, exist_ok=True)

__all__ = ["LlavaRewardConfig", "named_file", "names"]
