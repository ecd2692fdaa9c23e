"""Offline scoring at scale: `score_dataset` scores the rows of a data source, or an image folder, with Ray Data
actors and writes resumable shards whose lines are those `llava-reward score --input` writes.

Sources: every format `llava_reward.data_formats.read_rows` reads (JSON, JSON-lines, parquet, a saved dataset, an
MJ-Bench folder, a `datasets.Dataset`), with the same rows, the same image-path rule and the same bad rows as the
local engine; or a folder of images (PNG, JPEG, WebP, BMP, GIF, sorted by relative path) with one `prompt=` for
all, or else a caption file beside each image (`cat.png` + `cat.txt`).

How it runs: the driver reads the rows (images are located, not decoded) and cuts them, in the local engine's row
order, into shards of `shard_size` rows. Ray Data streams the unfinished shards through `num_workers` scorer actors
(`map_batches` with `ScoringActor`; each loads the model itself from its path, with `num_gpus` each when asked),
and the driver writes each shard as soon as all its rows are back. A shard file is whole or absent (written under a
temporary name and renamed), so a rerun skips the finished ones; `scoring.json` records the job (source and a hash
of its rows, shard size, model) and a rerun of anything else in the same folder is refused.

Output folder: `shard-00003-of-00010.jsonl`, one JSON line per scored row in row order: the row as read (or its
`prompt` and `label` for `datasets` sources), `row`, then the rewards under the local engine's names (`reward`, and
`probability` for a CE model; for a pairwise row `chosen_reward`, `reject_reward` and `p_chosen`). With several
`perspectives` every result name ends in `_<perspective>` (`reward_alignment`). Rows that cannot be scored stop
the run, naming the row, unless `skip_bad=True`: they are then listed in `skipped-00003-of-00010.jsonl`
(`{"row", "problem"}`) beside their shard.

Example:

```python
>>> from llava_reward.serving import read_scores, score_dataset  # doctest: +SKIP
>>> score_dataset("outputs/fidelity", "generated/", "scores/", prompt="a red cat", num_workers=4)  # doctest: +SKIP
>>> read_scores("scores/")[0]  # doctest: +SKIP
{'row': 0, 'prompt': 'a red cat', 'image': '0000.png', 'reward': 0.73}
```
"""

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import pyarrow as pa
import ray
import torch

from llava_reward.data_formats import BadRow
from llava_reward.data_formats import mjbench_subsets
from llava_reward.data_formats import read_rows
from llava_reward.files import make_folder
from llava_reward.files import write_json
from llava_reward.files import write_text
from llava_reward.image_inputs import InputError
from llava_reward.image_inputs import load_image
from llava_reward.objectives import get_objective
from llava_reward.progress import iterate
from llava_reward.scoring import score_rows

from .loading import LoadedScorer


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MANIFEST = "scoring.json"
# A row between the driver and the scorer actors. `head`: the JSON of the output line's leading fields; per image,
# `paths` holds its file or `data` its encoded bytes; `error`: why the row cannot be scored (then nothing else).
HOP_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("row", pa.string()),
        ("head", pa.string()),
        ("prompts", pa.list_(pa.string())),
        ("paths", pa.list_(pa.string())),
        ("data", pa.list_(pa.binary())),
        ("error", pa.string()),
    ]
)


# ---- rows -----------------------------------------------------------------------------------------------------------


def source_rows(source, *, prompt: str | None = None, image_root=None) -> tuple[list[dict], str]:
    """The rows of `source` as `HOP_SCHEMA` records in the local engine's order, and the source's name.

    Raises `InputError` when the source cannot be read at all; bad rows are records with an `error`.
    """
    if _is_image_folder(source):
        return _folder_rows(Path(source), prompt), str(source)
    if prompt is not None:
        raise InputError("`prompt` applies to an image folder only: the rows of a data source hold their prompts.")
    found = read_rows(source, image_root=image_root)
    rows = [
        _hop(row["row"], _head(row, found.records.get(row["row"])), *_prompts_and_images(row)) for row in found.rows
    ]
    rows += [_hop(bad.row, None, [], [], error=bad.problem) for bad in found.bad_rows]
    rows.sort(key=lambda record: _order(json.loads(record["row"])))
    for index, record in enumerate(rows):
        record["index"] = index
    return rows, found.name


