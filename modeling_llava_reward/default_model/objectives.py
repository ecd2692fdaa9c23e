"""The objectives a LLaVA-Reward value head is trained with, in one registry: Bradley-Terry, General Preference
Model and cross-entropy.

Each objective says what the head outputs, how two outputs compare, which scalar ranks images, its loss and how
its labels read. The config validates against it, the trainer takes its losses, the scorer its probabilities and
rankings, evaluation its metrics' inputs, the model cards its descriptions and the command line its choices: a new
objective is one class here.

With `s(a, b)` the preference logit of image a over image b:

    BT:  s(a, b) = r_a - r_b                                  (scalar rewards)
    GPM: s(a, b) = sum_k a_{2k} b_{2k+1} - a_{2k+1} b_{2k}     (embeddings in R^D, D even: block skew-symmetric)
    P(a > b) = sigmoid(s(a, b) / tau) for both; a CE model scores each image on its own: P(label 1) = sigmoid(r).

This file only imports torch: it ships beside checkpoints with the config (`trust_remote_code`).

Example:
    >>> import torch
    >>> from llava_reward.objectives import OBJECTIVES, get_objective
    >>> round(get_objective("bt").preference_probability(torch.tensor(1.0), torch.tensor(0.0), tau=1.0).item(), 4)
    0.7311
    >>> sorted(OBJECTIVES)
    ['bt', 'ce', 'gpm']
"""

import torch
import torch.nn.functional as F


