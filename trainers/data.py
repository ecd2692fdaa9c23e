"""Preference data for LLaVA-Reward training: rows in, `datasets.Dataset`s of (prompt, image references) out.

The formats and their image-path rule are those of `llava_reward.data_formats` (published pairwise and unpaired
JSON, MJ-Bench captions, rated rows, TIFA160, `pairs` / `labelled` datasets; `.json`, `.jsonl`, `.parquet`, saved
datasets, MJ-Bench folders). Every loader returns a `datasets.Dataset` in one of two layouts, with images kept as
undecoded references (a path, or a `{"bytes", "path"}` dict) that the collator decodes batch by batch:

* **pairs**: `prompt`, `chosen`, `rejected`, optional `rejected_prompt`, optional `margin`, and `row` (the source
  row, named in errors); rated rows become every pair of differently rated images of a prompt (margin = rating gap);
* **labelled** (unpaired): `prompt`, `image`, `label` (0/1; UnsafeBench convention: 1 = safe) and `row`.

A bad row (malformed, or naming a missing image) raises `InputError` naming the source and row when the data is
loaded, unless `on_bad_row="skip"`; a corrupt image when its batch is decoded. Nothing is dropped silently:
`on_bad_image="skip"` decodes every image once up front, drops the rows whose images fail, and logs how many (ties of
MJ-Bench and rated data are dropped by definition, and counted too).

Example:
    >>> from llava_reward.trainers.data import load_preference_data
    >>> pairs = load_preference_data("../shared/data/llava_reward_sample_test/pairwise_sample.json")  # doctest: +SKIP
    >>> pairs.column_names  # doctest: +SKIP
    ['prompt', 'chosen', 'rejected', 'rejected_prompt', 'margin', 'row']
"""

import logging
import os
from dataclasses import dataclass

import datasets
import torch

from llava_reward.data_formats import IMAGE_FIELDS
from llava_reward.data_formats import LABELLED
from llava_reward.data_formats import MIXED
from llava_reward.data_formats import PAIRS
from llava_reward.data_formats import RATED
from llava_reward.data_formats import BadRowsError
from llava_reward.data_formats import pairs_from_ratings
from llava_reward.data_formats import read_rows
from llava_reward.image_inputs import InputError
from llava_reward.image_inputs import load_image


logger = logging.getLogger(__name__)

# Columns the collator reads; the trainer keeps only these.
PAIR_COLUMNS = ("prompt", "rejected_prompt", "chosen", "rejected", "margin", "row", "rejected_row")
LABELLED_COLUMNS = ("prompt", "image", "label", "row")
# What the value head reads for each image, stored by `LlavaRewardTrainer` (precompute_features).
PAIR_STATE_COLUMNS = ("chosen_states", "rejected_states")
LABELLED_STATE_COLUMNS = ("image_states",)
STATE_COLUMNS = PAIR_STATE_COLUMNS + LABELLED_STATE_COLUMNS
ON_BAD = ("raise", "skip")


