"""`llava-reward train --config RECIPE.yaml [--key value ...] [--resume [CHECKPOINT]]`: `python -m trainers.train`."""

import argparse

from trainers.train import build_parser

from .errors import UserInputError


class _RecipeOverridesParser(argparse.ArgumentParser):
    """Keeps unknown `--key value` options as recipe overrides instead of rejecting them (any field can be set)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.overrides = extras
        return namespace, []


def register(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="train a reward model from a recipe (also: python -m trainers.train, torchrun, accelerate launch)",
        description="Train a LLaVA-Reward perspective from a YAML recipe (see configuration/recipes/).",
    )
    parser.__class__ = _RecipeOverridesParser
    build_parser(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from modeling_llava_reward.image_inputs import InputError
    from trainers.train import RecipeError
    from trainers.train import load_recipe
    from trainers.train import parse_overrides
    from trainers.train import train

    try:
        recipe = load_recipe(args.config, parse_overrides(args.overrides))
        train(recipe, resume=args.resume)
    except (RecipeError, InputError) as error:
        raise UserInputError(str(error)) from None
    return 0
