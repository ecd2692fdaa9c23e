"""Share a trained perspective on the Hugging Face Hub: `push_perspective(model_dir, repo_id, perspective)`.

Several perspectives trained on the same base live in one repo, one subfolder each (`alignment/`, `fidelity/`, ...).
A push uploads into `<perspective>/` exactly the files that make up the perspective, with a freshly rendered model
card, in one commit:

* weights and configs: `config.json`, `reward_head.safetensors`, `adapter_config.json`, `adapter_model.safetensors`
  (adapter bundle) or `model.safetensors` (+ shards and index; full model);
* the processor: `processor_config.json`, tokenizer and image-processor files, chat template;
* the code files a saved `auto_map` names (what `trust_remote_code=True` loading needs), only when there is one;
* `README.md` (the card), `metrics.json`, `conversion.json`.

Never checkpoints (`checkpoint-*/`), optimizer or scheduler states, `training_args.bin` or any other pickle. Files
of an earlier push that the new one does not have are deleted in the same commit, so a folder never mixes two models.
The repo's root card lists the perspectives; it is (re)written unless someone replaced it with their own text.

Example:
    >>> from llava_reward.hub_cards.push import files_that_belong
    >>> files_that_belong("outputs/fidelity")  # doctest: +SKIP
    ['adapter_config.json', 'adapter_model.safetensors', 'config.json', 'processor_config.json', ...]
"""

import json
import os
import re
import shutil
from pathlib import Path

from huggingface_hub import CommitOperationAdd
from huggingface_hub import CommitOperationDelete
from huggingface_hub import HfApi
from huggingface_hub.utils import validate_repo_id

from llava_reward.bundle import CARD_FILE
from llava_reward.bundle import METRICS_FILE
from llava_reward.bundle import is_adapter_bundle
from llava_reward.configuration import LlavaRewardConfig
from llava_reward.modeling_llava_reward import ADAPTER_CONFIG
from llava_reward.modeling_llava_reward import ADAPTER_WEIGHTS
from llava_reward.modeling_llava_reward import DEFAULT_BACKBONE_PREFIX
from llava_reward.modeling_llava_reward import LORA_FOLDER
from llava_reward.provenance import TRAINING_DATA_FILE

from .cards import CARD_NOTES_FILE
from .cards import CONVERSION_FILE
from .cards import REPO_CARD_MARKER
from .cards import is_hub_id
from .cards import read_metrics
from .cards import render_perspective_card
from .cards import render_repo_card


MODEL_FILES = {
    "config.json",
    "reward_head.safetensors",
    f"{LORA_FOLDER}/{ADAPTER_CONFIG}",
    f"{LORA_FOLDER}/{ADAPTER_WEIGHTS}",
    # llava-reward 0.1 wrote the LoRA adapter beside the config
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    TRAINING_DATA_FILE,
}
FULL_MODEL_FILES = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json")
PROCESSOR_FILES = {
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
}
CARD_FILES = {CARD_FILE, METRICS_FILE, CONVERSION_FILE, CARD_NOTES_FILE}
AUTO_MAP_FILES = ("config.json", "processor_config.json", "tokenizer_config.json", "preprocessor_config.json")


