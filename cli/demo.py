"""`llava-reward demo`: build the default backbone, train and evaluate the default fidelity reward model on MJ-Bench
pairs, score example pairs and print a short report (the model is cached: later runs take seconds).

Example:
    >>> from llava_reward.cli import build_parser
    >>> args = build_parser().parse_args(["demo", "--data", "mjbench_quality", "--max-steps", "2"])
    >>> (args.data, args.max_steps, args.force)
    ('mjbench_quality', 2, False)
"""

import argparse
from pathlib import Path

from .options import image_size
from .options import positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train, evaluate and cache the default fidelity reward model on MJ-Bench pairs, then score examples",
        description=(
            "Build the default backbone if absent (SmolLM2-135M + DINOv2 ViT-S/14), measure held-out accuracy on "
            "MJ-Bench's fidelity pairs (train on one subset, test on the other, both ways), train the default model "
            "on all pairs, save it with its metrics.json and card to $LLAVA_REWARD_HOME/models/fidelity-default, "
            "score example pairs and print a report. A cached model made from the same recipe, backbone and data is "
            "reused. Progress goes to stderr, the report to stdout."
        ),
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="folder of MJ-Bench subset folders (default: ../shared/data/mjbench_quality from here or the repository)",
    )
    parser.add_argument("--force", action="store_true", help="train again even if a matching model is cached")
    parser.add_argument(
        "--image-size", type=image_size, default=None, metavar="PX", help="backbone input side (default: 112)"
    )
    parser.add_argument(
        "--tiles",
        type=positive_int,
        default=None,
        metavar="N",
        help="the backbone also reads N x N tiles of --image-size px and the reward is the standardised mean of its "
        "projected image tokens (default 3: held out 0.83-0.88 across subsets); 1: the whole image only, with the "
        "LoRA recipe of configuration/recipes/default_fidelity.yaml (held out 0.68 / 0.64; docs/default-model.md)",
    )
    parser.add_argument("--max-steps", type=positive_int, metavar="N", help="a quick check: N training steps per model")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="a quick check: the first N pairs per subset")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or step messages")
    parser.add_argument(
        "--export",
        metavar="DIR",
        help="also copy the trained model's shippable files to DIR (maintainers: modeling_llava_reward/default_model)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llava_reward.default_backbone import BackboneParityError
    from llava_reward.default_backbone import MissingBackboneDependency

    from .demo_workflow import IMAGE_SIZE
    from .demo_workflow import TILES
    from .demo_workflow import DefaultModelError
    from .demo_workflow import export_default_model
    from .demo_workflow import format_report
    from .demo_workflow import run_demo
    from .errors import UserInputError

    try:
        result = run_demo(
            args.data,
            image_size=args.image_size or IMAGE_SIZE,
            tiles=args.tiles or TILES,
            max_steps=args.max_steps,
            limit=args.limit,
            force=args.force,
            progress=not args.quiet,
        )
    except (MissingBackboneDependency, DefaultModelError, BackboneParityError, FileExistsError) as error:
        raise UserInputError(str(error)) from None
    print(format_report(result))
    if args.export:
        print(f"exported the default model to {export_default_model(result.model_dir, Path(args.export))}")
    return 0
