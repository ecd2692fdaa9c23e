"""`llava-reward push`: a trained perspective to the Hub (or to a Hub-ready local folder), with its model card.

    llava-reward push outputs/fidelity --repo-id me/llava-reward-qwen --perspective fidelity
    llava-reward push outputs/fidelity --repo-id me/llava-reward-qwen --local-dir hub-ready/   # no network
    llava-reward push outputs/fidelity --repo-id me/llava-reward-qwen --dry-run                # what would go up

Example:
    >>> from llava_reward.cli import build_parser
    >>> args = build_parser().parse_args(["push", "out", "--repo-id", "me/rm", "--dry-run"])
    >>> args.command, args.repo_id, args.dry_run
    ('push', 'me/rm', True)
"""

import argparse
import sys
from pathlib import Path

from .errors import UserInputError


EPILOG = """\
Uploads into REPO_ID/PERSPECTIVE/ the files of the perspective (configs, safetensors weights, processor files),
a rendered model card (README.md) and metrics.json, in one commit; never checkpoints, optimizer states or pickles.
Files an earlier push left in that subfolder and the new one lacks are deleted in the same commit.

Examples:
  llava-reward push outputs/fidelity --repo-id me/llava-reward-qwen --perspective fidelity
  llava-reward push outputs/fidelity --repo-id me/llava-reward-qwen --local-dir hub-ready/
  llava-reward push outputs/fidelity --repo-id me/llava-reward-qwen --base-model Qwen/Qwen2.5-VL-7B-Instruct --dry-run
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a trained perspective (with its model card) to a Hub repo subfolder",
        description="Upload the perspective `llava-reward train` wrote to REPO_ID/PERSPECTIVE/ with its model card.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="the folder `llava-reward train` wrote")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub model repo (created if missing)")
    parser.add_argument(
        "--perspective", metavar="NAME", help="the subfolder (alignment, fidelity, safety, overall, ...); default: "
        "the perspective recorded in MODEL_DIR/config.json"
    )
    parser.add_argument("--revision", metavar="BRANCH", help="the branch to commit to (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--base-model", metavar="ORG/NAME", help="Hub id of the base VLM, if the bundle recorded a local path")
    parser.add_argument("--base-model-revision", metavar="REV", help="the base model's revision to record")
    parser.add_argument(
        "--metrics", action="append", metavar="FILE", help="evaluation results: the metrics.json of `llava-reward "
        "evaluate` or {benchmark: {metric: value}}; repeat for several runs; default MODEL_DIR/metrics.json"
    )
    parser.add_argument("--recipe", metavar="FILE", help="the training recipe (YAML) to describe in the card")
    parser.add_argument("--license", metavar="ID", help="license id for the card (e.g. the base model's: apache-2.0)")
    parser.add_argument("--commit-message", metavar="TEXT")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network")
    target.add_argument(
        "--local-dir", metavar="DIR", help="write the Hub layout (DIR/PERSPECTIVE/...) locally instead of uploading"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="with --local-dir: replace DIR/PERSPECTIVE even if it holds files an "
        "export does not write (without it, such a folder is refused)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from llava_reward.hub_cards.push import check_perspective_name
    from llava_reward.hub_cards.push import perspective_files
    from llava_reward.hub_cards.push import push_perspective
    from llava_reward.hub_cards.push import write_local

    perspective = args.perspective if args.perspective is not None else _recorded_perspective(args.model_dir)
    try:
        check_perspective_name(perspective)
    except ValueError as error:
        where = "--perspective" if args.perspective is not None else f"{args.model_dir}/config.json (pass --perspective NAME)"
        raise UserInputError(f"{error} It comes from {where}.") from None
    options = dict(
        revision=args.revision,
        base_model=args.base_model,
        base_model_revision=args.base_model_revision,
        metrics=args.metrics,
        recipe=args.recipe,
        license=args.license,
    )
    try:
        if args.dry_run or args.local_dir:
            files = perspective_files(args.model_dir, args.repo_id, perspective, **options)
            if args.local_dir:
                folder = write_local(files, Path(args.local_dir) / perspective, overwrite=args.overwrite)
                print(f"wrote {len(files)} files to {folder}")
            else:
                _print_plan(files, f"{args.repo_id}/{perspective}")
            return 0
        url = push_perspective(
            args.model_dir,
            args.repo_id,
            perspective,
            private=args.private,
            commit_message=args.commit_message,
            **options,
        )
    except (OSError, ValueError, HfHubHTTPError) as error:
        raise UserInputError(str(error).splitlines()[0]) from None
    print(url)
    return 0


def _recorded_perspective(model_dir: str) -> str:
    import json

    config_file = Path(model_dir) / "config.json"
    try:
        return json.loads(config_file.read_text())["perspective"]
    except (OSError, ValueError, KeyError):
        raise UserInputError(f"{config_file}: no readable `perspective`; pass --perspective.") from None


def _print_plan(files: dict, destination: str) -> None:
    print(f"would upload to {destination}/ (dry run, nothing sent):")
    for name, source in files.items():
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        origin = "rendered" if isinstance(source, bytes) else str(source)
        print(f"  {name:32} {size:>12,} bytes  {origin}", file=sys.stdout)
