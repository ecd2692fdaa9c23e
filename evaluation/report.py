"""report.md of an evaluation, and the published reference numbers it prints our results beside.

The reference numbers are the JSON files of `evaluation/references/` (schema in its README): one flat list of rows
`{benchmark, subset, metric, model, value, unit, table}` per source paper.

Example:
    >>> from llava_reward.evaluation.report import load_references
    >>> sorted({row["benchmark"] for row in load_references()})[:3]
    ['efficiency', 'geneval', 'mjbench']
"""

import json
from pathlib import Path

from .benchmarks import LABELLED
from .benchmarks import PAIRS
from .benchmarks import RATED


REFERENCES_DIR = Path(__file__).parent / "references"
# Published subset names that name a folder of the benchmark differently (the paper's "artifact" perspective is
# MJ-Bench's "quality" folder).
SUBSET_ALIASES = {"artifact": {"artifact", "quality", "fidelity"}}
# Published metric names whose counterpart in our results has another name. Kendall: the TIFA160 protocol of
# VQAScore, which LLaVA-Reward follows, computes tau-b.
OUR_METRIC = {"kendall_tau": "kendall_tau_b"}
METRIC_LABELS = {
    "accuracy_with_ties": "accuracy w/ tie",
    "accuracy_without_ties": "accuracy w/o tie",
    "pearson": "Pearson r",
    "kendall_tau": "Kendall tau (ours: tau-b)",
    "tie_calibrated_accuracy": "tie-calibrated pairwise accuracy",
    "f1": "F1",
}


def load_references(benchmark: str | None = None) -> list[dict]:
    """Every published row (of `benchmark`, if given), each with `source`: the paper's title and arXiv id."""
    rows = []
    for path in sorted(REFERENCES_DIR.glob("*.json")):
        payload = json.loads(path.read_text(encoding="utf-8"))
        source = f"{payload['source']['title']} (arXiv {payload['source']['arxiv_id']})"
        rows += [{**row, "source": source} for row in payload["results"] if benchmark in (None, row["benchmark"])]
    return rows


def write_report(metrics: dict, path) -> None:
    Path(path).write_text(render_report(metrics), encoding="utf-8")


