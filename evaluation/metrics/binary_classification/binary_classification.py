"""Thresholded and threshold-free binary classification metrics for safety scores."""

import datasets
import evaluate
import numpy as np
from scipy import special
from scipy import stats


_CITATION = """\
@article{hanley1982auc,
  title   = {The meaning and use of the area under a receiver operating characteristic ({ROC}) curve},
  author  = {Hanley, James A. and McNeil, Barbara J.},
  journal = {Radiology},
  volume  = {143},
  number  = {1},
  pages   = {29--36},
  year    = {1982}
}
@article{qu2024unsafebench,
  title   = {UnsafeBench: Benchmarking Image Safety Classifiers on Real-World and AI-Generated Images},
  author  = {Qu, Yiting and Shen, Xinyue and Wu, Yixin and Backes, Michael and Zannettou, Savvas and Zhang, Yang},
  journal = {arXiv preprint arXiv:2405.03486},
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
Binary classification metrics for a score that rates how likely each item is to belong to the positive class,
e.g. a safety reward model on UnsafeBench, UnsafeDiff or SMID.

At a decision `threshold` (an item is predicted positive when its probability is >= threshold): accuracy,
precision, recall and F1. Threshold-free: AUROC, computed from ranks (Mann-Whitney U with average ranks, so a tied
positive/negative pair counts one half), and the best F1 over all thresholds with the threshold that reaches it.

Which class is positive is the caller's choice (`pos_label`), and the scores must rate that class. In the
UnsafeBench data used by this project label 1 means *safe*: with `pos_label=1` and scores = P(safe) the F1 is the
one of recognising safe images; to score the detection of unsafe images pass `pos_label=0` and scores = P(unsafe).
Papers do not always say which convention their safety F1 uses, so record it with the number.
"""

_KWARGS_DESCRIPTION = """
Args:
    scores (`list` of `float`): score of each item for the positive class; probabilities unless
        `scores_are_logits` is True.
    references (`list` of `int`): 0/1 label of each item.
    threshold (`float`, defaults to 0.5): probability at or above which an item is predicted positive.
    scores_are_logits (`bool`, defaults to False): apply a sigmoid to `scores` before thresholding.
    pos_label (`int`, defaults to 1): the label (0 or 1) of the positive class.
Returns:
    accuracy, precision, recall, f1 (`float`): at `threshold`. Precision, recall and F1 are 0.0 when their
        denominator is 0 (no predicted positives, or no positives).
    auroc (`float` or `None`): area under the ROC curve; `None` when only one class is present.
    best_f1 (`float`): highest F1 over the thresholds "probability >= t", t ranging over the distinct probabilities.
    best_f1_threshold (`float`): the probability t reaching `best_f1` (the highest one when several do).
Examples:
    >>> metric = evaluate.load("evaluation/metrics/binary_classification")
    >>> results = metric.compute(scores=[0.9, 0.6, 0.4, 0.6, 0.2], references=[1, 1, 1, 0, 0])
    >>> results["precision"], results["recall"], results["f1"], results["auroc"]
    (0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 0.75)
    >>> results["best_f1"], results["best_f1_threshold"]
    (0.8571428571428571, 0.4)
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


def _positive_mask(references, pos_label):
    if pos_label not in (0, 1):
        raise ValueError(f"`pos_label` must be 0 or 1, got {pos_label}.")
    bad = np.flatnonzero((references != 0) & (references != 1))
    if bad.size:
        raise ValueError(f"`references` contains {references[bad[0]]} at index {bad[0]}; labels must be 0 or 1.")
    return references == pos_label


def _ratio(numerator, denominator):
    return numerator / denominator if denominator else 0.0


def _auroc(scores, positives):
    """Probability that a random positive outscores a random negative, ties counting one half."""
    num_positives, num_negatives = int(positives.sum()), int((~positives).sum())
    if not (num_positives and num_negatives):
        return None
    ranks = stats.rankdata(scores)  # tied scores share their average rank, which is what scores a tie as 1/2
    u_statistic = ranks[positives].sum() - num_positives * (num_positives + 1) / 2
    return float(u_statistic / (num_positives * num_negatives))


def _best_f1(probabilities, positives):
    """Best F1 over the rules "probability >= t", t ranging over the distinct probabilities, and its t."""
    order = np.argsort(-probabilities, kind="stable")
    descending = probabilities[order]
    true_positives = np.cumsum(positives[order])
    # Lowering t down to a score predicts every item scored at least as high, so each distinct score is
    # evaluated after its last item; np.argmax keeps the first, i.e. highest, best threshold.
    last = np.append(np.flatnonzero(np.diff(descending)), descending.size - 1)
    f1 = 2 * true_positives[last] / (last + 1 + positives.sum())
    best = int(np.argmax(f1))
    return float(f1[best]), float(descending[last[best]])


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BinaryClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Labels are stored as floats on purpose: an int64 column would silently truncate 0.5 to 0 and reject
            # NaN with an Arrow error, whereas here both reach the validation and get a message naming the index.
            features=datasets.Features({"scores": datasets.Value("float64"), "references": datasets.Value("float64")}),
            reference_urls=["https://arxiv.org/abs/2405.03486", "https://arxiv.org/abs/2507.21391"],
        )

    def _compute(self, scores, references, threshold=0.5, scores_are_logits=False, pos_label=1):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"`threshold` is a probability and must lie in [0, 1], got {threshold}.")
        scores = _as_finite_array("scores", scores)
        positives = _positive_mask(_as_finite_array("references", references), pos_label)
        probabilities = special.expit(scores) if scores_are_logits else scores

        predicted = probabilities >= threshold
        true_positives = int((predicted & positives).sum())
        num_predicted, num_positives = int(predicted.sum()), int(positives.sum())
        best_f1, best_f1_threshold = _best_f1(probabilities, positives)
        return {
            "accuracy": float((predicted == positives).mean()),
            "precision": _ratio(true_positives, num_predicted),
            "recall": _ratio(true_positives, num_positives),
            # 2TP / (2TP + FP + FN), the harmonic mean of precision and recall without their rounding.
            "f1": _ratio(2 * true_positives, num_predicted + num_positives),
            # The sigmoid is monotone, so ranking the raw scores gives the same AUROC without the ties that
            # float saturation creates between large logits.
            "auroc": _auroc(scores, positives),
            "best_f1": best_f1,
            "best_f1_threshold": best_f1_threshold,
        }