def _is_image_folder(source) -> bool:
    """A folder that is neither a saved dataset nor an MJ-Bench folder (those are `read_rows`' to read)."""
    if not isinstance(source, (str, os.PathLike)) or not Path(source).is_dir():
        return False
    path = Path(source)
    saved = (path / "dataset_info.json").is_file() or (path / "state.json").is_file()
    return not saved and not mjbench_subsets(path)


def _folder_rows(root: Path, prompt: str | None) -> list[dict]:
    files = sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if not files:
        raise InputError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or below.")
    rows = []
    for index, name in enumerate(files):
        text, error = prompt, None
        if text is None:
            caption = (root / name).with_suffix(".txt")
            if caption.is_file():
                text = caption.read_text(encoding="utf-8").strip()
            else:
                error = f"{name}: no prompt: pass a prompt for every image, or write a caption file {caption.name}"
        head = {"row": index, "prompt": text, "image": name}
        rows.append(_hop(index, head, [text], [str((root / name).resolve())], error=error, index=index))
    return rows


def _hop(row_id, head: dict | None, prompts: list, images: list, *, error: str | None = None, index: int = 0) -> dict:
    """A `HOP_SCHEMA` record: images split into `paths` (a file) and `data` (encoded bytes)."""
    images = [image.get("bytes") or image.get("path") if isinstance(image, dict) else image for image in images]
    return {
        "index": index,
        "row": json.dumps(row_id),
        "head": None if error else json.dumps(head),
        "prompts": [] if error else prompts,
        "paths": [image if isinstance(image, str) else None for image in images],
        "data": [bytes(image) if isinstance(image, (bytes, bytearray)) else None for image in images],
        "error": error,
    }


def _prompts_and_images(row: dict) -> tuple[list, list]:
    """A standard row's prompt per image and its images: `[chosen, rejected]` for a pair, `[image]` otherwise."""
    if "chosen" in row:
        return [row["prompt"], row.get("rejected_prompt") or row["prompt"]], [row["chosen"], row["rejected"]]
    return [row["prompt"]], [row["image"]]


def _head(row: dict, record: dict | None) -> dict:
    """The output line's leading fields, as `llava-reward score` writes them: `row`, then the row as read (its
    `prompt` and `label` when the source keeps no record, as `datasets` sources do). Encoded image bytes in the
    record are written as null."""
    if record is None:
        record = {key: value for key, value in row.items() if key in ("prompt", "label")}
    return {"row": row["row"], **{key: None if isinstance(value, bytes) else value for key, value in record.items()}}


def _order(row_id) -> tuple:
    """The local engine's row order: numbered rows first, by number, then named ones (`human/3`) by name."""
    return (0, row_id, "") if isinstance(row_id, int) else (1, 0, str(row_id))


def fingerprint(rows: list[dict]) -> str:
    """A hash of what the rows are: ids, prompts, image files (their path, size and mtime) and embedded bytes."""
    digest = hashlib.sha1()
    for row in rows:
        digest.update(json.dumps([row["row"], row["head"], row["prompts"], row["error"]]).encode())
        for path, data in zip(row["paths"], row["data"]):
            if path is not None:
                status = os.stat(path) if os.path.exists(path) else None
                digest.update(json.dumps([path, status and status.st_size, status and status.st_mtime_ns]).encode())
            else:
                digest.update(data or b"")
    return digest.hexdigest()


# ---- scoring actors -------------------------------------------------------------------------------------------------