def load_preference_data(
    source,
    *,
    format: str = "auto",
    image_root: str | os.PathLike | None = None,
    split: str = "train",
    on_bad_image: str = "raise",
    on_bad_row: str = "raise",
) -> datasets.Dataset:
    """Load preference data as pairs or labelled rows (see `llava_reward.data_formats` for the formats).

    Args:
        source: a `.json` / `.jsonl` / `.parquet` file, a folder written by `Dataset.save_to_disk`, an MJ-Bench
            folder, anything `datasets.load_dataset` accepts (a Hub id or a data folder), or a `datasets.Dataset`.
        format: `"auto"` (detected from the fields) or one of `llava_reward.data_formats.FORMATS`.
        image_root: the folder relative image paths start from. Defaults to the data file's folder (MJ-Bench: its
            `examples_*` folder); for datasets, the working directory.
        split: the split to load from a `datasets.load_dataset` source.
        on_bad_image: `"raise"` (default) or `"skip"` (decode each image now; drop and count the rows that fail).
        on_bad_row: `"raise"` (default) or `"skip"` (drop, count and name rows that are malformed or name a
            missing image file).
    """
    for name, value in (("on_bad_image", on_bad_image), ("on_bad_row", on_bad_row)):
        if value not in ON_BAD:
            raise ValueError(f"`{name}` must be 'raise' or 'skip', got {value!r}.")
    if _in_standard_layout(source, format, image_root):  # used as it is: no copy of a large dataset's images
        return _check_images(_with_lazy_images(source), on_bad_image, "the dataset")
    found = read_rows(source, format=format, image_root=image_root, split=split)
    if found.bad_rows:
        if on_bad_row == "raise":
            raise BadRowsError(found.bad_rows, found.name)
        logger.warning(
            "%s: skipped %d of %d rows (on_bad_row='skip'); first: %s",
            found.name, len(found.bad_rows), found.num_read, "; ".join(map(str, found.bad_rows[:3])),
        )
    if found.kind not in (PAIRS, LABELLED, RATED):
        raise InputError(
            f"{found.name}: training needs preference pairs, rated images or labelled images; the rows are "
            f"{found.kind} ({'of several kinds' if found.kind == MIXED else 'without a label or a preference'})."
        )
    rows, ties = found.rows, found.ties
    if found.kind == RATED:
        rows, ties = pairs_from_ratings(rows)
        if not rows:
            raise InputError(f"{found.name}: no prompt has two differently rated images, so there are no pairs to train on.")
    if ties:
        logger.warning("%s: dropped %d tied pairs (no preference to learn).", found.name, ties)
    if not rows:
        why = f": all {ties} pairs are ties, which have no preference to learn" if ties else ""
        raise InputError(f"{found.name}: no usable rows{why}.")
    present = {key for row in rows for key in row}
    columns = [key for key in (PAIR_COLUMNS if "chosen" in present else LABELLED_COLUMNS) if key in present]
    dataset = datasets.Dataset.from_dict({key: [row.get(key) for row in rows] for key in columns})
    return _check_images(dataset, on_bad_image, found.name)


def _in_standard_layout(source, format: str, image_root) -> bool:
    if not isinstance(source, datasets.Dataset) or image_root is not None or format not in ("auto", "pairs", "labelled"):
        return False
    columns = set(source.column_names)
    return {"prompt", "chosen", "rejected"} <= columns or {"prompt", "image", "label"} <= columns


