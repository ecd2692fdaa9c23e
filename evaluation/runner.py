"""Score a benchmark with a LLaVA-Reward model and write metrics.json, report.md, scores.jsonl and PNG plots.

The metrics are computed by the `evaluate` modules of `evaluation/metrics/`, loaded by path (the same code users
load with `evaluate.load`). Scoring is resumable: every batch of scored rows is appended to `scores.jsonl` at once,
and a run into a folder that already holds one scores only the rows it lacks, in the batches an uninterrupted run
would have used, so that its final outputs are the same.

Example:
    >>> from llava_reward.evaluation import Evaluation
    >>> from llava_reward import LlavaRewardScorer
    >>> evaluation = Evaluation("mjbench", "../shared/data/mjbench_quality/human", "out/human")  # doctest: +SKIP
    >>> metrics = evaluation.run(LlavaRewardScorer.from_pretrained("my-reward"), model="my-reward")  # doctest: +SKIP
    >>> metrics["results"]["overall"]["accuracy_with_ties"]  # doctest: +SKIP
    0.97
"""

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit

from llava_reward.bundle import METRICS_FILE
from llava_reward.data_formats import BadRow
from llava_reward.data_formats import BadRowsError
from llava_reward.files import make_folder
from llava_reward.files import write_json
from llava_reward.image_inputs import InputError
from llava_reward.objectives import get_objective
from llava_reward.objectives import names_with
from llava_reward.progress import iterate
from llava_reward.provenance import image_fingerprint
from llava_reward.scoring import score_rows

from . import plots
from .benchmarks import LABELLED
from .benchmarks import PAIRS
from .benchmarks import RATED
from .benchmarks import read_benchmark
from .processes import Processes
from .report import write_report


METRICS_DIR = Path(__file__).parent / "metrics"
SCORES_FILE, REPORT_FILE = "scores.jsonl", "report.md"
HISTOGRAM_FILE, RELIABILITY_FILE = "reward_histogram.png", "reliability.png"


@functools.cache
def metric_path(name: str) -> str:
    """The folder of the `evaluate` metric module `name` in this installation, for `evaluate.load(metric_path(name))`
    from any directory. Names: `pairwise_accuracy`, `tie_calibrated_accuracy`, `rank_correlation`,
    `binary_classification`."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        known = sorted(folder.name for folder in METRICS_DIR.iterdir() if (folder / f"{folder.name}.py").is_file())
        raise ValueError(f"No metric module {name!r}; the package ships {', '.join(known)}.")
    return str(path)


def load_metric(name: str, config_name: str | None = None):
    """The `evaluate` metric module `evaluation/metrics/<name>`, loaded by path (no network)."""
    import evaluate

    # In memory: nothing to cache on disk for a single compute, and no lock file left behind if it raises.
    return evaluate.load(metric_path(name), config_name, keep_in_memory=True)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How scores become metrics (scores do not depend on it: a resumed run may change it)."""

    tie_threshold: float = 0.0  # pairs: a tie when |reward margin| (GPM: |P - 0.5|) <= this
    num_bootstrap: int = 1000  # pairs: bootstrap replicates of the accuracy intervals
    seed: int = 0  # of the bootstrap
    threshold: float = 0.5  # labelled: P(pos_label) >= threshold predicts pos_label
    pos_label: int = 1  # labelled: the class precision, recall and F1 are about (UnsafeBench: 1 = safe)
    num_bins: int = 10  # reliability diagram

    def for_kind(self, kind: str) -> dict:
        names = {PAIRS: ("tie_threshold", "num_bootstrap", "seed"), RATED: (), LABELLED: ("threshold", "pos_label")}
        return {name: getattr(self, name) for name in names[kind] + ("num_bins",)}


