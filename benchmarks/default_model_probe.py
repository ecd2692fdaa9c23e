"""How far do the default backbone's frozen DINOv2 features separate MJ-Bench's fidelity pairs? A linear probe.

The default model's held-out accuracy (docs/default-model.md) is measured across subsets: trained on `human`
(distorted faces), tested on `objects_indoor` (replaced furniture), and the reverse. This script asks what bounds it:
for each image it takes the frozen vision tower's features (CLS token and mean of the patch tokens, standardised),
fits a Bradley-Terry linear probe on `features(chosen) - features(rejected)` with L2 regularisation, and reports

- in-domain accuracy: fitted on the first half of a subset, tested on its second half;
- cross-subset accuracy: fitted on one whole subset, tested on the other (the demo's protocol);
- with `--synthetic N`, transfer from artifact pairs (`llava_reward.trainers.artifacts`: a real photo against a copy
  with local defects): fitted on N pairs made from the library photos, from the library photos and the originals of
  the *training* subset (never the tested subset's images), and on those plus the training subset's real pairs;
  tested on the other subset. Here the standardisation comes from the training features only.

- with `--tiles N`, the features of N x N tiles of the image (the tiled default backbone's LLaVA-NeXT processor: the
  image fitted into N x size px, cut into tiles of size px), averaged over the tiles.
- with `--model-states`, the same cross-subset probe on what a reward model can read of the frozen backbone (image and
  MJ-Bench prompt through `LlavaRewardProcessor`): the mean over all tokens after decoder layer 2 (what mean pooling
  at layer 2 reads), the mean of the image tokens entering layer 0 (the projector output: `pooling: image`,
  `hidden_layer: 0`) and after layer 2, and the mean of the prompt tokens after layer 2; standardised with the
  training subset's statistics only.

    python benchmarks/default_model_probe.py                    # 112 and 224 px
    python benchmarks/default_model_probe.py --image-sizes 112 --synthetic 300
    python benchmarks/default_model_probe.py --image-sizes 112 --tiles 3
    python benchmarks/default_model_probe.py --image-sizes 112 --tiles 3 --model-states

Updates `benchmarks/results/default_model_probe.json` (the sizes measured) and prints markdown tables.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from typing import NamedTuple


if TYPE_CHECKING:
    import torch


REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))  # run as `python benchmarks/x.py` from a checkout, installed or not
RESULTS_FILE = REPO_DIR / "benchmarks" / "results" / "default_model_probe.json"
FEATURES = {"cls": slice(0, 1), "patch mean": slice(1, 2), "both": slice(0, 2)}
SUBSETS = ("human", "objects_indoor")
SYNTHETIC_SEED = 0


class ImagePair(NamedTuple):
    images: list[str]  # [chosen, rejected], as the MJ-Bench rows `image_features` also reads


def image_features(backbone: Path, pairs: list) -> "torch.Tensor":
    """(pairs, 2, 2, width): [chosen, rejected] x [CLS, mean of patch tokens] of the frozen vision tower (with a
    tiled backbone, averaged over the tiles; its whole-image view is left out)."""
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
            views = pixels["pixel_values"].flatten(0, -4)  # (2 x views, 3, size, size): views = 1, or 1 + tiles
            hidden = vision_tower(pixel_values=views).last_hidden_state  # (2 x views, 1 + patches, width)
            kinds = torch.stack([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=1).unflatten(0, (2, -1))
            features.append(kinds[:, 1:].mean(dim=1) if kinds.shape[1] > 1 else kinds[:, 0])
    return torch.stack(features)


MODEL_STATES = ("all tokens, layer 2", "image tokens, layer 0 (projector output)", "image tokens, layer 2",
                "prompt tokens, layer 2")


def model_states(backbone: Path, pairs: list) -> "torch.Tensor":
    """(pairs, 2, 4, hidden): [chosen, rejected] x MODEL_STATES of the frozen backbone's language model."""
    import torch

    from llava_reward import LlavaRewardModel
    from llava_reward import LlavaRewardProcessor

    # Pooling "image" at layer 0 / "mean" at layer 2 read exactly these: one linear-head model per reading.
    readers = {(pooling, layer): LlavaRewardModel.from_vlm(backbone, head="linear", pooling=pooling,
                                                           hidden_layer=layer).eval()
               for pooling, layer in (("mean", 2), ("image", 0), ("image", 2))}
    processor = LlavaRewardProcessor.from_base(backbone)
    states = []
    with torch.inference_mode():
        for item in pairs:
            inputs = processor([item.prompts[0]] * 2, item.images)
            read = {key: model(**inputs).reward_hidden_states for key, model in readers.items()}  # (2, hidden)
            reader = readers["image", 2]
            images = reader.family.image_token_mask(inputs["input_ids"], reader.vlm.config.image_token_id)
            tokens, images = inputs["attention_mask"].sum(-1, keepdim=True), images.sum(-1, keepdim=True)  # (2, 1)
            prompt = (read["mean", 2] * tokens - read["image", 2] * images) / (tokens - images)  # the other tokens
            states.append(torch.stack([read["mean", 2], read["image", 0], read["image", 2], prompt], dim=1))
    return torch.stack(states)


