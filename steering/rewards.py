"""Rewards for steering: any `reward_fn(images, prompts, metadata) -> (rewards, info)`, a reward scorer, or several
perspectives combined with weights.

The contract is the one flow_grpo and DDPO use: `images` an NCHW float tensor in [0, 1], `prompts` one per image,
`metadata` one dict per image; it returns one scalar reward per image and a dict of extra information.

Example:
    >>> import torch
    >>> from llava_reward.steering import as_reward_fn
    >>> brightness = as_reward_fn(lambda images, prompts, metadata: (images.mean(dim=(1, 2, 3)), {}))
    >>> brightness(torch.ones(2, 3, 8, 8), ["a", "b"], [{}, {}])[0]
    tensor([1., 1.])
"""

from collections.abc import Callable
from collections.abc import Mapping

import torch

from llava_reward.multi_perspective import MultiPerspectiveScorer
from llava_reward.scoring import LlavaRewardScorer


RewardFn = Callable[[torch.Tensor, list[str], list[dict]], tuple[torch.Tensor, dict]]


def as_reward_fn(reward) -> RewardFn:
    """The steering reward for `reward`, which may be:

    * a `LlavaRewardScorer`: its `reward_fn` (one perspective);
    * a `WeightedReward` over a `MultiPerspectiveScorer`;
    * any callable `reward(images, prompts, metadata)` returning `(rewards, info)` or just `rewards`.

    The result always returns `(rewards, info)` with `rewards` a float32 CPU tensor of shape `(N,)`.
    """
    # Scorers are callable too, as `scorer(prompts, images)`: they are told apart before the generic callable.
    if isinstance(reward, MultiPerspectiveScorer):
        raise TypeError(
            "A multi-perspective scorer returns one reward per perspective: wrap it as "
            "WeightedReward(scorer, {'alignment': 1.0, ...}) to say how to combine them."
        )
    function = reward.reward_fn if isinstance(reward, LlavaRewardScorer) else reward
    if not callable(function):
        raise TypeError(
            f"The reward must be a LlavaRewardScorer, a WeightedReward or a callable, not {type(reward).__name__}."
        )

    def reward_fn(images, prompts, metadata):
        returned = function(images, prompts, metadata)
        rewards, info = returned if isinstance(returned, tuple) else (returned, {})
        return check_rewards(rewards, len(prompts)), dict(info or {})

    return reward_fn


def check_rewards(rewards, count: int) -> torch.Tensor:
    """`rewards` as a float32 CPU tensor of shape `(count,)`, or a clear error."""
    rewards = torch.as_tensor(rewards).detach().float().cpu()
    if rewards.ndim == 2 and rewards.shape[1] == 1:
        rewards = rewards[:, 0]
    if rewards.shape != (count,):
        raise ValueError(
            f"The reward function returned rewards of shape {tuple(rewards.shape)} for {count} images; steering needs "
            f"one scalar per image, shape ({count},) (a GPM model's preference embeddings cannot steer)."
        )
    return rewards


class WeightedReward:
    r"""
    A weighted sum of several perspectives' rewards, as one steering reward.

    Args:
        scorer (`MultiPerspectiveScorer`): several perspectives on one base, from
            `llava_reward.multi_perspective.load_perspectives` (or `llava_reward.load` with a list of perspectives).
        weights (`dict[str, float]`, *optional*): the weight of each perspective (those left out are not used);
            defaults to 1 for every perspective. Rewards of different perspectives have different scales: the
            weights are where to equalise them.
        batch_size (`int`, *optional*, defaults to 8): images per forward of the scorer.

    Example:
        >>> scorer = load_perspectives(repo, ["alignment", "fidelity"])  # doctest: +SKIP
        >>> reward = WeightedReward(scorer, {"alignment": 1.0, "fidelity": 0.5})  # doctest: +SKIP
        >>> fk_steering(pipe, "a red cat", reward, num_particles=4)  # doctest: +SKIP
    """

    def __init__(
        self, scorer: MultiPerspectiveScorer, weights: Mapping[str, float] | None = None, *, batch_size: int = 8
    ):
        perspectives = list(scorer.perspectives)
        weights = dict.fromkeys(perspectives, 1.0) if weights is None else dict(weights)
        unknown = sorted(set(weights) - set(perspectives))
        if unknown:
            raise ValueError(f"Unknown perspectives in the weights: {unknown}; the scorer has {perspectives}.")
        if not weights:
            raise ValueError("The weights name no perspective: give at least one.")
        self.scorer = scorer
        self.weights = {name: float(weight) for name, weight in weights.items()}
        self.batch_size = batch_size

    def __call__(self, images, prompts, metadata=None) -> tuple[torch.Tensor, dict]:
        scores = self.scorer.score(prompts, images, batch_size=self.batch_size, progress=False)
        total = torch.zeros(len(prompts))
        for name, weight in self.weights.items():
            total += weight * check_rewards(scores[name], len(prompts))
        return total, {"perspectives": {name: scores[name] for name in self.weights}, "weights": self.weights}
