"""`llava-reward score` and `llava-reward compare`: rewards and preferences from the command line.

Both read images given on the command line, or the rows of a data source (any format training reads:
`llava_reward.data_formats`; JSON, JSON-lines, parquet, a saved dataset, an MJ-Bench folder), and write one JSON line
per image or row (stdout, or `--output`):

- pairwise rows `{"prompt": str or [prompt_chosen, prompt_rejected], "chosen_path", "reject_path", ...}` give
  `chosen_reward`, `reject_reward` and `p_chosen` = P(chosen preferred over rejected) (BT and GPM models), or
  `chosen_probability` / `reject_probability` = sigmoid(reward) for a CE model;
- unpaired rows `{"prompt", "path", "label"}` give `reward` (and `probability` for a CE model).

Every output line repeats the input row and adds `row`, its index counted from 0 (the element of a JSON list, or the
non-blank line of a JSON-lines file: the `row` training names too). A bad row stops the run with a message naming
it (exit code 1); with `--skip-bad` it is skipped and reported at the end. Image paths resolve by the rule of
`llava_reward.data_formats`: against `--image-root` (default: the file's folder), exactly as written, except for the
published files' repository prefix (`data/sample_test/sample_img/x.jpg` is found as `sample_img/x.jpg` when there is
no `data/` folder but a `sample_img/` one).

Example:
    >>> from llava_reward.cli import build_parser
    >>> args = build_parser().parse_args(["compare", "--model", "my-reward", "--prompt", "a cat", "a.png", "b.png"])
    >>> args.command, args.images
    ('compare', ['a.png', 'b.png'])
"""

import argparse
import contextlib
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from llava_reward.data_formats import BadRow
from llava_reward.files import replacing
from llava_reward.objectives import get_objective
from llava_reward.objectives import names_with

from .errors import UserInputError
from .options import DTYPES
from .options import add_progress_argument
from .options import checked_device
from .options import load_scorer
from .options import positive_int
from .options import progress_option


EPILOG = """\
Input files: a JSON list of rows, or a .jsonl file with one row per line; pairwise rows
  {"prompt": str or [prompt_chosen, prompt_rejected], "chosen_path": ..., "reject_path": ...}
  and unpaired rows {"prompt": ..., "path": ..., "label": 0|1}. Relative image paths resolve against
  --image-root (default: the file's folder), as written or with leading folders dropped until found.
Output: one JSON line per image or row (the row, its index "row" counted from 0, and the rewards).
Exit codes: 0 success, 1 bad input (message on stderr naming the image or row), 2 usage error.
"""


