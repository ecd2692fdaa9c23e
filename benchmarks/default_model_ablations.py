"""Measured quality of the default model's configuration and of the paper's ablations, on MJ-Bench fidelity pairs.

Protocol (the demo's, `llava_reward.cli.demo_workflow.cross_subset`): train on `human`, test on
`objects_indoor`, and the reverse; accuracy with and without ties, with 95 % bootstrap intervals (1000 replicates),
and the wall and CPU seconds of each training. Each variant changes the default recipe
(`configuration/recipes/default_fidelity.yaml`) or the backbone's image size as listed in VARIANTS.

    python benchmarks/default_model_ablations.py                     # every variant not measured yet
    python benchmarks/default_model_ablations.py --only default linear_head
    python benchmarks/default_model_ablations.py --list

Results accumulate in `benchmarks/results/default_model_ablations.json` (a finished variant is not run again unless
`--rerun`), so the script can be stopped and continued. Runs take minutes to an hour each on a 2-core CPU: this is
a measurement, not part of `make bench`.
"""

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple


REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))  # run as `python benchmarks/x.py` from a checkout, installed or not
RESULTS_FILE = REPO_DIR / "benchmarks" / "results" / "default_model_ablations.json"


class Variant(NamedTuple):
    description: str
    overrides: dict  # recipe overrides
    image_size: int | None = None  # None: the demo's
    artifacts: dict | None = None  # `demo_workflow.ArtifactPlan` fields: artifact pairs added to each training run
    tiles: int = 1  # the backbone's LLaVA-NeXT tiles per side (`build_default_backbone(tiles=)`)