class Evaluation:
    """One benchmark, read from `data`, evaluated into `output_dir`.

    Reading happens here, before any model is loaded, so that bad data fails at once: a row that cannot be scored
    (malformed, or naming a missing image) raises `BadRowsError` naming it, unless `skip_bad` is set, in which case
    bad rows are skipped and listed in metrics.json and report.md.

    Args:
        benchmark (`str`): `mjbench`, `tifa160`, `unpaired` or `pairwise` (see `evaluation.benchmarks`).
        data (`str` or `os.PathLike`): the benchmark's file or folder.
        output_dir (`str` or `os.PathLike`): where the outputs go (created if needed).
        image_root (*optional*): the folder relative image paths start from (default: beside the data).
        limit (`int`, *optional*): only the first `limit` rows of each data file (a quick check).
        skip_bad (`bool`): skip bad rows instead of raising.
        protocol (`Protocol`, *optional*): metric parameters.
        reference_benchmark (`str`, *optional*): the benchmark name of `evaluation/references` to print our results
            beside; defaults to `benchmark` (`smid` or `unsafediff` make sense for `unpaired` data).
    """

    def __init__(
        self,
        benchmark: str,
        data,
        output_dir,
        *,
        image_root=None,
        limit: int | None = None,
        skip_bad: bool = False,
        protocol: Protocol | None = None,
        reference_benchmark: str | None = None,
    ):
        self.rows = read_benchmark(benchmark, data, image_root=image_root, limit=limit)
        if self.rows.bad_rows and not skip_bad:
            raise BadRowsError(self.rows.bad_rows, self.rows.source)
        if not self.rows.items:
            raise InputError(f"{data}: no row to score{_why_no_rows(self.rows)}.")
        self.data = str(Path(data).resolve())
        self.image_root = str(Path(image_root).resolve()) if image_root is not None else None
        self.output_dir = make_folder(output_dir)  # now, before a model loads: an unusable folder fails at once
        self.limit = limit
        self.skip_bad = skip_bad
        self.protocol = protocol or Protocol()
        self.reference_benchmark = reference_benchmark or benchmark
        self.skipped: list[BadRow] = []
        self.num_resumed = 0  # rows of this run found already scored in scores.jsonl

    def run(
        self,
        scorer,
        *,
        model: str,
        model_options: dict | None = None,
        batch_size: int = 8,
        overwrite: bool = False,
        progress: bool | None = None,
    ) -> dict:
        """Score the rows missing from scores.jsonl, then write all outputs; returns the metrics.json content.

        `model` (where the scorer was loaded from) and `model_options` (e.g. subfolder, dtype) identify the run with
        the benchmark and data: resuming into a folder that holds another run's scores raises, unless `overwrite`.

        Launched as several processes (`accelerate launch`, `torchrun`), they share the batches and write the files
        one process writes (see `evaluation.processes`); the main process returns the metrics, the others None.
        """
        task = TASKS[self.rows.kind](scorer, self.protocol)
        self.skipped = list(self.rows.bad_rows)  # and those the scorer refuses, below
        processes = Processes()
        store = ScoreFile(self.output_dir / SCORES_FILE, writable=processes.is_main)
        with contextlib.ExitStack() as held:

            def open_output() -> dict:  # the main process's: the lock, the run's identity, the scores so far
                held.enter_context(_OutputLock(self.output_dir))
                header = self._header(scorer, model, model_options or {})
                self._open_store(store, header, overwrite)
                write_json(self.output_dir / METRICS_FILE, {**header, "status": "running", "running": _this_run()})
                return header

            header = processes.main_first(open_output)
            if not processes.is_main:
                store.load()  # what the main process found scored (its cut-short last line already dropped)
            self.num_resumed = sum(item.id in store.records for item in self.rows.items)
            self._score_missing(scorer, task, store, batch_size, progress, processes)
            return self._write_outputs(scorer, task, store, header) if processes.is_main else None

    def _open_store(self, store: "ScoreFile", header: dict, overwrite: bool) -> None:
        if overwrite:
            store.clear()
        else:
            self._check_same_run(header)
            store.load()
            store.check(self.rows.items)

    def _write_outputs(self, scorer, task, store: "ScoreFile", header: dict) -> dict:
        scored = [item for item in self.rows.items if item.id in store.records]
        if not scored:
            raise InputError(f"{self.data}: no row could be scored.")
        records = [store.records[item.id] for item in scored]
        results = task.results(scored, records)
        calibration, plot_files = task.plots(scored, records, self.output_dir)
        overlap = training_overlap(scored, getattr(scorer, "training_images", None))
        metrics = {
            **header,
            "status": "complete",
            # False when the model was trained on some of these images: the numbers are not held-out ones.
            "held_out": None if overlap is None else overlap["rows"] == 0,
            "training_overlap": overlap,
            "num_rows": len(scored),
            "num_rows_read": self.rows.num_rows,
            "human_ties": self.rows.human_ties,
            "skipped_rows": [{"id": str(bad.row), "problem": bad.problem} for bad in self.skipped],
            "results": results,
            "calibration": calibration,  # the reliability diagram's bins (None without a probability to check)
            "plots": plot_files,
        }
        write_json(self.output_dir / METRICS_FILE, metrics)
        write_report(metrics, self.output_dir / REPORT_FILE)
        return metrics

    def _header(self, scorer, model: str, model_options: dict) -> dict:
        config = scorer.model.config
        local = Path(model)
        return {
            "benchmark": self.rows.benchmark,
            "kind": self.rows.kind,
            "model": str(local.resolve()) if local.exists() else model,
            "model_options": model_options,
            "model_fingerprint": weights_fingerprint(scorer.model),
            "objective": config.objective,
            "tau": config.tau,
            "data": self.data,
            "dataset_name": self.rows.name,
            "image_root": self.image_root,
            "protocol": {**self.protocol.for_kind(self.rows.kind), "limit": self.limit},
            "reference_benchmark": self.reference_benchmark,
            "package_version": importlib.metadata.version("llava-reward"),
        }

    def _check_same_run(self, header: dict) -> None:
        """Scores in the output folder must come from the same model (by path and by weights), options, benchmark
        and data."""
        path = self.output_dir / METRICS_FILE
        if not path.is_file():
            return
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise InputError(f"{path}: not valid JSON; remove it, or overwrite the folder (--overwrite).") from None
        for key in ("benchmark", "model", "model_options", "data", "image_root"):
            if previous.get(key) != header[key]:
                raise InputError(
                    f"{self.output_dir} holds the scores of another run ({key} {previous.get(key)!r}, this run "
                    f"{header[key]!r}): choose another output folder, or overwrite it (--overwrite)."
                )
        if previous.get("model_fingerprint") != header["model_fingerprint"]:
            then = previous.get("model_fingerprint") or "not recorded"
            raise InputError(
                f"{self.output_dir} holds the scores of other weights: the model at {header['model']} changed since "
                f"they were scored (weights fingerprint then {then[:19]}, now {header['model_fingerprint'][:19]}): "
                "choose another output folder, or overwrite it (--overwrite)."
            )

    def _score_missing(self, scorer, task, store: "ScoreFile", batch_size: int, progress, processes) -> None:
        items = self.rows.items
        size = max(1, batch_size // task.images_per_item)
        # Batches are cut from all rows, then emptied of the scored ones: the rows left after an interruption are
        # batched (and so padded) exactly as in an uninterrupted run, and as in a run of any number of processes.
        batches = [[item for item in items[start : start + size] if item.id not in store.records] for start in range(0, len(items), size)]
        batches = [batch for batch in batches if batch]
        count = processes.num_processes
        rounds = [batches[start : start + count] for start in range(0, len(batches), count)]  # batch k: process k % N
        shown = progress if processes.is_main else False
        for batches_of_round in iterate(rounds, total=len(rounds), desc="scoring", progress=shown):
            mine = batches_of_round[processes.index] if processes.index < len(batches_of_round) else []
            for part in processes.all_gather_json(self._score_batch(scorer, task, mine, batch_size)):
                for row, problem in part["skipped"]:
                    self._skip(BadRow(row, problem))
                store.append(part["scored"])

    def _score_batch(self, scorer, task, batch: list, batch_size: int) -> dict:
        """{"scored": records, "skipped": [[row id, problem], ...]} of one batch (JSON, to gather across processes)."""
        results = score_rows(scorer, [(item.prompts, item.images) for item in batch], batch_size=batch_size)
        scored, skipped = [], []
        for item, rewards in zip(batch, results):
            if isinstance(rewards, InputError):  # an unreadable image file, or one the image processor refuses
                skipped.append([item.id, str(rewards)])
            else:
                scored.append({**item.fields, **task.scored_fields(rewards)})
        return {"scored": scored, "skipped": skipped}

    def _skip(self, bad: BadRow) -> None:
        if not self.skip_bad:
            raise BadRowsError([bad], self.rows.source)
        self.skipped.append(bad)


def training_overlap(items: list, training_images: frozenset[str] | None) -> dict | None:
    """How many rows (and images) of `items` the model was trained on, from the fingerprints it recorded
    (`llava_reward.provenance`); None when the model records none."""
    if training_images is None:
        return None
    seen = [{fingerprint for fingerprint in map(image_fingerprint, item.images) if fingerprint in training_images}
            for item in items]
    return {"rows": sum(map(bool, seen)), "images": len(set().union(*seen)), "of_rows": len(items)}


def _why_no_rows(rows) -> str:
    if rows.human_ties and rows.human_ties == rows.num_rows:
        return f": all {rows.num_rows} rows are human ties (label_0 = 0.5), which prefer neither image"
    if rows.bad_rows:
        return f": {len(rows.bad_rows)} of its {rows.num_rows} rows are bad and {rows.human_ties} are ties"
    return ""


def weights_fingerprint(model: torch.nn.Module) -> str:
    """`sha256:<hex>` of every parameter and buffer of `model` (names, dtypes, shapes and values): scores of
    two models can be mixed only when their fingerprints are equal.

    Example:
        >>> weights_fingerprint(torch.nn.Linear(2, 1)).startswith("sha256:")
        True
    """
    digest = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        tensor = tensor.detach().reshape(-1).cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return f"sha256:{digest.hexdigest()}"


def _this_run() -> dict:
    """Who is writing the output folder: named to a second run that finds it locked."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)}


class _OutputLock:
    """An exclusive lock on the output folder for one run (`flock` on the folder: released by the system when the
    process ends, even when it is killed, so no stale lock is ever left). A second run on the same folder gets an
    `InputError` naming the run that holds it (from the `running` entry of its metrics.json)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.descriptor: int | None = None

    def __enter__(self):
        import fcntl

        self.descriptor = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.descriptor)
            raise InputError(
                f"{self.folder} is being written by another evaluation run{self._holder()}: wait for it to finish, "
                "or choose another output folder."
            ) from None
        return self

    def __exit__(self, *exc):
        os.close(self.descriptor)  # releases the lock
        return False

    def _holder(self) -> str:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # not written yet, or being rewritten
            running = json.loads((self.folder / METRICS_FILE).read_text(encoding="utf-8"))["running"]
            return f" (pid {running['pid']} on {running['host']}, started {running['started']}: {running['command']})"
        return ""


