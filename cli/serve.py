"""`llava-reward serve`: the reward service on Ray Serve, until Ctrl-C or SIGTERM (then it drains and stops).

Its options are generated from `llava_reward.serving.ServeOptions` (one flag per field: `--max-batch-size` for
`max_batch_size`), so that the command, `serve deploy` files and `serve_reward(...)` never drift apart; `--host`,
`--port`, `--name`, `--route-prefix` and `--ray-address` place the service. A local Ray is started for the service
unless `--ray-address` names a cluster. Bad values exit with code 1 and one line naming the flag.

Example:
    >>> from llava_reward.cli import build_parser
    >>> args = build_parser().parse_args(["serve", "--model", "my-reward", "--perspectives", "a,b", "--replicas", "2"])
    >>> serve_options(args)
    {'model': 'my-reward', 'perspectives': 'a,b', 'replicas': 2}
"""

import argparse
import dataclasses
import re
import types
import typing
from pathlib import Path

from .errors import UserInputError
from .options import DTYPES
from .options import checked_device


# Options that place the service rather than configure it (not `ServeOptions`).
PLACEMENT = ("host", "port", "name", "route_prefix", "ray_address")
# Help of each `ServeOptions` field's flag (the class documents them all), and the metavars that are not its last word.
METAVARS = {"model": "M", "perspectives": "A,B", "subfolder": "NAME", "image_root": "DIR", "dtype": None}
HELP = {
    "model": "the reward model: a folder, a Hub id, or 'default'; with --perspectives, the repo of several",
    "perspectives": "serve these perspective subfolders of --model on one base (answers {perspective: [...]})",
    "subfolder": "serve this one perspective subfolder of --model",
    "base_model": "the base VLM to use instead of the recorded one (a Hub id or a local folder)",
    "trust_remote_code": "allow a non-native base VLM's own code",
    "device": "where each replica runs, e.g. cpu, cuda (default: cuda when it was given --num-gpus, else cpu)",
    "dtype": "cast the model to this dtype (default: as saved)",
    "replicas": "replicas, each with its own copy of the model",
    "num_cpus": "Ray CPUs per replica",
    "num_gpus": "GPUs per replica",
    "threads": "torch intra-op threads per replica (default: torch's)",
    "max_batch_size": "most images per forward, gathered across concurrent requests",
    "batch_wait_ms": "how long a batch waits for more images",
    "max_ongoing_requests": "requests a replica holds at once (default: 2 x --max-batch-size)",
    "max_queued_requests": "requests waiting at each proxy; beyond it: 503 with Retry-After",
    "retry_after_s": "the Retry-After of those 503 answers",
    "request_timeout_s": "deadline of a request in a replica; beyond it: 504",
    "max_body_mb": "largest request body; beyond it: 413",
    "max_images": "most images per request; beyond it: 413",
    "max_pixels": "most pixels per image, read from its header; beyond it: 413",
    "max_prompt_chars": "longest prompt; beyond it: 413",
    "image_root": 'accept {"path": ...} images from inside this folder only (default: base64 images only)',
    "graceful_shutdown_timeout_s": "how long a stopping replica keeps answering its ongoing requests",
}


def register(subparsers) -> None:
    from llava_reward.serving.options import ServeOptions

    parser = subparsers.add_parser(
        "serve",
        help="serve a reward model over HTTP (Ray Serve): /score, /compare, /info for RL loops",
        description="Serve a LLaVA-Reward model over HTTP on Ray Serve, with dynamic batching across concurrent "
        "requests, replicas, bounded queues (503 + Retry-After) and deadlines (504). Needs the `serve` extra "
        "(pip install llava-reward[serve]). Runs until Ctrl-C or SIGTERM, then drains ongoing requests.",
        epilog="Example:\n  llava-reward serve --model my-reward --max-batch-size 16 --port 8000\n"
        "  curl -s localhost:8000/info\n"
        "On a cluster: serve deploy \"$(llava-reward paths serve reward_service)\" (edit its model first).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(ServeOptions)
    for option in dataclasses.fields(ServeOptions):
        flag = "--" + option.name.replace("_", "-")
        kind = _argument_type(hints[option.name])
        described = HELP[option.name]
        if option.default not in (dataclasses.MISSING, None) and "(default" not in described:
            described += f" (default: {option.default})"
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=described)
        else:
            parser.add_argument(flag, type=kind, required=option.name == "model", default=None,
                                choices=DTYPES if option.name == "dtype" else None, help=described,
                                metavar=METAVARS.get(option.name, option.name.split("_")[-1].upper()))
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="llava-reward", help="the Serve application's name")
    parser.add_argument("--route-prefix", default="/")
    parser.add_argument("--ray-address", help="join this Ray cluster ('auto': the running one); default: a local Ray")
    parser.set_defaults(func=run)


