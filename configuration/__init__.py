"""Configuration of LLaVA-Reward: the config class, training recipes (`recipes/`) and accelerate configs."""

from transformers import AutoConfig

from .configuration_llava_reward import LlavaRewardConfig


AutoConfig.register(LlavaRewardConfig.model_type, LlavaRewardConfig, exist_ok=True)

__all__ = ["LlavaRewardConfig"]