# name -> Variant. The recipe read layer 5 of 30 and trained 78 steps (6 epochs of a 100-pair subset) when the first
# rows were measured; "3 epochs" is 39 steps. Every variant spells out what it changes so the measured configuration
# is reproduced whatever the recipe says later.
THREE_EPOCHS = {"training.max_steps": 39}
LAYER_10 = {"model.hidden_layer": 10, **THREE_EPOCHS}  # the first default (recipe before the layer-5 measurements)
IMAGE_MEAN_STANDARDIZED = {
    "model.pooling": "image", "model.hidden_layer": 0, "model.head": "linear", "model.standardize_features": True,
    "training.tuning": "head", "training.train_projector": False, "training.learning_rate": 2.0e-3,
    "training.precompute_features": True,
}
VARIANTS = {
    "default": Variant("the default recipe: layer 5, 78 steps", {}),
    "default_seed_1": Variant("the default recipe from training seed 1 instead of 0", {"training.seed": 1}),
    "steps_52": Variant("layer 5, 52 steps (4 epochs)", {"training.max_steps": 52}),
    "steps_39": Variant("layer 5, 39 steps (3 epochs)", THREE_EPOCHS),
    "steps_39_lr_1e-3": Variant("layer 5, 39 steps, learning rate 1e-3",
                                {**THREE_EPOCHS, "training.learning_rate": 1.0e-3}),
    "hidden_layer_2": Variant("reward read at layer 2 of 30, 39 steps", {**THREE_EPOCHS, "model.hidden_layer": 2}),
    "hidden_layer_10": Variant("reward read at layer 10 of 30, 39 steps", LAYER_10),
    "hidden_layer_20": Variant("reward read at layer 20 of 30, 39 steps", {**LAYER_10, "model.hidden_layer": 20}),
    "hidden_layer_30": Variant("reward read at layer 30 of 30 (the final normed state), 39 steps",
                               {**LAYER_10, "model.hidden_layer": -1}),
    "linear_head": Variant("linear value head on h, no SkipCA (layer 10, 39 steps)",
                           {**LAYER_10, "model.head": "linear"}),
    "gpm": Variant("GPM objective, 2-D preference embedding (layer 10, 39 steps)",
                   {**LAYER_10, "training.objective": "gpm", "model.reward_dim": 2}),
    "mean_pooling": Variant("mean over all tokens instead of the last token (layer 10, 39 steps)",
                            {**LAYER_10, "model.pooling": "mean"}),
    "image_224": Variant("224 px input: 256 visual tokens instead of 64 (layer 5, 78 steps)", {}, 224),
    # Issue 20: artifact pairs (`llava_reward.trainers.artifacts`) made from real photos that are never the held-out
    # subset's (the library photos + the training subset's originals), on top of the default recipe.
    "artifacts_pretrain_300": Variant(
        "pre-trained 39 steps (~1 epoch) on 300 artifact pairs (library + training-subset photos), then the default "
        "recipe (layer 5, 78 steps) on the subset from there (init_from)",
        {}, artifacts={"pairs": 300, "sources": "library+train", "mode": "pretrain", "pretrain_steps": 39}),
    "vision_lora_2": Variant(
        "LoRA also on the vision encoder's last 2 blocks (lora_vision_blocks), else the default recipe (layer 5, 78 "
        "steps)", {"training.lora_vision_blocks": 2}),
    "visual_layer_3": Variant(
        "SkipCA reads the image tokens' hidden states after decoder layer 3 instead of the projector output (layer 5, "
        "78 steps)", {"model.visual_layer": 3}),
    "artifacts_mix_300": Variant(
        "layer 5, + 300 artifact pairs (library + training-subset photos) mixed in, 117 steps (~2.3 epochs of 400)",
        {"training.max_steps": 117}, artifacts={"pairs": 300, "sources": "library+train", "mode": "mix"}),
    # The linear probe reads the frozen features of 2x2 tiles of 112 px much better across subsets than those of the
    # whole image (docs/default-model.md): the same on the reward model, with a LLaVA-NeXT backbone.
    "tiles_2x2": Variant(
        "LLaVA-NeXT backbone: the whole image at 112 px + 2x2 tiles of 112 px of it at 224 px, 336 visual tokens "
        "(layer 5, 78 steps)", {}, tiles=2),
    "tiles_3x3": Variant(
        "LLaVA-NeXT backbone: the whole image at 112 px + 3x3 tiles of 112 px of it at 336 px, 664 visual tokens "
        "(layer 5, 78 steps)", {}, tiles=3),
    # The probe averages the tiles' features; the closest the reward model comes to that is mean pooling.
    "tiles_3x3_mean_pooling": Variant(
        "tiles_3x3 with the reward read from the mean over all tokens instead of the last token (layer 5, 78 steps)",
        {"model.pooling": "mean"}, tiles=3),
    "tiles_3x3_mean_pooling_layer_2": Variant(
        "tiles_3x3_mean_pooling reading layer 2 of 30 (less for 100 pairs of one defect type to fit, 78 steps)",
        {"model.pooling": "mean", "model.hidden_layer": 2}, tiles=3),
    # The same recipe from another seed (LoRA, projector and head initialisation, pair order, dropout): how much of
    # the 0.84 / 0.89 is the draw of one run.
    "tiles_3x3_mean_pooling_layer_2_seed_1": Variant(
        "tiles_3x3_mean_pooling_layer_2 with training seed 1 instead of 0",
        {"model.pooling": "mean", "model.hidden_layer": 2, "training.seed": 1}, tiles=3),
    # Trained on faces, the model fits them perfectly by epoch 3 of 6 and transfers to furniture in one seed of two:
    # stopping at 3 epochs, from both seeds.
    "tiles_3x3_mean_pooling_layer_2_steps_39": Variant(
        "tiles_3x3_mean_pooling_layer_2 trained 39 steps (3 epochs) instead of 78",
        {"model.pooling": "mean", "model.hidden_layer": 2, **THREE_EPOCHS}, tiles=3),
    "tiles_3x3_mean_pooling_layer_2_steps_39_seed_1": Variant(
        "tiles_3x3_mean_pooling_layer_2_steps_39 with training seed 1 instead of 0",
        {"model.pooling": "mean", "model.hidden_layer": 2, **THREE_EPOCHS, "training.seed": 1}, tiles=3),
    # The frozen-feature probe transfers from faces to furniture (0.88) where the LoRA model does in one seed of two:
    # the closest the reward model comes to the probe is training the projector, SkipCA and head only.
    "tiles_3x3_mean_pooling_layer_2_head_only": Variant(
        "tiles_3x3_mean_pooling_layer_2 with tuning: head (projector, SkipCA and value head; no LoRA)",
        {"model.pooling": "mean", "model.hidden_layer": 2, "training.tuning": "head"}, tiles=3),
    "tiles_3x3_mean_pooling_layer_2_head_only_seed_1": Variant(
        "tiles_3x3_mean_pooling_layer_2_head_only with training seed 1 instead of 0",
        {"model.pooling": "mean", "model.hidden_layer": 2, "training.tuning": "head", "training.seed": 1}, tiles=3),
    # A probe on the frozen model's states (benchmarks/default_model_probe.py --model-states) transfers best from the
    # mean of the projected image tokens (0.85 / 0.90), standardised, and worse from any state after a decoder layer
    # (0.70): a linear value head on that, everything before it frozen. A convex fit: seeds barely move it.
    "tiles_3x3_image_mean_standardized": Variant(
        "tiles_3x3, the reward read from the mean of the projected image tokens (pooling: image, layer 0: the prompt "
        "is not read), standardised (standardize_features), a linear value head trained alone on the "
        "stored states (precompute_features; learning rate 2e-3, 78 steps)", IMAGE_MEAN_STANDARDIZED, tiles=3),
    "tiles_3x3_image_mean_standardized_seed_1": Variant(
        "tiles_3x3_image_mean_standardized with training seed 1 instead of 0",
        {**IMAGE_MEAN_STANDARDIZED, "training.seed": 1}, tiles=3),
    "tiles_3x3_image_mean_standardized_seed_2": Variant(
        "tiles_3x3_image_mean_standardized with training seed 2 instead of 0",
        {**IMAGE_MEAN_STANDARDIZED, "training.seed": 2}, tiles=3),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=VARIANTS, help="run these variants (default: all)")
    parser.add_argument("--rerun", action="store_true", help="run variants that already have results again")
    parser.add_argument("--list", action="store_true", help="list the variants and which have results")
    parser.add_argument("--data", help="folder of MJ-Bench subset folders (default: as `llava-reward demo` finds it)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--held-out", nargs="+", metavar="SUBSET",
                        help="test on these subsets only (default: each in turn); a partial row, as the table shows")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE)
    parser.add_argument("--keep-models", action="store_true", help="keep the trained models (deleted by default)")
    args = parser.parse_args()

    results = json.loads(args.results.read_text()) if args.results.is_file() else {"variants": {}}
    if args.list:
        for name, variant in VARIANTS.items():
            status = "measured" if name in results["variants"] else "not measured"
            print(f"{name:<24} {status:<13} {variant.description}")
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from llava_reward.cli.demo_workflow import IMAGE_SIZE
    from llava_reward.cli.demo_workflow import RECIPE
    from llava_reward.cli.demo_workflow import ArtifactPlan
    from llava_reward.cli.demo_workflow import cross_subset
    from llava_reward.cli.demo_workflow import find_data
    from llava_reward.cli.demo_workflow import prepare_data
    from llava_reward.default_backbone import build_default_backbone
    from llava_reward.default_backbone import llava_reward_home

    data = find_data(args.data)
    results.update(protocol=__doc__.split("\n\n")[1], recipe=RECIPE.read_text(), data=str(data))
    for name in args.only or VARIANTS:
        if name in results["variants"] and not args.rerun:
            print(f"=== {name}: already measured (--rerun to measure again)", flush=True)
            continue
        variant = VARIANTS[name]
        print(f"=== {name}: {variant.description}", flush=True)
        backbone = build_default_backbone(image_size=variant.image_size or IMAGE_SIZE, tiles=variant.tiles)
        prepared = prepare_data(data, backbone)
        work_dir = llava_reward_home() / "ablations" / name
        started, load_before = time.time(), os.getloadavg()
        held_out = cross_subset(prepared, backbone, work_dir, overrides=variant.overrides,
                                artifacts=variant.artifacts and ArtifactPlan(**variant.artifacts),
                                held_out_subsets=args.held_out,
                                say=lambda message: print(f"[{name}] {message}", flush=True))
        results["variants"][name] = {
            "description": variant.description,
            "overrides": variant.overrides,
            "image_size": variant.image_size or IMAGE_SIZE,
            "tiles": variant.tiles,
            "artifacts": variant.artifacts,
            "held_out": held_out,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - started, 1),
            "load_average_before_after": [list(load_before), list(os.getloadavg())],
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        }
        save_variant(args.results, results, name)
        print(summary_line(name, results["variants"][name]), flush=True)
        if not args.keep_models:
            for subset in held_out:
                shutil.rmtree(work_dir / subset / "model", ignore_errors=True)
    print(table(results["variants"]))
    return 0