def files_that_belong(model_dir: str | os.PathLike) -> list[str]:
    """The names of the files of `model_dir` a push uploads (sorted); raise if it holds no trained perspective."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a folder.")
    names = {path.relative_to(model_dir).as_posix() for path in model_dir.iterdir() if path.is_file()}
    names |= {f"{LORA_FOLDER}/{path.name}" for path in (model_dir / LORA_FOLDER).glob("*") if path.is_file()}
    if "config.json" not in names or not (is_adapter_bundle(model_dir) or any(map(FULL_MODEL_FILES.fullmatch, names))):
        raise ValueError(
            f"{model_dir} holds no trained perspective: expected config.json with reward_head.safetensors (an "
            "adapter bundle) or model.safetensors (a full model), as `llava-reward train` writes them."
        )
    keep = names & (MODEL_FILES | PROCESSOR_FILES | CARD_FILES) | set(filter(FULL_MODEL_FILES.fullmatch, names))
    if _has_auto_map(model_dir, names):
        keep |= {name for name in names if name.endswith(".py")}
    return sorted(keep)


def _has_auto_map(model_dir: Path, names: set[str]) -> bool:
    return any(name in names and "auto_map" in json.loads((model_dir / name).read_text()) for name in AUTO_MAP_FILES)


def perspective_files(
    model_dir: str | os.PathLike,
    repo_id: str,
    perspective: str,
    *,
    revision: str | None = None,
    base_model: str | None = None,
    base_model_revision: str | None = None,
    metrics=None,
    recipe=None,
    license: str | None = None,
) -> dict[str, Path | bytes]:
    """What a push writes into `<perspective>/`: file name -> the file to copy, or the bytes to write.

    The card (`README.md`) is rendered; `config.json` is rewritten when `perspective` or `base_model` change what it
    records. The base model must be a Hub id (a local path would not load anywhere else).
    """
    validate_repo_id(repo_id)
    model_dir = Path(model_dir)
    files: dict[str, Path | bytes] = {name: model_dir / name for name in files_that_belong(model_dir)}
    config = LlavaRewardConfig.from_pretrained(model_dir)
    updates = {"perspective": perspective}
    if base_model is not None:
        updates.update(base_model=base_model, base_model_revision=base_model_revision)
    if any(getattr(config, key) != value for key, value in updates.items()):
        config_dict = json.loads((model_dir / "config.json").read_text()) | updates
        files["config.json"] = (json.dumps(config_dict, indent=2, sort_keys=True) + "\n").encode()
        for key, value in updates.items():
            setattr(config, key, value)
    portable = is_hub_id(config.base_model) or str(config.base_model).startswith(DEFAULT_BACKBONE_PREFIX)
    if is_adapter_bundle(model_dir) and not portable:
        raise ValueError(
            f"{model_dir / 'config.json'} names the base model {config.base_model!r}, which is not a Hub id: nobody "
            "else could load it. Pass the Hub id it was downloaded from (`base_model=`, `--base-model ORG/NAME`)."
        )
    metrics = read_metrics(metrics, model_dir)
    if metrics:
        files[METRICS_FILE] = (json.dumps(metrics, indent=2) + "\n").encode()
    card = render_perspective_card(
        model_dir,
        repo_id=repo_id,
        perspective=perspective,
        revision=revision,
        metrics=metrics,
        recipe=recipe,
        license=license,
        config=config,
    )
    files["README.md"] = str(card).encode()
    return dict(sorted(files.items()))


def write_local(files: dict[str, Path | bytes], folder: str | os.PathLike) -> Path:
    """Write `perspective_files(...)` into `folder`, laid out as on the Hub.

    Files of an earlier export that no longer belong are removed, unless `folder` is the model folder itself (then
    the card and configs are written in place and nothing else is touched).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    in_place = any(isinstance(source, Path) and source.parent.resolve() == folder.resolve() for source in files.values())
    if not in_place:
        for stale in {path.name for path in folder.iterdir() if path.is_file()} - files.keys():
            (folder / stale).unlink()
    for name, source in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            (folder / name).write_bytes(source)
        elif not in_place:
            shutil.copyfile(source, folder / name)
    return folder


def push_perspective(
    model_dir: str | os.PathLike,
    repo_id: str,
    perspective: str,
    *,
    revision: str | None = None,
    private: bool = False,
    base_model: str | None = None,
    base_model_revision: str | None = None,
    metrics=None,
    recipe=None,
    license: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    api: HfApi | None = None,
) -> str:
    r"""
    Upload the perspective in `model_dir` to `<repo_id>/<perspective>/` with its model card, in one commit.

    Args:
        model_dir: the folder `llava-reward train` (or `convert-original`) wrote.
        repo_id (`str`): the Hub model repo (`org/name`), created (private if `private`) when missing.
        perspective (`str`): the subfolder, e.g. `"fidelity"`; recorded in the uploaded `config.json`.
        revision (`str`, *optional*): the branch to commit to (created from `main` when missing); default `main`.
        base_model, base_model_revision (*optional*): the Hub id (and revision) of the base VLM, when the bundle
            recorded a local path.
        metrics (`dict` or path, *optional*): evaluation results; default `model_dir/metrics.json` if present.
        recipe (`dict` or path, *optional*): the training recipe shown in the card.
        license (`str`, *optional*): license id for the card's front matter.
        api (`HfApi`, *optional*): the client to use (default `HfApi(token=token)`).

    Returns:
        `str`: the URL of the commit.

    Example:

    ```python
    >>> push_perspective("outputs/fidelity", "me/llava-reward-qwen", "fidelity")  # doctest: +SKIP
    'https://huggingface.co/me/llava-reward-qwen/commit/3f0c...'
    ```"""
    files = perspective_files(
        model_dir,
        repo_id,
        perspective,
        revision=revision,
        base_model=base_model,
        base_model_revision=base_model_revision,
        metrics=metrics,
        recipe=recipe,
        license=license,
    )
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    existing = api.list_repo_files(repo_id, revision=revision)
    operations = [
        CommitOperationAdd(path_in_repo=f"{perspective}/{name}", path_or_fileobj=source) for name, source in files.items()
    ]
    operations += [
        CommitOperationDelete(path_in_repo=path)
        for path in existing
        if path.startswith(f"{perspective}/") and path.removeprefix(f"{perspective}/") not in files
    ]
    base_model = base_model or LlavaRewardConfig.from_pretrained(model_dir).base_model
    root_card = _root_card(api, repo_id, revision, existing, perspective, base_model, license)
    if root_card is not None:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(root_card).encode()))
    commit = api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or f"Upload the {perspective} perspective",
        revision=revision,
    )
    return commit.commit_url


def _root_card(api: HfApi, repo_id: str, revision, existing: list[str], perspective: str, base_model, license):
    """The repo's root card listing its perspectives, or None when the current one is someone's own text."""
    if "README.md" in existing:
        current = Path(api.hf_hub_download(repo_id, "README.md", revision=revision)).read_text()
        if REPO_CARD_MARKER not in current:
            return None
    perspectives = {path.split("/")[0] for path in existing if path.count("/") == 1 and path.endswith("/config.json")}
    return render_repo_card(repo_id, sorted(perspectives | {perspective}), base_model, license)
