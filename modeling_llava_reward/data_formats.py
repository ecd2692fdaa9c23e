"""Preference data on disk: every row format the package reads, one reader, one rule for image paths, one `BadRow`.

Training (`llava_reward.trainers.data`), evaluation (`llava_reward.evaluation.benchmarks`) and the command line
(`llava-reward score`) all read their data here, so that a file means the same thing to each of them.

`read_rows(source)` accepts a `.json` (list of rows) / `.jsonl` / `.parquet` file, a folder written by
`datasets.Dataset.save_to_disk`, an MJ-Bench folder (a captions JSON and its `examples_*` images, or a folder of such
subset folders), a `datasets.Dataset`, or anything `datasets.load_dataset` accepts. Each row becomes a dict in one of
three standard layouts, its images resolved (paths) but not decoded:

* **pairs** (kind `"pairs"`): `prompt`, `chosen`, `rejected`, optional `rejected_prompt` (when the two images had
  different prompts), optional `margin` (e.g. a rating gap), `row` (the source row) and, for MJ-Bench folders,
  `subset`;
* **labelled** (kind `"labelled"`): `prompt`, `image`, `label` (0/1; UnsafeBench convention: 1 = safe), `row`;
* **rated** (kind `"rated"`): `prompt`, `image`, `rating`, `row` (and `text_id` for TIFA160); `pairs_from_ratings`
  turns them into pairs;
* **images** (kind `"images"`): `prompt`, `image`, `row`: images to score, without a label.

| format | fields that identify it | kind |
| --- | --- | --- |
| `published_pairs` | `prompt` (str or [chosen, rejected]), `chosen_path`, `reject_path` (+ `c_rate`, `r_rate`) | pairs, margin = c_rate - r_rate |
| `mjbench` | `caption`, `image_0`, `image_1`, `label_0` | pairs (label_0 = 1: image_0 preferred; 0.5: a tie, dropped and counted) |
| `tifa160` | `text_id`, `image_path`, `text`, `human_avg` | rated |
| `rated` | `prompt`, `image`, `rating` | rated |
| `pairs` | `prompt`, `chosen`, `rejected` (+ `margin`, `rejected_prompt`) | pairs |
| `published_labelled` | `prompt`, `path`, `label` | labelled |
| `labelled` | `prompt`, `image`, `label` | labelled |
| `published_images` | `prompt`, `path` | images |
| `images` | `prompt`, `image` | images |

Rows are numbered from 0: the element of a JSON list, the non-blank line of a JSON-lines file, the row of a
dataset (or its `row` column). A row that cannot be used (not an object, a missing or invalid field, an image file
that is not there, bytes that are not UTF-8) becomes a `BadRow` that says why; nothing is dropped silently.

Image paths: absolute paths are taken as they are. Relative paths start from `image_root`, by default the data
file's folder (MJ-Bench: its `examples_*` folder; a `datasets` dataset: the working directory). Exactly that file
is used, or the row is refused, with one exception kept for the published LLaVA-Reward files, which name images from
the root of the authors' repository (`data/sample_test/sample_img/x.jpg` next to a `sample_img/` folder): when a
path's top folder is not under the root, the leading folders that lead nowhere are taken as the source's repository
prefix, logged once with an example of both paths, and dropped from every path that starts with them. One prefix
per source: a path whose own folder is there but whose file is missing (`sdxl/001.png`) is refused, never replaced by
another image of the same name.

Example:
    >>> from llava_reward.data_formats import detect_format
    >>> detect_format({"caption", "image_0", "image_1", "label_0"})
    'mjbench'
"""

import itertools
import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from .image_inputs import InputError
from .image_inputs import missing_path_problem


logger = logging.getLogger(__name__)

PAIRS, LABELLED, RATED, IMAGES = "pairs", "labelled", "rated", "images"
MIXED = "mixed"  # the kind of a source whose rows are of several kinds (only `llava-reward score` reads those)
IMAGE_FIELDS = ("chosen", "rejected", "image")  # the standard layouts' image fields


