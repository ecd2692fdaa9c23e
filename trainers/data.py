"""Preference data for LLaVA-Reward training: files and datasets in, rows of (prompt, image paths) out.

Every loader returns a `datasets.Dataset` in one of two layouts, with images kept as undecoded references (a path,
or a `{"bytes", "path"}` dict) that the collator decodes batch by batch:

* **pairs**: `prompt`, `chosen`, `rejected`, optional `rejected_prompt` (when the two images had different prompts),
  optional `margin` (e.g. a rating gap), and `row` (the source row, named in errors);
* **labelled** (unpaired): `prompt`, `image`, `label` (0/1; UnsafeBench convention: 1 = safe) and `row`.

Accepted sources (`format="auto"` tells them apart by their fields):

| format | fields | becomes |
| --- | --- | --- |
| `published_pairs` | `prompt` (str or [chosen, rejected]), `chosen_path`, `reject_path`, `c_rate`, `r_rate` | pairs, margin = c_rate - r_rate |
| `published_labelled` | `prompt`, `path`, `label` | labelled |
| `mjbench` | `caption`, `image_0`, `image_1`, `label_0` | pairs (label_0 = 1: image_0 preferred; 0.5: tie, dropped) |
| `rated` | `prompt`, `image`, `rating` | every pair of differently rated images of a prompt; margin = rating gap |
| `pairs` | `prompt`, `chosen`, `rejected` (+ `margin`) | pairs |
| `labelled` | `prompt`, `image`, `label` | labelled |

Image paths in JSON files are relative to the file's folder (or `image_root`). The published files carry the
prefix of the authors' repository layout (`data/sample_test/sample_img/x.jpg` next to a `sample_img/` folder): when a
relative path does not exist, its leading folders are dropped one at a time and the first path that exists is used.
MJ-Bench caption files name images relative to the `examples_*` folder beside them, which is then the default root.

A missing image raises `InputError` naming the file and row when the data is loaded; a corrupt one when its batch
is decoded. Nothing is dropped silently: `on_bad_image="skip"` decodes every image once up front, drops the rows
whose images fail, and logs how many (ties of MJ-Bench and rated data are dropped by definition, and counted too).

Example:
    >>> from trainers.data import load_preference_data
    >>> pairs = load_preference_data("../shared/data/llava_reward_sample_test/pairwise_sample.json")  # doctest: +SKIP
    >>> pairs.column_names  # doctest: +SKIP
    ['prompt', 'rejected_prompt', 'chosen', 'rejected', 'margin', 'row']
"""

import itertools
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from modeling_llava_reward.image_inputs import InputError
from modeling_llava_reward.image_inputs import load_image


logger = logging.getLogger(__name__)

FORMATS = ("auto", "published_pairs", "published_labelled", "mjbench", "rated", "pairs", "labelled")
# Columns the collator reads; the trainer keeps only these.
PAIR_COLUMNS = ("prompt", "rejected_prompt", "chosen", "rejected", "margin", "row", "rejected_row")
LABELLED_COLUMNS = ("prompt", "image", "label", "row")
IMAGE_COLUMNS = ("chosen", "rejected", "image")
# (format, fields that identify it), most specific first.
_SIGNATURES = (
    ("published_pairs", {"chosen_path", "reject_path"}),
    ("mjbench", {"caption", "image_0", "image_1"}),
    ("rated", {"prompt", "image", "rating"}),
    ("pairs", {"prompt", "chosen", "rejected"}),
    ("published_labelled", {"prompt", "path", "label"}),
    ("labelled", {"prompt", "image", "label"}),
)


