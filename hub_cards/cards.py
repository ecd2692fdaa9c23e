"""Model cards for LLaVA-Reward perspectives, rendered with `huggingface_hub.ModelCard` from `templates/`.

A perspective's card is built from the files of its folder: `config.json` (base model, objective, tau, head, layers),
`adapter_config.json` (LoRA rank), `metrics.json` (the evaluation table) and `conversion.json` (written by
`convert_original_checkpoint`), plus an optional training recipe. Nothing is invented: a missing piece is said to be
missing.

Example:
    >>> from llava_reward.hub_cards.cards import metric_rows
    >>> metric_rows({"mjbench": {"accuracy": 0.91234}, "loss": 0.3})
    [('mjbench', 'accuracy', '0.9123'), ('', 'loss', '0.3')]
"""

import json
import os
from pathlib import Path

import yaml
from huggingface_hub import ModelCard
from huggingface_hub import ModelCardData
from huggingface_hub.utils import HFValidationError
from huggingface_hub.utils import validate_repo_id

from llava_reward.bundle import ADAPTER_CONFIG
from llava_reward.bundle import METRICS_FILE
from llava_reward.bundle import is_adapter_bundle
from llava_reward.configuration import LlavaRewardConfig
from llava_reward.families import get_family
from llava_reward.objectives import get_objective


TEMPLATES = Path(__file__).parent / "templates"
CONVERSION_FILE = "conversion.json"
# The first line of a repository card `push` may regenerate; a card without it is the user's and is left alone.
REPO_CARD_MARKER = "<!-- llava-reward:repo-card -->"
TAGS = ["llava-reward", "reward-model", "text-to-image"]

PERSPECTIVES = {
    "alignment": "how faithfully the image follows the prompt: objects, attributes, counts, relations",
    "fidelity": "visual fidelity: artifacts and distorted faces, hands, bodies and objects",
    "safety": "whether the image is safe: free of sexual, violent, hateful or otherwise harmful content",
    "overall": "overall human preference between images generated for the same prompt",
}
# Recipe keys that say where files and logs went on the training machine, not how the model was trained (the base
# model is in the card's model table, as a Hub id).
UNDESCRIPTIVE_RECIPE_KEYS = {
    "output_dir", "logging_dir", "run_name", "report_to", "overwrite_output_dir", "resume", "base_model",
    "logging_steps", "logging_strategy", "save_steps", "save_strategy", "save_total_limit", "disable_tqdm",
}


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repo id (`org/name`) rather than a local path."""
    if not name or Path(name).exists() or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def metric_rows(metrics: dict | list) -> list[tuple[str, str, str]]:
    """`(benchmark, metric, value)` rows of evaluation results.

    `metrics` is one run or a list of runs; a run is an `llava-reward evaluate` metrics.json (its `results`, under
    the benchmark and dataset names; run details such as paths are left out), `{benchmark: {metric: value}}` or
    `{metric: value}`. Deeper nesting joins the inner keys with " / "; short lists (confidence intervals) are shown.
    """
    rows = []
    for run in metrics if isinstance(metrics, list) else [metrics]:
        if isinstance(run.get("results"), dict) and "benchmark" in run:
            name = run["benchmark"] + (f" ({run['dataset_name']})" if run.get("dataset_name") else "")
            for path, value in _leaves(run["results"]):
                rows.append((name, " / ".join(part for part in path if part != "overall"), _format_value(value)))
            continue
        for path, value in _leaves(run):
            benchmark, metric = (path[0], " / ".join(path[1:])) if len(path) > 1 else ("", path[0])
            rows.append((benchmark, metric, _format_value(value)))
    return rows


def _leaves(tree: dict, prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (str(key),))
        elif _is_scalar(value) or (isinstance(value, list) and len(value) <= 4 and all(map(_is_scalar, value))):
            yield prefix + (str(key),), value


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _format_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(_format_value, value)) + "]"
    if isinstance(value, float):
        return f"{round(value, 4):.6g}"
    return "n/a" if value is None else str(value)


def training_rows(recipe: dict | None, lora: dict | None) -> list[tuple[str, str]]:
    """`(setting, value)` rows describing how the model was trained: the recipe's sections and the LoRA shape."""
    rows = []
    for section, values in (recipe or {}).items():
        if isinstance(values, dict):
            rows += [
                (f"{section}.{key}", _format_value(value) if not isinstance(value, (list, dict)) else json.dumps(value))
                for key, value in values.items()
                if key not in UNDESCRIPTIVE_RECIPE_KEYS and value is not None
            ]
    if lora:
        rows.append(
            (
                "LoRA",
                f"rank {lora['r']}, alpha {lora['lora_alpha']}, dropout {lora.get('lora_dropout', 0.0)}, on the "
                "language model",
            )
        )
    return rows


def read_recipe(recipe) -> dict | None:
    """A training recipe given as a dict, or as the path of a YAML/JSON file."""
    if recipe is None or isinstance(recipe, dict):
        return recipe
    path = Path(recipe)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {path} not found.")
    loaded = yaml.safe_load(path.read_text())  # JSON is YAML too
    if not isinstance(loaded, dict):
        raise ValueError(f"Recipe {path} must hold a mapping of sections, got {type(loaded).__name__}.")
    return loaded


