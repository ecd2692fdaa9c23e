"""Train a LLaVA-Reward perspective from a YAML recipe.

    python -m llava_reward.trainers.train --config configuration/recipes/tiny.yaml [--key value ...] [--resume [CHECKPOINT]]
    llava-reward train --config RECIPE.yaml ...                                      # the same
    torchrun --standalone --nproc_per_node 2 -m llava_reward.trainers.train --config RECIPE.yaml  # DDP
    accelerate launch --config_file configuration/accelerate/ddp.yaml -m llava_reward.trainers.train --config RECIPE.yaml

A recipe has three sections: `model` (`ModelArguments`: the base VLM and the reward head), `data` (`DataArguments`)
and `training` (`LlavaRewardTrainingConfig`: TRL's `RewardConfig` plus objective, tau, margins and LoRA).
`--section.key value` overrides one value (`--model.base_model PATH`, `--data.train FILE`); a bare `--key value`
means `--training.key value`. Values are read as YAML 1.2 scalars (`1e-4`, `true`, `null`; `no` is a string).

The result is written to `training.output_dir`: `checkpoint-N/` folders during training (resumable with `--resume`)
and, at the end, the trained perspective itself (an adapter bundle, or a full model with `tuning: full`), which
`LlavaRewardScorer.from_pretrained(output_dir)` loads.
"""

import argparse
import dataclasses
import difflib
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from llava_reward.configuration import named_file
from llava_reward.configuration import names
from llava_reward.image_inputs import missing_path_problem


logger = logging.getLogger(__name__)


class RecipeLoader(yaml.SafeLoader):
    """YAML as in YAML 1.2: only true/false are booleans (`eval_strategy: no` stays a string) and 1e-4 is a number."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


class RecipeError(ValueError):
    """A recipe (or an override) names an unknown key or holds an invalid value; the message says which."""


@dataclass
class ModelArguments:
    """The base VLM and the reward head grafted onto it (`LlavaRewardModel.from_vlm`)."""

    base_model: str | None = None  # a local folder or Hub id of the base VLM (recorded in the saved config)
    revision: str | None = None
    trust_remote_code: bool = False  # needed for Phi-3.5-vision; never implied
    dtype: str = "float32"  # weights as loaded; mixed precision comes from `training.bf16`
    attn_implementation: str | None = None
    head: str = "skipca"
    reward_dim: int = 1  # an even number >= 2 for objective gpm
    hidden_layer: int = -1
    visual_layer: int = 0
    pooling: str = "last"
    standardize_features: bool = False  # fitted on the training images before training
    perspective: str = "overall"
    max_prompt_tokens: int = 256  # longer prompts are truncated by the processor
    init_from: str | None = None  # start from this trained perspective's LoRA + head (same base and LoRA settings)


@dataclass
class DataArguments:
    """Training and evaluation data (`trainers.data.load_preference_data`)."""

    train: str | None = None  # a JSON file, a saved dataset folder, or a `datasets` Hub id
    eval: str | None = None
    format: str = "auto"
    image_root: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    on_bad_image: str = "raise"  # or "skip" (drop and count rows whose images cannot be read)
    on_bad_row: str = "raise"  # or "skip" (drop, count and name malformed rows and rows naming missing images)


@dataclass
class Recipe:
    model: ModelArguments
    data: DataArguments
    training: "LlavaRewardTrainingConfig"  # noqa: F821 (imported lazily: transformers is slow to import)
    path: Path | None = None


SECTIONS = {"model": ModelArguments, "data": DataArguments, "training": None}


def load_recipe(path, overrides: dict | None = None) -> Recipe:
    """Read a recipe file, apply `{"section.key": value}` overrides, and validate every value."""
    from .trainer import LlavaRewardTrainingConfig

    try:
        path = named_file("recipes", path)
    except FileNotFoundError as error:
        if Path(path).is_symlink():  # a broken link or a loop: say which
            raise RecipeError(f"Recipe {path}: {missing_path_problem(path)}.") from None
        raise RecipeError(f"Recipe {error}") from None
    raw = yaml.load(path.read_text(), Loader=RecipeLoader) or {}
    if not isinstance(raw, dict) or set(raw) - set(SECTIONS):
        raise RecipeError(f"{path}: the top level must be a mapping with sections {list(SECTIONS)}, got {list(raw)}.")
    sections = {name: dict(raw.get(name) or {}) for name in SECTIONS}
    apply_overrides(sections, overrides)
    classes = {"model": ModelArguments, "data": DataArguments, "training": LlavaRewardTrainingConfig}
    built = {name: _build(classes[name], values, f"{path} [{name}]") for name, values in sections.items()}
    for section, field in (("model", "base_model"), ("data", "train"), ("training", "output_dir")):
        if getattr(built[section], field) in (None, ""):
            raise RecipeError(
                f"{path}: `{section}.{field}` is required (set it in the recipe or with --{section}.{field})."
            )
    return Recipe(**built, path=path)


def _build(cls, values: dict, where: str):
    known = {field.name for field in dataclasses.fields(cls) if field.init}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise RecipeError(f"{where}: unknown key {key!r}.{hint}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"{where}: {error}") from None


def apply_overrides(sections: dict[str, dict], overrides: dict | None) -> None:
    """Set `{"section.key": value}` overrides (a bare key is a training one) in a recipe's `sections`, in place."""
    for key, value in (overrides or {}).items():
        section, _, field = key.rpartition(".")
        if (section or "training") not in SECTIONS:
            raise RecipeError(f"Override --{key}: unknown section {section!r}; use {', '.join(SECTIONS)}.")
        sections[section or "training"][field] = value


