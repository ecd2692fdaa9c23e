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
from huggingface_hub import EvalResult
from huggingface_hub import ModelCard
from huggingface_hub import ModelCardData
from huggingface_hub.utils import HFValidationError
from huggingface_hub.utils import validate_repo_id

from llava_reward.bundle import METRICS_FILE
from llava_reward.bundle import is_adapter_bundle
from llava_reward.configuration import LlavaRewardConfig
from llava_reward.families import get_family
from llava_reward.modeling_llava_reward import ADAPTER_CONFIG
from llava_reward.modeling_llava_reward import DEFAULT_BACKBONE_PREFIX
from llava_reward.modeling_llava_reward import lora_folder
from llava_reward.objectives import get_objective
from llava_reward.provenance import TRAINING_DATA_FILE


TEMPLATES = Path(__file__).parent / "templates"
CONVERSION_FILE = "conversion.json"
# What a card must say about this particular model (e.g. the default model's caveats): appended to the rendered card
# on every render, so that it survives `push`.
CARD_NOTES_FILE = "card_notes.md"
LIBRARY_NAME = "llava-reward"
# The Hub has no reward-model task; scoring (image, text) pairs is closest to zero-shot image classification (which
# CLIP-style preference models such as PickScore also use). The transformers pipeline task is TASK_TAG.
PIPELINE_TAG = "zero-shot-image-classification"
TASK_TAG = "text-to-image-reward"
# Benchmark -> (dataset id for the model-index, readable name, the metrics worth a model-index entry).
BENCHMARK_DATASETS = {
    "mjbench": ("MJ-Bench/MJ-Bench", "MJ-Bench", ("accuracy_with_ties", "accuracy_without_ties")),
    "pairwise": ("pairwise", "pairwise preferences", ("accuracy_with_ties", "accuracy_without_ties")),
    "tifa160": ("tifa160", "TIFA160", ("pearson", "kendall_tau_b", "tie_calibrated_accuracy")),
    "unpaired": ("unpaired", "labelled images", ("accuracy", "f1", "auroc")),
}
# The first line of a repository card `push` may regenerate; a card without it is the user's and is left alone.
REPO_CARD_MARKER = "<!-- llava-reward:repo-card -->"
TAGS = ["llava-reward", "reward-model", TASK_TAG, "text-to-image"]

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
    "image_root",
}
# Recipe keys that may hold a local path: shown only when they hold a Hub id.
PATH_RECIPE_KEYS = {"train", "eval"}


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repo id (`org/name`) rather than a local path."""
    if not name or Path(name).exists() or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_dataset_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub dataset id (`org/name`, no file suffix) rather than a local data file."""
    return is_hub_id(name) and "/" in name and not Path(name).suffix


def metric_rows(metrics: dict | list) -> list[tuple[str, str, str]]:
    """`(benchmark, metric, value)` rows of evaluation results.

    `metrics` is one run or a list of runs; a run is an `llava-reward evaluate` metrics.json (its `results`, under
    the benchmark and dataset names; run details such as paths are left out; a run on images the model was trained on
    is marked "not held out"), `{benchmark: {metric: value}}` or `{metric: value}`. Deeper nesting joins the inner
    keys with " / "; short lists (confidence intervals) are shown.
    """
    rows = []
    for run in metrics if isinstance(metrics, list) else [metrics]:
        if isinstance(run.get("results"), dict) and "benchmark" in run:
            name = run["benchmark"] + (f" ({run['dataset_name']})" if run.get("dataset_name") else "")
            name += " - NOT held out: the model was trained on these images" if run.get("held_out") is False else ""
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


def eval_results(metrics: dict | list) -> list[EvalResult]:
    """The model-index entries of `llava-reward evaluate` runs: each benchmark's headline metrics, overall and per
    MJ-Bench subset. Runs on images the model was trained on (`held_out: false`) are left out."""
    results = []
    for run in metrics if isinstance(metrics, list) else [metrics]:
        if not (isinstance(run.get("results"), dict) and run.get("benchmark") in BENCHMARK_DATASETS):
            continue
        if run.get("held_out") is False:
            continue
        dataset_type, dataset_name, headline = BENCHMARK_DATASETS[run["benchmark"]]
        groups = {run.get("dataset_name") or "": run["results"].get("overall", {})}
        groups.update({name: values for name, values in run["results"].get("subsets", {}).items() if name})
        for group, values in groups.items():
            for metric in headline:
                value = values.get(metric)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    results.append(
                        EvalResult(
                            task_type=PIPELINE_TAG,
                            task_name="Text-to-image reward",
                            dataset_type=dataset_type,
                            dataset_name=f"{dataset_name} {group}".strip(),
                            dataset_config=group or None,
                            metric_type=metric,
                            metric_name=metric.replace("_", " "),
                            metric_value=round(float(value), 4),
                        )
                    )
    return results


