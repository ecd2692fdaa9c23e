"""Benchmark files in, items to score out: MJ-Bench caption folders, TIFA160, published pairwise and unpaired JSON.

Each benchmark is read into `Item`s (the images of one row, with a prompt per image) and `BadRow`s (rows that cannot
be scored, with the reason). Rows are converted and their image paths resolved by the training data loaders of
`trainers.data`, so that training and evaluation read a file the same way:

| benchmark | `--data` | row | kind |
| --- | --- | --- | --- |
| `mjbench` | a captions JSON, a subset folder, or a folder of subset folders | `caption`, `image_0`, `image_1`, `label_0` | pairs |
| `pairwise` | a published pairwise JSON / JSON-lines file | `prompt` (str or [chosen, rejected]), `chosen_path`, `reject_path` | pairs |
| `tifa160` | a TIFA human-annotation JSON (a list, or an object keyed by item id) | `text_id`, `image_path`, `text`, `human_avg` | rated |
| `unpaired` | a published unpaired JSON / JSON-lines file (UnsafeBench, SMID) | `prompt`, `path`, `label` | labelled |

MJ-Bench: `label_0 == 1` prefers `image_0`, `0` prefers `image_1`, `0.5` is a human tie (dropped and counted: there
is no preference to check). Images are looked up in the `examples_*` folder beside the captions file. A subset is a
folder holding one captions JSON; a folder without one is searched for subset folders at any depth.

Example:
    >>> from evaluation.benchmarks import read_benchmark
    >>> rows = read_benchmark("mjbench", "../shared/data/mjbench_quality", limit=2)  # doctest: +SKIP
    >>> [item.id for item in rows.items]  # doctest: +SKIP
    ['human/0', 'human/1', 'objects_indoor/0', 'objects_indoor/1']
"""

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from modeling_llava_reward.image_inputs import InputError
from trainers.data import _CONVERTERS
from trainers.data import _default_image_root
from trainers.data import _read_records
from trainers.data import _resolve


PAIRS, RATED, LABELLED = "pairs", "rated", "labelled"
# Benchmark name -> kind of rows; the kind decides the metrics, plots and report table.
BENCHMARKS = {"mjbench": PAIRS, "pairwise": PAIRS, "tifa160": RATED, "unpaired": LABELLED}


@dataclass
class Item:
    """One row to score: its images (absolute paths), one prompt per image, and what scores.jsonl records of it."""

    id: str  # unique in the run; scores.jsonl is keyed by it
    prompts: list[str]
    images: list[str]  # pairs: [chosen, rejected]; otherwise [image]
    fields: dict  # the row as written to scores.jsonl; a resumed run checks them against the data
    subset: str = ""  # MJ-Bench: the subset folder relative to --data ("" when --data is the subset)
    target: float | None = None  # labelled: the 0/1 label; rated: the human rating


@dataclass
class BadRow:
    id: str
    problem: str

    def __str__(self) -> str:
        return f"row {self.id}: {self.problem}"


@dataclass
class BenchmarkRows:
    """What `read_benchmark` found: the items to score, the rows that cannot be, and counts worth reporting."""

    benchmark: str
    items: list[Item]
    bad_rows: list[BadRow]
    name: str  # the data's folder name (the overall "subset" of MJ-Bench, matched against published subsets)
    num_rows: int  # rows read (after `limit`), bad ones included
    human_ties: int = 0  # MJ-Bench rows with label_0 == 0.5, dropped

    @property
    def kind(self) -> str:
        return BENCHMARKS[self.benchmark]


class BadRowsError(InputError):
    """Rows that cannot be scored; `bad_rows` lists them all, the message names the first."""

    def __init__(self, bad_rows: list[BadRow]):
        self.bad_rows = bad_rows
        more = f" ({len(bad_rows) - 1} more bad rows)" if len(bad_rows) > 1 else ""
        super().__init__(f"{bad_rows[0]}{more}")


