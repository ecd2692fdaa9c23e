"""Training LLaVA-Reward models: `LlavaRewardTrainer` (a TRL `RewardTrainer` for images) and its configuration.

The data loaders live in `trainers.data`; the training script is `python -m llava_reward.trainers.train` (`llava-reward train`).
The two classes are imported on first use, so that the command line's `--help` does not wait for torch and TRL.
"""

__all__ = ["LlavaRewardTrainer", "LlavaRewardTrainingConfig"]


def __getattr__(name):
    if name in __all__:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
