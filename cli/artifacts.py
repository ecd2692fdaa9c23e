"""`llava-reward artifacts`: fidelity preference pairs made from real photos (`llava_reward.trainers.artifacts`):
each photo crop against a copy with local, generator-like defects (swirls, bulges, melted, rippled, duplicated,
smeared or torn discs), written in the `pairs` format `llava-reward train` reads. Seeded and deterministic.

Example:
    >>> from llava_reward.cli import build_parser
    >>> args = build_parser().parse_args(["artifacts", "out", "--pairs", "50", "--size", "112"])
    >>> (args.output_dir, args.pairs, args.size, args.seed)
    ('out', 50, 112, 0)
"""

import argparse

from llava_reward.trainers import artifacts

from .errors import UserInputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "artifacts",
        help="make fidelity training pairs from real photos (a photo vs a copy with local defects)",
        description=(
            "Write preference pairs (a square crop of a real photo, preferred, against the same crop with one or two "
            "local defects) to OUT/pairs.json and OUT/images/, for `llava-reward train --train OUT/pairs.json`. "
            "Without --photos the pairs are made from the sample photos installed packages ship (scikit-image, "
            "matplotlib, scikit-learn). The same photos, seed and settings give byte-identical files."
        ),
    )
    artifacts.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        print(artifacts.write_from_arguments(args))
    except (ValueError, FileExistsError) as error:
        raise UserInputError(str(error)) from None
    return 0