@dataclass
class BadRow:
    """A row that cannot be used, and why. `row` is its number (or id, e.g. `human/3` in an MJ-Bench folder)."""

    row: int | str
    problem: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.problem}"


class BadRowsError(InputError):
    """Rows that cannot be used; `bad_rows` lists them all, the message names the first (and its source)."""

    def __init__(self, bad_rows: list[BadRow], source: str = ""):
        self.bad_rows = bad_rows
        more = f" ({len(bad_rows) - 1} more bad rows)" if len(bad_rows) > 1 else ""
        super().__init__(f"{source + ' ' if source else ''}{bad_rows[0]}{more}")


@dataclass
class Rows:
    """What `read_rows` found in one source."""

    kind: str  # PAIRS, LABELLED, RATED, or MIXED when the rows are of several kinds
    format: str  # the rows' format ("auto" when they are of several)
    rows: list[dict]  # the usable rows, in the standard layout of `kind`
    bad_rows: list[BadRow]
    name: str  # the source, as named in messages
    num_read: int  # rows read (after `limit`), bad ones and ties included
    ties: int = 0  # MJ-Bench rows with label_0 == 0.5 (no preference: dropped)
    records: dict = field(default_factory=dict)  # row number -> the row as read (JSON sources), repeated by `score`

    def raise_if_bad(self) -> "Rows":
        if self.bad_rows:
            raise BadRowsError(self.bad_rows, self.name)
        return self


# ---- formats ------------------------------------------------------------------------------------------------------


class RowFormat:
    """One source layout: the fields that identify it, the kind of rows it gives, and how a record converts."""

    name: str
    kind: str
    signature: frozenset  # fields whose presence identifies the format

    def convert(self, record: dict, image) -> dict | None:
        """The record in its kind's standard layout; None for a row that is dropped (a tie).

        `image(record, key)` reads and resolves the image reference in field `key`. Raises `ValueError` saying what
        is wrong with the record (the caller names the row).
        """
        raise NotImplementedError


def _field(record: dict, key: str):
    if key not in record:
        raise ValueError(f"missing field {key!r} (has {sorted(record)}).")
    return record[key]


def _text(record: dict, key: str) -> str:
    value = _field(record, key)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {value!r}.")
    return value


def _number(record: dict, key: str) -> float:
    value = _field(record, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key!r} must be a finite number, got {value!r}.")
    return float(value)


def _label(record: dict, key: str) -> float:
    value = _field(record, key)
    if isinstance(value, bool) or value not in (0, 1):
        raise ValueError(f"{key!r} must be 0 or 1, got {value!r}.")
    return float(value)


class PublishedPairs(RowFormat):
    name, kind = "published_pairs", PAIRS
    signature = frozenset({"chosen_path", "reject_path"})

    def convert(self, record, image):
        prompt = _field(record, "prompt")
        prompts = list(prompt) if isinstance(prompt, list) else [prompt, prompt]
        if len(prompts) != 2 or not all(isinstance(text, str) for text in prompts):
            raise ValueError("'prompt' must be a string or [prompt_chosen, prompt_rejected].")
        row = {"prompt": prompts[0], "chosen": image(record, "chosen_path"), "rejected": image(record, "reject_path")}
        row["rejected_prompt"] = prompts[1]
        if "c_rate" in record or "r_rate" in record:
            row["margin"] = _number(record, "c_rate") - _number(record, "r_rate")
        return row


class MJBench(RowFormat):
    name, kind = "mjbench", PAIRS
    signature = frozenset({"caption", "image_0", "image_1"})

    def convert(self, record, image):
        label = _field(record, "label_0")
        if isinstance(label, bool) or label not in (0, 0.5, 1):
            raise ValueError(f"'label_0' must be 1 (image_0 preferred), 0 or 0.5 (tie), got {label!r}.")
        if label == 0.5:
            return None
        images = [image(record, "image_0"), image(record, "image_1")]
        chosen, rejected = images if label == 1 else images[::-1]
        return {"prompt": _text(record, "caption"), "chosen": chosen, "rejected": rejected}


