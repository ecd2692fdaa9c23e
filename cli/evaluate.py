"""`llava-reward evaluate`: a reward model on a benchmark, with metrics, a report, per-row scores and plots.

Writes into `--output DIR`: `metrics.json` (the model, data, row counts, protocol parameters, package version and
every metric), `report.md` (tables a person reads, beside the published numbers of the same benchmark),
`scores.jsonl` (one line per scored row) and `reward_histogram.png` / `reliability.png`. An interrupted run started
again with the same arguments continues from `scores.jsonl`. The work is done by `evaluation.Evaluation`.

Example:
    >>> from llava_reward.cli import build_parser
    >>> args = build_parser().parse_args(
    ...     ["evaluate", "--model", "my-reward", "--benchmark", "mjbench", "--data", "mjbench/quality", "--output", "out"]
    ... )
    >>> args.benchmark, args.tie_threshold
    ('mjbench', 0.0)
"""

import argparse
import functools
import sys

from .errors import UserInputError
from .options import DTYPES
from .options import add_progress_argument
from .options import checked_device
from .options import load_scorer
from .options import positive_int
from .options import progress_option


BENCHMARKS = ("mjbench", "tifa160", "unpaired", "pairwise")  # evaluation.BENCHMARKS, without importing it here
EPILOG = """\
Benchmarks and their --data:
  mjbench   MJ-Bench captions JSON {caption, image_0, image_1, label_0}: one subset folder (with its examples_*
            image folder), or a folder of subset folders; accuracy w/ and w/o ties per subset and overall.
  tifa160   TIFA human-annotation JSON {text_id, image_path, text, human_avg} (a list, or an object keyed by item
            id): Pearson, Spearman, Kendall tau-b/c and tie-calibrated pairwise accuracy over all items.
  unpaired  published unpaired JSON {prompt, path, label} (UnsafeBench, SMID): accuracy, precision, recall, F1,
            AUROC from P(label=1) = sigmoid(reward).
  pairwise  published pairwise JSON {prompt, chosen_path, reject_path}: accuracy w/ and w/o ties.
Exit codes: 0 success, 1 bad input (a message naming the file and row), 2 usage error.

Example:
  llava-reward evaluate --model my-reward --benchmark mjbench --data MJ-Bench/quality --output eval/quality
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a reward model on a benchmark: metrics.json, report.md, scores.jsonl, plots",
        description="Evaluate a LLaVA-Reward model on MJ-Bench, TIFA160, unpaired (safety) or pairwise data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="PATH", help="a saved reward model: folder or Hub repo id")
    parser.add_argument("--subfolder", help="the model's subfolder in PATH (e.g. one perspective of a repo)")
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--data", required=True, metavar="PATH", help="the benchmark's JSON file or folder")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the outputs (created if needed)")
    parser.add_argument("--image-root", metavar="DIR", help="folder relative image paths start from")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="images per forward (8)")
    parser.add_argument("--device", help="where to run, e.g. cpu, cuda, cuda:1, mps (default: cpu)")
    parser.add_argument("--dtype", choices=DTYPES, help="cast the model to this dtype (default: as saved)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="only the first N rows of each data file")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad rows (listed in metrics.json and report.md)")
    parser.add_argument("--overwrite", action="store_true", help="discard the scores in DIR instead of resuming")
    add_progress_argument(parser)
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument(
        "--tie-threshold", type=float, default=0.0, metavar="T",
        help="pairs: a tie when |reward margin| <= T (GPM: |P - 0.5| <= T); default 0, exact ties only",
    )
    protocol.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="pairs: bootstrap replicates (1000)")
    protocol.add_argument(
        "--pos-label", type=int, choices=(0, 1), default=1,
        help="unpaired: the positive class of precision, recall and F1 (1; UnsafeBench: 1 = safe, 0 = unsafe)",
    )
    protocol.add_argument("--threshold", type=float, default=0.5, help="unpaired: P(positive class) >= this predicts it (0.5)")
    protocol.add_argument(
        "--reference-benchmark", metavar="NAME",
        help="published numbers to print beside ours (default: the benchmark; e.g. smid or unsafediff for unpaired)",
    )
    parser.set_defaults(func=functools.partial(run, parser=parser), resume_hint=resume_hint)


def resume_hint(args: argparse.Namespace) -> str:
    """What an interrupted run says (Ctrl-C): the rows it scored are kept in DIR/scores.jsonl."""
    return "rerun the same command to resume (the rows scored so far are kept in scores.jsonl)"


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from llava_reward.evaluation import BadRowsError
    from llava_reward.evaluation import Evaluation
    from llava_reward.evaluation import Protocol
    from llava_reward.evaluation.processes import Processes
    from llava_reward.image_inputs import InputError

    if args.tie_threshold < 0 or args.bootstrap < 0 or not 0 <= args.threshold <= 1:
        parser.error("--tie-threshold and --bootstrap must be >= 0, and --threshold in [0, 1]")
    protocol = Protocol(args.tie_threshold, args.bootstrap, threshold=args.threshold, pos_label=args.pos_label)
    hint = " (--skip-bad skips bad rows)"
    try:
        # The data is read, and its images found, before the model loads: bad data fails in a second.
        evaluation = Evaluation(
            args.benchmark,
            args.data,
            args.output,
            image_root=args.image_root,
            limit=args.limit,
            skip_bad=args.skip_bad,
            protocol=protocol,
            reference_benchmark=args.reference_benchmark,
        )
        processes = Processes()  # one, or those of `accelerate launch` / `torchrun`: they share the rows
        if args.device is None and processes.num_processes > 1:
            args.device = str(processes.device)  # each process on its own GPU under a GPU launch
        checked_device(args.device)
        scorer = load_scorer(args)
        metrics = evaluation.run(
            scorer,
            model=args.model,
            model_options={"subfolder": args.subfolder, "dtype": args.dtype},
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            progress=progress_option(args),
        )
    except BadRowsError as error:
        raise UserInputError(f"{error}{hint}") from None
    except InputError as error:
        raise UserInputError(str(error)) from None
    if metrics is None:  # a process of a launch other than the main one, which reports
        return 0
    if evaluation.num_resumed:
        print(f"llava-reward evaluate: resumed: {evaluation.num_resumed} rows were already scored in {args.output}", file=sys.stderr)
    _summarize(metrics, args.output)
    return 0


def _summarize(metrics: dict, output: str) -> None:
    """The headline numbers and where the outputs are, on stderr (stdout stays free for pipes)."""
    from llava_reward.evaluation.report import contamination_warning

    overall = metrics["results"]["overall"]
    headline = {
        "pairs": ("accuracy_with_ties", "accuracy_without_ties"),
        "rated": ("pearson", "kendall_tau_b", "tie_calibrated_accuracy"),
        "labelled": ("f1", "auroc"),
    }[metrics["kind"]]
    numbers = ", ".join(f"{name} {overall[name]:.4f}" if overall[name] is not None else f"{name} n/a" for name in headline)
    command = "llava-reward evaluate"
    warning = contamination_warning(metrics)
    if warning:
        print(f"{command}: warning: {warning.replace('**', '')}", file=sys.stderr)
    for bad in metrics["skipped_rows"]:
        print(f"{command}: skipped row {bad['id']}: {bad['problem']}", file=sys.stderr)
    print(f"{command}: {metrics['benchmark']}, {metrics['num_rows']} rows: {numbers}", file=sys.stderr)
    print(f"{command}: wrote metrics.json, report.md, scores.jsonl and plots to {output}", file=sys.stderr)
