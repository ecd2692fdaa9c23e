"""Pairwise accuracy with tie calibration (Deutsch, Foster and Freitag, EMNLP 2023)."""

import datasets
import evaluate
import numpy as np


_CITATION = """\
@inproceedings{deutsch2023ties,
  title     = {Ties Matter: Meta-Evaluating Modern Metrics with Pairwise Accuracy and Tie Calibration},
  author    = {Deutsch, Daniel and Foster, George and Freitag, Markus},
  booktitle = {Proceedings of the 2023 Conference on Empirical Methods in Natural Language Processing},
  pages     = {12914--12929},
  year      = {2023},
  address   = {Singapore},
  publisher = {Association for Computational Linguistics},
  url       = {https://aclanthology.org/2023.emnlp-main.798},
  note      = {arXiv:2305.14324}
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
Pairwise accuracy with ties (acc_eq) and tie calibration, from "Ties Matter" (Deutsch et al., EMNLP 2023), as used
by VQAScore and LLaVA-Reward to meta-evaluate text-to-image alignment metrics on TIFA160.

Every pair of items (i < j) is compared. The pair is correct when the metric orders it like the humans do:
sign(human_i - human_j) == sign_eps(metric_i - metric_j), where sign_eps maps differences with |d| <= eps to 0
(a tie). Human ties therefore only count as correct when the metric ties them too. Tie calibration picks the eps
that maximises the accuracy among 0 and every distinct |metric_i - metric_j|, so that metrics that never output
ties are not penalised for it.

Without `groups`, all pairs of the whole set are compared (the TIFA160 protocol). With `groups` (e.g. a prompt
id), only pairs inside a group are compared, accuracy is computed per group and averaged over the groups that
have at least one pair, and one eps shared by all groups is calibrated ("group-by-item" in Deutsch et al.).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): metric score of each item.
    references (`list` of `float`): human score of each item; ties are expected.
    groups (`list` of `str` or `int`, *optional*): group of each item. Pairs are only formed inside a group.
        Pass it to `compute` together with all predictions and references (it is not an `add_batch` input).
    threshold (`float`, *optional*): use this eps instead of calibrating one, e.g. an eps calibrated on another
        split, to report a held-out accuracy.
Returns:
    accuracy (`float`): pairwise accuracy at the calibrated (or given) threshold.
    threshold (`float`): the eps used: the smallest one reaching the best accuracy unless one was given.
    accuracy_no_calibration (`float`): pairwise accuracy with eps = 0 (only exactly equal scores tie).
    num_pairs (`int`): number of pairs compared.
    num_groups (`int`): number of groups holding at least one pair (1 without `groups`).
Examples:
    >>> metric = evaluate.load("evaluation/metrics/tie_calibrated_accuracy")
    >>> results = metric.compute(predictions=[0.25, 0.5, 1.5, 3.0], references=[1, 1, 3, 5])
    >>> results["accuracy"], results["threshold"], results["accuracy_no_calibration"]
    (1.0, 0.25, 0.8333333333333334)
"""


def _as_finite_array(name, values):
    """Return `values` as a float array, rejecting empty input and missing or non-finite entries."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"`{name}` is empty: at least one value is required.")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"`{name}` contains {array[bad[0]]} at index {bad[0]}; every value must be a finite number.")
    return array


def _group_members(groups, num_items):
    """Indices of the items of each group that has at least two items (one group of everything by default)."""
    if groups is None:
        return [np.arange(num_items)]
    if len(groups) != num_items:
        raise ValueError(f"`groups` has {len(groups)} entries but `predictions` has {num_items}.")
    # `g != g` is only true for NaN, which np.unique would otherwise treat as a group of its own.
    missing = [index for index, group in enumerate(groups) if group is None or group != group]
    if missing:
        raise ValueError(f"`groups` contains a missing value at index {missing[0]}.")
    _, labels, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    members = np.split(np.argsort(labels, kind="stable"), np.cumsum(sizes)[:-1])
    return [indices for indices in members if indices.size >= 2]


def _pair_table(predictions, references, members):
    """Columns over all within-group pairs: |metric difference|, human tie, metric agrees when eps = 0, group."""
    columns = []
    for group, indices in enumerate(members):
        first, second = (indices[side] for side in np.triu_indices(indices.size, k=1))
        metric_diff = predictions[first] - predictions[second]
        human_sign = np.sign(references[first] - references[second])
        columns.append(
            (np.abs(metric_diff), human_sign == 0, human_sign == np.sign(metric_diff), np.full(first.size, group))
        )
    return [np.concatenate(column) for column in zip(*columns)]


def _accuracy(eps, gaps, human_ties, agrees, pair_group):
    """Mean over groups of the fraction of correct pairs when a |metric difference| <= eps is a metric tie."""
    # A metric tie is correct exactly when the humans tie the pair too.
    correct = np.where(gaps <= eps, human_ties, agrees)
    return float(np.mean(np.bincount(pair_group, weights=correct) / np.bincount(pair_group)))


def _calibrated_threshold(gaps, human_ties, agrees, pair_group):
    """Smallest eps maximising `_accuracy`, sweeping eps over 0 and the sorted |metric differences| in one pass."""
    # Turning a pair into a tie changes its group's accuracy by +-1 / (pairs in the group), or not at all.
    gains = (human_ties.astype(np.float64) - agrees) / np.bincount(pair_group)[pair_group]
    order = np.argsort(gaps, kind="stable")
    sorted_gaps = gaps[order]
    # An eps ties every pair with a gap <= eps, so each distinct gap is scored after its last pair.
    last = np.append(np.flatnonzero(np.diff(sorted_gaps)), sorted_gaps.size - 1)
    thresholds = np.append(0.0, sorted_gaps[last])
    improvements = np.append(0.0, np.cumsum(gains[order])[last])
    # The tolerance absorbs rounding in the cumulative sum (real differences are multiples of 1 / group pairs),
    # so that equally good thresholds resolve to the smallest one.
    return float(thresholds[np.flatnonzero(improvements >= improvements.max() - 1e-9)[0]])


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TieCalibratedAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
            reference_urls=["https://arxiv.org/abs/2305.14324", "https://arxiv.org/abs/2507.21391"],
            codebase_urls=["https://github.com/google-research/mt-metrics-eval"],
        )

    def _compute(self, predictions, references, groups=None, threshold=None):
        if threshold is not None and not threshold >= 0:
            raise ValueError(f"`threshold` must be >= 0, got {threshold}.")
        predictions = _as_finite_array("predictions", predictions)
        references = _as_finite_array("references", references)
        members = _group_members(groups, predictions.size)
        if not members:
            raise ValueError("Tie-calibrated accuracy needs at least two items (in at least one group) to form a pair.")
        pairs = _pair_table(predictions, references, members)
        if threshold is None:
            threshold = _calibrated_threshold(*pairs)
        return {
            "accuracy": _accuracy(threshold, *pairs),
            "threshold": float(threshold),
            "accuracy_no_calibration": _accuracy(0.0, *pairs),
            "num_pairs": int(pairs[0].size),
            "num_groups": len(members),
        }