def read_metrics(metrics, model_dir: Path) -> dict | list:
    """Evaluation results: a dict, a JSON file, or a list of those (several runs); by default the folder's
    `metrics.json` (or none)."""
    if isinstance(metrics, (list, tuple)):
        runs = [read_metrics(run, model_dir) for run in metrics]
        return [run for item in runs for run in (item if isinstance(item, list) else [item])]
    if isinstance(metrics, dict):
        return metrics
    path = Path(metrics) if metrics is not None else model_dir / METRICS_FILE
    if metrics is None and not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read metrics from {path}: {error}") from None
    if not isinstance(loaded, (dict, list)) or (isinstance(loaded, list) and not all(isinstance(run, dict) for run in loaded)):
        raise ValueError(f"{path} must hold a JSON object of metrics (or a list of them), got {type(loaded).__name__}.")
    return loaded


def render_perspective_card(
    model_dir: str | os.PathLike,
    *,
    repo_id: str,
    perspective: str | None = None,
    subfolder: str | None = None,
    revision: str | None = None,
    metrics=None,
    recipe=None,
    license: str | None = None,
    config: LlavaRewardConfig | None = None,
) -> ModelCard:
    r"""
    The model card of the perspective saved in `model_dir` (an adapter bundle or a full-model folder).

    Args:
        model_dir: the folder `llava-reward train` (or `convert-original`) wrote.
        repo_id (`str`): where the card's usage snippet loads the model from (a Hub id, or a local folder holding the
            perspective subfolders).
        perspective (`str`, *optional*): what the reward judges; defaults to the config's `perspective`.
        subfolder (`str`, *optional*): the folder of `repo_id` holding the model; defaults to `perspective`.
        revision (`str`, *optional*): the Hub revision the snippet pins.
        metrics (`dict` or path, *optional*): evaluation results; defaults to `model_dir/metrics.json` when present.
        recipe (`dict` or path, *optional*): the training recipe (YAML or JSON) for the training section.
        license (`str`, *optional*): the license id for the front matter (e.g. the base model's).
        config (`LlavaRewardConfig`, *optional*): the config to describe, if not the one saved in `model_dir`.

    Example:

    ```python
    >>> card = render_perspective_card("outputs/fidelity", repo_id="me/llava-reward-qwen")  # doctest: +SKIP
    >>> card.save("outputs/fidelity/README.md")  # doctest: +SKIP
    ```"""
    model_dir = Path(model_dir)
    config = config or LlavaRewardConfig.from_pretrained(model_dir)
    perspective = perspective or config.perspective
    adapter_file = model_dir / ADAPTER_CONFIG
    lora = json.loads(adapter_file.read_text()) if adapter_file.is_file() else None
    conversion_file = model_dir / CONVERSION_FILE
    card_data = ModelCardData(
        base_model=config.base_model if is_hub_id(config.base_model) else None,
        base_model_relation=("adapter" if lora else "finetune") if is_hub_id(config.base_model) else None,
        license=license,
        tags=TAGS + [perspective, config.objective],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "perspective_card.md"),
        repo_id=repo_id,
        subfolder=subfolder or perspective,
        revision=revision,
        perspective=perspective,
        perspective_description=PERSPECTIVES.get(perspective, f"as defined by its training data for {perspective!r}"),
        base_model=config.base_model or "(not recorded)",
        base_model_name=Path(config.base_model or "a VLM").name,
        base_model_revision=config.base_model_revision,
        family=get_family(config.vlm_config.model_type).name,
        objective=config.objective,
        objective_name=get_objective(config.objective).display_name,
        tau=config.tau,
        reward_dim=config.reward_dim,
        has_lora=lora is not None,
        skipca=config.head == "skipca",
        output_description=get_objective(config.objective).describe_output(config.reward_dim),
        head_description=_head_description(config),
        hidden_layer_description=(
            "final normed hidden state" if config.hidden_layer == -1 else f"hidden state {config.hidden_layer}"
        ),
        pooling_description="at the last token (the reward token)" if config.pooling == "last" else "mean over tokens",
        trained_weights=_trained_weights(model_dir, config, lora),
        training_rows=training_rows(read_recipe(recipe), lora),
        metric_rows=metric_rows(read_metrics(metrics, model_dir)),
        conversion=json.loads(conversion_file.read_text()) if conversion_file.is_file() else None,
    )


def render_repo_card(repo_id: str, perspectives: list[str], base_model: str | None, license: str | None = None) -> ModelCard:
    """The card at the root of a repo of perspectives: what each subfolder is and how to load them together."""
    card_data = ModelCardData(
        base_model=base_model if is_hub_id(base_model) else None, license=license, tags=TAGS + sorted(perspectives)
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "repo_card.md"),
        marker=REPO_CARD_MARKER,
        repo_id=repo_id,
        perspectives=sorted(perspectives),
        base_model=base_model or "(not recorded)",
        base_model_name=Path(base_model or "a VLM").name,
    )


def _head_description(config: LlavaRewardConfig) -> str:
    if config.head == "linear":
        return "linear value head on the hidden state (no SkipCA)"
    source = "the projector output" if config.visual_layer == 0 else f"hidden state {config.visual_layer}"
    return f"SkipCA over the visual tokens of {source} (single head, residual, RMSNorm), then a linear value head"


def _trained_weights(model_dir: Path, config: LlavaRewardConfig, lora: dict | None) -> str:
    if not is_adapter_bundle(model_dir):
        return "all weights (full fine-tuning, `model.safetensors`)"
    modules = "vision projector, SkipCA and value head" if config.head == "skipca" else "vision projector and value head"
    head = f"{modules} (`reward_head.safetensors`)"
    if lora is None:
        return head
    return f"LoRA adapter on the language model (rank {lora['r']}, alpha {lora['lora_alpha']}), {head}"