def register(subparsers) -> None:
    score = subparsers.add_parser(
        "score",
        help="reward of each image for a prompt, or of each row of a JSON/JSONL file",
        description="Score images with a LLaVA-Reward model: one JSON line per image (or per file row).",
        epilog=EPILOG + "\nExamples:\n  llava-reward score --model my-reward --prompt 'a red cat' cat1.png cat2.png\n"
        "  llava-reward score --model my-reward --input pairs.json --output rewards.jsonl\n"
        "  llava-reward score --engine ray --num-workers 4 --model my-reward --input pairs.json --output scores/\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="the prompt (give it once for all images, or once per image, in order); may be empty",
    )
    score.add_argument("images", nargs="*", metavar="IMAGE", help="image files to score")
    _add_shared_arguments(score)
    _add_ray_arguments(score)
    score.set_defaults(func=functools.partial(run, parser=score), resume_hint=resume_hint)

    compare = subparsers.add_parser(
        "compare",
        help="P(image A preferred over image B) for a prompt, or for each pairwise row of a file",
        description="Compare two images with a LLaVA-Reward model (BT or GPM): P(A preferred over B | prompt).",
        epilog=EPILOG + "\nExamples:\n  llava-reward compare --model my-reward --prompt 'a red cat' a.png b.png\n"
        "  llava-reward compare --model my-reward --input pairs.json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("--prompt", metavar="TEXT", help="the prompt both images were generated for; may be empty")
    compare.add_argument("images", nargs="*", metavar="IMAGE", help="IMAGE_A IMAGE_B")
    _add_shared_arguments(compare)
    compare.set_defaults(func=functools.partial(run, parser=compare))


def _add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", metavar="PATH", help="a saved reward model: folder or Hub repo id (default: `llava-reward demo`'s)"
    )
    parser.add_argument("--subfolder", help="the model's subfolder in PATH (e.g. one perspective of a repo)")
    parser.add_argument("--input", metavar="FILE", help="a .json (list of rows) or .jsonl file instead of IMAGEs")
    parser.add_argument("--image-root", metavar="DIR", help="folder the file's image paths are relative to")
    parser.add_argument("--output", metavar="FILE", help="write the JSON lines here instead of stdout")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="images per forward (8)")
    parser.add_argument("--device", help="where to run, e.g. cpu, cuda, cuda:1, mps (default: cpu)")
    parser.add_argument("--dtype", choices=DTYPES, help="cast the model to this dtype (default: as saved)")
    parser.add_argument("--skip-bad", action="store_true", help="with --input: skip bad rows, report them at the end")
    add_progress_argument(parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if getattr(args, "engine", "local") == "ray":
        return run_ray(args, parser)
    if getattr(args, "perspectives", None):
        parser.error("--perspectives needs --engine ray (the local engine scores one perspective: --subfolder)")
    _check_usage(args, parser)
    # Rows are read and their images found before the model loads: a malformed file fails in a second.
    file_run = FileRun(args, read_rows(args.input, args.image_root)) if args.input else None
    if args.output is not None:
        _check_output_is_no_input(args.output, _input_files(args, file_run))
    checked_device(args.device)
    with _open_output(args.output, args.command) as output:  # before the model loads: an unwritable path fails fast
        scorer = load_scorer(args)
        if args.command == "compare" and not get_objective(scorer.objective).pairwise:
            raise UserInputError(
                f"compare needs a model with a pairwise objective ({names_with('pairwise')}); this one is "
                f"{scorer.objective!r}, which scores each image on its own: use `llava-reward score`."
            )
        if file_run is None:
            return _score_images(scorer, args, output)
        return file_run.score(scorer, output)


def _check_usage(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage errors exit with code 2, like argparse's own."""
    if args.input and (args.images or args.prompt is not None):
        parser.error("give either --input FILE or --prompt TEXT with IMAGEs, not both (a file's rows hold prompts)")
    if not args.input:
        if args.prompt is None or not args.images:
            parser.error("give --prompt TEXT and IMAGE files, or --input FILE")
        if args.command == "compare" and len(args.images) != 2:
            parser.error(f"compare takes exactly two images, IMAGE_A IMAGE_B; got {len(args.images)}")
        if args.skip_bad or args.image_root:
            parser.error("--skip-bad and --image-root apply to --input files only")


def _input_files(args: argparse.Namespace, file_run: "FileRun | None") -> list[str]:
    """Every file the run reads: the --input file, or the IMAGEs; and the images its rows name."""
    if file_run is None:
        return list(args.images)
    return [args.input] + [image for row in file_run.rows for image in row.images if isinstance(image, str)]


def _check_output_is_no_input(output: str, inputs: list[str]) -> None:
    """The output replaces its file when the run succeeds: it must not be one the run reads."""
    if Path(output).is_dir():
        raise UserInputError(f"--output {output}: is a folder; name the file to write.")
    if not Path(output).exists():
        return
    for path in inputs:
        if Path(path).exists() and Path(path).samefile(output):
            raise UserInputError(f"--output {output} is also an input ({path}): writing it would destroy it.")


@contextlib.contextmanager
def _open_output(path: str | None, command: str):
    """stdout, or a new file that replaces `path` only when the run succeeds (its folder must exist).

    A run that fails or is interrupted leaves `path` as it was and says where the lines it wrote are.
    """
    if path is None:
        yield sys.stdout
        return
    existed, file = Path(path).exists(), None
    try:
        with replacing(path, keep_partial=True) as file:
            yield file
    except BaseException as error:
        if file is None and isinstance(error, OSError):
            raise UserInputError(f"--output {path}: cannot write it ({error.strerror}).") from None
        partial = Path(file.name) if file is not None else None
        if partial is not None and (existed or partial.exists()):
            where = f"the lines written before it stopped are in {partial}" if partial.exists() else "no line was written"
            print(f"llava-reward {command}: {path} was {'left as it was' if existed else 'not written'}; {where}.",
                  file=sys.stderr)
        raise


def _score_images(scorer, args: argparse.Namespace, output) -> int:
    """Images named on the command line: one line per image (`score`) or one line for the pair (`compare`)."""
    from llava_reward.image_inputs import InputError

    prompts = args.prompt if args.command == "score" else [args.prompt]
    try:
        rewards = scorer.score(prompts, args.images, batch_size=args.batch_size, progress=progress_option(args))
    except InputError as error:
        raise UserInputError(str(error)) from None
    if args.command == "compare":
        first, second = args.images
        results = {"reward_a": rewards[0].tolist(), "reward_b": rewards[1].tolist()}
        results["p_a"] = _probability(scorer, rewards[0], rewards[1])
        _write(output, {"prompt": args.prompt, "image_a": first, "image_b": second, **results})
        return 0
    prompts = prompts * len(args.images) if len(prompts) == 1 else prompts
    for prompt, image, reward in zip(prompts, args.images, rewards):
        _write(output, {"prompt": prompt, "image": image, **_rewards(scorer, reward, "")})
    return 0


def _rewards(scorer, reward, prefix: str) -> dict:
    """`{prefix}reward` (a number, or a list for GPM embeddings), and `{prefix}probability` for a CE model."""
    results = {f"{prefix}reward": reward.tolist()}
    if not get_objective(scorer.objective).pairwise:  # a CE logit: P(label 1) = sigmoid(reward)
        results[f"{prefix}probability"] = reward.sigmoid().item()
    return results


def _probability(scorer, first, second) -> float:
    return get_objective(scorer.objective).preference_probability(first, second, scorer.tau).item()


def _write(output, record: dict) -> None:
    # ASCII-escaped JSON: a row's undecodable bytes (kept as lone surrogates) still give valid UTF-8 output.
    output.write(json.dumps(record, default=_embedded_as_null) + "\n")
    output.flush()


def _embedded_as_null(value):
    # A row's embedded image (bytes, as parquet and datasets hold them) is not repeated in its line, as in --engine ray.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# ---------------------------------------------------------------- input files


@dataclass
class Row:
    """One scorable row of an input file."""

    number: int | str  # from 0: the element of a JSON list, the non-blank line of a JSON-lines file, a dataset row
    record: dict  # the row as read (JSON files), repeated in its output line
    prompts: list  # one per image
    images: list  # [chosen, rejected] for a pairwise row, [image] for an unpaired one

    @property
    def pairwise(self) -> bool:
        return len(self.images) == 2


def read_rows(source, image_root: str | None = None) -> list[Row | BadRow]:
    """The rows of `source` (any format `llava_reward.data_formats.read_rows` reads), in order, with their image
    files found. A source that cannot be read at all raises `UserInputError`; a row that is malformed, or whose image
    is not found, becomes a `BadRow` saying why."""
    from llava_reward.data_formats import read_rows as read_source
    from llava_reward.image_inputs import InputError
    from llava_reward.image_inputs import missing_path_problem

    if isinstance(source, (str, Path)) and Path(source).suffix and not Path(source).exists():
        raise UserInputError(f"--input {source}: {missing_path_problem(source, 'file not found')}.")
    if image_root is not None and not Path(image_root).is_dir():
        raise UserInputError(f"--image-root {image_root}: no such folder.")
    try:
        found = read_source(source, image_root=image_root)
    except InputError as error:
        raise UserInputError(f"--input {error}") from None
    rows = [_row(row, found.records.get(row["row"])) for row in found.rows]
    return sorted(rows + found.bad_rows, key=lambda row: _order(row.row if isinstance(row, BadRow) else row.number))


def _row(row: dict, record: dict | None) -> Row:
    if "chosen" in row:
        prompts, images = [row["prompt"], row.get("rejected_prompt") or row["prompt"]], [row["chosen"], row["rejected"]]
    else:
        prompts, images = [row["prompt"]], [row["image"]]
    record = record if record is not None else {key: value for key, value in row.items() if key in ("prompt", "label")}
    return Row(row["row"], record, prompts, images)


def _order(number) -> tuple:
    return (0, number, "") if isinstance(number, int) else (1, 0, str(number))


class FileRun:
    """Scores the rows of an input file batch by batch, writing each row's line as soon as it is scored.

    Rows that are bad as read (malformed, image not found, unpaired for `compare`) are refused on construction,
    before the model loads: the run stops at the first one unless `--skip-bad`.
    """

    def __init__(self, args: argparse.Namespace, rows: list[Row | BadRow]):
        self.args = args
        self.total = len(rows)
        self.skipped: list[BadRow] = []
        self.preferred: list[bool] = []  # per scored pairwise row: whether P(chosen > rejected) > 0.5
        if args.command == "compare":
            rows = [_pairwise_only(row) for row in rows]
        for bad in (row for row in rows if isinstance(row, BadRow)):
            self.reject(bad)
        self.rows = [row for row in rows if isinstance(row, Row)]

    def score(self, scorer, output) -> int:
        from llava_reward.progress import iterate

        size = self.args.batch_size
        batches = [self.rows[start : start + size] for start in range(0, len(self.rows), size)]
        for batch in iterate(batches, total=len(batches), desc="scoring", progress=progress_option(self.args)):
            for row, rewards in self.score_rows(scorer, batch):
                _write(output, {"row": row.number, **row.record, **self.results(scorer, row, rewards)})
        return self.summarize()

    def score_rows(self, scorer, rows: list[Row]) -> list:
        """(row, rewards) of the scorable rows; the others are rejected with the reason."""
        from llava_reward.image_inputs import InputError
        from llava_reward.scoring import score_rows

        prepared = []
        for row in rows:
            try:
                prepared.append((row, _prepare(scorer.processor, row)))
            except InputError as error:
                self.reject(BadRow(row.number, str(error)))
        results = score_rows(scorer, [inputs for _, inputs in prepared], batch_size=self.args.batch_size)
        scored = []
        for (row, _), rewards in zip(prepared, results):
            if isinstance(rewards, InputError):  # e.g. an image the image processor refuses (Qwen-VL: ratio > 200)
                self.reject(BadRow(row.number, str(rewards)))
            else:
                scored.append((row, rewards))
        return scored

    def results(self, scorer, row: Row, rewards) -> dict:
        if not row.pairwise:
            return _rewards(scorer, rewards[0], "")
        results = {**_rewards(scorer, rewards[0], "chosen_"), **_rewards(scorer, rewards[1], "reject_")}
        if get_objective(scorer.objective).pairwise:
            results["p_chosen"] = _probability(scorer, rewards[0], rewards[1])
            self.preferred.append(results["p_chosen"] > 0.5)
        return results

    def reject(self, bad: BadRow) -> None:
        if not self.args.skip_bad:
            raise UserInputError(f"{self.args.input}: {bad} (--skip-bad skips bad rows)")
        self.skipped.append(bad)

    def summarize(self) -> int:
        """The summary on stderr; exit code 1 when no row could be scored."""
        command = f"llava-reward {self.args.command}"
        for bad in sorted(self.skipped, key=lambda bad: _order(bad.row)):
            print(f"{command}: skipped {bad}", file=sys.stderr)
        scored = self.total - len(self.skipped)
        print(f"{command}: scored {scored} of {self.total} rows of {self.args.input}; skipped {len(self.skipped)}.",
              file=sys.stderr)
        if self.preferred:
            print(f"{command}: P(chosen > rejected) > 0.5 on {sum(self.preferred)} of {len(self.preferred)} pairwise "
                  "rows.", file=sys.stderr)
        if scored == 0:
            raise UserInputError(f"{self.args.input}: no row could be scored.")
        return 0


def _pairwise_only(row: Row | BadRow) -> Row | BadRow:
    if isinstance(row, Row) and not row.pairwise:
        return BadRow(row.number, "compare needs a pairwise row (prompt, chosen_path, reject_path).")
    return row


def _prepare(processor, row: Row) -> tuple[list[str], list]:
    """The row's checked prompts (truncated, with a warning naming the row) and its loaded images."""
    from llava_reward.image_inputs import load_image

    images = [load_image(path, index) for index, path in enumerate(row.images)]
    prompts, images = processor.pair(row.prompts, images)
    name = f"row {row.number}'s prompt"
    truncated = {prompt: processor.truncate_prompt(prompt, name=name) for prompt in dict.fromkeys(prompts)}
    return [truncated[prompt] for prompt in prompts], images


# ---------------------------------------------------------------- --engine ray


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    ray = parser.add_argument_group(
        "--engine ray", "score --input with Ray Data actors (the `serve` extra), writing the same JSON lines as "
        "resumable shards into the --output folder; --input may also be a folder of images (with one --prompt, or "
        "caption .txt files beside them)"
    )
    ray.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default) or ray")
    ray.add_argument("--num-workers", type=positive_int, default=1, metavar="K", help="scorer actors (1)")
    ray.add_argument("--num-gpus", type=float, default=0.0, metavar="G", help="GPUs per actor (0)")
    ray.add_argument("--shard-size", type=positive_int, default=1024, metavar="N", help="rows per shard (1024)")
    ray.add_argument("--perspectives", metavar="A,B", help="score these perspective subfolders of --model")
    ray.add_argument("--ray-address", help="join this Ray cluster ('auto': the running one); default: a local Ray")


def resume_hint(args: argparse.Namespace) -> str | None:
    """What to do after Ctrl-C: `--engine ray` resumes from the shards already written; the local engine restarts."""
    if getattr(args, "engine", "local") != "ray":
        return None
    return f"run the same command again to score only the shards not yet in {args.output}"


def run_ray(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`llava-reward score --engine ray --num-workers K --input SOURCE --output DIR`."""
    from llava_reward.image_inputs import InputError
    from llava_reward.serving import score_dataset

    from .serve import check_model

    if args.images or not args.input or not args.output:
        parser.error("--engine ray scores --input SOURCE (data file or folder, or image folder) into --output DIR")
    if args.prompt is not None and len(args.prompt) > 1:
        parser.error("--engine ray takes one --prompt (for every image of a folder); data rows hold their own")
    if args.perspectives and args.subfolder:
        parser.error("give --subfolder (one perspective) or --perspectives (several), not both")
    if args.image_root is not None and not Path(args.image_root).is_dir():
        raise UserInputError(f"--image-root {args.image_root}: no such folder.")
    perspectives = [name.strip() for name in (args.perspectives or "").split(",") if name.strip()] or None
    model = args.model if args.model is not None else "default"
    device = args.device  # a cluster's own
    if args.ray_address is None:  # a local Ray: the actors run on this machine, and read the model here
        device = checked_device(args.device)
        check_model(model, args.subfolder, perspectives)
    try:
        summary = score_dataset(
            model,
            args.input,
            args.output,
            prompt=args.prompt[0] if args.prompt else None,
            image_root=args.image_root,
            perspectives=perspectives,
            subfolder=args.subfolder,
            device=None if device is None else str(device),
            dtype=args.dtype,
            num_workers=args.num_workers,
            num_gpus=args.num_gpus,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            skip_bad=args.skip_bad,
            ray_address=args.ray_address,
            progress=progress_option(args),
        )
    except InputError as error:
        raise UserInputError(str(error)) from None
    for bad in summary.bad_rows:
        print(f"llava-reward score: skipped {bad}", file=sys.stderr)
    print(f"llava-reward score: scored {summary.num_rows - len(summary.bad_rows)} of {summary.num_rows} rows of "
          f"{args.input} into {len(summary.files)} shards in {args.output} ({len(summary.written)} written now, "
          f"{len(summary.skipped)} done before); skipped {len(summary.bad_rows)}.", file=sys.stderr)
    return 0
