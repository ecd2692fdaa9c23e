"""Options and helpers the subcommands share: argument types, the `--dtype` choices, and loading the scorer
that `--model` names.

Example:
    >>> from llava_reward.cli.options import positive_int
    >>> positive_int("8")
    8
"""

import argparse

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


def load_scorer(args: argparse.Namespace):
    """The scorer of `--model` (and `--subfolder`, `--device`, `--dtype`); `UserInputError` when it cannot load."""
    import torch
    from huggingface_hub.errors import HFValidationError

    from llava_reward import LlavaRewardScorer

    try:
        device = torch.device(args.device) if args.device else None
    except RuntimeError as error:
        raise UserInputError(f"--device {args.device}: {error}") from None
    if args.model is None:  # the default model (score and compare only: evaluate requires --model)
        from llava_reward.cli.demo_workflow import DefaultModelError
        from llava_reward.cli.demo_workflow import find_default_model

        try:
            args.model = str(find_default_model())
        except DefaultModelError as error:
            raise UserInputError(f"no --model given and {error}") from None
    try:
        return LlavaRewardScorer.from_pretrained(
            args.model, subfolder=args.subfolder, device=device, dtype=args.dtype, progress=progress_option(args)
        )
    except HFValidationError:
        raise UserInputError(f"--model {args.model}: no such folder (nor a valid Hub repo id).") from None
    except OSError as error:  # not a model folder, or a Hub repo that is neither reachable nor in the offline cache
        raise UserInputError(f"--model {args.model}: cannot load a LLaVA-Reward model: {error}") from None


def check_device(args: argparse.Namespace) -> None:
    """`UserInputError` when `--device` names a device this torch build or machine does not have (`cuda` on a
    CPU-only build, `cuda:3` on a 2-GPU machine), before any model loads."""
    import torch

    if not args.device:
        return
    try:
        device = torch.device(args.device)
    except RuntimeError:
        return  # a malformed name: `load_scorer` reports it
    if device.type in ("cpu", "meta"):
        return
    backend = getattr(torch, device.type, None)
    if device.type == "mps":
        backend = torch.backends.mps
    if backend is None or not backend.is_available():
        build = "a CPU-only build" if device.type == "cuda" and torch.version.cuda is None else "this build"
        raise UserInputError(
            f"--device {args.device}: no {device.type} device is available (torch {torch.__version__}, {build}); "
            "use --device cpu."
        )
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise UserInputError(f"--device {args.device}: this machine has {count} {device.type} device(s), numbered from 0.")


def progress_option(args: argparse.Namespace) -> bool | None:
    """False when asked for no progress bar; None lets the bar decide (shown on a terminal only)."""
    return False if args.no_progress else None