class Tifa160(RowFormat):
    name, kind = "tifa160", RATED
    signature = frozenset({"text_id", "image_path", "text", "human_avg"})

    def convert(self, record, image):
        return {
            "prompt": _text(record, "text"),
            "image": image(record, "image_path"),
            "rating": _number(record, "human_avg"),
            "text_id": _field(record, "text_id"),
        }


class Rated(RowFormat):
    name, kind = "rated", RATED
    signature = frozenset({"prompt", "image", "rating"})

    def convert(self, record, image):
        return {"prompt": _text(record, "prompt"), "image": image(record, "image"), "rating": _number(record, "rating")}


class Pairs(RowFormat):
    name, kind = "pairs", PAIRS
    signature = frozenset({"prompt", "chosen", "rejected"})

    def convert(self, record, image):
        row = {"prompt": _text(record, "prompt"), "chosen": image(record, "chosen"), "rejected": image(record, "rejected")}
        if record.get("rejected_prompt") is not None:
            row["rejected_prompt"] = _text(record, "rejected_prompt")
        if record.get("margin") is not None:
            row["margin"] = _number(record, "margin")
        return row


class PublishedLabelled(RowFormat):
    name, kind = "published_labelled", LABELLED
    signature = frozenset({"prompt", "path", "label"})

    def convert(self, record, image):
        return {"prompt": _text(record, "prompt"), "image": image(record, "path"), "label": _label(record, "label")}


class Labelled(RowFormat):
    name, kind = "labelled", LABELLED
    signature = frozenset({"prompt", "image", "label"})

    def convert(self, record, image):
        return {"prompt": _text(record, "prompt"), "image": image(record, "image"), "label": _label(record, "label")}


class PublishedImages(RowFormat):
    name, kind = "published_images", IMAGES
    signature = frozenset({"prompt", "path"})

    def convert(self, record, image):
        return {"prompt": _text(record, "prompt"), "image": image(record, "path")}


class Images(RowFormat):
    name, kind = "images", IMAGES
    signature = frozenset({"prompt", "image"})

    def convert(self, record, image):
        return {"prompt": _text(record, "prompt"), "image": image(record, "image")}


# Most specific first: `detect_format` takes the first whose signature the fields contain.
FORMATS: dict[str, RowFormat] = {
    row_format.name: row_format
    for row_format in (
        PublishedPairs(), MJBench(), Tifa160(), Rated(), Pairs(), PublishedLabelled(), Labelled(), PublishedImages(),
        Images(),
    )
}