def training_rows(recipe: dict | None, lora: dict | None) -> list[tuple[str, str]]:
    """`(setting, value)` rows describing how the model was trained: the recipe's sections and the LoRA shape (never
    a path of the training machine)."""
    rows = []
    for section, values in (recipe or {}).items():
        if isinstance(values, dict):
            rows += [
                (f"{section}.{key}", _format_value(value) if not isinstance(value, (list, dict)) else json.dumps(value))
                for key, value in values.items()
                if key not in UNDESCRIPTIVE_RECIPE_KEYS
                and value is not None
                and (key not in PATH_RECIPE_KEYS or is_dataset_id(str(value)))
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
    datasets: list[str] | None = None,
) -> ModelCard:
    r"""
    The model card of the perspective saved in `model_dir` (an adapter bundle or a full-model folder).

    Args:
        model_dir: the folder `llava-reward train` (or `convert-original`) wrote.
        repo_id (`str`): where the card's usage snippet loads the model from (a Hub id, or a local folder holding the
            perspective subfolders).
        perspective (`str`, *optional*): what the reward judges; defaults to the config's `perspective`.
        subfolder (`str`, *optional*): the folder of `repo_id` holding the model; defaults to `perspective` (`""`:
            the model is `repo_id` itself).
        revision (`str`, *optional*): the Hub revision the snippet pins.
        metrics (`dict` or path, *optional*): evaluation results; defaults to `model_dir/metrics.json` when present.
        recipe (`dict` or path, *optional*): the training recipe (YAML or JSON) for the training section.
        license (`str`, *optional*): the license id for the front matter (e.g. the base model's).
        config (`LlavaRewardConfig`, *optional*): the config to describe, if not the one saved in `model_dir`.
        datasets (`list[str]`, *optional*): the Hub ids of the training datasets (default: those the model's
            `training_data.json` names).

    The front matter carries the Hub's metadata: `library_name`, `pipeline_tag`, `base_model` (a Hub id), `datasets`,
    `tags`, `license` and a `model-index` of the held-out evaluation results of `metrics`. A `card_notes.md` in
    `model_dir` is appended to the card.

    Example:

    ```python
    >>> card = render_perspective_card("outputs/fidelity", repo_id="me/llava-reward-qwen")  # doctest: +SKIP
    >>> card.save("outputs/fidelity/README.md")  # doctest: +SKIP
    ```"""
    model_dir = Path(model_dir)
    config = config or LlavaRewardConfig.from_pretrained(model_dir)
    perspective = perspective or config.perspective
    adapter_folder = lora_folder(model_dir)
    lora = json.loads((adapter_folder / ADAPTER_CONFIG).read_text()) if adapter_folder is not None else None
    conversion_file = model_dir / CONVERSION_FILE
    metrics = read_metrics(metrics, model_dir)
    hub_base = is_hub_id(config.base_model)
    card_data = ModelCardData(
        model_name=f"llava-reward-{perspective}",
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        base_model=config.base_model if hub_base else None,
        base_model_relation=("adapter" if lora else "finetune") if hub_base else None,
        datasets=datasets or training_datasets(model_dir) or None,
        license=license,
        tags=TAGS + [perspective, config.objective],
        eval_results=eval_results(metrics) or None,
    )
    notes_file = model_dir / CARD_NOTES_FILE
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "perspective_card.md"),
        repo_id=repo_id,
        # the default model loads by name with llava_reward.load, by folder with the others
        transformers_source="llava_reward.loading.default_model_dir()" if repo_id == "default" else json.dumps(repo_id),
        subfolder=subfolder if subfolder is not None else perspective,
        task=TASK_TAG,
        revision=revision,
        perspective=perspective,
        perspective_description=PERSPECTIVES.get(perspective, f"as defined by its training data for {perspective!r}"),
        base_model=_describe_base(config.base_model),
        base_model_name=Path(config.base_model or "a VLM").name,
        base_model_revision=config.base_model_revision if hub_base else None,
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
        pooling_description=_pooling_description(config),
        reward_reading=_reward_reading(config),
        trained_weights=_trained_weights(model_dir, config, lora, read_recipe(recipe)),
        training_rows=training_rows(read_recipe(recipe), lora),
        metric_rows=metric_rows(metrics),
        conversion=json.loads(conversion_file.read_text()) if conversion_file.is_file() else None,
    )
    if notes_file.is_file():
        card.text += "\n" + notes_file.read_text(encoding="utf-8").strip() + "\n"
    return card