class ScoreFile:
    """scores.jsonl: one JSON object per scored row (keyed by its `id`), appended and flushed batch by batch."""

    def __init__(self, path: Path, writable: bool = True):
        self.path = path
        self.writable = writable  # False on the processes of a launch other than the main one: they only read
        self.records: dict[str, dict] = {}

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.records = {}

    def load(self) -> None:
        """Read the rows scored so far. A last line cut short by an interruption is dropped (and rescored)."""
        if not self.path.is_file():
            return
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            if self.writable:
                self.path.write_text("".join(lines[:-1]), encoding="utf-8")
            lines = lines[:-1]
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                self.records[record["id"]] = record
            except (json.JSONDecodeError, TypeError, KeyError):
                raise InputError(
                    f"{self.path} line {number}: not a scored row (JSON object with an 'id'); remove the file, or "
                    "overwrite it (--overwrite), to start over."
                ) from None

    def check(self, items: list) -> None:
        """The rows already scored must describe the same prompts, images and targets as the data does now."""
        for item in items:
            record = self.records.get(item.id)
            if record is None:
                continue
            changed = [key for key, value in item.fields.items() if record.get(key) != value]
            if changed:
                raise InputError(
                    f"{self.path}: row {item.id} was scored with other {changed} than the data has now; choose "
                    "another output folder, or overwrite it (--overwrite)."
                )

    def append(self, records: list[dict]) -> None:
        if self.writable:
            self._write(records)
        self.records.update((record["id"], record) for record in records)

    def _write(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)
            file.flush()
            os.fsync(file.fileno())