def _shortened(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def detect_format(fields, name: str = "the data") -> str:
    """The format whose identifying fields are all in `fields`; a `ValueError` listing the formats otherwise."""
    for row_format in FORMATS.values():
        if row_format.signature <= set(fields):
            return row_format.name
    known = "; ".join(f"{format_name}: {sorted(row_format.signature)}" for format_name, row_format in FORMATS.items())
    raise ValueError(f"Cannot tell the format of {name} from its fields {sorted(fields)}. Known formats: {known}.")


def get_format(name: str) -> RowFormat:
    if name not in FORMATS:
        raise ValueError(f"`format` must be 'auto' or one of {tuple(FORMATS)}, got {name!r}.")
    return FORMATS[name]


# ---- image paths --------------------------------------------------------------------------------------------------


class ImagePaths:
    """Resolves the image paths of one source under `root` (see the module docstring for the rule)."""

    def __init__(self, root: Path | None, source: str):
        self.root = root
        self.source = source
        self.prefix: tuple[str, ...] | None = None  # the repository prefix of the source's paths, once found

    def __call__(self, record: dict, key: str):
        """The image reference in `record[key]`, resolved; a `ValueError` naming the field otherwise."""
        value = _field(record, key)
        try:
            return self.resolve(value)
        except ValueError as error:
            raise ValueError(f"{key!r}: {error}") from None

    def resolve(self, image):
        """An absolute path string for a path; anything else (bytes, `{"bytes", "path"}` dicts, images) as is.

        Raises `ValueError` when the file is not there.
        """
        if isinstance(image, dict) and not image.get("bytes") and image.get("path"):
            image = image["path"]
        if isinstance(image, os.PathLike):
            image = os.fspath(image)
        if not isinstance(image, str):
            if image is None or (isinstance(image, dict) and not any(image.values())):
                raise ValueError(f"expected an image, got {image!r}.")
            return image
        if not image:
            raise ValueError("expected an image path, got ''.")
        try:  # a long non-path string (e.g. base64 in a path field) is a bad row, not an OSError
            path, is_file, is_dir = self._look_up(image)
        except OSError as error:
            raise ValueError(f"image path {_shortened(image)!r}: {error.strerror.lower()}.") from None
        if is_file:
            return str(path.resolve())
        if is_dir:
            raise ValueError(f"image path {image!r} is a folder, not an image file.")
        where = f" (looked under {self.root})" if self.root is not None and not Path(image).is_absolute() else ""
        if os.path.lexists(path):  # a broken symbolic link (a loop, or a link to nothing): say so
            raise ValueError(f"image file {image!r} is {missing_path_problem(path)}.")
        raise ValueError(f"image file {image!r} not found{where}.")

    def _look_up(self, image: str) -> tuple[Path, bool, bool]:
        path = Path(image)
        if not path.is_absolute():
            path = (self.root or Path.cwd()) / self._without_missing_prefix(path)
        return path, path.is_file(), path.is_dir()

    def _without_missing_prefix(self, path: Path) -> Path:
        """`path` without the source's repository prefix: leading folders that are not under the root, found on the
        first path that needs it and then dropped from every path that starts with them (and from no other)."""
        root = self.root or Path.cwd()
        parts = path.parts
        if len(parts) == 1 or (root / parts[0]).exists():  # its top folder is there: the path means what it says
            return path
        if self.prefix is None:
            start = next((start for start in range(1, len(parts)) if root.joinpath(*parts[start:]).exists()), None)
            if start is None:
                return path
            self.prefix = parts[:start]
            logger.warning(
                "%s: image paths starting with %r are read without those folders, which are not under %s (e.g. %r "
                "as %s)", self.source, "/".join(self.prefix) + "/", root, path.as_posix(), root.joinpath(*parts[start:]),
            )
        if parts[: len(self.prefix)] == self.prefix:
            return Path(*parts[len(self.prefix) :])
        return path


# ---- reading ------------------------------------------------------------------------------------------------------


def read_rows(source, *, format: str = "auto", image_root=None, split: str = "train", limit: int | None = None) -> Rows:
    """Read `source` (see the module docstring) into standard rows; bad rows are listed, not raised.

    Args:
        source: a file, a folder, a `datasets.Dataset`, or a `datasets.load_dataset` source (Hub id, data folder).
        format: `"auto"` (detected from the fields) or one of `FORMATS`.
        image_root: where relative image paths start (default: beside the data; see the module docstring).
        split: the split of a `datasets.load_dataset` source.
        limit: keep only the first `limit` rows (of each MJ-Bench subset).

    Raises `InputError` when the source itself cannot be read (missing, not JSON, no recognisable format).
    """
    if format != "auto":
        get_format(format)
    if image_root is not None and not Path(image_root).is_dir():
        raise InputError(f"image root {image_root}: no such folder.")
    if _is_dataset(source):
        return _read_dataset(source, "the dataset", format, image_root, limit)
    path = Path(source)
    if os.path.lexists(path) and not path.exists():  # a broken symbolic link, not the name of a Hub dataset
        raise InputError(f"{path}: {missing_path_problem(path)}.")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return _read_dataset(_load_from_disk(path), str(path), format, image_root, limit)
        captions = mjbench_subsets(path) if format in ("auto", "mjbench") else {}
        if captions:
            return _read_mjbench(path, captions, image_root, limit)
    if path.suffix in (".json", ".jsonl", ".parquet") or path.is_file():
        if not path.is_file():
            raise InputError(f"{path}: file not found.")
        numbered = _read_file(path)[:limit]
        return _convert(numbered, path, format, _default_root(path, image_root, format, numbered))
    if path.is_dir():
        raise InputError(
            f"{path}: not a data folder (no saved dataset, no MJ-Bench captions JSON in it or below); pass a .json, "
            ".jsonl or .parquet file."
        )
    return _read_dataset(_load_dataset(str(source), split), str(source), format, image_root, limit)


def _read_file(path: Path) -> list[tuple[int, object]]:
    """(row number, record or the problem) of each row of a JSON list, JSON-lines or parquet file."""
    if path.suffix == ".parquet":
        import datasets

        try:
            return list(enumerate(datasets.Dataset.from_parquet(str(path)).to_list()))
        except Exception as error:  # pyarrow's errors have no common base class worth naming
            raise InputError(f"{path}: not a readable parquet file ({error}).") from None
    # Undecodable bytes become lone surrogates: the row holding them is then refused by number, not the whole file.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(line for line in text.splitlines() if line.strip()):
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                rows.append((number, ValueError(f"not valid JSON ({error}).")))
        if not rows:
            raise InputError(f"{path}: no rows (the file is empty).")
        return rows
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error}); a JSON-lines file must end in .jsonl.") from None
    if isinstance(records, dict) and records and all(isinstance(value, dict) for value in records.values()):
        return list(records.items())  # an object keyed by row id (the TIFA160 layout of VQAScore)
    if not isinstance(records, list) or not records:
        got = "an empty list" if records == [] else f"a JSON {type(records).__name__}"
        raise InputError(f"{path}: expected a JSON list of rows (one object per row), got {got}.")
    return list(enumerate(records))