def training_datasets(model_dir: Path) -> list[str]:
    """The Hub ids among the data sources the model's `training_data.json` records."""
    path = model_dir / TRAINING_DATA_FILE
    if not path.is_file():
        return []
    sources = json.loads(path.read_text(encoding="utf-8")).get("sources", [])
    return [source for source in sources if is_dataset_id(source)]


def render_repo_card(repo_id: str, perspectives: list[str], base_model: str | None, license: str | None = None) -> ModelCard:
    """The card at the root of a repo of perspectives: what each subfolder is and how to load them together."""
    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        base_model=base_model if is_hub_id(base_model) else None,
        license=license,
        tags=TAGS + sorted(perspectives),
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "repo_card.md"),
        marker=REPO_CARD_MARKER,
        repo_id=repo_id,
        perspectives=sorted(perspectives),
        base_model=_describe_base(base_model),
        base_model_name=Path(base_model or "a VLM").name,
    )


def _describe_base(base_model: str | None) -> str:
    """The base model as a card shows it: never a path of the machine that trained it."""
    if not base_model:
        return "(not recorded)"
    if is_hub_id(base_model) or base_model.startswith((DEFAULT_BACKBONE_PREFIX, "./", "../")):
        return base_model  # a Hub id, the default backbone's stable name, or a folder relative to this one
    return f"{Path(base_model).name} (a local folder)"


def _pooling_description(config: LlavaRewardConfig) -> str:
    if config.pooling == "last":
        return "at the last token (the reward token)"
    if config.pooling == "mean":
        return "mean over tokens"
    if config.hidden_layer == 0:
        return "mean over the image tokens (the projector output: the prompt is not read)"
    return "mean over the image tokens"


def _reward_reading(config: LlavaRewardConfig) -> str:
    if config.pooling == "image" and config.hidden_layer == 0:
        return "the mean of its projected image tokens (no language-model layer runs: the prompt is not read)"
    return {"last": "its hidden state at the last token", "mean": "the mean of its hidden states over the tokens",
            "image": "the mean of its hidden states over the image tokens"}[config.pooling]


def _head_description(config: LlavaRewardConfig) -> str:
    standardised = (", each feature standardised with the training images' mean and deviation"
                    if config.standardize_features else "")
    if config.head == "linear":
        return f"linear value head on the hidden state{standardised} (no SkipCA)"
    source = "the projector output" if config.visual_layer == 0 else f"hidden state {config.visual_layer}"
    return (f"SkipCA over the visual tokens of {source} (single head, residual, RMSNorm){standardised}, then a linear "
            "value head")


def _trained_weights(model_dir: Path, config: LlavaRewardConfig, lora: dict | None, recipe: dict | None) -> str:
    if not is_adapter_bundle(model_dir):
        return "all weights (full fine-tuning, `model.safetensors`)"
    trains_projector = ((recipe or {}).get("training") or {}).get("train_projector", True)
    modules = [*(["vision projector"] * trains_projector), *(["SkipCA"] * (config.head == "skipca")), "value head"]
    listed = modules[0] if len(modules) == 1 else f"{', '.join(modules[:-1])} and {modules[-1]}"
    fitted = ", with the feature standardiser fitted before training" if config.standardize_features else ""
    head = f"{listed} (`reward_head.safetensors`{fitted})"
    if lora is None:
        return head
    return f"LoRA adapter on the language model (rank {lora['r']}, alpha {lora['lora_alpha']}), {head}"