def load_preference_data(
    source,
    *,
    format: str = "auto",
    image_root: str | os.PathLike | None = None,
    split: str = "train",
    on_bad_image: str = "raise",
) -> datasets.Dataset:
    """Load preference data as pairs or labelled rows (see the module docstring for the formats).

    Args:
        source: a `.json` / `.jsonl` file, a folder written by `Dataset.save_to_disk`, anything
            `datasets.load_dataset` accepts (a Hub id or a data folder), or a `datasets.Dataset`.
        format: one of `FORMATS`; `"auto"` detects it from the fields.
        image_root: the folder relative image paths start from. Defaults to the JSON file's folder (MJ-Bench: its
            `examples_*` folder); for datasets, relative paths are taken as they are.
        split: the split to load from a `datasets.load_dataset` source.
        on_bad_image: `"raise"` (default) or `"skip"` (decode each image now; drop and count the rows that fail).
    """
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}, got {format!r}.")
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"`on_bad_image` must be 'raise' or 'skip', got {on_bad_image!r}.")
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix in (".json", ".jsonl"):
        return _load_json(Path(source), format, image_root, on_bad_image)
    dataset = source if isinstance(source, datasets.Dataset) else _load_dataset(source, split)
    return _from_dataset(
        dataset, format, image_root, on_bad_image, name=str(source) if dataset is not source else "the dataset"
    )


def detect_format(fields, name: str = "the data") -> str:
    """The format whose identifying fields are all in `fields`; a `ValueError` listing the formats otherwise."""
    for format, required in _SIGNATURES:
        if required <= set(fields):
            return format
    known = "; ".join(f"{format}: {sorted(required)}" for format, required in _SIGNATURES)
    raise ValueError(f"Cannot tell the format of {name} from its fields {sorted(fields)}. Known formats: {known}.")


# ---- JSON files -------------------------------------------------------------------------------------------------


def _load_json(path: Path, format: str, image_root, on_bad_image: str) -> datasets.Dataset:
    records = _read_records(path)
    format = detect_format(records[0], str(path)) if format == "auto" else format
    root = Path(image_root) if image_root is not None else _default_image_root(path, format)
    return _build(records, format, root, on_bad_image, str(path))


def _build(records: list[dict], format: str, root: Path | None, on_bad_image: str, name: str) -> datasets.Dataset:
    """Convert source records to the standard layout, resolve image paths under `root`, pair rated images."""
    converted = [_CONVERTERS[format](record, record.get("row", index), name) for index, record in enumerate(records)]
    rows = [_rooted(row, root, name) for row in converted if row is not None]
    ties = converted.count(None)
    if format == "rated":
        rows, ties = _pairs_from_ratings(rows, name)
    if ties:
        logger.warning("%s: dropped %d tied pairs (no preference to learn).", name, ties)
    return _check_images(datasets.Dataset.from_list(rows), on_bad_image, name)


def _read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    text = path.read_text(encoding="utf-8")
    try:
        records = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if path.suffix == ".jsonl"
            else json.loads(text)
        )
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error}).") from None
    if not isinstance(records, list) or not records or not all(isinstance(record, dict) for record in records):
        raise InputError(f"{path}: expected a non-empty list of objects (one per row).")
    return records


def _default_image_root(path: Path, format: str) -> Path:
    if format == "mjbench":
        examples = sorted(folder for folder in path.parent.glob("examples_*") if folder.is_dir())
        if len(examples) == 1:
            return examples[0]
    return path.parent


def _resolve(image: str, root: Path, where: str) -> str:
    """An absolute path for `image`: as given, under `root`, or under `root` with leading folders dropped."""
    if not isinstance(image, str) or not image:
        raise InputError(f"{where}: expected an image path, got {image!r}.")
    path = Path(image)
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [root.joinpath(*path.parts[start:]) for start in range(len(path.parts))]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve())
    raise InputError(f"{where}: image file {image!r} not found (looked under {root}).")


def _field(record: dict, key: str, index: int, path: Path):
    if key not in record:
        raise InputError(f"{path} row {index}: missing field {key!r} (has {sorted(record)}).")
    return record[key]


def _published_pair(record: dict, index: int, path: Path) -> dict:
    prompt = _field(record, "prompt", index, path)
    prompts = list(prompt) if isinstance(prompt, list) else [prompt, prompt]
    if len(prompts) != 2 or not all(isinstance(text, str) for text in prompts):
        raise InputError(f"{path} row {index}: 'prompt' must be a string or [prompt_chosen, prompt_rejected].")
    row = {
        "prompt": prompts[0],
        "rejected_prompt": prompts[1],
        "chosen": _field(record, "chosen_path", index, path),
        "rejected": _field(record, "reject_path", index, path),
        "row": index,
    }
    if "c_rate" in record and "r_rate" in record:
        row["margin"] = float(record["c_rate"]) - float(record["r_rate"])
    return row


