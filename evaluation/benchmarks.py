"""Benchmark data in, items to score out: MJ-Bench caption folders, TIFA160, published pairwise and unpaired JSON.

Each benchmark is read by `llava_reward.data_formats.read_rows` (the reader training and `llava-reward score` use, so
that a file means the same thing to all three) into `Item`s (the images of one row, with a prompt per image) and
`BadRow`s (rows that cannot be scored, with the reason):

| benchmark | `--data` | row | kind |
| --- | --- | --- | --- |
| `mjbench` | a captions JSON, a subset folder, or a folder of subset folders | `caption`, `image_0`, `image_1`, `label_0` | pairs |
| `pairwise` | any pairs source training reads (published pairwise JSON/JSONL, `pairs` files, parquet, datasets) | `prompt`, `chosen_path`, `reject_path` (or `chosen`, `rejected`) | pairs |
| `tifa160` | a TIFA human-annotation JSON (a list, or an object keyed by item id) | `text_id`, `image_path`, `text`, `human_avg` | rated |
| `unpaired` | any labelled source (published unpaired JSON/JSONL: UnsafeBench, SMID; parquet; datasets) | `prompt`, `path` (or `image`), `label` | labelled |

MJ-Bench: `label_0 == 1` prefers `image_0`, `0` prefers `image_1`, `0.5` is a human tie (dropped and counted: there
is no preference to check). Images are looked up in the `examples_*` folder beside the captions file. A subset is a
folder holding one captions JSON; a folder without one is searched for subset folders at any depth.

Example:
    >>> from llava_reward.evaluation.benchmarks import read_benchmark
    >>> rows = read_benchmark("mjbench", "../shared/data/mjbench_quality", limit=2)  # doctest: +SKIP
    >>> [item.id for item in rows.items]  # doctest: +SKIP
    ['human/0', 'human/1', 'objects_indoor/0', 'objects_indoor/1']
"""

from dataclasses import dataclass
from pathlib import Path

from llava_reward.data_formats import LABELLED
from llava_reward.data_formats import PAIRS
from llava_reward.data_formats import RATED
from llava_reward.data_formats import BadRow
from llava_reward.data_formats import read_rows
from llava_reward.image_inputs import InputError
from llava_reward.image_inputs import missing_path_problem


# Benchmark name -> (the kind of rows it scores, the row format it reads); the kind decides the metrics, plots and
# report table.
BENCHMARKS = {"mjbench": PAIRS, "pairwise": PAIRS, "tifa160": RATED, "unpaired": LABELLED}
FORMATS = {"mjbench": "mjbench", "tifa160": "tifa160", "pairwise": "auto", "unpaired": "auto"}


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
class BenchmarkRows:
    """What `read_benchmark` found: the items to score, the rows that cannot be, and counts worth reporting."""

    benchmark: str
    items: list[Item]
    bad_rows: list[BadRow]
    name: str  # the data's folder name (the overall "subset" of MJ-Bench, matched against published subsets)
    source: str  # the data as named in messages
    num_rows: int  # rows read (after `limit`), bad ones included
    human_ties: int = 0  # MJ-Bench rows with label_0 == 0.5, dropped

    @property
    def kind(self) -> str:
        return BENCHMARKS[self.benchmark]


def read_benchmark(benchmark: str, data, *, image_root=None, limit: int | None = None) -> BenchmarkRows:
    """Read the rows of `benchmark` from `data` (see the module docstring); `limit` keeps the first rows of each file.

    Malformed rows and missing images become `BadRow`s; data that cannot be read at all raises `InputError`.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; choose one of {sorted(BENCHMARKS)}.")
    if isinstance(data, (str, Path)) and not Path(data).exists() and Path(data).suffix:
        raise InputError(f"{data}: {missing_path_problem(data, 'no such file or folder')}.")
    found = read_rows(data, format=FORMATS[benchmark], image_root=image_root, limit=limit)
    if found.kind != BENCHMARKS[benchmark]:
        raise InputError(
            f"{found.name}: the {benchmark} benchmark scores {BENCHMARKS[benchmark]} rows, but the data holds "
            f"{found.kind} rows (format {found.format!r})."
        )
    items = [_ITEMS[found.kind](row) for row in found.rows]
    name = Path(data).name if not Path(data).is_file() else Path(data).parent.name
    return BenchmarkRows(benchmark, items, found.bad_rows, name, found.name, found.num_read, found.ties)


def _pair_item(row: dict) -> Item:
    row_id = str(row["row"])
    prompts = [row["prompt"], row.get("rejected_prompt") or row["prompt"]]
    fields = {"id": row_id, **({"subset": row["subset"]} if row.get("subset") else {}), "prompt": prompts[0]}
    if prompts[1] != prompts[0]:
        fields["rejected_prompt"] = prompts[1]
    fields.update(chosen=row["chosen"], rejected=row["rejected"])
    return Item(row_id, prompts, [row["chosen"], row["rejected"]], fields, subset=row.get("subset", ""))


def _labelled_item(row: dict) -> Item:
    row_id = str(row["row"])
    fields = {"id": row_id, "prompt": row["prompt"], "image": row["image"], "label": int(row["label"])}
    return Item(row_id, [row["prompt"]], [row["image"]], fields, target=row["label"])


def _rated_item(row: dict) -> Item:
    row_id = str(row["row"])
    fields = {"id": row_id, "text_id": row.get("text_id"), "prompt": row["prompt"], "image": row["image"]}
    fields["human_avg"] = row["rating"]
    return Item(row_id, [row["prompt"]], [row["image"]], fields, target=row["rating"])


_ITEMS = {PAIRS: _pair_item, LABELLED: _labelled_item, RATED: _rated_item}