def _default_root(path: Path, image_root, format: str, numbered: list) -> Path:
    if image_root is not None:
        return Path(image_root)
    first = next((record for _, record in numbered if isinstance(record, dict)), {})
    if format == "mjbench" or (format == "auto" and MJBench.signature <= set(first)):
        examples = sorted(folder for folder in path.parent.glob("examples_*") if folder.is_dir())
        if len(examples) == 1:
            return examples[0]
    return path.parent


def _convert(numbered: list[tuple], path, format: str, root: Path | None, subset: str = "") -> Rows:
    """Standard rows of (row number, record) pairs; with `format="auto"` each row's format is told by its fields."""
    name = str(path)
    paths = ImagePaths(root, name)
    rows, bad_rows, ties, records, formats, first_format = [], [], 0, {}, set(), None
    for number, record in numbered:
        row_id = f"{subset}/{number}" if subset else number
        try:
            row_format = _format_of(record, format, first_format)
            row = _convert_record(row_format, record, paths)
        except ValueError as error:
            bad_rows.append(BadRow(row_id, str(error)))
            continue
        records[row_id] = record
        formats.add(row_format.name)
        first_format = first_format or row_format.name
        if row is None:
            ties += 1
            continue
        rows.append({**row, "row": row_id, **({"subset": subset} if subset else {})})
    kinds = {FORMATS[name].kind for name in formats}
    kind = kinds.pop() if len(kinds) == 1 else (MIXED if kinds else (FORMATS[format].kind if format != "auto" else MIXED))
    found_format = formats.pop() if len(formats) == 1 else format
    return Rows(kind, found_format, rows, bad_rows, name, len(numbered), ties, records)


def _format_of(record, format: str, seen: str | None) -> RowFormat:
    """The format of `record`: `format`, or with "auto" the one its fields tell (a row that matches none is read as
    the format of the rows before it, `seen`, so that the error names the field it lacks)."""
    if isinstance(record, ValueError):
        raise record
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}.")
    if format != "auto":
        return FORMATS[format]
    try:
        return FORMATS[detect_format(record, "this row")]
    except ValueError:
        if seen is None:
            raise
        return FORMATS[seen]


def _convert_record(row_format: RowFormat, record: dict, paths: ImagePaths) -> dict | None:
    if _has_undecodable_text(record):
        raise ValueError("contains bytes that are not valid UTF-8.")
    return row_format.convert(record, paths)


def _has_undecodable_text(value) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(map(_has_undecodable_text, value.values()))
    if isinstance(value, list):
        return any(map(_has_undecodable_text, value))
    return False


# ---- MJ-Bench folders -----------------------------------------------------------------------------------------------


