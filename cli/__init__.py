"""The `llava-reward` console command.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
A subcommand's own heavy imports (trl, datasets, evaluate, the default-backbone extras) happen inside ``func``. The
package itself imports transformers and torch (importing it registers the Auto classes), which is most of what
``llava-reward --help`` costs: about 4 s on 2 CPU cores.

Exit codes: 0 success, 1 bad input (a clear message on stderr, no traceback), 2 usage error (argparse), 130
interrupted (Ctrl-C; a subcommand that can resume sets ``resume_hint(args)``, the sentence that says how).

Example:
    >>> from llava_reward.cli import build_parser
    >>> build_parser().prog
    'llava-reward'
"""

import argparse
import importlib
import sys

from .errors import UserInputError


# Module names (in this package) of the subcommands, in the order `--help` lists them.
SUBCOMMAND_MODULES = (
    "demo", "score", "train", "artifacts", "build_backbone", "push", "convert_original", "evaluate", "serve",
    "generate", "paths",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava-reward",
        description="LLaVA-Reward: vision-language reward models for text-to-image generation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__name__}.{module_name}").register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserInputError as error:
        print(f"llava-reward {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: no traceback; say how to continue where the command can
        hint = args.resume_hint(args) if getattr(args, "resume_hint", None) else None
        print(f"llava-reward {args.command}: interrupted{f'; {hint}' if hint else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
