"""Evaluation of LLaVA-Reward models on published benchmarks.

- `evaluation/metrics/<name>/`: `evaluate` metric modules (pairwise accuracy w/ and w/o ties, tie-calibrated pairwise
  accuracy, rank correlations, binary classification), loadable with `evaluate.load(metric_path(name))` from any
  directory;
- `evaluation/references/*.json`: published numbers that reports print our results beside;
- `Evaluation`: read a benchmark (MJ-Bench, TIFA160, published unpaired or pairwise JSON), score it resumably, and
  write metrics.json, report.md, scores.jsonl and PNG plots (`llava-reward evaluate` on the command line).

Example:
    >>> from llava_reward.evaluation import BENCHMARKS, load_metric
    >>> sorted(BENCHMARKS)
    ['mjbench', 'pairwise', 'tifa160', 'unpaired']
    >>> load_metric("pairwise_accuracy").compute(chosen_scores=[2.0, 1.0], rejected_scores=[1.0, 1.0], num_bootstrap=0)["accuracy_with_ties"]
    0.5
"""

from llava_reward.data_formats import BadRowsError

from .benchmarks import BENCHMARKS
from .benchmarks import read_benchmark
from .report import load_references
from .runner import METRICS_DIR
from .runner import Evaluation
from .runner import Protocol
from .runner import load_metric
from .runner import metric_path


__all__ = ["BENCHMARKS", "METRICS_DIR", "BadRowsError", "Evaluation", "Protocol", "load_metric", "load_references", "metric_path", "read_benchmark"]