def mjbench_subsets(folder: Path) -> dict[str, Path]:
    """Subset name (its folder relative to `folder`, "" for `folder` itself) -> its captions JSON; {} when none.

    A subset folder holds one captions JSON (rows with `caption`, `image_0`, `image_1`) and its `examples_*` images.
    """
    subsets = {}
    for current, _, files in sorted(os.walk(folder)):
        json_files = sorted(name for name in files if name.endswith(".json"))
        captions = [name for name in json_files if _looks_like_captions(Path(current) / name)]
        if len(captions) > 1:
            raise InputError(f"{current}: a subset folder holds one captions JSON, found {captions}.")
        if captions:
            subsets[Path(current).relative_to(folder).as_posix().removeprefix(".")] = Path(current) / captions[0]
    return subsets


def _looks_like_captions(path: Path) -> bool:
    try:
        records = json.loads(path.read_bytes().decode("utf-8", errors="surrogateescape"))
    except (json.JSONDecodeError, OSError):
        return False
    return isinstance(records, list) and bool(records) and isinstance(records[0], dict) and (
        MJBench.signature <= set(records[0])
    )


def _read_mjbench(folder: Path, captions: dict[str, Path], image_root, limit) -> Rows:
    merged = Rows(PAIRS, "mjbench", [], [], str(folder), 0)
    for subset, file in captions.items():
        numbered = _read_file(file)[:limit]
        part = _convert(numbered, file, "mjbench", _default_root(file, image_root, "mjbench", numbered), subset)
        merged.rows += part.rows
        merged.bad_rows += part.bad_rows
        merged.num_read += part.num_read
        merged.ties += part.ties
        merged.records.update(part.records)
    return merged


# ---- datasets -----------------------------------------------------------------------------------------------------


def _is_dataset(source) -> bool:
    return type(source).__module__.startswith("datasets.") and hasattr(source, "column_names")


def _load_from_disk(path: Path):
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        raise InputError(f"{path}: a DatasetDict with splits {list(loaded)}; pass the folder of one split.")
    return loaded


def _load_dataset(source: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(source, split=split)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise InputError(f"{source}: no such file or folder, nor a dataset `datasets.load_dataset` can load ({error}).") from None


def _read_dataset(dataset, name: str, format: str, image_root, limit) -> Rows:
    import datasets

    for column in set(dataset.column_names) & {"chosen", "rejected", "image", "path", "image_0", "image_1", "image_path"}:
        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))  # decoded batch by batch, later
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    records = dataset.to_list()
    numbered = [(record.pop("row", number), record) for number, record in enumerate(records)]
    rows = _convert(numbered, name, format, Path(image_root) if image_root is not None else None)
    rows.records = {}  # dataset rows may hold image bytes: nothing to repeat verbatim
    return rows


# ---- rated rows -----------------------------------------------------------------------------------------------------


def pairs_from_ratings(rows: list[dict]) -> tuple[list[dict], int]:
    """Every pair of differently rated images of the same prompt (the better one chosen, the rating gap as
    `margin`, `rejected_row` naming the second image's row), and the number of tied pairs left out."""
    by_prompt = defaultdict(list)
    for row in rows:
        by_prompt[row["prompt"]].append(row)
    pairs, ties = [], 0
    for prompt, rated in by_prompt.items():
        for first, second in itertools.combinations(rated, 2):
            if first["rating"] == second["rating"]:
                ties += 1
                continue
            better, worse = (first, second) if first["rating"] > second["rating"] else (second, first)
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": better["image"],
                    "rejected": worse["image"],
                    "margin": better["rating"] - worse["rating"],
                    "row": better["row"],
                    "rejected_row": worse["row"],
                }
            )
    return pairs, ties


__all__ = [
    "FORMATS",
    "IMAGES",
    "IMAGE_FIELDS",
    "LABELLED",
    "MIXED",
    "PAIRS",
    "RATED",
    "BadRow",
    "BadRowsError",
    "ImagePaths",
    "RowFormat",
    "Rows",
    "detect_format",
    "get_format",
    "mjbench_subsets",
    "pairs_from_ratings",
    "read_rows",
]