# ---------------------------------------------------------------------------------------------------------- tasks


class _Task:
    """What one kind of rows scores, computes and plots."""

    images_per_item = 1
    needs_scalar_reward = True

    def __init__(self, scorer, protocol: Protocol):
        config = scorer.model.config
        self.objective, self.tau, self.protocol = get_objective(config.objective), config.tau, protocol
        if self.needs_scalar_reward and not self.objective.scalar:
            raise InputError(
                f"This benchmark scores images one at a time and needs a scalar reward (objective "
                f"{names_with('scalar')}); a "
                f"{config.objective!r} model only compares two images."
            )

    def scored_fields(self, rewards) -> dict:
        return {"reward": rewards[0].item()}

    def histogram(self, groups: dict, output_dir: Path, xlabel: str, title: str) -> dict:
        plots.save_histogram(groups, output_dir / HISTOGRAM_FILE, xlabel=xlabel, title=title)
        return {title: HISTOGRAM_FILE}

    def reliability(self, probabilities, outcomes, output_dir: Path, xlabel: str, title: str) -> tuple[dict, dict]:
        table = plots.reliability_bins(probabilities, outcomes, self.protocol.num_bins)
        plots.save_reliability_diagram(table, output_dir / RELIABILITY_FILE, xlabel=xlabel, title=title)
        return {"probability": xlabel, **table}, {title: RELIABILITY_FILE}