class Objective:
    """What one objective means; subclasses override what differs. Instances live in `OBJECTIVES`."""

    name: str
    display_name: str  # shown in model cards and reports
    output_kind: str  # what one image's output is called: "reward", "logit" or "preference embedding"
    # Whether P(a preferred over b) = sigmoid(s(a, b) / tau) is defined (a CE model judges each image on its own).
    pairwise: bool = True
    # Whether an image's output is one number, which then ranks images by itself (GPM outputs embeddings).
    scalar: bool = True
    # Whether the data's per-pair `margin` (e.g. a rating gap) can enter the loss.
    uses_margin: bool = False
    # Whether unpaired rows (prompt, image, 0/1 label) can be learned from.
    learns_from_labels: bool = False
    # Whether rewards are only defined up to a constant (only differences matter), which a centring term pins down.
    shift_invariant: bool = False

    def check_reward_dim(self, reward_dim: int) -> None:
        """Raise a `ValueError` when the value head's size does not suit this objective."""
        if reward_dim != 1:
            raise ValueError(f"`reward_dim` must be 1 for objective={self.name!r}, got {reward_dim}.")

    def preference_logit(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """s(first, second): how much `first` beats `second`; (...,) from rewards (...,) or embeddings (..., D)."""
        return first - second

    def preference_probability(self, first: torch.Tensor, second: torch.Tensor, tau: float) -> torch.Tensor:
        """P(first preferred over second) = sigmoid(s(first, second) / tau)."""
        if not self.pairwise:
            raise ValueError(
                f"objective={self.name!r} has no pairwise preference: a {self.name!r} model scores each image on its "
                "own (P(label=1) = sigmoid(reward))."
            )
        return torch.sigmoid(self.preference_logit(first, second) / tau)

    def pair_loss(
        self,
        chosen: torch.Tensor,  # (B,) rewards / logits, or (B, D) embeddings
        rejected: torch.Tensor,
        tau: float,
        margin: torch.Tensor | None = None,  # (B,), already scaled; only where `uses_margin`
    ) -> torch.Tensor:
        """Mean loss over pairs: `-log sigmoid(s(chosen, rejected) / tau)`."""
        return -F.logsigmoid(self.preference_logit(chosen, rejected) / tau).mean()

    def labelled_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise ValueError(
            f"objective={self.name!r} learns from pairs, not from labelled images (prompt, image, label): use 'ce'."
        )

    def ranking_scores(self, rewards: torch.Tensor, tau: float) -> torch.Tensor:
        """(N,) scores that order N images best first: the rewards themselves for a scalar objective."""
        return rewards

    def describe_output(self, reward_dim: int) -> str:
        return f"one scalar {self.output_kind} per image (`score` returns shape `(N,)`)"


class BradleyTerry(Objective):
    """Bradley-Terry: a scalar reward; `-log sigmoid((r_c - r_r - margin) / tau)`."""

    name = "bt"
    display_name = "Bradley-Terry"
    output_kind = "reward"
    uses_margin = True
    shift_invariant = True

    def pair_loss(self, chosen, rejected, tau, margin=None):
        logit = self.preference_logit(chosen, rejected)
        if margin is not None:
            logit = logit - margin
        return -F.logsigmoid(logit / tau).mean()


class GeneralPreference(Objective):
    """General Preference Model: an embedding in R^D (D even) per image, compared by a skew-symmetric form."""

    name = "gpm"
    display_name = "General Preference Model"
    output_kind = "preference embedding"
    scalar = False

    def check_reward_dim(self, reward_dim: int) -> None:
        if reward_dim < 2 or reward_dim % 2:
            raise ValueError(f"`reward_dim` must be even and >= 2 for objective='gpm', got {reward_dim}.")

    def preference_logit(self, first, second):
        # [[0, -1], [1, 0]] per 2x2 block: s = a0*b1 - a1*b0 summed over blocks; antisymmetric, so s(a, a) = 0.
        return (first[..., 0::2] * second[..., 1::2] - first[..., 1::2] * second[..., 0::2]).sum(-1)

    def ranking_scores(self, rewards, tau):
        # GPM preferences need not be transitive: rank by Copeland score, wins minus losses over all pairs (P > 0.5
        # is a win), ties broken by the summed preference probability (kept below 1).
        matrix = self.preference_probability(rewards[:, None], rewards[None, :], tau)  # (N, N)
        copeland = (matrix > 0.5).sum(1).float() - (matrix < 0.5).sum(1).float()
        return copeland + matrix.sum(1) / (matrix.shape[0] ** 2)

    def describe_output(self, reward_dim):
        return f"a preference embedding in R^{reward_dim} per image (`score` returns shape `(N, {reward_dim})`)"


class CrossEntropy(Objective):
    """Cross-entropy: a logit per image, P(label 1) = sigmoid(logit) (UnsafeBench convention: 1 = safe).

    On pairs: `BCE(r_c, 1) + BCE(r_r, 0)`; on labelled rows: `BCE(r, label)`. Pairs are compared by the logit
    difference (which image is more likely the good one), without a calibrated P(a > b).
    """

    name = "ce"
    display_name = "cross-entropy (binary labels)"
    output_kind = "logit"
    pairwise = False
    learns_from_labels = True

    def pair_loss(self, chosen, rejected, tau, margin=None):
        return F.binary_cross_entropy_with_logits(
            chosen, torch.ones_like(chosen)
        ) + F.binary_cross_entropy_with_logits(rejected, torch.zeros_like(rejected))

    def labelled_loss(self, logits, labels):
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


OBJECTIVES: dict[str, Objective] = {
    objective.name: objective for objective in (BradleyTerry(), GeneralPreference(), CrossEntropy())
}


def get_objective(name: str) -> Objective:
    """The objective called `name`; a `ValueError` listing the known ones otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"`objective` must be one of {tuple(OBJECTIVES)}, got {name!r}.") from None


def names_with(attribute: str) -> str:
    """The objectives with a true `attribute`, quoted and joined for a message: `names_with("pairwise")` is
    `"'bt' or 'gpm'"`."""
    return " or ".join(repr(name) for name, objective in OBJECTIVES.items() if getattr(objective, attribute))


__all__ = ["OBJECTIVES", "BradleyTerry", "CrossEntropy", "GeneralPreference", "Objective", "get_objective", "names_with"]
