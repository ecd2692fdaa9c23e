"""The default model: a fidelity reward model trained on the default backbone, on MJ-Bench's fidelity pairs.

`llava-reward demo` (`run_demo`) makes it on a CPU in minutes, from pretrained parts found on PyPI:

1. builds the default backbone if absent (`default_backbone.build_default_backbone`, SmolLM2-135M + DINOv2 ViT-S/14);
2. reads the MJ-Bench quality pairs (`../shared/data/mjbench_quality`: one folder per subset, `human` and
   `objects_indoor`) and stores each image once at the model's input size, exactly as its image processor would
   resize and crop it (so that 1024-pixel JPEGs are not decoded again every epoch);
3. measures held-out accuracy with the cross-subset protocol: for each subset, a model trained on the other subsets
   (the `configuration/recipes/default_fidelity.yaml` recipe: BT, SkipCA, LoRA + projector + head) is evaluated on
   it (`evaluation.Evaluation`: accuracy with and without ties, bootstrap intervals);
4. trains the default model on every pair and saves it, with its `metrics.json` and model card, to
   ``$LLAVA_REWARD_HOME/models/fidelity-default`` (`default_model_dir()`), loadable by
   `LlavaRewardScorer.from_pretrained`;
5. scores example pairs and returns a report (`format_report`).

The saved model records a fingerprint of everything it was made from (recipe, settings, backbone, data, package
version): a later run with the same inputs reuses it and only scores the examples.

Example:
    >>> import os
    >>> from llava_reward.cli.demo_workflow import default_model_dir
    >>> os.environ["LLAVA_REWARD_HOME"] = "/tmp/llava-reward-home"
    >>> default_model_dir().as_posix()
    '/tmp/llava-reward-home/models/fidelity-default'
"""

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from pathlib import Path

from llava_reward.bundle import CARD_FILE
from llava_reward.bundle import METRICS_FILE
from llava_reward.default_backbone import REFERENCE_PREFIX
from llava_reward.default_backbone import llava_reward_home
from llava_reward.default_backbone import read_build_info
from llava_reward.files import publish
from llava_reward.files import staging_dir
from llava_reward.files import write_json
from llava_reward.hub_cards.cards import CARD_NOTES_FILE
from llava_reward.progress import reporter


MODEL_NAME = "fidelity-default"
IMAGE_SIZE = 112  # the default backbone's input side for the demo: 64 visual tokens (see docs/default-model.md)
TILES = 3  # and the demo's backbone also reads 3 x 3 tiles of 112 px of the image at 336 px (TILED_RECIPE)
RECIPE = Path(__file__).resolve().parents[1] / "configuration" / "recipes" / "default_fidelity.yaml"
DATA_FLAG = "--data"
# Where the MJ-Bench quality pairs are looked for, relative to the working directory and to the repository root.
DATA_SEARCH = ("../shared/data/mjbench_quality", "shared/data/mjbench_quality")
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
FINGERPRINT_FILE = "fingerprint.json"
DEMO_FILE = "demo.json"  # how the demo made the model: settings, held-out results, timings (metrics.json: the results)
DEFAULT_MODEL_NOTE = """
## About this default model

`llava-reward demo --tiles 1` trained this model on a 2-core CPU in minutes, to show the method end to end on real
weights and real data. Its held-out results above are across subsets (trained on distorted faces, tested on replaced
furniture, and the reverse) on 100 pairs each, so their 95 % intervals are about +-0.10 wide. It is a demonstration,
not a competitive fidelity judge: on defects unlike those it was trained on it is often little better than chance.
Do not optimise a generator against it. The measurements behind its configuration, and what bounds it, are in
`docs/default-model.md` of the llava-reward repository.
"""  # appended to the perspective card: what a reader of the card must know about this particular model
TILED_MODEL_NOTE = """
## About this default model

`llava-reward demo` trained this model on a 2-core CPU from 200 MJ-Bench fidelity pairs of two defect types
(distorted faces, replaced furniture). It reads each image whole and as N x N tiles through the frozen DINOv2 encoder
and projector; its reward is a linear function of the mean of the projected image tokens, each feature standardised
with the training images' statistics. The prompt is not read: fidelity is judged from the image alone. Its held-out
results above are across subsets (trained on one defect type, tested on the other) on 100 pairs each, so their 95 %
intervals are about +-0.07 wide; on the same pairs ImageReward is right on 0.67 / 0.66, PickScore and HPS v2.1 on
0.95-0.99. With 3x3 tiles, three training seeds of the recipe hold out between 0.83 and 0.88 both ways. Two defect
types are a narrow base: on geometric warps, smears and tears of photos (artifact pairs it was never trained on) the
`--tiles 3` model is right on 0.67 of 210 (0.53-0.83 by kind): above chance, far from its MJ-Bench numbers. Check
it on images like yours before optimising a generator against it. The measurements behind its configuration are in
`docs/default-model.md` of the llava-reward repository.
"""  # the card note of a model trained on the tiled backbone (TILED_RECIPE)
EXAMPLES_PER_SUBSET = 2
# On the tiled backbone the recipe reads the reward from the mean of the projected image tokens (the projector output,
# before any language-model layer: the prompt is not read), standardised, with a linear value head trained alone on
# the frozen model's stored states: held out across subsets at 0.88-0.90 from both seeds measured, where LoRA models
# read at layer 2 transfer in one seed of two (the `tiles_3x3*` rows of docs/default-model.md).
TILED_RECIPE = {
    "model.pooling": "image", "model.hidden_layer": 0, "model.head": "linear", "model.standardize_features": True,
    "training.tuning": "head", "training.train_projector": False, "training.learning_rate": 2.0e-3,
    "training.precompute_features": True,
}