class PairTask(_Task):
    """Preference pairs (MJ-Bench, published pairwise JSON): pairwise accuracy with and without ties."""

    images_per_item = 2
    needs_scalar_reward = False

    def scored_fields(self, rewards) -> dict:
        fields = {"chosen_reward": rewards[0].tolist(), "rejected_reward": rewards[1].tolist()}
        if self.objective.pairwise:  # a CE model rates each image on its own: no pairwise probability
            fields["p_chosen"] = self.objective.preference_probability(rewards[0], rewards[1], self.tau).item()
        return fields

    def results(self, items: list, records: list[dict]) -> dict:
        groups = {}
        for index, item in enumerate(items):
            parts = item.subset.split("/") if item.subset else []
            for depth in range(1, len(parts) + 1):  # a subset counts in every folder above it too
                groups.setdefault("/".join(parts[:depth]), []).append(index)
        accuracy = self._accuracy(records)
        return {
            "overall": accuracy(range(len(records))),
            "subsets": {name: accuracy(members) for name, members in sorted(groups.items())},
        }

    def _accuracy(self, records: list[dict]):
        options = {"tie_threshold": self.protocol.tie_threshold, "num_bootstrap": self.protocol.num_bootstrap, "seed": self.protocol.seed}
        if not self.objective.scalar:  # embeddings have no order of their own: compare P(chosen > rejected) with 1/2
            metric = load_metric("pairwise_accuracy", "probabilities")
            return lambda members: metric.compute(probabilities=[records[i]["p_chosen"] for i in members], **options)
        metric = load_metric("pairwise_accuracy")
        return lambda members: metric.compute(
            chosen_scores=[records[i]["chosen_reward"] for i in members],
            rejected_scores=[records[i]["rejected_reward"] for i in members],
            **options,
        )

    def plots(self, items: list, records: list[dict], output_dir: Path) -> tuple[dict, dict]:
        chosen = np.array([record["chosen_reward"] for record in records])
        rejected = np.array([record["rejected_reward"] for record in records])
        if not self.objective.scalar:
            logits = self.objective.preference_logit(torch.from_numpy(chosen), torch.from_numpy(rejected)).numpy()
            files = self.histogram({"pairs": logits}, output_dir, "s(chosen, rejected)", "GPM preference score of each pair")
        else:
            files = self.histogram({"chosen": chosen, "rejected": rejected}, output_dir, "reward", "Rewards of chosen and rejected images")
        ones, zeros = np.ones(len(records)), np.zeros(len(records))
        if not self.objective.pairwise:  # what a CE model predicts: P(image is the good one) = sigmoid(reward)
            probabilities = expit(np.concatenate([chosen, rejected]))
            xlabel, title = "sigmoid(reward) = P(preferred)", "Reliability of P(preferred), chosen = 1, rejected = 0"
        else:  # each pair seen both ways round, so that the outcomes are not all 1
            p_chosen = np.array([record["p_chosen"] for record in records])
            probabilities = np.concatenate([p_chosen, 1 - p_chosen])
            xlabel, title = "P(first image preferred), each pair taken both ways", "Reliability of P(chosen > rejected)"
        calibration, reliability_files = self.reliability(probabilities, np.concatenate([ones, zeros]), output_dir, xlabel, title)
        return calibration, {**files, **reliability_files}