def parse_overrides(tokens: list[str]) -> dict:
    """`["--a.b", "1", "--c=x"]` -> `{"a.b": 1, "c": "x"}` (values parsed as YAML scalars)."""
    overrides, index = {}, 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--") or len(token) == 2:
            raise RecipeError(f"Expected --key value, got {token!r}.")
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            if index + 1 >= len(tokens) or tokens[index + 1].startswith("--"):
                raise RecipeError(f"--{key} needs a value.")
            index += 1
            value = tokens[index]
        overrides[key.replace("-", "_")] = yaml.load(value, Loader=RecipeLoader)
        index += 1
    return overrides


CHECKPOINT = re.compile(r"checkpoint-(\d+)")  # the folders `transformers.Trainer` saves, by global step
TRAINER_STATE = "trainer_state.json"  # written last of a checkpoint's files: its presence ends a save


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint `folder` cannot be resumed from (a save cut short by a kill), or None if it is complete.

    The Trainer writes a checkpoint's weights, optimizer, scheduler and random states, then `trainer_state.json`:
    a checkpoint is complete when that file is there, parses, and records the folder's step, and when every
    safetensors file in it has a readable header.
    """
    from safetensors import SafetensorError
    from safetensors import safe_open

    if not (folder / TRAINER_STATE).is_file():
        return f"no {TRAINER_STATE}: its save was interrupted"
    try:
        step = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"]
    except (ValueError, KeyError, TypeError, OSError):
        return f"{TRAINER_STATE} is cut short or unreadable: its save was interrupted"
    if (match := CHECKPOINT.fullmatch(folder.name)) and step != int(match.group(1)):
        return f"{TRAINER_STATE} records step {step}"
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(weights, framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            return f"{weights.name} is not a readable safetensors file ({error})"
    return None


def latest_complete_checkpoint(output_dir) -> tuple[Path | None, list[str]]:
    """The newest complete `checkpoint-N` of `output_dir` (None if there is none), and a note on each newer one
    that is incomplete."""
    folders = [path for path in Path(output_dir).glob("checkpoint-*") if CHECKPOINT.fullmatch(path.name) and path.is_dir()]
    skipped = []
    for folder in sorted(folders, key=lambda path: int(CHECKPOINT.fullmatch(path.name).group(1)), reverse=True):
        if (problem := checkpoint_problem(folder)) is None:
            return folder, skipped
        skipped.append(f"{folder.name} is incomplete ({problem})")
    return None, skipped


def resume_checkpoint(resume: bool | str, output_dir, *, announce: bool = True) -> str:
    """The checkpoint `--resume` continues from: the given one (if complete), or the newest complete one in
    `output_dir`; says which (when `announce`), and which newer ones it skipped (they are written again when
    training reaches their step)."""
    if isinstance(resume, str):
        problem = checkpoint_problem(Path(resume)) if Path(resume).is_dir() else "not a folder"
        if problem is not None:
            raise RecipeError(f"--resume {resume}: cannot resume from it: {problem}.")
        return resume
    checkpoint, skipped = latest_complete_checkpoint(output_dir) if Path(output_dir).is_dir() else (None, [])
    if checkpoint is None:
        found = f" ({'; '.join(skipped)})" if skipped else ""
        raise RecipeError(f"--resume: no checkpoint to resume from in {output_dir}{found}.")
    if announce:
        for note in skipped:
            print(f"[llava-reward] {note}: skipped; it is written again when training reaches its step")
        print(f"[llava-reward] resuming from {checkpoint}")
    return str(checkpoint)


def train(recipe: Recipe, resume: bool | str = False):
    """Build the model, processor and data of `recipe`, train, and save the result to `output_dir`.

    `resume`: `True` continues from the last `checkpoint-N` in `output_dir`; a path continues from that checkpoint.
    Returns the `LlavaRewardTrainer`.
    """
    from llava_reward.files import make_folder
    from llava_reward.image_inputs import InputError

    from .data import load_preference_data
    from .trainer import LlavaRewardTrainer

    model_args, data_args, args = recipe.model, recipe.data, recipe.training
    try:  # before anything slow: an output folder that cannot be written fails now, not after training
        make_folder(args.output_dir)
    except InputError as error:
        raise RecipeError(f"`training.output_dir` {error}") from None
    checkpoint = resume_checkpoint(resume, args.output_dir, announce=args.process_index == 0) if resume else None

    with args.main_process_first(desc="loading the data"):
        train_dataset = load_preference_data(
            data_args.train,
            format=data_args.format,
            image_root=data_args.image_root,
            split=data_args.train_split,
            on_bad_image=data_args.on_bad_image,
            on_bad_row=data_args.on_bad_row,
        )
        eval_dataset = data_args.eval and load_preference_data(
            data_args.eval,
            format=data_args.format,
            image_root=data_args.image_root,
            split=data_args.eval_split,
            on_bad_image=data_args.on_bad_image,
            on_bad_row=data_args.on_bad_row,
        )

    model, processor = build_model(recipe)
    trainer = LlavaRewardTrainer(
        model, args, train_dataset=train_dataset, eval_dataset=eval_dataset or None, processing_class=processor
    )
    trainer.data_sources = [str(data_args.train)]
    if model_args.init_from:
        trainer.load_trained_weights(model_args.init_from)
    trainable, total = trainer.trainable_parameters
    if trainer.is_world_process_zero():
        print(
            f"[llava-reward] {args.tuning}: {trainable:,} of {total:,} parameters trainable ({trainable / total:.2%})"
        )
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        print(f"[llava-reward] saved the trained {model_args.perspective} reward model to {args.output_dir}")
    return trainer


def build_model(recipe: Recipe):
    """The reward model (a fresh head on the recipe's base VLM) and its processor; `RecipeError` naming the recipe
    field when the base cannot be loaded or a model field is invalid."""
    import torch
    from transformers import set_seed

    from llava_reward import LlavaRewardModel
    from llava_reward import LlavaRewardProcessor

    model_args, args = recipe.model, recipe.training
    # A local base is recorded as an absolute path: the saved bundle must find it from any working directory.
    base_model = (
        str(Path(model_args.base_model).resolve()) if Path(model_args.base_model).is_dir() else model_args.base_model
    )
    if not Path(base_model).exists() and base_model.startswith((".", "/", "~")):  # a path, not a Hub id
        raise RecipeError(f"`model.base_model` {base_model}: no such folder.")
    set_seed(args.seed)  # the reward head's initialisation
    try:
        model = LlavaRewardModel.from_vlm(
            base_model,
            revision=model_args.revision,
            trust_remote_code=model_args.trust_remote_code,
            dtype=getattr(torch, model_args.dtype) if model_args.dtype != "auto" else "auto",
            **({"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}),
            # The model's config owns objective and tau (its defaults apply when the recipe names neither).
            **{name: getattr(args, name) for name in ("objective", "tau") if getattr(args, name) is not None},
            reward_dim=model_args.reward_dim,
            head=model_args.head,
            hidden_layer=model_args.hidden_layer,
            visual_layer=model_args.visual_layer,
            pooling=model_args.pooling,
            standardize_features=model_args.standardize_features,
            perspective=model_args.perspective,
        )
        processor = LlavaRewardProcessor.from_base(base_model, max_prompt_tokens=model_args.max_prompt_tokens)
    except OSError as error:  # not a folder or Hub repo with a VLM and its processor (or not in the offline cache)
        raise RecipeError(f"`model.base_model` {base_model}: cannot load it ({str(error).splitlines()[0]})") from None
    except ValueError as error:  # a model field the reward config refuses (head, pooling, layers, reward_dim, ...)
        raise RecipeError(f"{recipe.path} [model]: {error}") from None
    return model, processor


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m llava_reward.trainers.train", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        required=True,
        metavar="RECIPE",
        help=f"a recipe file, or the name of a shipped recipe: {', '.join(names('recipes'))}",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the last checkpoint in output_dir (or from CHECKPOINT)",
    )
    parser.epilog = (
        "Any other --section.key value overrides the recipe; a bare --key means --training.key. The main ones:\n"
        "  --model.base_model PATH_OR_HUB_ID   --model.perspective NAME   --model.hidden_layer K\n"
        "  --data.train FILE_OR_DATASET   --data.eval FILE   --data.image_root DIR   --data.on_bad_row skip\n"
        "  --output_dir DIR   --objective {bt,gpm,ce}   --tau T   --tuning {lora,head,full}   --lora_r R\n"
        "  --learning_rate LR   --max_steps N   --per_device_train_batch_size B   --bf16 true\n"
        "Data: .json, .jsonl, .parquet, a saved dataset, an MJ-Bench folder or a datasets Hub id (docs/training.md)."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv=None) -> int:
    args, extras = build_parser().parse_known_args(argv)
    train(load_recipe(args.config, parse_overrides(extras)), resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
