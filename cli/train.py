"""`llava-reward train --config RECIPE.yaml [--key value ...] [--resume [CHECKPOINT]]`: `python -m llava_reward.trainers.train`."""

import argparse
from pathlib import Path

from llava_reward.trainers.train import build_parser

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
        help="train a reward model from a recipe (also: python -m llava_reward.trainers.train, torchrun, accelerate launch)",
        description="Train a LLaVA-Reward perspective from a YAML recipe (see configuration/recipes/).",
    )
    parser.__class__ = _RecipeOverridesParser
    build_parser(parser)
    parser.set_defaults(func=run, resume_hint=resume_hint)


def resume_hint(args) -> str:
    """What an interrupted run says (Ctrl-C): how to continue from its newest complete checkpoint, if it saved one."""
    from llava_reward.trainers.train import RecipeError
    from llava_reward.trainers.train import latest_complete_checkpoint
    from llava_reward.trainers.train import load_recipe
    from llava_reward.trainers.train import parse_overrides

    try:
        output_dir = load_recipe(args.config, parse_overrides(args.overrides)).training.output_dir
    except RecipeError:
        return "rerun to start again"
    checkpoint, _ = latest_complete_checkpoint(output_dir)
    if checkpoint is None:
        return "no checkpoint was saved yet: a rerun starts from the beginning"
    return f"rerun with --resume to continue from {checkpoint}"


def run(args) -> int:
    from llava_reward.image_inputs import InputError
    from llava_reward.trainers.train import RecipeError
    from llava_reward.trainers.train import load_recipe
    from llava_reward.trainers.train import parse_overrides
    from llava_reward.trainers.train import train

    try:
        recipe = load_recipe(args.config, parse_overrides(args.overrides))
        trainer = train(recipe, resume=args.resume)
    except (RecipeError, InputError) as error:
        raise UserInputError(str(error)) from None
    if trainer.is_world_process_zero():
        write_card(recipe)
    return 0


def write_card(recipe) -> None:
    """The trained perspective's model card (README.md), rendered from its files and the recipe."""
    import dataclasses

    from llava_reward.bundle import CARD_FILE
    from llava_reward.hub_cards.cards import is_dataset_id
    from llava_reward.hub_cards.cards import render_perspective_card

    output_dir = recipe.training.output_dir
    sections = {"model": dataclasses.asdict(recipe.model), "data": dataclasses.asdict(recipe.data)}
    sections["training"] = {key: getattr(recipe.training, key) for key in TRAINING_SETTINGS}
    datasets = [source for source in (recipe.data.train,) if is_dataset_id(str(source))]
    # The snippet loads the folder by its name (from the folder above it): no path of this machine in the card.
    card = render_perspective_card(
        output_dir, repo_id=Path(output_dir).name, subfolder="", recipe=sections, datasets=datasets
    )
    card.save(f"{output_dir}/{CARD_FILE}")


# The training settings a card shows (the rest of TrainingArguments are defaults or about logging).
TRAINING_SETTINGS = (
    "objective", "tau", "margin_scale", "tuning", "train_projector", "lora_r", "lora_alpha", "lora_dropout",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "seed",
)