class DefaultModelError(ValueError):
    """The demo cannot run as asked (data missing or malformed, a settings conflict); the message says what to do."""


def default_model_dir() -> Path:
    """Where `llava-reward demo` leaves the default model: ``$LLAVA_REWARD_HOME/models/fidelity-default``."""
    return llava_reward_home() / "models" / MODEL_NAME


def find_data(data=None) -> Path:
    """The folder of MJ-Bench subset folders to train on: `data`, or the first of `DATA_SEARCH` found from the
    working directory or the repository root. Raises `DefaultModelError` naming the places looked at."""
    if data is not None:
        path = Path(data).expanduser()
        if not path.is_dir():
            raise DefaultModelError(f"{DATA_FLAG} {data}: no such folder.")
        return path.resolve()
    candidates = [base / relative for relative in DATA_SEARCH for base in (Path.cwd(), REPOSITORY_ROOT)]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    looked = ", ".join(sorted({str(candidate.resolve()) for candidate in candidates}))
    raise DefaultModelError(
        f"MJ-Bench quality pairs not found (looked in {looked}): pass {DATA_FLAG} DIR, a folder with one folder per "
        "MJ-Bench subset (e.g. human/, objects_indoor/), each holding a captions JSON and its examples_* images."
    )


# ---- data ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PreparedData:
    """The pairs at the model's input size: an MJ-Bench folder per subset (for `evaluation`) and training files."""

    root: Path
    subsets: dict[str, Path]  # subset name -> its MJ-Bench folder (captions JSON + examples_<name>/)
    fingerprint: str  # of the source data as read (captions, image paths, sizes, modification times)
    num_pairs: dict[str, int]
    originals: dict[str, list[tuple[str, str]]]  # subset -> (source file, prompt) of each preferred (original) image

    def training_file(self, subsets) -> Path:
        """A pairs JSON (prompt, chosen, rejected; absolute paths) holding the pairs of `subsets`."""
        name = "+".join(sorted(subsets))
        path = self.root.parent / f"{self.root.name}-pairs" / f"{name}.json"
        if not path.is_file():
            rows = [row for subset in sorted(subsets) for row in _pairs_of(self.subsets[subset])]
            write_json(path, rows)
        return path