def _published_labelled(record: dict, index: int, path: Path) -> dict:
    return {
        "prompt": _field(record, "prompt", index, path),
        "image": _field(record, "path", index, path),
        "label": _label(_field(record, "label", index, path), f"{path} row {index}"),
        "row": index,
    }


def _mjbench_pair(record: dict, index: int, path: Path) -> dict | None:
    label = _field(record, "label_0", index, path)
    if label not in (0, 0.5, 1):
        raise InputError(
            f"{path} row {index}: 'label_0' must be 1 (image_0 preferred), 0 or 0.5 (tie), got {label!r}."
        )
    if label == 0.5:
        return None
    images = [_field(record, "image_0", index, path), _field(record, "image_1", index, path)]
    chosen, rejected = images if label == 1 else images[::-1]
    return {"prompt": _field(record, "caption", index, path), "chosen": chosen, "rejected": rejected, "row": index}


def _pair(record: dict, index: int, path: Path) -> dict:
    row = {key: _field(record, key, index, path) for key in ("prompt", "chosen", "rejected")}
    row.update({key: record[key] for key in ("rejected_prompt", "margin") if key in record})
    return {**row, "row": index}


def _labelled(record: dict, index: int, path: Path) -> dict:
    row = {key: _field(record, key, index, path) for key in ("prompt", "image")}
    return {**row, "label": _label(_field(record, "label", index, path), f"{path} row {index}"), "row": index}


def _rated(record: dict, index: int, path: Path) -> dict:
    row = {key: _field(record, key, index, path) for key in ("prompt", "image", "rating")}
    rating = row["rating"]
    if not isinstance(rating, (int, float)) or isinstance(rating, bool):
        raise InputError(f"{path} row {index}: 'rating' must be a number, got {rating!r}.")
    return {**row, "rating": float(rating), "row": index}


def _label(value, where: str) -> float:
    if value not in (0, 1):
        raise InputError(f"{where}: 'label' must be 0 or 1, got {value!r}.")
    return float(value)


_CONVERTERS = {
    "published_pairs": _published_pair,
    "published_labelled": _published_labelled,
    "mjbench": _mjbench_pair,
    "pairs": _pair,
    "labelled": _labelled,
    "rated": _rated,
}


def _pairs_from_ratings(records: list[dict], name: str) -> tuple[list[dict], int]:
    """Every pair of differently rated images of the same prompt; the rating gap is the margin."""
    by_prompt = defaultdict(list)
    for record in records:
        by_prompt[record["prompt"]].append((record["rating"], record["row"], record["image"]))
    pairs, ties = [], 0
    for prompt, rated in by_prompt.items():
        for (rating_a, row_a, image_a), (rating_b, row_b, image_b) in itertools.combinations(rated, 2):
            if rating_a == rating_b:
                ties += 1
                continue
            if rating_a < rating_b:
                rating_a, row_a, image_a, rating_b, row_b, image_b = rating_b, row_b, image_b, rating_a, row_a, image_a
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": image_a,
                    "rejected": image_b,
                    "margin": rating_a - rating_b,
                    "row": row_a,
                    "rejected_row": row_b,
                }
            )
    if not pairs:
        raise InputError(f"{name}: no prompt has two differently rated images, so there are no pairs to train on.")
    return pairs, ties


# ---- datasets ---------------------------------------------------------------------------------------------------


def _load_dataset(source, split: str) -> datasets.Dataset:
    if Path(source).is_dir() and (Path(source) / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(source))
    return datasets.load_dataset(str(source), split=split)


def _from_dataset(dataset: datasets.Dataset, format: str, image_root, on_bad_image: str, name: str):
    format = detect_format(dataset.column_names, name) if format == "auto" else format
    for column in set(dataset.column_names) & {"chosen", "rejected", "image", "path", "image_0", "image_1"}:
        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))  # decoded by the collator
    if "row" not in dataset.column_names:
        dataset = dataset.add_column("row", list(range(len(dataset))))
    root = Path(image_root) if image_root is not None else None
    if format == "pairs" and root is None:
        return _check_images(dataset, on_bad_image, name)  # already in the standard layout: no copy
    # The other formats change the rows: convert in Python (the images stay undecoded references).
    return _build(dataset.to_list(), format, root, on_bad_image, name)


