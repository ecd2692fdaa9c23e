"""How a fidelity model does on defects it was never trained on: artifact pairs made from real photos.

The default model is trained on MJ-Bench's distorted faces and replaced furniture only. This script makes, for each
defect kind of `llava_reward.trainers.artifacts` (swirl, bulge, melt, ripple, duplicate, smear, tear), pairs of a
square crop of a real photo that no model here was trained on (the sample photos scikit-image, matplotlib and
scikit-learn ship) against the same crop with that defect, and reports per kind how often each model prefers the
intact crop (accuracy with ties, 95 % bootstrap interval over pairs, 1000 replicates), and its scoring time.

    python benchmarks/default_model_unseen_defects.py                          # the shipped default model
    python benchmarks/default_model_unseen_defects.py --models default /path/to/another/model --pairs-per-kind 30

The pairs are made at --size px (336: what the tiled default backbone cuts its 3x3 tiles from; an untiled model's
processor resizes them), deterministically from --seed. Results go to
`benchmarks/results/default_model_unseen_defects.json`; a table is printed.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS_DIR  # benchmarks/common.py (it also puts the checkout on sys.path)
from common import markdown_table
from common import shown


RESULTS_FILE = RESULTS_DIR / "default_model_unseen_defects.json"


def make_pairs(folder: Path, pairs_per_kind: int, size: int, seed: int) -> dict[str, list[dict]]:
    """Defect kind -> its pairs (absolute image paths), made from the library photos."""
    from llava_reward.trainers.artifacts import DEFECTS
    from llava_reward.trainers.artifacts import library_photos
    from llava_reward.trainers.artifacts import make_artifact_pairs

    photos = library_photos()
    by_kind = {}
    for kind in DEFECTS:
        pairs_file = make_artifact_pairs(photos, folder / kind, num_pairs=pairs_per_kind, size=size, seed=seed,
                                         kinds=(kind,))
        rows = json.loads(pairs_file.read_text())
        by_kind[kind] = [{**row, "chosen": str(folder / kind / row["chosen"]),
                          "rejected": str(folder / kind / row["rejected"])} for row in rows]
    return by_kind


def accuracy(chosen, rejected) -> dict:
    from llava_reward.evaluation import load_metric

    return load_metric("pairwise_accuracy").compute(chosen_scores=chosen, rejected_scores=rejected, seed=0)


def measure(model: str, by_kind: dict[str, list[dict]]) -> list[dict]:
    """One row per defect kind and one for all of them: the model's accuracy and scoring seconds."""
    import llava_reward

    scorer = llava_reward.load(model, progress=False)
    rows, every_chosen, every_rejected = [], [], []
    for kind, pairs in by_kind.items():
        start = time.perf_counter()
        prompts = [pair["prompt"] for pair in pairs]
        chosen = scorer.score(prompts, [pair["chosen"] for pair in pairs]).tolist()
        rejected = scorer.score(prompts, [pair["rejected"] for pair in pairs]).tolist()
        seconds = time.perf_counter() - start
        every_chosen += chosen
        every_rejected += rejected
        rows.append({"model": model, "kind": kind, **accuracy(chosen, rejected), "seconds": round(seconds, 1)})
        print(f"{model}: {kind}: {rows[-1]['accuracy_with_ties']:.2f} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    total = sum(row["seconds"] for row in rows)
    rows.append({"model": model, "kind": "all", **accuracy(every_chosen, every_rejected), "seconds": round(total, 1)})
    return rows


def with_interval(row: dict) -> str:
    low, high = row["accuracy_with_ties_ci"]
    return f"{row['accuracy_with_ties']:.2f} [{low:.2f}, {high:.2f}]"


COLUMNS = {**shown(model="model", kind="defect kind", num_pairs="pairs"), "accuracy w/ ties [95% CI]": with_interval,
           **shown(seconds="scoring s")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["default"], help="names or folders (default: default)")
    parser.add_argument("--pairs-per-kind", type=int, default=30)
    parser.add_argument("--size", type=int, default=336, help="side of the pairs' square images in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        by_kind = make_pairs(Path(folder), args.pairs_per_kind, args.size, args.seed)
        rows = [row for model in args.models for row in measure(model, by_kind)]
    printed = markdown_table(rows, COLUMNS)
    print(printed)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"settings": settings, "results": rows, "table": printed}, indent=2) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
