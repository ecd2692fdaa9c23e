"""PNG plots of an evaluation: reward histograms by group, and reliability diagrams of predicted probabilities.

matplotlib is used through its object-oriented API (`Figure`, no `pyplot`), which renders with the Agg backend
without touching the process-wide backend a notebook or application may have chosen.

Example:
    >>> import numpy as np
    >>> from llava_reward.evaluation.plots import reliability_bins
    >>> table = reliability_bins(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 1, 1, 1]), num_bins=2)
    >>> [(row["count"], row["observed_frequency"]) for row in table["bins"]], round(table["expected_calibration_error"], 4)
    ([(2, 0.5), (2, 1.0)], 0.25)
"""

import numpy as np


def reliability_bins(probabilities: np.ndarray, outcomes: np.ndarray, num_bins: int = 10) -> dict:
    """Equal-width bins of predicted probability: count, mean prediction, observed frequency of the outcome per bin.

    Also the expected calibration error: the count-weighted mean of |observed frequency - mean prediction|.
    A probability of exactly 1 falls in the last bin. Empty bins are listed with count 0 and `None` averages.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    outcomes = np.asarray(outcomes, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bin_of = np.clip(np.searchsorted(edges, probabilities, side="right") - 1, 0, num_bins - 1)
    bins, error = [], 0.0
    for index in range(num_bins):
        members = bin_of == index
        count = int(members.sum())
        mean = float(probabilities[members].mean()) if count else None
        observed = float(outcomes[members].mean()) if count else None
        if count:
            error += count * abs(observed - mean)
        bins.append(
            {
                "lower": float(edges[index]),
                "upper": float(edges[index + 1]),
                "count": count,
                "mean_probability": mean,
                "observed_frequency": observed,
            }
        )
    return {"expected_calibration_error": error / probabilities.size, "bins": bins}


def save_reliability_diagram(table: dict, path, *, xlabel: str, title: str) -> None:
    """Plot a `reliability_bins` table: observed frequency against mean prediction, the diagonal, and bin counts."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5.6), layout="constrained")
    axes, counts_axes = figure.subplots(2, 1, height_ratios=[4, 1], sharex=True)
    filled = [row for row in table["bins"] if row["count"]]
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    axes.plot(
        [row["mean_probability"] for row in filled],
        [row["observed_frequency"] for row in filled],
        marker="o",
        label=f"model (ECE {table['expected_calibration_error']:.3f})",
    )
    axes.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency", title=title)
    axes.legend(loc="upper left")
    lower = [row["lower"] for row in table["bins"]]
    widths = [row["upper"] - row["lower"] for row in table["bins"]]
    counts_axes.bar(lower, [row["count"] for row in table["bins"]], width=widths, align="edge", edgecolor="white")
    counts_axes.set(xlabel=xlabel, ylabel="count")
    figure.savefig(path, dpi=100)


def save_histogram(groups: dict[str, np.ndarray], path, *, xlabel: str, title: str) -> None:
    """Overlaid histograms of the values of each group, on shared bins."""
    from matplotlib.figure import Figure

    values = np.concatenate([np.asarray(group, dtype=np.float64) for group in groups.values()])
    edges = np.histogram_bin_edges(values, bins=min(30, max(5, values.size // 4)))
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    for label, group in groups.items():
        axes.hist(group, bins=edges, alpha=0.55, label=f"{label} (n={len(group)})")
    axes.set(xlabel=xlabel, ylabel="count", title=title)
    axes.legend()
    figure.savefig(path, dpi=100)