def _with_lazy_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` with its image columns undecoded (the collator decodes them batch by batch) and a `row` column;
    a missing image file raises `InputError` naming the row."""
    for column in set(dataset.column_names) & set(IMAGE_FIELDS):
        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    if "row" not in dataset.column_names:
        dataset = dataset.add_column("row", list(range(len(dataset))))
    columns = [column for column in IMAGE_FIELDS if column in dataset.column_names]
    for example in dataset.select_columns(columns + ["row"]):
        for column in columns:
            path = example[column] if isinstance(example[column], str) else None
            if path is not None and not os.path.isfile(path):
                raise InputError(f"the dataset row {example['row']}, {column!r}: image file {path!r} not found.")
    return dataset


# ---- images -----------------------------------------------------------------------------------------------------


def decode_image(image, row, column: str):
    """A row's image (path, `{"bytes", "path"}` dict, or image object) as an RGB PIL image; errors name the row."""
    try:
        return load_image(image, row)
    except InputError as error:
        raise InputError(f"row {row}, {column!r}: {error}") from None


def _check_images(dataset: datasets.Dataset, on_bad_image: str, name: str) -> datasets.Dataset:
    """With "skip", decode every image once and drop (and count) the rows whose images cannot be read."""
    if on_bad_image == "raise":
        return dataset
    columns = [column for column in IMAGE_FIELDS if column in dataset.column_names]
    kept, failures = [], []
    for index, example in enumerate(dataset.select_columns(columns + ["row"] + _rejected_row(dataset))):
        try:
            for column in columns:
                decode_image(example[column], _row_of(example, column), column)
            kept.append(index)
        except InputError as error:
            failures.append(str(error))
    if failures and not kept:
        raise InputError(
            f"{name}: no rows left: the images of all {len(failures)} rows are unreadable (on_bad_image='skip'); "
            f"first: {failures[0]}"
        )
    if failures:
        logger.warning(
            "%s: skipped %d of %d rows with unreadable images (on_bad_image='skip'); first: %s",
            name,
            len(failures),
            len(dataset),
            "; ".join(failures[:3]),
        )
    return dataset.select(kept)


def _rejected_row(dataset: datasets.Dataset) -> list[str]:
    return ["rejected_row"] if "rejected_row" in dataset.column_names else []


def _row_of(example: dict, column: str):
    """The source row of `column`'s image (pairs built from rated rows take their two images from two rows)."""
    if column == "rejected" and example.get("rejected_row") is not None:
        return example["rejected_row"]
    return example["row"]


# ---- batches ----------------------------------------------------------------------------------------------------


@dataclass
class LlavaRewardDataCollator:
    """Decode a batch's images and build the model inputs with a `LlavaRewardProcessor`.

    Pairs become ONE batch of 2B rows, chosen first then rejected (one forward for both), plus `margin` when the
    data has it; labelled rows become B rows plus `label`. Rows holding the states the trainer stored for their
    images (`STATE_COLUMNS`, with `precompute_features`) become `reward_hidden_states` in the same layout.

    Example:
        >>> from llava_reward.trainers.data import LlavaRewardDataCollator  # doctest: +SKIP
        >>> batch = LlavaRewardDataCollator(processor)([{"prompt": "a cat", "chosen": "a.png", "rejected": "b.png",
        ...                                              "row": 0}])  # doctest: +SKIP
        >>> batch["input_ids"].shape[0]  # doctest: +SKIP
        2
    """

    processor: object

    def __call__(self, examples: list[dict]) -> dict:
        if any(column in examples[0] for column in STATE_COLUMNS):
            return self._stored_states(examples)
        if "chosen" in examples[0]:
            return self._pairs(examples)
        batch = self._encode(examples, [(example["prompt"], example, "image") for example in examples])
        batch["label"] = torch.tensor([float(example["label"]) for example in examples])
        return batch

    def _stored_states(self, examples: list[dict]) -> dict:
        # Rows whose images the model has read already: the value head's inputs, laid out as images would be.
        columns = PAIR_STATE_COLUMNS if PAIR_STATE_COLUMNS[0] in examples[0] else LABELLED_STATE_COLUMNS
        batch = {"reward_hidden_states": torch.tensor([example[column] for column in columns for example in examples])}
        for key in ("margin", "label"):
            if examples[0].get(key) is not None:
                batch[key] = torch.tensor([float(example[key]) for example in examples])
        return batch

    def _pairs(self, examples: list[dict]) -> dict:
        chosen = [(example["prompt"], example, "chosen") for example in examples]
        rejected = [(example.get("rejected_prompt") or example["prompt"], example, "rejected") for example in examples]
        batch = self._encode(examples, chosen + rejected)
        if examples[0].get("margin") is not None:
            batch["margin"] = torch.tensor([float(example["margin"]) for example in examples])
        return batch

    def _encode(self, examples: list[dict], items: list[tuple]) -> dict:
        # Checked here, where each prompt's data row is known: the processor could only name its batch position.
        prompts = [
            self.processor.check_prompt(prompt, name=f"row {_row_of(example, column)}'s {column} prompt")
            for prompt, example, column in items
        ]
        images = [decode_image(example[column], _row_of(example, column), column) for _, example, column in items]
        return dict(self.processor(prompts, images))


__all__ = [
    "LABELLED_COLUMNS",
    "LABELLED_STATE_COLUMNS",
    "PAIR_COLUMNS",
    "PAIR_STATE_COLUMNS",
    "STATE_COLUMNS",
    "LlavaRewardDataCollator",
    "decode_image",
    "load_preference_data",
]