def read_pairs(data: Path, limit: int | None = None):
    """The MJ-Bench rows of every subset folder under `data` (`evaluation.benchmarks.read_benchmark`), grouped by
    subset; at least two subsets are needed (each is held out in turn)."""
    from llava_reward.evaluation.benchmarks import read_benchmark
    from llava_reward.image_inputs import InputError

    try:
        rows = read_benchmark("mjbench", data, limit=limit)
    except InputError as error:
        raise DefaultModelError(f"{DATA_FLAG} {data}: {error}") from None
    if rows.bad_rows:
        raise DefaultModelError(f"{DATA_FLAG} {data}: {rows.bad_rows[0]} ({len(rows.bad_rows)} bad rows).")
    subsets = {}
    for item in rows.items:
        subsets.setdefault(item.subset, []).append(item)
    if len(subsets) < 2 or "" in subsets:
        raise DefaultModelError(
            f"{DATA_FLAG} {data}: the cross-subset protocol needs a folder of at least two MJ-Bench subset folders "
            f"(e.g. human/ and objects_indoor/), found {sorted(subsets) or 'none'}."
        )
    return subsets


def prepare_data(data: Path, base_model: Path, *, limit: int | None = None, progress: bool = True,
                 subsets: dict | None = None) -> PreparedData:
    """Store every image of `data` once, resized and cropped by `base_model`'s image processor, under
    ``$LLAVA_REWARD_HOME/data``; reused when the source data has not changed. `subsets`: `read_pairs(data, limit)`
    if already read.

    The stored images are what the processor makes of the originals (lossless PNG), and the processor leaves them
    unchanged: training and evaluation on them equal training and evaluation on the originals, without decoding
    and resizing 1024-pixel JPEGs at every epoch.
    """
    from transformers import AutoImageProcessor

    subsets = subsets or read_pairs(data, limit)
    image_processor = AutoImageProcessor.from_pretrained(base_model)
    side = stored_side(image_processor)
    fingerprint = _fingerprint(
        {"items": [[item.id, item.prompts, *map(_file_stamp, item.images)] for items in subsets.values() for item in items],
         "image_processor": image_processor.to_dict()}
    )
    root = llava_reward_home() / "data" / f"{data.name}-{side}x{side}-{fingerprint[:12]}"
    prepared = PreparedData(root, {name: root / name for name in subsets}, fingerprint,
                            {name: len(items) for name, items in subsets.items()},
                            {name: [(item.images[0], item.prompts[0]) for item in items]
                             for name, items in subsets.items()})
    if (root / FINGERPRINT_FILE).is_file():
        return prepared
    from tqdm.auto import tqdm

    staging = staging_dir(root)
    try:
        for name, items in subsets.items():
            _write_subset(staging / name, name, items, image_processor, tqdm, progress)
        write_json(staging / FINGERPRINT_FILE, {"source": str(data), "fingerprint": fingerprint})
        publish(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return prepared


def _write_subset(folder: Path, name: str, items: list, image_processor, tqdm, progress: bool) -> None:
    images = folder / f"examples_{name.replace('/', '_')}"
    images.mkdir(parents=True)
    rows = []
    for index, item in enumerate(tqdm(items, desc=f"resizing {name}", unit="pair", disable=not progress)):
        stored = []
        for image, role in zip(item.images, ("chosen", "rejected")):
            file_name = f"{index:05d}_{role}_{Path(image).stem}.png"
            _processed_image(image, image_processor).save(images / file_name)
            stored.append(file_name)
        rows.append({"caption": item.prompts[0], "image_0": stored[0], "image_1": stored[1], "label_0": 1,
                     "source_row": item.id})
    write_json(folder / f"captions_{name.replace('/', '_')}.json", rows)


def stored_side(image_processor) -> int:
    """The side of the stored images: the model's input size, or with LLaVA-NeXT tiles the side they are cut from."""
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    return max(map(max, pinpoints)) if pinpoints else image_processor.crop_size["height"]


def _processed_image(path: str, image_processor):
    """The image as the model sees it before normalisation: resized and cropped by `image_processor`, as uint8.

    With LLaVA-NeXT tiles, the image fitted into the tiles' square (aspect kept), which the processor cuts into tiles
    unchanged; its whole-image view is then made from this image rather than the original (a second resampling).
    """
    from PIL import Image

    from llava_reward.image_inputs import load_image

    if getattr(image_processor, "image_grid_pinpoints", None):
        image, side = load_image(path), stored_side(image_processor)
        scale = side / max(image.size)
        return image.resize([round(length * scale) for length in image.size], Image.Resampling.BICUBIC)
    array = image_processor(images=[load_image(path)], do_rescale=False, do_normalize=False, return_tensors="np")
    return Image.fromarray(array["pixel_values"][0].round().astype("uint8").transpose(1, 2, 0))


def _pairs_of(subset_dir: Path) -> list[dict]:
    from llava_reward.trainers.data import load_preference_data

    dataset = load_preference_data(next(subset_dir.glob("captions_*.json")))
    return [{"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]} for row in dataset]


# ---- training and evaluation --------------------------------------------------------------------------------------


def train_reward_model(
    base_model: Path, train_file: Path, output_dir: Path, *, recipe: Path = RECIPE, overrides: dict | None = None,
    progress: bool = True,
) -> dict:
    """Train the recipe's reward model on `train_file` into `output_dir`; returns the wall and CPU seconds taken."""
    from llava_reward.trainers.train import load_recipe
    from llava_reward.trainers.train import train

    settings = {
        "model.base_model": str(base_model),
        "data.train": str(train_file),
        "training.output_dir": str(output_dir),
        "training.disable_tqdm": not progress,
        **(overrides or {}),
    }
    with _timed() as seconds:
        train(load_recipe(recipe, settings))
    (Path(output_dir) / "training_args.bin").unlink(missing_ok=True)  # a pickle; the settings are in metrics.json
    return seconds


def evaluate_reward_model(model_dir: Path, subset_dir: Path, output_dir: Path, *, progress: bool = True) -> dict:
    """`evaluation.Evaluation` of the model in `model_dir` on one MJ-Bench subset folder; returns its metrics."""
    from llava_reward.evaluation import Evaluation
    from llava_reward.scoring import LlavaRewardScorer

    with _timed() as seconds:
        scorer = LlavaRewardScorer.from_pretrained(model_dir)
        metrics = Evaluation("mjbench", subset_dir, output_dir).run(
            scorer, model=str(model_dir), overwrite=True, progress=progress
        )
    return {**metrics, "seconds": seconds}


@dataclasses.dataclass(frozen=True)
class ArtifactPlan:
    """Artifact pairs (`llava_reward.trainers.artifacts`: a real photo against a copy with local defects) added to
    each training run, made from real photos that are never images of a held-out subset.

    Attributes:
        pairs: how many artifact pairs each run gets.
        sources: `"library"` (the photos installed packages ship) or `"library+train"` (and the preferred images of
            the subsets the run trains on).
        mode: `"mix"` (shuffled in with the MJ-Bench pairs, one run) or `"pretrain"` (a first run on the artifact
            pairs alone, for `pretrain_steps`; the MJ-Bench run starts from it with the recipe's steps).
        pretrain_steps: steps of the pre-training run (mode "pretrain").
        seed: the generator's seed.
    """

    pairs: int
    sources: str = "library+train"
    mode: str = "mix"
    pretrain_steps: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.sources not in ("library", "library+train") or self.mode not in ("mix", "pretrain") or self.pairs < 1:
            raise ValueError(f"ArtifactPlan: invalid settings {self}.")
        if (self.mode == "pretrain") != (self.pretrain_steps > 0):
            raise ValueError(f"ArtifactPlan: pretrain_steps > 0 goes with mode 'pretrain' only, got {self}.")


def artifact_pairs(prepared: PreparedData, subsets, base_model: Path, plan: ArtifactPlan, *,
                   progress: bool = True) -> Path:
    """The pairs JSON of `plan`'s artifact pairs for a run trained on `subsets`: made from the library photos and (if
    the plan says so) the originals of `subsets` only, at `base_model`'s input size; cached under
    ``$LLAVA_REWARD_HOME/data`` by a fingerprint of everything they are made from (and the generator's code)."""
    from transformers import AutoImageProcessor

    from llava_reward.trainers import artifacts

    sources = artifacts.library_photos()
    if plan.sources == "library+train":
        sources += [artifacts.PhotoSource(path, prompt)
                    for name in sorted(subsets) for path, prompt in prepared.originals[name]]
    size = stored_side(AutoImageProcessor.from_pretrained(base_model))
    fingerprint = _fingerprint({
        "sources": [[source.prompt, *_file_stamp(source.path)] for source in sources],
        "pairs": plan.pairs, "seed": plan.seed, "size": size,
        "generator": hashlib.sha256(Path(artifacts.__file__).read_bytes()).hexdigest(),
    })
    folder = llava_reward_home() / "data" / f"artifacts-{size}px-{fingerprint[:12]}"
    if not (folder / artifacts.PAIRS_FILE).is_file():
        artifacts.make_artifact_pairs(sources, folder, num_pairs=plan.pairs, size=size, seed=plan.seed)
    return folder / artifacts.PAIRS_FILE


def train_on(prepared: PreparedData, subsets, base_model: Path, output_dir: Path, *, recipe: Path = RECIPE,
             overrides: dict | None = None, artifacts: ArtifactPlan | None = None, progress: bool = True,
             say=lambda message: None) -> dict:
    """Train the recipe's reward model on the MJ-Bench pairs of `subsets` (and `artifacts`, if given) into
    `output_dir`; returns the wall and CPU seconds taken, pre-training included."""
    train_file = prepared.training_file(subsets)
    if artifacts is None:
        return train_reward_model(base_model, train_file, output_dir, recipe=recipe, overrides=overrides,
                                  progress=progress)
    artifact_file = artifact_pairs(prepared, subsets, base_model, artifacts, progress=progress)
    if artifacts.mode == "mix":
        say(f"adding {artifacts.pairs} artifact pairs ({artifacts.sources} photos)")
        mixed = train_file.with_name(f"{train_file.stem}+{artifact_file.parent.name}.json")
        if not mixed.is_file():
            write_json(mixed, _absolute_rows(train_file) + _absolute_rows(artifact_file))
        return train_reward_model(base_model, mixed, output_dir, recipe=recipe, overrides=overrides, progress=progress)
    pretrained = output_dir.parent / f"{output_dir.name}-pretrained"
    say(f"pre-training on {artifacts.pairs} artifact pairs ({artifacts.sources} photos), "
        f"{artifacts.pretrain_steps} steps")
    first = train_reward_model(base_model, artifact_file, pretrained, recipe=recipe,
                               overrides={**(overrides or {}), "training.max_steps": artifacts.pretrain_steps},
                               progress=progress)
    second = train_reward_model(base_model, train_file, output_dir, recipe=recipe,
                                overrides={**(overrides or {}), "model.init_from": str(pretrained)}, progress=progress)
    shutil.rmtree(pretrained, ignore_errors=True)
    return {key: round(first[key] + second[key], 1) for key in first}


def _absolute_rows(pairs_file: Path) -> list[dict]:
    """The rows of a `pairs` JSON with image paths made absolute (so that rows of several files can be combined)."""
    rows = json.loads(pairs_file.read_text())
    return [{**row, **{key: str(pairs_file.parent / row[key]) for key in ("chosen", "rejected")}} for row in rows]


def cross_subset(prepared: PreparedData, base_model: Path, work_dir: Path, *, recipe: Path = RECIPE,
                 overrides: dict | None = None, artifacts: ArtifactPlan | None = None, held_out_subsets=None,
                 progress: bool = True, say=lambda message: None) -> dict:
    """Hold out each subset in turn (or only those of `held_out_subsets`): train on the others (and on `artifacts`
    made without its images), evaluate on it. Returns `{subset: result}`."""
    unknown = sorted(set(held_out_subsets or ()) - set(prepared.subsets))
    if unknown:
        raise DefaultModelError(f"cross_subset: no subset {unknown[0]!r} in the data ({list(prepared.subsets)}).")
    results = {}
    for held_out in held_out_subsets or prepared.subsets:
        others = [name for name in prepared.subsets if name != held_out]
        model_dir = work_dir / held_out / "model"
        say(f"cross-subset: training on {' + '.join(others)} ({sum(prepared.num_pairs[n] for n in others)} pairs), "
            f"holding out {held_out}")
        training = train_on(prepared, others, base_model, model_dir, recipe=recipe, overrides=overrides,
                            artifacts=artifacts, progress=progress, say=say)
        say(f"cross-subset: evaluating on {held_out} ({prepared.num_pairs[held_out]} pairs)")
        metrics = evaluate_reward_model(model_dir, prepared.subsets[held_out], work_dir / held_out / "evaluation",
                                        progress=progress)
        results[held_out] = {"trained_on": others, "training_seconds": training,
                             "evaluation_seconds": metrics["seconds"], **metrics["results"]["overall"]}
    return results


# ---- the demo -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DemoResult:
    model_dir: Path
    metrics: dict  # the model's metrics.json
    examples: list[dict]  # scored example pairs
    reused: bool  # the model was found in the cache
    seconds: float


def run_demo(
    data=None,
    *,
    image_size: int = IMAGE_SIZE,
    tiles: int = TILES,
    max_steps: int | None = None,
    limit: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Build the backbone if needed, measure held-out accuracy, train and save the default model, score examples.

    Args:
        data: the folder of MJ-Bench subset folders (default: `find_data()`).
        image_size: input side of the backbone in pixels (a multiple of 14).
        tiles: with more than 1, the tiled (LLaVA-NeXT) backbone, which also reads `tiles` x `tiles` tiles of
            `image_size` px, and the recipe as `TILED_RECIPE` changes it (3, the default: held out 0.83-0.88 from
            every seed measured, docs/default-model.md); 1: the whole image only, with the LoRA recipe as
            `configuration/recipes/default_fidelity.yaml` has it (the first default, held out 0.68 / 0.64).
        max_steps: train for this many steps instead of the recipe's epochs (a quick check).
        limit: only the first `limit` pairs of each subset (a quick check).
        force: train again even if a default model made from the same inputs is cached.
        progress: progress bars and step messages on stderr.

    A model made with `max_steps` or `limit` is a quick check, not the default model: it is saved (and reused) like
    one, and its metrics.json says how it was made.
    """
    from llava_reward.default_backbone import build_default_backbone

    start = time.perf_counter()
    say = reporter("llava-reward demo", progress, start)
    data = find_data(data)
    subsets = read_pairs(data, limit)  # bad data fails here, before the backbone is built
    backbone = build_default_backbone(image_size=image_size, tiles=tiles, progress=progress)
    say(f"storing the {sum(map(len, subsets.values()))} MJ-Bench pairs of {data} at the model's input size")
    prepared = prepare_data(data, backbone, limit=limit, progress=progress, subsets=subsets)
    overrides = {**(TILED_RECIPE if tiles > 1 else {}), **({"training.max_steps": max_steps} if max_steps else {})}
    settings = {"recipe": RECIPE.read_text(), "overrides": overrides, "image_size": image_size, "limit": limit,
                "backbone": _backbone_identity(backbone), "data": prepared.fingerprint,
                "package_version": importlib.metadata.version("llava-reward")}
    if tiles > 1:  # only then, so that untiled models made before tiles existed keep their fingerprint (and cache)
        settings["tiles"] = tiles
    fingerprint = _fingerprint(settings)
    model_dir = default_model_dir()
    reused = not force and _cached_fingerprint(model_dir) == fingerprint
    if reused:
        say(f"reusing the default model in {model_dir} (made from the same recipe, backbone and data)")
    else:
        _make_default_model(prepared, backbone, model_dir, settings, fingerprint, overrides, progress, say)
    metrics = json.loads((model_dir / DEMO_FILE).read_text())
    say("scoring example pairs with the default model")
    examples = score_examples(model_dir, prepared)
    return DemoResult(model_dir, metrics, examples, reused, time.perf_counter() - start)


def _make_default_model(prepared, backbone, model_dir, settings, fingerprint, overrides, progress, say) -> None:
    staging = staging_dir(model_dir)
    try:
        held_out = cross_subset(prepared, backbone, staging / "cross-subset", overrides=overrides, progress=progress,
                                say=say)
        say(f"training the default model on all {sum(prepared.num_pairs.values())} pairs")
        training = train_reward_model(backbone, prepared.training_file(prepared.subsets), staging, overrides=overrides,
                                      progress=progress)
        record = {
            "model": MODEL_NAME,
            "fingerprint": fingerprint,
            "protocol": "cross-subset: each subset scored by a model trained on the other subsets only",
            "held_out": held_out,
            "trained_on": {name: prepared.num_pairs[name] for name in prepared.subsets},
            "training_seconds": training,
            "settings": {key: value for key, value in settings.items() if key != "recipe"},
            "recipe": _recipe_settings(overrides),
            "data": str(prepared.root),
        }
        write_json(staging / DEMO_FILE, record)
        write_json(staging / METRICS_FILE, held_out_runs(record))
        note = TILED_MODEL_NOTE if settings.get("tiles", 1) > 1 else DEFAULT_MODEL_NOTE
        (staging / CARD_NOTES_FILE).write_text(note.strip() + "\n", encoding="utf-8")
        write_card(staging, record)
        write_json(staging / FINGERPRINT_FILE, {"fingerprint": fingerprint})  # last: the folder is complete
        publish(staging, model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"saved the default model to {model_dir}")


def score_examples(model_dir: Path, prepared: PreparedData, per_subset: int = EXAMPLES_PER_SUBSET) -> list[dict]:
    """P(original preferred over edited) from the saved default model for the first pairs of each subset."""
    from llava_reward.scoring import LlavaRewardScorer

    scorer = LlavaRewardScorer.from_pretrained(model_dir, progress=False)
    examples = []
    for name, folder in prepared.subsets.items():
        for pair in _pairs_of(folder)[:per_subset]:
            probability = scorer.compare(pair["prompt"], pair["chosen"], pair["rejected"])
            examples.append({"subset": name, **pair, "p_chosen": probability})
    return examples


def export_default_model(model_dir: Path, target: Path) -> Path:
    """Copy the trained part of the default model in `model_dir` (what `llava_reward.load("default")` reads: configs,
    weights, processor, card, metrics; no checkpoints or demo records) to `target`, replacing it atomically."""
    from llava_reward.hub_cards.push import files_that_belong

    staging = staging_dir(target)
    try:
        for name in files_that_belong(model_dir):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_dir / name, staging / name)
        publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---- the report and the card --------------------------------------------------------------------------------------


def format_report(result: DemoResult) -> str:
    """The demo's closing report: held-out accuracy beside published baselines, the model, the scored examples."""
    from llava_reward.evaluation import load_references

    metrics = result.metrics
    baselines = _baselines(load_references("mjbench"), ("PickScore", "HPS v2.1", "ImageReward"))
    lines = [
        f"LLaVA-Reward default model: fidelity reward, {_describe(metrics)}",
        "",
        "Held-out accuracy (cross-subset: each subset scored by a model trained only on the other one; 95% bootstrap):",
        f"  {'subset':<16}{'pairs':>6}  {'w/ ties':<22}{'w/o ties':<22}" + "".join(f"{name:>13}" for name in baselines),
    ]
    for subset, held in metrics["held_out"].items():
        lines.append(
            f"  {subset:<16}{held['num_pairs']:>6}  {_with_interval(held, 'accuracy_with_ties'):<22}"
            f"{_with_interval(held, 'accuracy_without_ties'):<22}"
            + "".join(f"{_number(baselines[name].get(subset)):>13}" for name in baselines)
        )
    lines += ["  (published baselines: accuracy with ties, MJ-Bench, arXiv 2407.04842)", *_shipped_lines(), ""]
    lines += [
        f"Default model, trained on all {sum(metrics['trained_on'].values())} pairs "
        f"({_minutes(metrics['training_seconds']['wall'])} of training): {result.model_dir}",
        "Example pairs (original vs edited copy; these pairs are in the default model's training data):",
    ]
    for example in result.examples:
        lines.append(f"  [{example['subset']}] P(original preferred) = {example['p_chosen']:.3f}   \"{_short(example['prompt'])}\"")
    source = "reused from the cache" if result.reused else "made in this run"
    lines += [
        "",
        f"Model {source}; this run took {_minutes(result.seconds)}.",
        "Score your own images:  llava-reward score --prompt \"a cat on a sofa\" image1.png image2.png",
        "                        llava-reward compare --prompt \"a cat on a sofa\" a.png b.png",
    ]
    return "\n".join(lines)


def _shipped_lines() -> list[str]:
    """The held-out accuracy of the default model shipped in the package (`llava_reward.load("default")`) and what
    it was trained on (its backbone, where it reads the reward), to compare with this run's."""
    from llava_reward.loading import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / METRICS_FILE).is_file():
        return ["  (this installation ships no default model to compare with)"]
    runs = json.loads((DEFAULT_MODEL_DIR / METRICS_FILE).read_text())
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    shipped = (f"{config['base_model'].removeprefix(REFERENCE_PREFIX)}, {config['pooling']} pooling at layer "
               f"{config['hidden_layer']}")
    return [f"  the shipped default model (llava_reward.load('default'): {shipped}), same protocol:"] + [
        f"  {run['dataset_name']:<16}{run['results']['overall']['num_pairs']:>6}  "
        f"{_with_interval(run['results']['overall'], 'accuracy_with_ties'):<22}"
        f"{_with_interval(run['results']['overall'], 'accuracy_without_ties'):<22}"
        for run in runs
    ]


def held_out_runs(record: dict) -> list[dict]:
    """The model's metrics.json: one `llava-reward evaluate`-style run per held-out subset (what cards and the Hub's
    model-index read)."""
    return [
        {
            "benchmark": "mjbench",
            "dataset_name": subset,
            "held_out": True,
            "protocol": record["protocol"],
            "trained_on": held["trained_on"],
            "results": {"overall": {key: value for key, value in held.items() if key.startswith(("accuracy", "num"))}},
        }
        for subset, held in record["held_out"].items()
    ]


def write_card(model_dir: Path, record: dict) -> None:
    """The default model's card (README.md): `hub_cards`' perspective card, its held-out results in the model-index,
    its caveats (`card_notes.md`) appended."""
    from llava_reward.hub_cards.cards import render_perspective_card

    card = render_perspective_card(
        model_dir, repo_id="default", subfolder="", recipe=record["recipe"], license="apache-2.0",
        datasets=["MJ-Bench/MJ-Bench"],
    )
    card.save(model_dir / CARD_FILE)


# ---- helpers ------------------------------------------------------------------------------------------------------


def _describe(metrics: dict) -> str:
    model, training = metrics["recipe"]["model"], metrics["recipe"]["training"]
    read = {"last": "last token", "mean": "mean over tokens", "image": "mean of the image tokens"}[model["pooling"]]
    standardised = ", standardised" if model.get("standardize_features") else ""
    trained = {"lora": f"LoRA r{training.get('lora_r')} + projector + head", "full": "all but the vision tower",
               "head": "projector + head" if training.get("train_projector", True) else "value head only"}
    return (
        f"SmolLM2-135M + DINOv2 ViT-S/14 at {metrics['settings']['image_size']} px{_tiles_note(metrics)}, "
        f"{training['objective'].upper()}, {'SkipCA' if model['head'] == 'skipca' else 'linear head'}, "
        f"{read} at layer {model['hidden_layer']}{standardised}, {trained[training.get('tuning', 'lora')]}"
    )


def _tiles_note(metrics: dict) -> str:
    tiles = metrics["settings"].get("tiles", 1)
    return f" (+ {tiles}x{tiles} tiles)" if tiles > 1 else ""


def _baselines(references: list[dict], models: tuple[str, ...]) -> dict[str, dict[str, float]]:
    table = {model: {} for model in models}
    for row in references:
        if row["model"] in table and row["metric"] == "accuracy_with_ties":
            table[row["model"]][row["subset"]] = row["value"]
    return table


def _with_interval(results: dict, key: str) -> str:
    interval = results.get(f"{key}_ci")
    if results.get(key) is None:
        return "n/a"
    return f"{results[key]:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _recipe_settings(overrides: dict | None = None) -> dict:
    """The recipe's sections, with the demo's dotted `overrides` ("model.hidden_layer") applied."""
    import yaml

    from llava_reward.trainers.train import apply_overrides

    recipe = yaml.safe_load(RECIPE.read_text())
    apply_overrides(recipe, overrides)
    return recipe


def _backbone_identity(backbone: Path) -> dict:
    info = read_build_info(backbone) or {}
    return {key: info.get(key) for key in ("format", "name", "image_size", "sources", "projector_seed")}


def _cached_fingerprint(model_dir: Path) -> str | None:
    try:
        return json.loads((model_dir / FINGERPRINT_FILE).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _file_stamp(path: str) -> list:
    stat = os.stat(path)
    return [path, stat.st_size, stat.st_mtime_ns]


def _fingerprint(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def _timed():
    """Yields a dict filled, on exit, with the wall and CPU (this process, all threads) seconds of the block."""
    seconds = {}
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield seconds
    finally:
        seconds.update(wall=round(time.perf_counter() - wall, 1), cpu=round(time.process_time() - cpu, 1))
