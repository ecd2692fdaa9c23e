"""LLaVA-Reward: vision-language reward models for text-to-image generation."""