class RatedTask(_Task):
    """Images with human ratings (TIFA160): correlations and tie-calibrated pairwise accuracy over all items."""

    def results(self, items: list, records: list[dict]) -> dict:
        rewards = [record["reward"] for record in records]
        ratings = [item.target for item in items]
        correlations = load_metric("rank_correlation").compute(predictions=rewards, references=ratings)
        pairwise = load_metric("tie_calibrated_accuracy").compute(predictions=rewards, references=ratings)
        return {
            "overall": {
                "num_items": len(items),
                **correlations,
                "tie_calibrated_accuracy": pairwise["accuracy"],
                "tie_threshold": pairwise["threshold"],
                "accuracy_no_calibration": pairwise["accuracy_no_calibration"],
                "num_pairs": pairwise["num_pairs"],
            }
        }

    def plots(self, items: list, records: list[dict], output_dir: Path) -> tuple[dict | None, dict]:
        rewards = np.array([record["reward"] for record in records])
        ratings = np.array([item.target for item in items])
        levels = np.rint(ratings)
        groups = {f"rating {level:g}": rewards[levels == level] for level in np.unique(levels)}
        files = self.histogram(groups, output_dir, "reward", "Rewards by human rating (rounded)")
        if not (self.objective.pairwise and self.objective.scalar):  # only a BT reward's difference is a preference
            return None, files
        first, second = np.triu_indices(len(items), k=1)
        decided = ratings[first] != ratings[second]
        first, second = first[decided], second[decided]
        probabilities = expit((rewards[first] - rewards[second]) / self.tau)
        outcomes = (ratings[first] > ratings[second]).astype(np.float64)
        xlabel, title = "P(image i preferred over image j)", "Reliability of BT preferences against human ratings"
        calibration, reliability_files = self.reliability(probabilities, outcomes, output_dir, xlabel, title)
        return calibration, {**files, **reliability_files}


class LabelledTask(_Task):
    """Images with 0/1 labels (UnsafeBench, SMID): binary classification from P(label=1) = sigmoid(reward)."""

    def results(self, items: list, records: list[dict]) -> dict:
        labels = [int(item.target) for item in items]
        # The metric wants scores of the positive class: the logit of P(label 0) is -reward.
        sign = 1 if self.protocol.pos_label == 1 else -1
        metrics = load_metric("binary_classification").compute(
            scores=[sign * record["reward"] for record in records],
            references=labels,
            scores_are_logits=True,
            threshold=self.protocol.threshold,
            pos_label=self.protocol.pos_label,
        )
        return {"overall": {"num_items": len(items), "num_positive": labels.count(self.protocol.pos_label), **metrics}}

    def plots(self, items: list, records: list[dict], output_dir: Path) -> tuple[dict, dict]:
        rewards = np.array([record["reward"] for record in records])
        labels = np.array([item.target for item in items])
        groups = {f"label {label:g}": rewards[labels == label] for label in (1, 0) if (labels == label).any()}
        files = self.histogram(groups, output_dir, "reward", "Rewards by label")
        xlabel, title = "sigmoid(reward) = P(label 1)", "Reliability of P(label 1)"
        calibration, reliability_files = self.reliability(expit(rewards), labels, output_dir, xlabel, title)
        return calibration, {**files, **reliability_files}


TASKS = {PAIRS: PairTask, RATED: RatedTask, LABELLED: LabelledTask}
