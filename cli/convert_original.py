"""`llava-reward convert-original`: a published LLaVA-Reward checkpoint to this package's adapter bundle.

    llava-reward convert-original LLaVA-Reward/alignment/llavareward_qwen_alignment \
        --base Qwen/Qwen2.5-VL-7B-Instruct --out converted/alignment

Example:
    >>> from llava_reward.cli import build_parser
    >>> args = build_parser().parse_args(["convert-original", "src", "--base", "org/vlm", "--out", "out"])
    >>> args.command, args.base, args.objective
    ('convert-original', 'org/vlm', None)
"""

import argparse

from llava_reward.objectives import OBJECTIVES

from .errors import UserInputError


EPILOG = """\
SRC_DIR is one perspective of the published checkpoints (github sjz5202/LLaVA-Reward, Hub smz8599/LLaVA-Reward):
reward_config.yaml, pytorch_model.bin (read with torch.load(weights_only=True): anything but plain tensors is
refused) and lora/. OUT gets config.json, reward_head.safetensors, the LoRA adapter (safetensors), the processor,
conversion.json and a model card (README.md) that says where the published code computed something else.

Examples:
  llava-reward convert-original ckpt/alignment/llavareward_qwen_alignment --base Qwen/Qwen2.5-VL-7B-Instruct \\
      --out converted/alignment
  llava-reward convert-original ckpt/safety/llavareward_llava_safety --base llava-hf/llava-v1.6-vicuna-13b-hf \\
      --objective ce --out converted/safety
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-original",
        help="convert a published LLaVA-Reward checkpoint (Qwen2.5-VL, LLaVA-NeXT, Phi-3.5-vision) to this format",
        description="Convert a published LLaVA-Reward checkpoint folder to an adapter bundle of this package.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src_dir", metavar="SRC_DIR", help="the published perspective folder")
    parser.add_argument("--base", required=True, metavar="VLM", help="the base VLM it was trained on (Hub id or folder)")
    parser.add_argument("--out", required=True, metavar="OUT", help="where to write the converted bundle")
    parser.add_argument("--revision", metavar="REV", help="pin the base VLM's Hub revision (recorded in the bundle)")
    parser.add_argument(
        "--perspective", metavar="NAME", help="what it judges; default: the perspective named in SRC_DIR's path"
    )
    parser.add_argument(
        "--objective", choices=tuple(OBJECTIVES), help="'ce' for checkpoints trained with cross-entropy (safety): "
        "the published config does not record it; default from is_general_preference"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="needed for Phi-3.5-vision; never implied")
    parser.add_argument(
        "--base-image-size", action="store_true", help="keep the base processor's image size range instead of the "
        "published scripts' (Qwen2.5-VL)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llava_reward.hub_cards.convert_original import convert_original_checkpoint

    try:
        out_dir = convert_original_checkpoint(
            args.src_dir,
            args.base,
            args.out,
            perspective=args.perspective,
            objective=args.objective,
            revision=args.revision,
            trust_remote_code=args.trust_remote_code,
            published_image_size=not args.base_image_size,
        )
    except (OSError, ValueError) as error:
        raise UserInputError(str(error).splitlines()[0]) from None
    print(f"converted {args.src_dir} to {out_dir}")
    return 0