def save_variant(path: Path, results: dict, name: str) -> None:
    """Add variant `name` of `results` to the file at `path`, keeping what other runs wrote there meanwhile."""
    saved = json.loads(path.read_text()) if path.is_file() else {"variants": {}}
    saved.update({key: value for key, value in results.items() if key != "variants"})
    saved["variants"][name] = results["variants"][name]
    results["variants"] = saved["variants"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2) + "\n")


def summary_line(name: str, variant: dict) -> str:
    parts = [
        f"{subset}: {held['accuracy_with_ties']:.3f} (train {held['training_seconds']['wall']:.0f} s wall, "
        f"{held['training_seconds']['cpu']:.0f} s CPU)"
        for subset, held in variant["held_out"].items()
    ]
    return f"{name}: " + "; ".join(parts)


def table(variants: dict) -> str:
    """The markdown table of docs/default-model.md: held-out accuracy per test subset and training CPU minutes."""
    lines = [
        "| variant | test human: w/ ties [95% CI] | w/o ties | test objects_indoor: w/ ties [95% CI] | w/o ties "
        "| training CPU min (both) | load avg |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, variant in variants.items():
        cells = []
        for subset in ("human", "objects_indoor"):
            held = variant["held_out"].get(subset)
            if held is None:
                cells += ["-", "-"]
                continue
            low, high = held["accuracy_with_ties_ci"]
            cells += [f"{held['accuracy_with_ties']:.2f} [{low:.2f}, {high:.2f}]", f"{held['accuracy_without_ties']:.2f}"]
        cpu = sum(held["training_seconds"]["cpu"] for held in variant["held_out"].values()) / 60
        load = variant["load_average_before_after"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {cpu:.1f} | {load[0][0]:.1f}-{load[1][0]:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
