"""`llava-reward score` and `llava-reward compare`: rewards and preferences from the command line.

Both read images given on the command line, or rows of a JSON / JSON-lines file in the published LLaVA-Reward
formats, and write one JSON line per image or row (stdout, or `--output`):

- pairwise rows `{"prompt": str or [prompt_chosen, prompt_rejected], "chosen_path", "reject_path", ...}` give
  `chosen_reward`, `reject_reward` and `p_chosen` = P(chosen preferred over rejected) (BT and GPM models), or
  `chosen_probability` / `reject_probability` = sigmoid(reward) for a CE model;
- unpaired rows `{"prompt", "path", "label"}` give `reward` (and `probability` for a CE model).

Every output line repeats the input row and adds `row`, its index counted from 0 (the element of a JSON list, or the
non-blank line of a JSON-lines file: the `row` of `trainers.data` too). A bad row stops the run with a message naming
it (exit code 1); with `--skip-bad` it is skipped and reported at the end. Image paths in a file resolve as in
`trainers.data`: against `--image-root` (default: the file's folder), as written, else with leading folders dropped
one at a time (`data/sample_test/sample_img/x.jpg` is found as `sample_img/x.jpg`), since the published files name
paths from the root of the authors' repository.

Example:
    >>> from modeling_llava_reward.commands import build_parser
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

from .errors import UserInputError


DTYPES = ("float32", "float16", "bfloat16")

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
        "  llava-reward score --model my-reward --input pairs.json --output rewards.jsonl\n",
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
    score.set_defaults(func=functools.partial(run, parser=score))

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
    parser.add_argument("--batch-size", type=_positive_int, default=8, metavar="N", help="images per forward (8)")
    parser.add_argument("--device", help="where to run, e.g. cpu, cuda, cuda:1, mps (default: cpu)")
    parser.add_argument("--dtype", choices=DTYPES, help="cast the model to this dtype (default: as saved)")
    parser.add_argument("--skip-bad", action="store_true", help="with --input: skip bad rows, report them at the end")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it is off when not a terminal)")


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_usage(args, parser)
    # Rows are read and their images found before the model loads: a malformed file fails in a second.
    file_run = FileRun(args, read_rows(Path(args.input), args.image_root)) if args.input else None
    scorer = _load_scorer(args)
    if args.command == "compare" and scorer.objective == "ce":
        raise UserInputError(
            "compare needs a model with a pairwise objective (bt or gpm); this one is 'ce', which scores each "
            "image on its own: use `llava-reward score`."
        )
    with _open_output(args.output) as output:
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


def _load_scorer(args: argparse.Namespace):
    import torch
    from huggingface_hub.errors import HFValidationError

    from modeling_llava_reward import LlavaRewardScorer

    try:
        device = torch.device(args.device) if args.device else None
    except RuntimeError as error:
        raise UserInputError(f"--device {args.device}: {error}") from None
    if args.model is None:  # the default model (score and compare only: evaluate requires --model)
        from modeling_llava_reward.default_model import DefaultModelError
        from modeling_llava_reward.default_model import find_default_model

        try:
            args.model = str(find_default_model())
        except DefaultModelError as error:
            raise UserInputError(f"no --model given and {error}") from None
    try:
        return LlavaRewardScorer.from_pretrained(
            args.model, subfolder=args.subfolder, device=device, dtype=args.dtype, progress=_progress(args)
        )
    except HFValidationError:
        raise UserInputError(f"--model {args.model}: no such folder (nor a valid Hub repo id).") from None
    except OSError as error:  # not a model folder, or a Hub repo that is neither reachable nor in the offline cache
        raise UserInputError(f"--model {args.model}: cannot load a LLaVA-Reward model: {error}") from None


@contextlib.contextmanager
def _open_output(path: str | None):
    """stdout, or a file created for writing (its folder must exist)."""
    if path is None:
        yield sys.stdout
        return
    try:
        file = open(path, "w", encoding="utf-8")
    except OSError as error:
        raise UserInputError(f"--output {path}: cannot write it ({error.strerror}).") from None
    with file:
        yield file


def _progress(args: argparse.Namespace) -> bool | None:
    """False when asked for no progress bar; None lets the bar decide (shown on a terminal only)."""
    return False if args.no_progress else None


def _score_images(scorer, args: argparse.Namespace, output) -> int:
    """Images named on the command line: one line per image (`score`) or one line for the pair (`compare`)."""
    from modeling_llava_reward.image_inputs import InputError

    prompts = args.prompt if args.command == "score" else [args.prompt]
    try:
        rewards = scorer.score(prompts, args.images, batch_size=args.batch_size, progress=_progress(args))
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
    if scorer.objective == "ce":
        results[f"{prefix}probability"] = reward.sigmoid().item()
    return results


def _probability(scorer, first, second) -> float:
    from modeling_llava_reward.preference import preference_probability

    return preference_probability(first, second, scorer.objective, scorer.model.config.tau).item()


def _write(output, record: dict) -> None:
    # ASCII-escaped JSON: a row's undecodable bytes (kept as lone surrogates) still give valid UTF-8 output.
    output.write(json.dumps(record) + "\n")
    output.flush()


# ---------------------------------------------------------------- input files


@dataclass
class Row:
    """One scorable row of an input file."""

    number: int  # from 0: the element of a JSON list, or the non-blank line of a JSON-lines file
    record: dict  # the row as read, repeated in its output line
    prompts: list  # one per image
    paths: list[Path]  # [chosen, rejected] for a pairwise row, [path] for an unpaired one

    @property
    def pairwise(self) -> bool:
        return len(self.paths) == 2


@dataclass
class BadRow:
    number: int
    problem: str

    def __str__(self) -> str:
        return f"row {self.number}: {self.problem}"


def read_rows(file: Path, image_root: str | None = None) -> list[Row | BadRow]:
    """The rows of a published-format JSON list or JSON-lines file, with their image files found.

    A file that cannot be read at all raises `UserInputError`; a row that is malformed, or whose image is not found,
    becomes a `BadRow` saying why.
    """
    if not file.is_file():
        raise UserInputError(f"--input {file}: file not found.")
    root = Path(image_root) if image_root else file.parent
    if not root.is_dir():
        raise UserInputError(f"--image-root {root}: no such folder.")
    # Undecodable bytes become lone surrogates: the row holding them is then rejected by number, not the whole file.
    text = file.read_bytes().decode("utf-8", errors="surrogateescape")
    rows = []
    for number, parsed in _parse(file, text):
        try:
            rows.append(_row(number, parsed, root))
        except ValueError as error:
            rows.append(BadRow(number, str(error)))
    return rows


def _parse(file: Path, text: str) -> list[tuple[int, object]]:
    """(row number, parsed JSON or the exception) for each row."""
    if file.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(line for line in text.splitlines() if line.strip()):
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                rows.append((number, ValueError(f"not valid JSON ({error})")))
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        hint = "a JSON-lines file must end in .jsonl"
        raise UserInputError(f"--input {file}: not valid JSON ({error}); {hint}.") from None
    if not isinstance(data, list):
        raise UserInputError(f"--input {file}: expected a JSON list of rows, got a JSON {type(data).__name__}.")
    return list(enumerate(data))


def _row(number: int, parsed, root: Path) -> Row:
    if isinstance(parsed, ValueError):
        raise parsed
    if not isinstance(parsed, dict):
        raise ValueError(f"expected a JSON object, got {type(parsed).__name__}.")
    if "chosen_path" in parsed or "reject_path" in parsed:
        keys, prompts = ("chosen_path", "reject_path"), _pairwise_prompts(parsed)
    elif "path" in parsed:
        keys, prompts = ("path",), [_required(parsed, "prompt")]
    else:
        raise ValueError(
            f"expected a pairwise row (prompt, chosen_path, reject_path) or an unpaired row (prompt, path); got keys "
            f"{sorted(parsed)}."
        )
    from trainers.data import _resolve  # the training data's rule, shared so that both find the same files

    return Row(number, parsed, prompts, [Path(_resolve(_required(parsed, key), root, repr(key))) for key in keys])


def _required(record: dict, key: str):
    if key not in record:
        raise ValueError(f"missing {key!r}.")
    return record[key]


def _pairwise_prompts(record: dict) -> list:
    prompt = _required(record, "prompt")
    if isinstance(prompt, list):
        if len(prompt) != 2:
            raise ValueError(f"'prompt' is a list of {len(prompt)}; expected [prompt_chosen, prompt_rejected].")
        return prompt
    return [prompt, prompt]


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
        from tqdm.auto import tqdm

        size = self.args.batch_size
        batches = [self.rows[start : start + size] for start in range(0, len(self.rows), size)]
        # tqdm's disable=None: a bar on a terminal only.
        for batch in tqdm(batches, desc="scoring", unit="batch", disable=True if self.args.no_progress else None):
            for row, rewards in self.score_rows(scorer, batch):
                _write(output, {"row": row.number, **row.record, **self.results(scorer, row, rewards)})
        return self.summarize()

    def score_rows(self, scorer, rows: list[Row]) -> list:
        """(row, rewards) of the scorable rows; a failing batch is rescored row by row to find the bad row."""
        from modeling_llava_reward.image_inputs import InputError

        prepared = []
        for row in rows:
            try:
                prepared.append((row, *_prepare(scorer.processor, row)))
            except InputError as error:
                self.reject(BadRow(row.number, str(error)))
        if not prepared:
            return []
        prompts = [prompt for _, row_prompts, _ in prepared for prompt in row_prompts]
        images = [image for _, _, row_images in prepared for image in row_images]
        try:
            rewards = scorer.score(prompts, images, batch_size=self.args.batch_size, progress=False)
        except InputError as error:  # the image processor refused an image (e.g. Qwen-VL: aspect ratio over 200)
            if len(prepared) == 1:
                self.reject(BadRow(prepared[0][0].number, str(error)))
                return []
            return [scored for row, _, _ in prepared for scored in self.score_rows(scorer, [row])]
        return list(zip([row for row, _, _ in prepared], rewards.split([len(row.paths) for row, _, _ in prepared])))

    def results(self, scorer, row: Row, rewards) -> dict:
        if not row.pairwise:
            return _rewards(scorer, rewards[0], "")
        results = {**_rewards(scorer, rewards[0], "chosen_"), **_rewards(scorer, rewards[1], "reject_")}
        if scorer.objective != "ce":
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
        for bad in sorted(self.skipped, key=lambda bad: bad.number):
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
    from modeling_llava_reward.image_inputs import load_image

    images = [load_image(path, index) for index, path in enumerate(row.paths)]
    prompts, images = processor.pair(row.prompts, images)
    name = f"row {row.number}'s prompt"
    truncated = {prompt: processor.truncate_prompt(prompt, name=name) for prompt in dict.fromkeys(prompts)}
    return [truncated[prompt] for prompt in prompts], images
