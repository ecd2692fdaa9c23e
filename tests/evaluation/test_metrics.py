"""The evaluate metric modules in evaluation/metrics, loaded the way users load them, against hand-computed values."""

import os


os.environ["HF_EVALUATE_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import doctest  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import evaluate  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


ROOT = Path(__file__).resolve().parents[2]
METRICS = ROOT / "evaluation" / "metrics"
REFERENCES = ROOT / "evaluation" / "references"
METRIC_NAMES = ["pairwise_accuracy", "tie_calibrated_accuracy", "rank_correlation", "binary_classification"]


@functools.cache
def load(name, config_name=None):
    # In memory: evaluate keeps the lock of its cache file when `_compute` raises, so the next computation of the
    # module would first wait a second for that lock; the error tests below would add that up.
    return evaluate.load(str(METRICS / name), config_name, keep_in_memory=True)


# ----------------------------------------------------------------------------------------------- pairwise_accuracy


def test_pairwise_accuracy_counts_ties_as_wrong_or_drops_them():
    # Margins 0.8, 0.4, -0.2, 0, 0.6, 0: three correct, one wrong, two exact ties.
    results = load("pairwise_accuracy").compute(
        chosen_scores=[0.9, 0.7, 0.4, 0.5, 0.8, 0.6],
        rejected_scores=[0.1, 0.3, 0.6, 0.5, 0.2, 0.6],
        num_bootstrap=0,
    )
    assert results == {
        "accuracy_with_ties": 3 / 6,
        "accuracy_without_ties": 3 / 4,
        "num_pairs": 6,
        "num_ties": 2,
        "accuracy_with_ties_ci": None,
        "accuracy_without_ties_ci": None,
    }


def test_pairwise_accuracy_tie_threshold_widens_ties():
    metric = load("pairwise_accuracy")
    scores = {"chosen_scores": [1.3, 1.05, 0.95, 0.7], "rejected_scores": [1.0, 1.0, 1.0, 1.0], "num_bootstrap": 0}
    exact = metric.compute(**scores)
    assert (exact["accuracy_with_ties"], exact["accuracy_without_ties"], exact["num_ties"]) == (0.5, 0.5, 0)
    # |margin| <= 0.1 now ties the two middle pairs: 1 correct of 4, 1 correct of 2 untied.
    wide = metric.compute(**scores, tie_threshold=0.1)
    assert (wide["accuracy_with_ties"], wide["accuracy_without_ties"], wide["num_ties"]) == (0.25, 0.5, 2)


def test_pairwise_accuracy_probabilities_compare_with_one_half():
    metric = load("pairwise_accuracy", "probabilities")
    exact = metric.compute(probabilities=[0.9, 0.55, 0.5, 0.2], num_bootstrap=0)
    assert (exact["accuracy_with_ties"], exact["accuracy_without_ties"], exact["num_ties"]) == (0.5, 2 / 3, 1)
    wide = metric.compute(probabilities=[0.9, 0.55, 0.5, 0.2], tie_threshold=0.1, num_bootstrap=0)
    assert (wide["accuracy_with_ties"], wide["accuracy_without_ties"], wide["num_ties"]) == (0.25, 0.5, 2)


def test_pairwise_accuracy_all_ties_has_no_accuracy_without_ties():
    results = load("pairwise_accuracy").compute(chosen_scores=[1.0, 2.0], rejected_scores=[1.0, 2.0])
    assert results["accuracy_with_ties"] == 0.0
    assert results["accuracy_without_ties"] is None
    assert results["accuracy_without_ties_ci"] is None
    assert results["accuracy_with_ties_ci"] == [0.0, 0.0]
    json.dumps(results, allow_nan=False)


def test_pairwise_accuracy_keeps_float64_resolution():
    # datasets' numpy formatting would cast to float32 and turn this pair into a tie.
    results = load("pairwise_accuracy").compute(chosen_scores=[1.0 + 1e-12], rejected_scores=[1.0], num_bootstrap=0)
    assert (results["accuracy_with_ties"], results["num_ties"]) == (1.0, 0)


def test_pairwise_accuracy_bootstrap_interval():
    # 400 pairs: 300 correct, 40 ties, 60 wrong.
    chosen = [1.0] * 300 + [0.0] * 40 + [-1.0] * 60
    metric = load("pairwise_accuracy")
    first = metric.compute(chosen_scores=chosen, rejected_scores=[0.0] * 400, seed=7)
    again = metric.compute(chosen_scores=chosen, rejected_scores=[0.0] * 400, seed=7)
    assert first == again
    low, high = first["accuracy_with_ties_ci"]
    assert low < first["accuracy_with_ties"] == 0.75 < high
    # The percentile bootstrap of a proportion is close to the normal interval p +- 1.96 sqrt(p(1-p)/n).
    half_width = 1.96 * math.sqrt(0.75 * 0.25 / 400)
    assert low == pytest.approx(0.75 - half_width, abs=0.005)
    assert high == pytest.approx(0.75 + half_width, abs=0.005)
    low, high = first["accuracy_without_ties_ci"]
    assert low < first["accuracy_without_ties"] == 300 / 360 < high
    json.dumps(first, allow_nan=False)


def test_pairwise_accuracy_rejects_unknown_configuration():
    with pytest.raises(ValueError, match="Unknown configuration 'logits'"):
        evaluate.load(str(METRICS / "pairwise_accuracy"), "logits")


# ----------------------------------------------------------------------------------------- tie_calibrated_accuracy


def test_tie_calibration_ties_the_human_tie():
    # Pairs (gap): (0,1) 0.25 human tie, (0,2) 1.25, (0,3) 2.75, (1,2) 1.0, (1,3) 2.5, (2,3) 1.5, all ordered right.
    # eps = 0: 5/6; eps = 0.25 also ties (0,1): 6/6; eps = 1.0 then breaks (1,2).
    metric = load("tie_calibrated_accuracy")
    results = metric.compute(predictions=[0.25, 0.5, 1.5, 3.0], references=[1, 1, 3, 5])
    assert results == {
        "accuracy": 1.0,
        "threshold": 0.25,
        "accuracy_no_calibration": 5 / 6,
        "num_pairs": 6,
        "num_groups": 1,
    }
    fixed = metric.compute(predictions=[0.25, 0.5, 1.5, 3.0], references=[1, 1, 3, 5], threshold=1.0)
    assert (fixed["accuracy"], fixed["threshold"]) == (5 / 6, 1.0)


def test_tie_calibration_picks_the_best_not_the_largest_threshold():
    # Only (2,3), gap 0.25, is a human tie; the next gap, 0.5, belongs to a correctly ordered pair.
    results = load("tie_calibrated_accuracy").compute(predictions=[0.0, 0.5, 1.5, 1.75], references=[1, 2, 3, 3])
    assert (results["accuracy"], results["threshold"], results["accuracy_no_calibration"]) == (1.0, 0.25, 5 / 6)


def test_tie_calibration_prefers_the_smallest_of_equally_good_thresholds():
    # eps = 0.25 ties both (0,1), ordered right (-1), and (2,3), a human tie (+1): no better than eps = 0.
    results = load("tie_calibrated_accuracy").compute(predictions=[0.0, 0.25, 1.5, 1.75], references=[1, 2, 3, 3])
    assert (results["accuracy"], results["threshold"]) == (5 / 6, 0.0)


def test_tie_calibration_within_groups_averages_group_accuracies():
    # Group a as above (eps = 0: 5/6). Group b: (4,5) gap 0.7 human tie, (4,6) gap 0.2 right, (5,6) gap 0.5 wrong.
    # eps = 0: (5/6 + 1/3) / 2 = 7/12; eps = 0.25: (1 + 0) / 2; eps = 0.7: (1 + 1/3) / 2 = 2/3; eps = 1.0: 7/12.
    predictions = [0.25, 0.5, 1.5, 3.0, 0.2, 0.9, 0.4]
    references = [1, 1, 3, 5, 2, 2, 4]
    metric = load("tie_calibrated_accuracy")
    results = metric.compute(predictions=predictions, references=references, groups=list("aaaabbb"))
    assert results["accuracy"] == pytest.approx(2 / 3)
    assert results["threshold"] == pytest.approx(0.7)
    assert results["accuracy_no_calibration"] == pytest.approx(7 / 12)
    assert (results["num_pairs"], results["num_groups"]) == (9, 2)
    assert metric.compute(predictions=predictions, references=references)["num_pairs"] == 21


def test_tie_calibration_weighs_each_group_equally():
    # Group a: two human ties at gap 0.25 among 6 pairs (4/6 at eps = 0). Group b: one pair, right, gap 0.125.
    # eps = 0: (4/6 + 1) / 2; eps = 0.125: (4/6 + 0) / 2; eps = 0.25: (1 + 0) / 2. Counting pairs instead of
    # averaging groups would pick eps = 0.25 (+2 - 1 pairs).
    results = load("tie_calibrated_accuracy").compute(
        predictions=[0.0, 0.25, 2.0, 2.25, 5.0, 5.125], references=[1, 1, 3, 3, 1, 2], groups=list("aaaabb")
    )
    assert (results["accuracy"], results["threshold"]) == (pytest.approx(5 / 6), 0.0)


def test_tie_calibration_ignores_groups_without_a_pair():
    results = load("tie_calibrated_accuracy").compute(
        predictions=[0.0, 1.0, 5.0], references=[1, 2, 9], groups=[3, 3, 4]
    )
    assert (results["num_pairs"], results["num_groups"], results["accuracy"]) == (1, 1, 1.0)


def _brute_force_tie_calibration(predictions, references):
    """acc_eq for every candidate eps by direct enumeration, following the definition in Deutsch et al. (2023)."""
    pairs = list(itertools.combinations(range(len(predictions)), 2))
    candidates = sorted({0.0} | {abs(predictions[i] - predictions[j]) for i, j in pairs})

    def accuracy(eps):
        correct = 0
        for i, j in pairs:
            difference = predictions[i] - predictions[j]
            metric_sign = 0.0 if abs(difference) <= eps else np.sign(difference)
            correct += np.sign(references[i] - references[j]) == metric_sign
        return correct / len(pairs)

    accuracies = [accuracy(eps) for eps in candidates]
    best = int(np.argmax(accuracies))
    return accuracies[best], candidates[best], accuracy(0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tie_calibration_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    predictions = (rng.integers(0, 8, size=25) / 4).tolist()  # coarse scores: many gaps repeat
    references = rng.integers(1, 4, size=25).tolist()
    results = load("tie_calibrated_accuracy").compute(predictions=predictions, references=references)
    expected = _brute_force_tie_calibration(predictions, references)
    assert (results["accuracy"], results["threshold"], results["accuracy_no_calibration"]) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------ rank_correlation


def test_rank_correlation_tau_b_and_tau_c_differ_on_ties():
    # 15 pairs: 6 tied in the references, the other 9 concordant.
    results = load("rank_correlation").compute(predictions=[1, 2, 3, 4, 5, 6], references=[1, 1, 1, 2, 2, 2])
    assert results["kendall_tau_b"] == pytest.approx(9 / math.sqrt(15 * 9))
    assert results["kendall_tau_c"] == pytest.approx(2 * 9 / (6**2 * (2 - 1) / 2))
    # Pearson: covariance sum 4.5, sums of squares 17.5 and 1.5; the ranks are affine in the values, so Spearman too.
    assert results["pearson"] == pytest.approx(4.5 / math.sqrt(17.5 * 1.5))
    assert results["spearman"] == pytest.approx(results["pearson"])
    assert all(0 < results[f"{name}_pvalue"] < 1 for name in ("pearson", "spearman", "kendall_tau_b", "kendall_tau_c"))


def test_rank_correlation_with_ties_on_both_sides_and_discordance():
    # n0 = 10 pairs: C = 3, D = 2, 1 tied in predictions, 4 tied in references; m = min(4, 2) distinct values.
    results = load("rank_correlation").compute(predictions=[1, 2, 2, 3, 0], references=[1, 1, 2, 2, 2])
    assert results["kendall_tau_b"] == pytest.approx((3 - 2) / math.sqrt((10 - 1) * (10 - 4)))
    assert results["kendall_tau_c"] == pytest.approx(2 * (3 - 2) / (5**2 * (2 - 1) / 2))


def test_rank_correlation_undefined_for_constant_input_is_none():
    with pytest.warns(Warning):
        results = load("rank_correlation").compute(predictions=[1, 2, 3], references=[2, 2, 2])
    assert set(results.values()) == {None}


def test_rank_correlation_needs_two_items():
    with pytest.raises(ValueError, match="at least two items, got 1"):
        load("rank_correlation").compute(predictions=[1.0], references=[2.0])


# ------------------------------------------------------------------------------------------- binary_classification


def test_binary_classification_at_threshold_and_best_f1():
    # At 0.5: predicted 1, 1, 0, 1, 0 -> TP 2, FP 1, FN 1, TN 1.
    # Best F1 over thresholds 0.9 / 0.6 / 0.4 / 0.2: 2/4, 4/6, 6/7, 6/8.
    results = load("binary_classification").compute(scores=[0.9, 0.6, 0.4, 0.6, 0.2], references=[1, 1, 1, 0, 0])
    assert results == {
        "accuracy": 3 / 5,
        "precision": 2 / 3,
        "recall": 2 / 3,
        "f1": 2 / 3,
        "auroc": 4.5 / 6,
        "best_f1": 6 / 7,
        "best_f1_threshold": 0.4,
    }


def test_binary_classification_threshold_is_inclusive_and_best_f1_prefers_the_highest_threshold():
    metric = load("binary_classification")
    at_threshold = metric.compute(scores=[0.5, 0.2], references=[1, 0])
    assert (at_threshold["accuracy"], at_threshold["precision"], at_threshold["recall"]) == (1.0, 1.0, 1.0)
    # P = 2: t = 0.9 gives 2*1 / (1 + 2) and t = 0.6 gives 2*2 / (4 + 2), both 2/3; 0.8 and 0.7 give less.
    tied = metric.compute(scores=[0.9, 0.8, 0.7, 0.6], references=[1, 0, 0, 1])
    assert (tied["best_f1"], tied["best_f1_threshold"]) == (2 / 3, 0.9)


def test_binary_classification_auroc_counts_tied_scores_as_half():
    # Positive/negative pairs: (0.5, 0.5) x2 count 1/2 each, (0.5, 0.2) x2 count 1 each -> 3 / 4.
    results = load("binary_classification").compute(scores=[0.5, 0.5, 0.5, 0.2], references=[1, 1, 0, 0])
    assert results["auroc"] == 0.75


def test_binary_classification_pos_label_zero():
    # Positives are the two items labelled 0; predicted positive: items 0, 1, 3 -> TP 1, FP 2, FN 1.
    results = load("binary_classification").compute(
        scores=[0.9, 0.6, 0.4, 0.6, 0.2], references=[1, 1, 1, 0, 0], pos_label=0
    )
    assert (results["precision"], results["recall"], results["f1"]) == (1 / 3, 1 / 2, 2 / 5)
    assert results["accuracy"] == 2 / 5
    assert results["auroc"] == 1.5 / 6


def test_binary_classification_logits():
    metric = load("binary_classification")
    results = metric.compute(scores=[2.2, 0.4, -0.4, 0.4, -1.4], references=[1, 1, 1, 0, 0], scores_are_logits=True)
    # The sigmoids of the probabilities example: same decisions at 0.5, same ranking.
    assert (results["precision"], results["recall"], results["auroc"]) == (2 / 3, 2 / 3, 0.75)
    assert results["best_f1"] == 6 / 7
    assert results["best_f1_threshold"] == pytest.approx(1 / (1 + math.exp(0.4)))
    # Both sigmoids round to 1.0, but the AUROC ranks the raw logits.
    assert metric.compute(scores=[40.0, 50.0], references=[0, 1], scores_are_logits=True)["auroc"] == 1.0


def test_binary_classification_single_class_and_no_predicted_positive():
    results = load("binary_classification").compute(scores=[0.1, 0.2], references=[1, 1])
    assert results["auroc"] is None
    assert (results["precision"], results["recall"], results["f1"], results["accuracy"]) == (0.0, 0.0, 0.0, 0.0)
    json.dumps(results, allow_nan=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"references": [1, 0.5]}, "`references` contains 0.5 at index 1; labels must be 0 or 1"),
        ({"references": [1, 0], "pos_label": 2}, "`pos_label` must be 0 or 1, got 2"),
        ({"references": [1, 0], "threshold": 1.5}, r"must lie in \[0, 1\], got 1.5"),
    ],
)
def test_binary_classification_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load("binary_classification").compute(scores=[0.3, 0.7], **kwargs)