def model_states_table(states: dict) -> dict:
    """`{state: {test subset: accuracy}}`: the probe fitted on one subset's states, tested on the other's."""
    table = {}
    for index, name in enumerate(MODEL_STATES):
        kind = {subset: value[:, :, index : index + 1] for subset, value in states.items()}  # standardised alone
        table[name] = {f"test {test}": standardised_accuracy(kind[train], kind[test], slice(0, 1))
                       for train, test in (("objects_indoor", "human"), ("human", "objects_indoor"))}
    return table


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


def synthetic_pairs(sources, name: str, count: int, size: int) -> list[ImagePair]:
    """`count` artifact pairs made from `sources` at `size` px (generated once, under ``$LLAVA_REWARD_HOME``, in a
    folder named by everything they depend on, the generator's code included)."""
    import hashlib

    from llava_reward.default_backbone import llava_reward_home
    from llava_reward.trainers import artifacts

    generator = hashlib.sha256(Path(artifacts.__file__).read_bytes()).hexdigest()[:8]
    folder = llava_reward_home() / "probe-artifacts" / f"{name}-{count}-{size}px-seed{SYNTHETIC_SEED}-{generator}"
    if not (folder / artifacts.PAIRS_FILE).is_file():
        artifacts.make_artifact_pairs(sources, folder, num_pairs=count, size=size, seed=SYNTHETIC_SEED)
    rows = json.loads((folder / artifacts.PAIRS_FILE).read_text())
    return [ImagePair([str(folder / row["chosen"]), str(folder / row["rejected"])]) for row in rows]


def synthetic_sources(subsets: dict) -> dict:
    """`{name: PhotoSource list}`: the library photos, and the preferred (original) image of each subset's pairs."""
    from llava_reward.trainers.artifacts import PhotoSource
    from llava_reward.trainers.artifacts import library_photos

    sources = {"library": library_photos()}
    for name in SUBSETS:
        sources[name] = [PhotoSource(item.images[0], item.prompts[0]) for item in subsets[name]]
    return sources


def transfer_table(features: dict) -> dict:
    """`{feature kind: {training set: {test subset: accuracy}}}`: probes fitted on artifact pairs (`synthetic
    library`, `synthetic <subset>`), on real pairs of the other subset, or on both, and tested on a subset whose
    images they never saw; plus `in-domain synthetic`: fitted on half the library's artifact pairs, tested on the
    other half (can the frozen features see the synthetic defects at all?)."""
    import torch

    library = features["synthetic library"]
    half = len(library) // 2
    table = {}
    for kind, part in FEATURES.items():
        rows = {"in-domain synthetic": standardised_accuracy(library[:half], library[half:], part)}
        for test in SUBSETS:
            other = next(name for name in SUBSETS if name != test)
            synthetic = ["synthetic library", f"synthetic {other}"]
            training_sets = {
                "real pairs of the other subset": [other],
                "synthetic: library photos": synthetic[:1],
                "synthetic: library + other subset's originals": synthetic,
                "synthetic (library + originals) + real pairs": [*synthetic, other],
            }
            for label, names in training_sets.items():
                train = torch.cat([features[name] for name in names])
                rows.setdefault(label, {})[f"test {test}"] = standardised_accuracy(train, features[test], part)
        table[kind] = rows
    return table