def render_report(metrics: dict) -> str:
    """The Markdown report of a finished evaluation (the `metrics.json` dict)."""
    sections = [
        f"# LLaVA-Reward evaluation: {metrics['benchmark']}",
        contamination_warning(metrics),
        _run_summary(metrics),
        "## Our results",
        _RESULT_TABLES[metrics["kind"]](metrics["results"], metrics["dataset_name"]),
        _references_section(metrics),
        _skipped_section(metrics["skipped_rows"]),
        _plots_section(metrics["plots"], metrics["calibration"]),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def contamination_warning(metrics: dict) -> str:
    """A warning when the model was trained on some of the benchmark's images ("" otherwise)."""
    overlap = metrics.get("training_overlap")
    if not overlap or not overlap["rows"]:
        return ""
    return (
        f"**Not held out:** the model was trained on images of {overlap['rows']} of these {overlap['of_rows']} rows "
        f"({overlap['images']} images, by the fingerprints it records): these numbers measure fit to the training "
        "data, not generalisation."
    )


def _run_summary(metrics: dict) -> str:
    model = metrics["model"]
    options = ", ".join(f"{key} {value}" for key, value in metrics["model_options"].items() if value is not None)
    head = f"objective {metrics['objective']}, tau {metrics['tau']}" + (f", {options}" if options else "")
    limit = metrics["protocol"].get("limit")
    rows = f"{metrics['num_rows']} scored of {metrics['num_rows_read']} read"
    rows += f" (only the first {limit} rows of each file: not the full benchmark)" if limit else ""
    rows += f"; {len(metrics['skipped_rows'])} bad rows skipped" if metrics["skipped_rows"] else ""
    rows += f"; {metrics['human_ties']} human ties dropped" if metrics.get("human_ties") else ""
    protocol = ", ".join(f"{key} {value}" for key, value in metrics["protocol"].items() if key != "limit")
    return "\n".join(
        [
            f"- model: `{model}` ({head})",
            f"- data: `{metrics['data']}`" + (f", images under `{metrics['image_root']}`" if metrics["image_root"] else ""),
            f"- rows: {rows}",
            f"- protocol: {protocol}",
            f"- held out: {_held_out(metrics)}",
            f"- llava-reward {metrics['package_version']}",
        ]
    )


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(bounds) -> str:
    return "n/a" if bounds is None else f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def _named_groups(results: dict, dataset_name: str) -> list[tuple[str, dict]]:
    """(label, metrics) of every subset, then the overall row (labelled by the data's folder name)."""
    groups = list(results.get("subsets", {}).items())
    return groups + [(f"**overall** ({dataset_name})" if groups else dataset_name, results["overall"])]


def _pairs_table(results: dict, dataset_name: str) -> str:
    rows = [
        [
            label,
            group["num_pairs"],
            group["num_ties"],
            _number(group["accuracy_with_ties"]),
            _interval(group["accuracy_with_ties_ci"]),
            _number(group["accuracy_without_ties"]),
            _interval(group["accuracy_without_ties_ci"]),
        ]
        for label, group in _named_groups(results, dataset_name)
    ]
    header = ["subset", "pairs", "ties", "accuracy w/ tie", "95% CI", "accuracy w/o tie", "95% CI"]
    return _table(header, rows) + "\n\nA tie (equal scores, within the tie threshold) counts as wrong w/ tie and is dropped w/o tie."


def _rated_table(results: dict, dataset_name: str) -> str:
    group = results["overall"]
    row = [
        group["num_items"],
        _number(group["pearson"]),
        _number(group["spearman"]),
        _number(group["kendall_tau_b"]),
        _number(group["kendall_tau_c"]),
        f"{_number(group['tie_calibrated_accuracy'])} (eps {group['tie_threshold']:.3g})",
        _number(group["accuracy_no_calibration"]),
    ]
    header = ["items", "Pearson r", "Spearman rho", "Kendall tau-b", "Kendall tau-c", "tie-calibrated pairwise acc.", "pairwise acc. (eps 0)"]
    return _table(header, [row]) + f"\n\nPairwise accuracies over all {group['num_pairs']} pairs of items (no grouping)."


def _labelled_table(results: dict, dataset_name: str) -> str:
    group = results["overall"]
    row = [
        group["num_items"],
        group["num_positive"],
        _number(group["accuracy"]),
        _number(group["precision"]),
        _number(group["recall"]),
        _number(group["f1"]),
        _number(group["auroc"]),
        f"{_number(group['best_f1'])} (at {group['best_f1_threshold']:.3g})",
    ]
    header = ["items", "positives", "accuracy", "precision", "recall", "F1", "AUROC", "best F1"]
    return _table(header, [row]) + "\n\nP(label 1) = sigmoid(reward); precision, recall and F1 are those of the class `pos_label` (protocol)."


_RESULT_TABLES = {PAIRS: _pairs_table, RATED: _rated_table, LABELLED: _labelled_table}


def matching_references(metrics: dict) -> list[tuple[str, dict, float | None]]:
    """(our group's label, published row, our value) for each published row of the benchmark that we can compare."""
    benchmark = metrics["reference_benchmark"]
    if benchmark is None:
        return []
    results = metrics["results"]
    named = {metrics["dataset_name"]: results["overall"]}
    named.update({name.rsplit("/", 1)[-1]: group for name, group in results.get("subsets", {}).items()})
    matches = []
    for row in load_references(benchmark):
        wanted = SUBSET_ALIASES.get(row["subset"], {row["subset"]})
        ours = results["overall"] if row["subset"] is None else next((named[n] for n in named if n in wanted), None)
        metric = OUR_METRIC.get(row["metric"], row["metric"])
        if ours is not None and metric in ours:
            label = row["subset"] or "overall"
            matches.append((label, row, ours[metric]))
    return matches


def _held_out(metrics: dict) -> str:
    if metrics.get("held_out") is None:
        return "unknown (the model records no training data)"
    return "yes (no image of these rows is in the model's training data)" if metrics["held_out"] else "NO"


def _references_section(metrics: dict) -> str:
    matches = matching_references(metrics)
    if not matches:
        return ""
    sources = list(dict.fromkeys(f"{row['source']}, table: {row['table']}" for _, row, _ in matches))
    rows = []
    for label, row, ours in matches:
        source = sources.index(f"{row['source']}, table: {row['table']}") + 1
        metric = METRIC_LABELS.get(row["metric"], row["metric"])
        rows.append([label, metric, row["model"], _number(row["value"]), _number(ours), f"[{source}]"])
    note = (
        "Published numbers were measured by their authors with their models on the full benchmark; ours come from "
        f"this run ({metrics['num_rows']} rows). They compare only where the data and protocol are the same."
    )
    header = ["subset", "metric", "published model", "published", "ours (this run)", "source"]
    listed = "\n".join(f"{number}. {source}" for number, source in enumerate(sources, start=1))
    return f"## Beside published numbers ({metrics['reference_benchmark']})\n\n{note}\n\n{_table(header, rows)}\n\n{listed}"


def _skipped_section(skipped: list[dict]) -> str:
    if not skipped:
        return ""
    return "## Skipped rows\n\n" + "\n".join(f"- row {row['id']}: {row['problem']}" for row in skipped)


def _plots_section(plots: dict, calibration: dict | None) -> str:
    lines = [f"![{title}]({file})" for title, file in plots.items()]
    if calibration is not None:
        bins = len(calibration["bins"])
        error = calibration["expected_calibration_error"]
        lines.append(f"Expected calibration error of {calibration['probability']}: {error:.3f} ({bins} equal-width bins).")
    return "## Plots\n\n" + "\n\n".join(lines)