def read_benchmark(benchmark: str, data, *, image_root=None, limit: int | None = None) -> BenchmarkRows:
    """Read the rows of `benchmark` from `data` (see the module docstring); `limit` keeps the first rows of each file.

    Malformed rows and missing images become `BadRow`s; a file that cannot be read at all raises `InputError`.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; choose one of {sorted(BENCHMARKS)}.")
    data = Path(data)
    if not data.exists():
        raise InputError(f"{data}: no such file or folder.")
    if image_root is not None and not Path(image_root).is_dir():
        raise InputError(f"image root {image_root}: no such folder.")
    if benchmark == "mjbench":
        return _read_mjbench(data, image_root, limit)
    if not data.is_file():
        raise InputError(f"{data}: the {benchmark} benchmark reads one JSON or JSON-lines file, not a folder.")
    root = Path(image_root) if image_root is not None else data.parent
    records = _read_tifa_records(data) if benchmark == "tifa160" else list(enumerate(_read_records(data)))
    items, bad_rows, _ = _convert(records[:limit], _READERS[benchmark], data, root)
    return BenchmarkRows(benchmark, items, bad_rows, data.parent.name, len(records[:limit]))


def _read_mjbench(data: Path, image_root, limit) -> BenchmarkRows:
    subsets = _caption_files(data)
    items, bad_rows, num_rows, human_ties = [], [], 0, 0
    for subset, file in subsets.items():
        root = Path(image_root) if image_root is not None else _default_image_root(file, "mjbench")
        records = list(enumerate(_read_records(file)))[:limit]
        found, bad, ties = _convert(records, _mjbench_item, file, root, subset)
        items += found
        bad_rows += bad
        num_rows += len(records)
        human_ties += ties
    name = (data if data.is_dir() else data.parent).name
    return BenchmarkRows("mjbench", items, bad_rows, name, num_rows, human_ties)


def _caption_files(data: Path) -> dict[str, Path]:
    """Subset name (its folder relative to `data`, "" for `data` itself) -> its captions JSON."""
    if data.is_file():
        return {"": data}
    own = sorted(data.glob("*.json"))
    if len(own) > 1:
        raise InputError(f"{data}: a subset folder holds one captions JSON, found {[path.name for path in own]}.")
    if own:
        return {"": own[0]}
    subsets = {}
    for folder, _, files in sorted(os.walk(data)):
        json_files = sorted(name for name in files if name.endswith(".json"))
        if len(json_files) > 1:
            raise InputError(f"{folder}: a subset folder holds one captions JSON, found {json_files}.")
        if json_files:
            subsets[Path(folder).relative_to(data).as_posix()] = Path(folder) / json_files[0]
    if not subsets:
        raise InputError(f"{data}: no MJ-Bench captions JSON in this folder or below.")
    return subsets


def _convert(records, read_item, file: Path, root: Path, subset: str = ""):
    """Items, bad rows and the number of human ties (rows `read_item` returns None for) of (index, record) pairs."""
    items, bad_rows, ties = [], [], 0
    for index, record in records:
        row_id = f"{subset}/{index}" if subset else str(index)
        try:
            item = read_item(row_id, index, record, file, root)
        except InputError as error:
            bad_rows.append(BadRow(row_id, str(error)))
            continue
        if item is None:
            ties += 1
        elif subset:
            item.subset, item.fields = subset, {"id": row_id, "subset": subset, **item.fields}
            items.append(item)
        else:
            items.append(item)
    return items, bad_rows, ties


# Image paths resolve by the training loader's rule (`trainers.data`): as written under the root, else with leading
# folders dropped one at a time; the error names the file, the row and the image.


def _pair_item(row_id: str, pair: dict, file: Path, root: Path) -> Item:
    where = f"{file} row {pair['row']}"
    chosen = _resolve(pair["chosen"], root, f"{where}, chosen image")
    rejected = _resolve(pair["rejected"], root, f"{where}, rejected image")
    prompts = [pair["prompt"], pair.get("rejected_prompt", pair["prompt"])]
    fields = {"id": row_id, "prompt": prompts[0]}
    if prompts[1] != prompts[0]:
        fields["rejected_prompt"] = prompts[1]
    return Item(row_id, prompts, [chosen, rejected], {**fields, "chosen": chosen, "rejected": rejected})


def _mjbench_item(row_id: str, index: int, record, file: Path, root: Path) -> Item | None:
    pair = _CONVERTERS["mjbench"](_object(record, file, index), index, file)
    return None if pair is None else _pair_item(row_id, pair, file, root)


def _published_pair_item(row_id: str, index: int, record, file: Path, root: Path) -> Item:
    return _pair_item(row_id, _CONVERTERS["published_pairs"](_object(record, file, index), index, file), file, root)


def _labelled_item(row_id: str, index: int, record, file: Path, root: Path) -> Item:
    row = _CONVERTERS["published_labelled"](_object(record, file, index), index, file)
    image = _resolve(row["image"], root, f"{file} row {index}, image")
    fields = {"id": row_id, "prompt": row["prompt"], "image": image, "label": int(row["label"])}
    return Item(row_id, [row["prompt"]], [image], fields, target=row["label"])


def _tifa_item(row_id: str, index, record, file: Path, root: Path) -> Item:
    where = f"{file} row {index}"
    record = _object(record, file, index)
    missing = [key for key in ("text_id", "image_path", "text", "human_avg") if key not in record]
    if missing:
        raise InputError(f"{where}: missing field(s) {missing} (has {sorted(record)}).")
    rating, text = record["human_avg"], record["text"]
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(rating):
        raise InputError(f"{where}: 'human_avg' must be a finite number, got {rating!r}.")
    if not isinstance(text, str):
        raise InputError(f"{where}: 'text' must be a string, got {text!r}.")
    image = _resolve(record["image_path"], root, f"{where}, image")
    fields = {"id": row_id, "text_id": record["text_id"], "prompt": text, "image": image, "human_avg": rating}
    return Item(row_id, [text], [image], fields, target=float(rating))


def _object(record, file: Path, index) -> dict:
    if not isinstance(record, dict):
        raise InputError(f"{file} row {index}: expected a JSON object, got {type(record).__name__}.")
    return record


def _read_tifa_records(file: Path) -> list[tuple]:
    """(id, record) pairs: a JSON list is numbered from 0; an object keyed by item id (the VQAScore layout) keeps its keys."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"{file}: not valid JSON ({error}).") from None
    if isinstance(data, dict):
        return list(data.items())
    if isinstance(data, list) and data:
        return list(enumerate(data))
    raise InputError(f"{file}: expected a non-empty JSON list of items or an object keyed by item id.")


_READERS = {"pairwise": _published_pair_item, "tifa160": _tifa_item, "unpaired": _labelled_item}