def standardised_accuracy(train, test, part: slice) -> float:
    """`probe_accuracy` on (pairs, 2, 2, width) features standardised with the mean and deviation of `train`'s
    images only (nothing of the test set is seen), keeping the feature kinds `part` selects."""
    flat = train.flatten(0, 2)
    mean, std = flat.mean(dim=0), flat.std(dim=0) + 1e-6
    return probe_accuracy(((train - mean) / std)[:, :, part].flatten(2), ((test - mean) / std)[:, :, part].flatten(2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--data", help="folder of MJ-Bench subset folders (default: as `llava-reward demo` finds it)")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="also measure transfer from N artifact pairs per photo set (library, each subset)")
    parser.add_argument("--tiles", type=int, default=1, metavar="N",
                        help="read N x N tiles of each image, averaged (the tiled backbone; default 1: the image)")
    parser.add_argument("--model-states", action="store_true",
                        help="also probe the frozen reward model's states (pooled after the projector / layer 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from llava_reward.cli.demo_workflow import find_data
    from llava_reward.cli.demo_workflow import read_pairs
    from llava_reward.default_backbone import build_default_backbone

    subsets = read_pairs(find_data(args.data))
    results = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.is_file() else {"image_sizes": {}}
    results["description"] = __doc__.split("\n\n")[1]
    labels = {size: str(size) if args.tiles == 1 else f"{size} ({args.tiles}x{args.tiles} tiles)"
              for size in args.image_sizes}
    for size in args.image_sizes:
        started, cpu_started = time.perf_counter(), time.process_time()
        backbone = build_default_backbone(image_size=size, tiles=args.tiles)
        features = {name: image_features(backbone, pairs) for name, pairs in subsets.items()}
        result = {"probe": probe_table(features)}
        if args.synthetic:
            for name, sources in synthetic_sources(subsets).items():
                pairs = synthetic_pairs(sources, name, args.synthetic, size * args.tiles)
                features[f"synthetic {name}"] = image_features(backbone, pairs)
            result["synthetic"] = {"pairs_per_photo_set": args.synthetic, "seed": SYNTHETIC_SEED,
                                   "transfer": transfer_table(features)}
        if args.model_states:
            result["model_states"] = model_states_table({name: model_states(backbone, pairs)
                                                         for name, pairs in subsets.items()})
        result["seconds"] = round(time.perf_counter() - started)
        result["cpu_minutes"] = round((time.process_time() - cpu_started) / 60, 1)
        results["image_sizes"][labels[size]] = result
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
    measured = {labels[size]: results["image_sizes"][labels[size]] for size in args.image_sizes}
    print(markdown(measured))
    if args.synthetic:
        print()
        print(transfer_markdown(measured))
    if args.model_states:
        print()
        print(model_states_markdown(measured))
    return 0


def markdown(image_sizes: dict) -> str:
    columns = next(iter(next(iter(image_sizes.values()))["probe"].values()))
    lines = ["| image px | features | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for size, result in image_sizes.items():
        for kind, accuracies in result["probe"].items():
            lines.append(f"| {size} | {kind} | " + " | ".join(f"{value:.2f}" for value in accuracies.values()) + " |")
    return "\n".join(lines)


def model_states_markdown(image_sizes: dict) -> str:
    lines = ["| image px | frozen reward-model state (mean of) | test human | test objects_indoor |", "|---|---|---|---|"]
    for size, result in image_sizes.items():
        for name, accuracies in result["model_states"].items():
            cells = " | ".join(f"{accuracies[f'test {subset}']:.2f}" for subset in SUBSETS)
            lines.append(f"| {size} | {name} | {cells} |")
    return "\n".join(lines)


def transfer_markdown(image_sizes: dict) -> str:
    lines = ["| image px | features | fitted on | test human | test objects_indoor |", "|---|---|---|---|---|"]
    for size, result in image_sizes.items():
        for kind, rows in result["synthetic"]["transfer"].items():
            for label, accuracies in rows.items():
                if label == "in-domain synthetic":
                    lines.append(f"| {size} | {kind} | (in-domain: half the library's artifact pairs, tested on the "
                                 f"other half: {accuracies:.2f}) | | |")
                    continue
                cells = " | ".join(f"{accuracies[f'test {name}']:.2f}" for name in SUBSETS)
                lines.append(f"| {size} | {kind} | {label} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