def _rooted(row: dict, root: Path | None, name: str) -> dict:
    """Resolve relative path strings of a dataset row under `root` (image dicts and absolute paths are kept)."""
    if root is None:
        return row
    return {
        key: _resolve(value, root, f"{name} row {row['row']}, {key!r}")
        if key in IMAGE_COLUMNS and isinstance(value, str)
        else value
        for key, value in row.items()
    }


# ---- images -----------------------------------------------------------------------------------------------------


def decode_image(image, row: int, column: str):
    """A row's image (path, `{"bytes", "path"}` dict, or image object) as an RGB PIL image; errors name the row."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    try:
        return load_image(image, row)
    except InputError as error:
        raise InputError(f"row {row}, {column!r}: {error}") from None


def _check_images(dataset: datasets.Dataset, on_bad_image: str, name: str) -> datasets.Dataset:
    """Raise on a missing image file (naming the row), or with "skip" drop and count rows with unreadable images."""
    columns = [column for column in IMAGE_COLUMNS if column in dataset.column_names]
    rows = dataset.select_columns(
        columns + ["row"] + (["rejected_row"] if "rejected_row" in dataset.column_names else [])
    )
    if on_bad_image == "raise":
        for example in rows:
            for column in columns:
                path = _path_of(example[column])
                if path is not None and not os.path.isfile(path):
                    raise InputError(
                        f"{name} row {_row_of(example, column)}, {column!r}: image file {path!r} not found."
                    )
        return dataset
    kept, failures = [], []
    for index, example in enumerate(rows):
        try:
            for column in columns:
                decode_image(example[column], _row_of(example, column), column)
            kept.append(index)
        except InputError as error:
            failures.append(str(error))
    if failures:
        logger.warning(
            "%s: skipped %d of %d rows with unreadable images (on_bad_image='skip'); first: %s",
            name,
            len(failures),
            len(dataset),
            "; ".join(failures[:3]),
        )
    return dataset.select(kept)


def _path_of(image) -> str | None:
    if isinstance(image, str):
        return image
    if isinstance(image, dict) and not image.get("bytes"):
        return image.get("path")
    return None


def _row_of(example: dict, column: str) -> int:
    """The source row of `column`'s image (pairs built from rated rows take their two images from two rows)."""
    if column == "rejected" and example.get("rejected_row") is not None:
        return example["rejected_row"]
    return example["row"]


# ---- batches ----------------------------------------------------------------------------------------------------


@dataclass
class LlavaRewardDataCollator:
    """Decode a batch's images and build the model inputs with a `LlavaRewardProcessor`.

    Pairs become ONE batch of 2B rows, chosen first then rejected (one forward for both), plus `margin` when the
    data has it; labelled rows become B rows plus `label`.

    Example:
        >>> from trainers.data import LlavaRewardDataCollator  # doctest: +SKIP
        >>> batch = LlavaRewardDataCollator(processor)([{"prompt": "a cat", "chosen": "a.png", "rejected": "b.png",
        ...                                              "row": 0}])  # doctest: +SKIP
        >>> batch["input_ids"].shape[0]  # doctest: +SKIP
        2
    """

    processor: object

    def __call__(self, examples: list[dict]) -> dict:
        if "chosen" in examples[0]:
            return self._pairs(examples)
        batch = self._encode(examples, [(example["prompt"], example, "image") for example in examples])
        batch["label"] = torch.tensor([float(example["label"]) for example in examples])
        return batch

    def _pairs(self, examples: list[dict]) -> dict:
        chosen = [(example["prompt"], example, "chosen") for example in examples]
        rejected = [(example.get("rejected_prompt") or example["prompt"], example, "rejected") for example in examples]
        batch = self._encode(examples, chosen + rejected)
        if examples[0].get("margin") is not None:
            batch["margin"] = torch.tensor([float(example["margin"]) for example in examples])
        return batch

    def _encode(self, examples: list[dict], items: list[tuple]) -> dict:
        prompts = [prompt for prompt, _, _ in items]
        images = [decode_image(example[column], _row_of(example, column), column) for _, example, column in items]
        return dict(self.processor(prompts, images))


__all__ = ["FORMATS", "LlavaRewardDataCollator", "decode_image", "detect_format", "load_preference_data"]
