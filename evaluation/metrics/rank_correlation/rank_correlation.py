"""Pearson, Spearman and Kendall (tau-b and tau-c) correlations between metric and human scores."""

import datasets
import evaluate
import numpy as np
from scipy import stats


_CITATION = """\
@article{virtanen2020scipy,
  title   = {{SciPy} 1.0: Fundamental Algorithms for Scientific Computing in Python},
  author  = {Virtanen, Pauli and Gommers, Ralf and Oliphant, Travis E. and Haberland, Matt and Reddy, Tyler
             and Cournapeau, David and Burovski, Evgeni and Peterson, Pearu and Weckesser, Warren and Bright, Jonathan
             and others},
  journal = {Nature Methods},
  volume  = {17},
  pages   = {261--272},
  year    = {2020},
  doi     = {10.1038/s41592-019-0686-2}
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
Correlation between metric scores and human scores, as reported for text-to-image alignment benchmarks such as
TIFA160: Pearson's r (linear), Spearman's rho (rank) and two variants of Kendall's tau that treat ties differently.
Kendall's tau-b divides by the pairs untied in each variable and reaches +-1 on square contingency tables;
tau-c (Stuart's tau) is adjusted for rectangular tables, which is the usual case when few distinct human ratings
are compared with continuous metric scores. Computed with `scipy.stats`, with two-sided p-values.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): metric score of each item.
    references (`list` of `float`): human score of each item.
Returns:
    pearson, spearman, kendall_tau_b, kendall_tau_c (`float` or `None`): the coefficients, in [-1, 1].
    pearson_pvalue, spearman_pvalue, kendall_tau_b_pvalue, kendall_tau_c_pvalue (`float` or `None`):
        two-sided p-values of the null hypothesis of no association.
    A value is `None` when the statistic is undefined, e.g. when one input is constant.
Examples:
    >>> metric = evaluate.load("evaluation/metrics/rank_correlation")
    >>> results = metric.compute(predictions=[1, 2, 3, 4, 5, 6], references=[1, 1, 1, 2, 2, 2])
    >>> round(results["kendall_tau_b"], 4), results["kendall_tau_c"]
    (0.7746, 1.0)
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


def _defined(value):
    """scipy reports undefined statistics (constant input) as NaN, which is not valid JSON: map them to None."""
    value = float(value)
    return None if np.isnan(value) else value


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RankCorrelation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
            reference_urls=[
                "https://docs.scipy.org/doc/scipy/reference/generated/scipy.stats.kendalltau.html",
                "https://arxiv.org/abs/2507.21391",
            ],
        )

    def _compute(self, predictions, references):
        predictions = _as_finite_array("predictions", predictions)
        references = _as_finite_array("references", references)
        if predictions.size < 2:
            raise ValueError(f"Correlations need at least two items, got {predictions.size}.")
        tests = {
            "pearson": stats.pearsonr(predictions, references),
            "spearman": stats.spearmanr(predictions, references),
            "kendall_tau_b": stats.kendalltau(predictions, references, variant="b"),
            "kendall_tau_c": stats.kendalltau(predictions, references, variant="c"),
        }
        results = {}
        for name, test in tests.items():
            results[name] = _defined(test.statistic)
            results[f"{name}_pvalue"] = _defined(test.pvalue)
        return results
