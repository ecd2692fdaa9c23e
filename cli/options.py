"""Options and helpers the subcommands share: argument types, the `--dtype` choices, and loading the scorer
that `--model` names.

Example:
    >>> from llava_reward.cli.options import positive_int
    >>> positive_int("8")
    8
"""

import argparse
import sys

from .errors import UserInputError


DTYPES = ("float32", "float16", "bfloat16")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def image_size(text: str) -> int:
    """argparse type: an image side in pixels, a positive multiple of the default backbone's 14-pixel patches."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 14 or value % 14:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 14 (the patch size), got {text!r}")
    return value


def load_scorer(args: argparse.Namespace, flag: str = "--model"):
    """The scorer of `--model` (and `--subfolder`, `--device`, `--dtype`), announced on stderr with what it is;
    `UserInputError` when it cannot load. Without `--model`: the embedded default model (`llava_reward.load`).
    `flag` is the option's name in error messages (`--reward` for `generate`, which stores it as `args.model`)."""
    from huggingface_hub.errors import HFValidationError
    from safetensors import SafetensorError

    import llava_reward

    device = checked_device(args.device)
    name = args.model if args.model is not None else "default"
    try:
        scorer = llava_reward.load(
            name, perspective=args.subfolder, device=device, dtype=args.dtype, progress=progress_option(args)
        )
    except HFValidationError:
        raise UserInputError(f"{flag} {name}: no such folder (nor a valid Hub repo id).") from None
    except (OSError, ValueError) as error:  # not a model folder, a base that is not here, an unreachable Hub repo
        raise UserInputError(f"{flag} {name}: cannot load a LLaVA-Reward model: {first_line(error)}") from None
    except SafetensorError as error:  # a weights file cut short or overwritten
        raise UserInputError(f"{flag} {name}: a weights file is not valid safetensors ({first_line(error)}).") from None
    config = scorer.model.config
    print(
        f"llava-reward {args.command}: model {name}" + (f" ({args.subfolder})" if args.subfolder else "")
        + f": {config.perspective} perspective, objective {config.objective}, base {config.base_model}, on "
        f"{scorer.device}",
        file=sys.stderr,
    )
    return scorer


def first_line(error: Exception) -> str:
    """The first line of an error's message (its type's name when it has none): what a one-line error quotes."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def checked_device(name: str | None):
    """`--device NAME` as a `torch.device` this machine has; `UserInputError` (one line) when it has not (`cuda` on a
    CPU-only build, `cuda:3` on a 2-GPU machine), before any model loads."""
    import torch

    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserInputError(f"--device {name}: {str(error).strip().splitlines()[0]}") from None
    if device.type in ("cpu", "meta"):
        return device
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if backend is None or not backend.is_available():
        build = "a CPU-only build" if device.type == "cuda" and torch.version.cuda is None else "this build"
        raise UserInputError(
            f"--device {name}: no {device.type} device is available (torch {torch.__version__}, {build}); use --device cpu."
        )
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise UserInputError(f"--device {name}: this machine has {count} {device.type} device(s), numbered from 0.")
    return device


PROGRESS = {"auto": None, "bar": True, "plain": "plain", "none": False}


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=tuple(PROGRESS),
        default="auto",
        help="auto: a bar on a terminal only; bar; plain: a line every 10 batches (logs, CI); none",
    )
    parser.add_argument("--no-progress", action="store_true", help="the same as --progress none")


def progress_option(args: argparse.Namespace):
    """The `progress` value the scorer and evaluation take, from `--progress` / `--no-progress`."""
    return False if args.no_progress else PROGRESS[args.progress]