class ScoringActor:
    """A Ray Data actor: loads the model once (from its path, on this worker) and scores batches of rows.

    Ray Data calls an actor's `__call__` serially, as the scorer requires. Returns one record per row: its `index`,
    `row`, the output `line` (JSON) or the `error` that kept it from being scored.
    """

    def __init__(self, load: dict, *, skip_bad: bool, batch_size: int, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        if load.get("device") is None and ray.get_gpu_ids():
            load = {**load, "device": "cuda"}
        self.reward = LoadedScorer.load(**load)
        self.skip_bad = skip_bad
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        images = {}
        for row in rows:
            if row["error"] is None:
                try:
                    images[row["index"]] = [
                        load_image(path or data, number) for number, (path, data) in
                        enumerate(zip(row["paths"], row["data"]))
                    ]
                except InputError as error:
                    row["error"] = str(error)
        good = [row for row in rows if row["error"] is None]
        results = score_rows(self.reward, [(row["prompts"], images[row["index"]]) for row in good],
                             batch_size=self.batch_size)
        lines = {}
        for row, result in zip(good, results):
            if isinstance(result, InputError):
                row["error"] = str(result)
            else:
                lines[row["index"]] = json.dumps({**json.loads(row["head"]), **self.results(result)})
        bad = next((row for row in rows if row["error"] is not None), None)
        if bad is not None and not self.skip_bad:
            raise InputError(f"row {json.loads(bad['row'])}: {bad['error']} (skip_bad / --skip-bad skips bad rows)")
        return pa.table({
            "index": pa.array([row["index"] for row in rows], pa.int64()),
            "row": pa.array([row["row"] for row in rows], pa.string()),
            "line": pa.array([lines.get(row["index"]) for row in rows], pa.string()),
            "error": pa.array([row["error"] for row in rows], pa.string()),
        })

    def results(self, packed: torch.Tensor) -> dict:
        """A row's results from its `(n, W)` packed rewards (n = 1, or 2 for a pair), as `llava-reward score`
        names them; with several perspectives each name ends in `_<perspective>`."""
        results = {}
        for name, rewards in self.reward.split(packed).items():
            config = self.reward.configs[name]
            suffix = f"_{name}" if self.reward.multi else ""
            objective = get_objective(config.objective)
            prefixes = ["chosen_", "reject_"] if len(rewards) == 2 else [""]
            for prefix, reward in zip(prefixes, rewards):
                results[f"{prefix}reward{suffix}"] = reward.tolist()
                if not objective.pairwise:  # a CE logit: P(label 1) = sigmoid(reward)
                    results[f"{prefix}probability{suffix}"] = reward.sigmoid().item()
            if len(rewards) == 2 and objective.pairwise:
                probability = objective.preference_probability(rewards[0], rewards[1], config.tau)
                results[f"p_chosen{suffix}"] = probability.item()
        return results


# ---- shards ---------------------------------------------------------------------------------------------------------


class ShardWriter:
    """Collects scored rows per shard; writes a shard (atomically) once all its rows are in.

    A shard's bad rows (`skip_bad`) go to its `skipped-*` file, written before the shard file: the shard file is
    the mark that the shard is done.
    """

    def __init__(self, output_dir: Path, num_rows: int, shard_size: int):
        self.output_dir, self.num_rows, self.shard_size = output_dir, num_rows, shard_size
        self.shards = -(-num_rows // shard_size)
        self.pending: dict[int, dict[int, dict]] = {}
        self.written: list[Path] = []
        self.first_rows_at: float | None = None  # time.monotonic() of the first scored rows

    def path(self, shard: int, kind: str = "shard") -> Path:
        return self.output_dir / f"{kind}-{shard:05d}-of-{self.shards:05d}.jsonl"

    def rows_of(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_rows))

    def add(self, table: pa.Table) -> list[int]:
        """Take scored rows; returns the shards they completed (now written)."""
        self.first_rows_at = self.first_rows_at or time.monotonic()
        completed = []
        for record in table.to_pylist():
            shard = record["index"] // self.shard_size
            self.pending.setdefault(shard, {})[record["index"]] = record
            if len(self.pending[shard]) == len(self.rows_of(shard)):
                records = self.pending.pop(shard)
                self._write(shard, [records[index] for index in self.rows_of(shard)])
                completed.append(shard)
        return completed

    def _write(self, shard: int, records: list[dict]):
        skipped = [json.dumps({"row": json.loads(record["row"]), "problem": record["error"]}) + "\n"
                   for record in records if record["error"] is not None]
        if skipped:
            write_text(self.path(shard, "skipped"), "".join(skipped))
        final = write_text(self.path(shard), "".join(record["line"] + "\n" for record in records if record["line"]))
        self.written.append(final)


@dataclass
class ScoringSummary:
    """What a `score_dataset` run did; `elapsed_s` from the call to the last shard, `first_rows_s` until the first
    scored rows reached the driver (Ray start-up, actor start-up and model loading: what a bigger job amortises)."""

    output_dir: Path
    num_rows: int
    shards: int
    written: list[Path]
    skipped: list[Path]  # finished by an earlier run
    bad_rows: list[BadRow] = field(default_factory=list)  # skipped rows (`skip_bad`), in every shard
    elapsed_s: float = 0.0
    first_rows_s: float | None = None

    @property
    def files(self) -> list[Path]:
        return sorted(self.written + self.skipped)


def _check_output_dir(output_dir: Path, manifest: dict):
    """Create `output_dir`, or check that it holds a run of the same job (resume); never mix jobs in one folder."""
    manifest_path = output_dir / MANIFEST
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        differ = [key for key in manifest if previous.get(key) != manifest[key]]
        if differ:
            details = ", ".join(f"{key}: {previous.get(key)!r} -> {manifest[key]!r}" for key in differ)
            raise InputError(
                f"output folder {output_dir} holds scores of another job ({details}); use a new folder for this one."
            )
        return
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise InputError(f"output folder {output_dir}: not empty and holds no {MANIFEST}; choose a new or empty one.")
    make_folder(output_dir)  # or a one-line reason it cannot be one
    write_json(manifest_path, manifest)


def score_dataset(
    model: str,
    source,
    output_dir,
    *,
    prompt: str | None = None,
    image_root=None,
    perspectives: list[str] | None = None,
    subfolder: str | None = None,
    base_model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    num_workers: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    threads: int | None = None,
    batch_size: int = 8,
    shard_size: int = 1024,
    skip_bad: bool = False,
    ray_address: str | None = None,
    progress=None,
) -> ScoringSummary:
    r"""
    Score every row of `source` with `model` on Ray Data; write resumable shards to `output_dir`.

    Args:
        model (`str`): the reward model (folder, Hub id or `"default"`); with `perspectives`, the repo of several.
        source: a data file or folder `read_rows` reads, a `datasets.Dataset`, or an image folder (module doc).
        output_dir: where the shards and `scoring.json` go (new, empty, or a previous run of the same job).
        prompt (`str`, *optional*): the prompt of every image of an image folder (else caption files beside them).
        image_root (*optional*): where relative image paths start (as for `read_rows`; default: beside the data).
        perspectives, subfolder, base_model, device, dtype: which model to load, and how (`llava_reward.load`).
        num_workers (`int`): scorer actors; each loads the model once. num_cpus / num_gpus: Ray resources of each.
        threads (`int`, *optional*): torch intra-op threads per actor.
        batch_size (`int`): rows per actor call and images per forward. shard_size (`int`): rows per output file.
        skip_bad (`bool`): list bad rows in `skipped-*` files instead of stopping at the first.
        ray_address (`str`, *optional*): join this cluster (`"auto"`: the running one); default: the running Ray, or
            a local one started for this call and stopped after it.
        progress: shards written, as `llava_reward.progress` shows them (`None`: a bar on a terminal; `True`;
            `False`; `"plain"`: lines for logs).

    Returns:
        `ScoringSummary`: the shards written by this call and those skipped as finished before.

    Raises:
        `InputError` naming the source, the row or the folder: a source that cannot be read, a bad row (without
        `skip_bad`), an output folder holding something else.
    """
    started = time.monotonic()
    if min(num_workers, batch_size, shard_size) < 1:
        raise ValueError("`num_workers`, `batch_size` and `shard_size` must be >= 1.")
    rows, name = source_rows(source, prompt=prompt, image_root=image_root)
    bad = next((row for row in rows if row["error"] is not None), None)
    if bad is not None and not skip_bad:  # known before any model loads, as in the local engine
        bad_row = BadRow(json.loads(bad["row"]), bad["error"])
        raise InputError(f"{name}: {bad_row} (skip_bad / --skip-bad skips bad rows)")
    output_dir = Path(output_dir)
    manifest = {
        "source": name,
        "rows_fingerprint": fingerprint(rows),
        "num_rows": len(rows),
        "shard_size": shard_size,
        "model": model,
        "perspectives": perspectives,
        "subfolder": subfolder,
        "base_model": base_model,
    }
    _check_output_dir(output_dir, manifest)
    writer = ShardWriter(output_dir, len(rows), shard_size)
    for stale in [*output_dir.glob(".shard-*.tmp"), *output_dir.glob(".skipped-*.tmp")]:  # an interrupted write
        stale.unlink()
    pending = [shard for shard in range(writer.shards) if not writer.path(shard).is_file()]
    skipped = [writer.path(shard) for shard in range(writer.shards) if shard not in pending]
    if pending:
        started_ray = not ray.is_initialized()
        if started_ray:
            ray.init(address=ray_address)
        try:
            load = {"model": model, "perspectives": perspectives, "subfolder": subfolder, "base_model": base_model,
                    "device": device, "dtype": dtype}
            blocks = [pa.Table.from_pylist([rows[index] for index in writer.rows_of(shard)], schema=HOP_SCHEMA)
                      for shard in pending]
            _run(blocks, writer, load, name, skip_bad=skip_bad, num_workers=num_workers, num_cpus=num_cpus,
                 num_gpus=num_gpus, threads=threads, batch_size=batch_size, progress=progress)
        finally:
            if started_ray:
                ray.shutdown()
    first_rows_s = writer.first_rows_at - started if writer.first_rows_at else None
    return ScoringSummary(output_dir, len(rows), writer.shards, writer.written, skipped, read_skipped(output_dir),
                          time.monotonic() - started, first_rows_s)


def _run(blocks: list[pa.Table], writer: ShardWriter, load: dict, name: str, *, skip_bad: bool, num_workers: int,
         num_cpus: float, num_gpus: float, threads: int | None, batch_size: int, progress):
    ray.data.DataContext.get_current().enable_progress_bars = False  # progress is counted in shards, below
    dataset = ray.data.from_arrow(blocks).map_batches(  # one block per shard
        ScoringActor,
        fn_constructor_args=(load,),
        fn_constructor_kwargs={"skip_bad": skip_bad, "batch_size": batch_size, "threads": threads},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=min(num_workers, len(blocks))),  # a resumed run may need fewer
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    shards = (shard for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow")
              for shard in writer.add(table))
    try:
        for _ in iterate(shards, total=len(blocks), desc="scoring", unit="shard", progress=progress):
            pass
    except ray.exceptions.RayError as error:
        # Ray keeps only the text of the actor's error: give the user our one-line message, Ray's as the cause.
        ours = re.findall(r"InputError: (row .*)", str(error))
        if ours:
            raise InputError(f"{name}: {ours[-1]}") from error
        raise


def read_scores(output_dir) -> list[dict]:
    """Every scored line of a `score_dataset` output folder, in row order (the shards in order)."""
    return [json.loads(line) for shard in sorted(Path(output_dir).glob("shard-*-of-*.jsonl"))
            for line in shard.read_text(encoding="utf-8").splitlines()]


def read_skipped(output_dir) -> list[BadRow]:
    """The rows a `score_dataset` run skipped (`skip_bad`), with why, in row order."""
    return [BadRow(**json.loads(line)) for file in sorted(Path(output_dir).glob("skipped-*-of-*.jsonl"))
            for line in file.read_text(encoding="utf-8").splitlines()]
