"""Pairwise preference accuracy with and without ties, as reported on MJ-Bench."""

import datasets
import evaluate
import numpy as np


_CITATION = """\
@article{chen2024mjbench,
  title   = {MJ-Bench: Is Your Multimodal Reward Model Really a Good Judge for Text-to-Image Generation?},
  author  = {Chen, Zhaorun and Du, Yichao and Wen, Zichen and Zhou, Yiyang and Cui, Chenhang and Weng, Zhenzhen
             and Tu, Haoqin and Wang, Chaoqi and Tong, Zhengwei and Huang, Qinglan and others},
  journal = {arXiv preprint arXiv:2407.04842},
  year    = {2024}
}
@inproceedings{zhou2025llavareward,
  title     = {Multimodal LLMs as Customized Reward Models for Text-to-Image Generation},
  author    = {Zhou, Shijie and Zhang, Ruiyi and Zhu, Huaisheng and Kveton, Branislav and Zhou, Yufan
               and Gu, Jiuxiang and Chen, Jian and Chen, Changyou},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages     = {19638--19648},
  year      = {2025},
  note      = {arXiv:2507.21391}
}
"""

_DESCRIPTION = """\
Pairwise accuracy of a reward model on preference pairs (a chosen and a rejected image for the same prompt).
A pair is correct when the model scores the chosen image higher than the rejected one by more than
`tie_threshold`, and a tie when the two scores differ by at most `tie_threshold`.

Two accuracies are reported, following MJ-Bench:
- `accuracy_with_ties` ("w/ tie"): ties count as wrong; the denominator is every pair.
- `accuracy_without_ties` ("w/o tie"): tied pairs are dropped from numerator and denominator.

The default configuration takes one score per image (`chosen_scores`, `rejected_scores`). The `"probabilities"`
configuration takes the model's probability that the chosen image is preferred, which is compared with 0.5.
Both accuracies come with percentile bootstrap 95% confidence intervals over pairs.
"""

_KWARGS_DESCRIPTION = """
Args:
    chosen_scores (`list` of `float`): reward of the preferred image of each pair (default configuration).
    rejected_scores (`list` of `float`): reward of the other image of each pair (default configuration).
    probabilities (`list` of `float`): P(chosen preferred over rejected) per pair (`"probabilities"` configuration).
    tie_threshold (`float`, defaults to 0.0): a pair is a tie when |chosen - rejected| <= tie_threshold
        (|probability - 0.5| <= tie_threshold). With 0.0 only exactly equal scores tie.
    num_bootstrap (`int`, defaults to 1000): bootstrap replicates for the confidence intervals; 0 disables them.
    seed (`int`, defaults to 0): seed of the bootstrap, so that reported intervals are reproducible.
Returns:
    accuracy_with_ties (`float`): correct pairs / all pairs.
    accuracy_without_ties (`float` or `None`): correct pairs / untied pairs; `None` when every pair is a tie.
    num_pairs (`int`): number of pairs.
    num_ties (`int`): number of tied pairs.
    accuracy_with_ties_ci (`list` of two `float`, or `None`): 2.5th and 97.5th bootstrap percentiles;
        `None` when `num_bootstrap` is 0.
    accuracy_without_ties_ci (`list` of two `float`, or `None`): same for `accuracy_without_ties`, over the
        replicates that hold at least one untied pair; `None` when there is none or `num_bootstrap` is 0.
Examples:
    >>> metric = evaluate.load("evaluation/metrics/pairwise_accuracy")
    >>> results = metric.compute(
    ...     chosen_scores=[0.9, 0.7, 0.4, 0.5, 0.8, 0.6],
    ...     rejected_scores=[0.1, 0.3, 0.6, 0.5, 0.2, 0.6],
    ...     num_bootstrap=0,
    ... )
    >>> results["accuracy_with_ties"], results["accuracy_without_ties"], results["num_ties"]
    (0.5, 0.75, 2)

    >>> metric = evaluate.load("evaluation/metrics/pairwise_accuracy", "probabilities")
    >>> results = metric.compute(probabilities=[0.9, 0.55, 0.5, 0.2], tie_threshold=0.1, num_bootstrap=0)
    >>> results["accuracy_with_ties"], results["accuracy_without_ties"], results["num_ties"]
    (0.25, 0.5, 2)
"""

_FEATURES = {
    "default": datasets.Features(
        {"chosen_scores": datasets.Value("float64"), "rejected_scores": datasets.Value("float64")}
    ),
    "probabilities": datasets.Features({"probabilities": datasets.Value("float64")}),
}


def _as_finite_array(name, values):
    """Return `values` as a float array, rejecting empty input and missing or non-finite entries."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"`{name}` is empty: at least one value is required.")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"`{name}` contains {array[bad[0]]} at index {bad[0]}; every value must be a finite number.")
    return array


def _percentile_interval(values):
    return None if values.size == 0 else [float(bound) for bound in np.percentile(values, [2.5, 97.5])]


def _bootstrap_intervals(num_correct, num_ties, num_pairs, num_bootstrap, seed):
    """Percentile bootstrap intervals of both accuracies, resampling pairs with replacement."""
    rng = np.random.default_rng(seed)
    # A resample of pairs only matters through how many correct, tied and wrong pairs it holds, and those counts
    # are multinomial: drawing them directly is the same bootstrap at a cost independent of the number of pairs.
    num_wrong = num_pairs - num_correct - num_ties
    counts = rng.multinomial(num_pairs, np.array([num_correct, num_ties, num_wrong]) / num_pairs, size=num_bootstrap)
    correct, untied = counts[:, 0], num_pairs - counts[:, 1]
    decided = untied > 0
    return (
        _percentile_interval(correct / num_pairs),
        _percentile_interval(correct[decided] / untied[decided]),
    )


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PairwiseAccuracy(evaluate.Metric):
    def _info(self):
        if self.config_name not in _FEATURES:
            raise ValueError(f"Unknown configuration {self.config_name!r}; choose one of {sorted(_FEATURES)}.")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES[self.config_name],
            reference_urls=["https://arxiv.org/abs/2407.04842", "https://arxiv.org/abs/2507.21391"],
        )

    def _compute(
        self,
        chosen_scores=None,
        rejected_scores=None,
        probabilities=None,
        tie_threshold=0.0,
        num_bootstrap=1000,
        seed=0,
    ):
        if tie_threshold < 0:
            raise ValueError(f"`tie_threshold` must be >= 0, got {tie_threshold}.")
        if probabilities is None:
            margins = _as_finite_array("chosen_scores", chosen_scores) - _as_finite_array(
                "rejected_scores", rejected_scores
            )
        else:
            # P(chosen > rejected) = 0.5 means the model has no preference: 0.5 plays the rejected score's role.
            margins = _as_finite_array("probabilities", probabilities) - 0.5

        ties = np.abs(margins) <= tie_threshold
        num_pairs, num_ties = margins.size, int(ties.sum())
        num_correct = int((margins > tie_threshold).sum())
        num_untied = num_pairs - num_ties
        if num_bootstrap:
            ci_with_ties, ci_without_ties = _bootstrap_intervals(num_correct, num_ties, num_pairs, num_bootstrap, seed)
        else:
            ci_with_ties = ci_without_ties = None
        return {
            "accuracy_with_ties": num_correct / num_pairs,
            "accuracy_without_ties": num_correct / num_untied if num_untied else None,
            "num_pairs": num_pairs,
            "num_ties": num_ties,
            "accuracy_with_ties_ci": ci_with_ties,
            "accuracy_without_ties_ci": ci_without_ties,
        }