def serve_options(args: argparse.Namespace) -> dict:
    """The `ServeOptions` given on the command line (those left out keep their defaults)."""
    from llava_reward.serving.options import ServeOptions

    names = [option.name for option in dataclasses.fields(ServeOptions)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def run(args: argparse.Namespace) -> int:
    from llava_reward.serving import serve_reward
    from llava_reward.serving.options import ServeOptions

    options = serve_options(args)
    try:
        ServeOptions.from_dict(options)  # every value checked before a cluster starts
    except ValueError as error:
        raise UserInputError(_as_flags(str(error))) from None
    if args.image_root is not None and not Path(args.image_root).is_dir():
        raise UserInputError(f"--image-root {args.image_root}: no such folder.")
    if not 0 < args.port < 65536:
        raise UserInputError(f"--port {args.port}: not a TCP port (1 to 65535).")
    if args.ray_address is None:  # a local Ray: the replicas run on this machine, and read the model here
        checked_device(args.device)
        check_model(args.model, args.subfolder, ServeOptions.from_dict(options).perspectives)
    try:
        serve_reward(options.pop("model"), blocking=True, **options, **{key: getattr(args, key) for key in PLACEMENT})
    except RuntimeError as error:  # the deployment failed: a replica could not load the model, a port taken, ...
        raise UserInputError(_last_line(error)) from None
    return 0


def check_model(model: str, subfolder: str | None, perspectives: list[str] | None) -> None:
    """Refuse, in one line, a `--model` whose reward config cannot be read here: a replica or actor would otherwise
    fail only after Ray started, and be retried."""
    from llava_reward import LlavaRewardConfig
    from llava_reward.bundle import model_folder

    if model in ("default", "fidelity-default"):
        return
    if _looks_local(model) and not Path(model).is_dir():
        raise UserInputError(f"--model {model}: no such folder.")
    for name in perspectives or [subfolder]:
        where = f"--model {model}" + (f" ({name})" if name else "")
        if Path(model).is_dir() and not (Path(model) / (name or "")).is_dir():
            raise UserInputError(f"{where}: no such folder {Path(model) / name}.")
        try:
            folder = model_folder(model, subfolder=name)  # a local folder, or the Hub snapshot the workers will read
            if not (folder / "config.json").is_file():
                raise UserInputError(f"{where}: not a LLaVA-Reward model ({folder} holds no config.json).")
            LlavaRewardConfig.from_pretrained(folder)
        except (OSError, ValueError) as error:  # no such folder or repo, an unreadable config
            raise UserInputError(f"{where}: not a LLaVA-Reward model: {_last_line(error)}") from None


def _argument_type(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return str if typing.get_origin(hint) is list else hint


def _as_flags(message: str) -> str:
    """`ServeOptions`' messages name fields (`max_batch_size`); the command's user knows flags (--max-batch-size)."""
    return re.sub(r"`(\w+)`", lambda match: "--" + match.group(1).replace("_", "-"), message)


def _looks_local(model: str) -> bool:
    """A path rather than a Hub id (`org/name`): absolute, relative with `.`, or more than one slash."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1


def _last_line(error: Exception) -> str:
    """The most specific line of a (possibly multi-line, Ray-wrapped) error."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
