"""`llava-reward paths KIND [NAME]`: where this installation keeps a shipped file, for tools that want a path.

Example:
    >>> from llava_reward.cli import build_parser
    >>> args = build_parser().parse_args(["paths", "accelerate", "ddp"])
    >>> args.kind, args.name
    ('accelerate', 'ddp')
"""

KINDS = ("recipes", "accelerate", "serve", "metrics")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "paths",
        help="print the path of a shipped recipe, accelerate or Ray Serve config, or metric module (or list them)",
        description=(
            "Print where this installation keeps a shipped file, e.g. "
            '`accelerate launch --config_file "$(llava-reward paths accelerate ddp)" -m llava_reward.cli train ...` '
            'or `evaluate.load("$(llava-reward paths metrics pairwise_accuracy)")`. Without NAME, list the names.'
        ),
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("name", nargs="?", help="the file's name (without NAME: list them)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from llava_reward.configuration import named_file
    from llava_reward.configuration import names
    from llava_reward.evaluation import METRICS_DIR
    from llava_reward.evaluation import metric_path

    from .errors import UserInputError

    if args.kind == "metrics":
        listing = sorted(folder.name for folder in METRICS_DIR.iterdir() if (folder / f"{folder.name}.py").is_file())
        locate = metric_path
    else:
        listing = names(args.kind)
        locate = lambda name: named_file(args.kind, name)  # noqa: E731
    if args.name is None:
        print("\n".join(listing))
        return 0
    if args.name not in listing:
        raise UserInputError(f"no shipped {args.kind} file named {args.name!r}; there are: {', '.join(listing)}.")
    print(locate(args.name))
    return 0
