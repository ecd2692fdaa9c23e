"""How far do the default backbone's frozen DINOv2 features separate MJ-Bench's fidelity pairs? A linear probe.

The default model's held-out accuracy (docs/default-model.md) is measured across subsets: trained on `human`
(distorted faces), tested on `objects_indoor` (replaced furniture), and the reverse. This script asks what bounds it:
for each image it takes the frozen vision tower's features (CLS token and mean of the patch tokens, standardised),
fits a Bradley-Terry linear probe on `features(chosen) - features(rejected)` with L2 regularisation, and reports

- in-domain accuracy: fitted on the first half of a subset, tested on its second half;
- cross-subset accuracy: fitted on one whole subset, tested on the other (the demo's protocol).

    python benchmarks/default_model_probe.py                    # 112 and 224 px
    python benchmarks/default_model_probe.py --image-sizes 112

Writes `benchmarks/results/default_model_probe.json` and prints a markdown table.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch


REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))  # run as `python benchmarks/x.py` from a checkout, installed or not
RESULTS_FILE = REPO_DIR / "benchmarks" / "results" / "default_model_probe.json"
FEATURES = {"cls": slice(0, 1), "patch mean": slice(1, 2), "both": slice(0, 2)}


def image_features(backbone: Path, pairs: list) -> "torch.Tensor":
    """(pairs, 2, 2, width): [chosen, rejected] x [CLS, mean of patch tokens] of the frozen vision tower."""
    import torch
    from transformers import AutoImageProcessor
    from transformers import AutoModel

    from llava_reward.image_inputs import load_image

    vision_tower = AutoModel.from_pretrained(backbone).vision_tower.eval()
    image_processor = AutoImageProcessor.from_pretrained(backbone)
    features = []
    with torch.inference_mode():
        for item in pairs:
            pixels = image_processor(images=[load_image(path) for path in item.images], return_tensors="pt")
            hidden = vision_tower(pixel_values=pixels["pixel_values"]).last_hidden_state  # (2, 1 + patches, width)
            features.append(torch.stack([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=1))
    return torch.stack(features)


def fit_probe(chosen, rejected, *, weight_decay: float = 1e-2, steps: int = 500) -> "torch.Tensor":
    """Weights `w` minimising the BT loss -log sigmoid(w . (chosen - rejected)) + weight_decay |w|^2."""
    import torch

    weights = torch.zeros(chosen.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([weights], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.softplus(-(chosen - rejected) @ weights).mean() + weight_decay * weights.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return weights.detach()


def probe_accuracy(train, test) -> float:
    """Fraction of `test` pairs (tensor (pairs, 2, features)) where the probe fitted on `train` prefers the chosen."""
    weights = fit_probe(train[:, 0], train[:, 1])
    return float(((test[:, 0] - test[:, 1]) @ weights > 0).float().mean())


def probe_table(features: dict) -> dict:
    """`{feature kind: {protocol: accuracy}}` for subsets `human` and `objects_indoor`."""
    import torch

    everything = torch.cat([value.flatten(0, 2) for value in features.values()])  # (images x 2, width)
    mean, std = everything.mean(dim=0), everything.std(dim=0) + 1e-6
    table = {}
    for kind, part in FEATURES.items():
        subset = {name: ((value - mean) / std)[:, :, part].flatten(2) for name, value in features.items()}
        human, objects = subset["human"], subset["objects_indoor"]
        half = {name: len(value) // 2 for name, value in subset.items()}
        table[kind] = {
            "in-domain human": probe_accuracy(human[: half["human"]], human[half["human"]:]),
            "in-domain objects_indoor": probe_accuracy(objects[: half["objects_indoor"]], objects[half["objects_indoor"]:]),
            "cross: test human": probe_accuracy(objects, human),
            "cross: test objects_indoor": probe_accuracy(human, objects),
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--data", help="folder of MJ-Bench subset folders (default: as `llava-reward demo` finds it)")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    from llava_reward.cli.demo_workflow import find_data
    from llava_reward.cli.demo_workflow import read_pairs
    from llava_reward.default_backbone import build_default_backbone

    subsets = read_pairs(find_data(args.data))
    results = {"description": __doc__.split("\n\n")[1], "image_sizes": {}}
    for size in args.image_sizes:
        started = time.perf_counter()
        backbone = build_default_backbone(image_size=size)
        features = {name: image_features(backbone, pairs) for name, pairs in subsets.items()}
        results["image_sizes"][size] = {"probe": probe_table(features), "seconds": round(time.perf_counter() - started)}
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results["image_sizes"]))
    return 0


def markdown(image_sizes: dict) -> str:
    columns = next(iter(next(iter(image_sizes.values()))["probe"].values()))
    lines = ["| image px | features | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for size, result in image_sizes.items():
        for kind, accuracies in result["probe"].items():
            lines.append(f"| {size} | {kind} | " + " | ".join(f"{value:.2f}" for value in accuracies.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