# --------------------------------------------------------------------------------------- input errors, all metrics

INPUTS = {
    ("pairwise_accuracy", None): ("chosen_scores", "rejected_scores"),
    ("pairwise_accuracy", "probabilities"): ("probabilities",),
    ("tie_calibrated_accuracy", None): ("predictions", "references"),
    ("rank_correlation", None): ("predictions", "references"),
    ("binary_classification", None): ("scores", "references"),
}


@pytest.mark.parametrize(("metric", "inputs"), INPUTS.items(), ids=lambda value: str(value))
def test_empty_input_is_rejected(metric, inputs):
    with pytest.raises(ValueError, match=f"`{inputs[0]}` is empty"):
        load(*metric).compute(**{name: [] for name in inputs})


@pytest.mark.parametrize(
    ("metric", "inputs", "bad_input"),
    [(metric, inputs, bad_input) for metric, inputs in INPUTS.items() for bad_input in inputs],
    ids=str,
)
@pytest.mark.parametrize("missing", [float("nan"), None])
def test_missing_value_is_rejected_with_its_index(metric, inputs, bad_input, missing):
    values = {name: [0.0, 1.0, 1.0, 0.0] for name in inputs}
    values[bad_input][2] = missing
    with pytest.raises(ValueError, match=f"`{bad_input}` contains nan at index 2"):
        load(*metric).compute(**values)


