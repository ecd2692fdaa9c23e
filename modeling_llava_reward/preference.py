"""Preference probabilities of LLaVA-Reward's objectives (shared by the scorer and the trainer).

BT:  s(a, b) = r_a - r_b                                   (scalar rewards)
GPM: s(a, b) = sum_k a_{2k} b_{2k+1} - a_{2k+1} b_{2k}      (embeddings in R^D, D even: block skew-symmetric operator)
P(a > b) = sigmoid(s(a, b) / tau) for both.

Example:
    >>> import torch
    >>> from modeling_llava_reward.preference import preference_probability
    >>> round(preference_probability(torch.tensor(1.0), torch.tensor(0.0), "bt", tau=1.0).item(), 4)
    0.7311
"""

import torch


def preference_logit(first: torch.Tensor, second: torch.Tensor, objective: str) -> torch.Tensor:
    """s(first, second): (...,) for BT rewards of shape (...,), or GPM embeddings of shape (..., D)."""
    if objective == "bt":
        return first - second
    if objective == "gpm":
        # [[0, -1], [1, 0]] per 2x2 block: s = a0*b1 - a1*b0 summed over blocks; antisymmetric, so s(a, a) = 0.
        return (first[..., 0::2] * second[..., 1::2] - first[..., 1::2] * second[..., 0::2]).sum(-1)
    raise ValueError(
        f"objective={objective!r} has no pairwise preference: a 'ce' model scores each image on its own "
        "(P(label=1) = sigmoid(reward))."
    )


def preference_probability(first: torch.Tensor, second: torch.Tensor, objective: str, tau: float) -> torch.Tensor:
    """P(first > second) = sigmoid(s(first, second) / tau)."""
    return torch.sigmoid(preference_logit(first, second, objective) / tau)