@pytest.mark.parametrize(("metric", "inputs"), [item for item in INPUTS.items() if len(item[1]) == 2], ids=str)
def test_length_mismatch_names_both_lengths(metric, inputs):
    first, second = inputs
    with pytest.raises(ValueError, match=rf"{first} \(3\) and {second} \(2\)"):
        load(*metric).compute(**{first: [0.0, 1.0, 1.0], second: [0.0, 1.0]})


def test_groups_length_mismatch_and_missing_group():
    metric = load("tie_calibrated_accuracy")
    with pytest.raises(ValueError, match="`groups` has 2 entries but `predictions` has 3"):
        metric.compute(predictions=[0.0, 1.0, 2.0], references=[0.0, 1.0, 2.0], groups=["a", "a"])
    with pytest.raises(ValueError, match="`groups` contains a missing value at index 1"):
        metric.compute(predictions=[0.0, 1.0, 2.0], references=[0.0, 1.0, 2.0], groups=["a", None, "a"])
    with pytest.raises(ValueError, match="at least two items"):
        metric.compute(predictions=[0.0, 1.0], references=[0.0, 1.0], groups=["a", "b"])


# ----------------------------------------------------------------------------------------- documentation and data


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_documented_examples_hold(name, monkeypatch):
    # The examples load the metrics by their path relative to the repository root.
    monkeypatch.chdir(ROOT)
    spec = importlib.util.spec_from_file_location(name, METRICS / name / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    test = doctest.DocTestParser().get_doctest(module._KWARGS_DESCRIPTION, {"evaluate": evaluate}, name, None, 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_module_imports_only_single_line_library_imports(name):
    # evaluate copies the single file into its cache and reads its imports line by line.
    lines = (METRICS / name / f"{name}.py").read_text().splitlines()
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    assert imports and all("," not in line for line in imports)
    assert {line.split()[1].split(".")[0] for line in imports} <= {"datasets", "evaluate", "numpy", "scipy"}


@pytest.mark.parametrize("path", sorted(REFERENCES.glob("*.json")), ids=lambda path: path.name)
def test_reference_files_share_one_schema(path):
    payload = json.loads(path.read_text())
    assert {"title", "arxiv_id", "url"} <= set(payload["source"])
    assert payload["results"]
    for row in payload["results"]:
        assert set(row) == {"benchmark", "subset", "metric", "model", "value", "unit", "table"}
        assert row["benchmark"] in payload["protocol"]
        if row["unit"] == "fraction":
            assert 0.0 <= row["value"] <= 1.0
        assert row["unit"] in {"fraction", "coefficient", "seconds"}


def test_reference_numbers_are_stored_as_fractions():
    rows = json.loads((REFERENCES / "llava_reward_paper.json").read_text())["results"]
    lookup = {(row["benchmark"], row["subset"], row["metric"], row["model"]): row["value"] for row in rows}
    assert lookup[("mjbench", "safety", "accuracy_without_ties", "LLaVA-Reward (Phi-3.5-vision, 4.2B)")] == 0.921
    assert lookup[("tifa160", None, "tie_calibrated_accuracy", "LLaVA-Reward (Phi-3.5-vision, 4.2B)")] == 0.713
