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
import logging
import os
import re
import shutil
from pathlib import Path
from pathlib import PurePath

from huggingface_hub import CommitOperationAdd
from huggingface_hub import CommitOperationDelete
from huggingface_hub import HfApi
from huggingface_hub.utils import validate_repo_id

from llava_reward.bundle import CARD_FILE
from llava_reward.bundle import METRICS_FILE
from llava_reward.bundle import is_adapter_bundle
from llava_reward.configuration import LlavaRewardConfig
from llava_reward.files import publish
from llava_reward.files import replacing
from llava_reward.files import staging_dir
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


logger = logging.getLogger(__name__)

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
    keep |= code_files(model_dir, names)
    _check_inside(model_dir, sorted(keep))
    return sorted(keep)


def code_files(model_dir: Path, names: set[str]) -> set[str]:
    """The code files `trust_remote_code` loading needs: the modules the folder's `auto_map` entries name, and the
    files they import relatively (as transformers resolves them), never any other `.py` file of the folder."""
    from transformers.dynamic_module_utils import get_relative_import_files

    modules = {module for name in AUTO_MAP_FILES if name in names for module in _auto_map_modules(model_dir / name)}
    found = set()
    for module in sorted(modules):
        if f"{module}.py" not in names:
            logger.warning("%s: auto_map names %s.py, which is not in the folder: it is not uploaded.", model_dir, module)
            continue
        _check_inside(model_dir, [f"{module}.py"])
        found |= {f"{module}.py"} | {Path(path).name for path in get_relative_import_files(str(model_dir / f"{module}.py"))}
    return found & names


def _auto_map_modules(config_file: Path) -> set[str]:
    """Module names of every `auto_map` entry in a JSON file (at any depth): "module.Class", ["module.Slow", None]."""
    modules = set()

    def visit(value, in_auto_map: bool):
        if isinstance(value, dict):
            for key, item in value.items():
                visit(item, in_auto_map or key == "auto_map")
        elif isinstance(value, list):
            for item in value:
                visit(item, in_auto_map)
        elif in_auto_map and isinstance(value, str) and "." in value:
            modules.add(value.split("--")[-1].rsplit(".", 1)[0])  # "repo--module.Class": code from another repo

    visit(json.loads(config_file.read_text()), False)
    return modules


def _check_inside(model_dir: Path, names: list[str]) -> None:
    """Refuse a file that is a symbolic link out of `model_dir`: a push reads nothing outside the model folder."""
    root = model_dir.resolve()
    for name in names:
        target = (model_dir / name).resolve()
        if not target.is_relative_to(root):
            raise ValueError(
                f"{model_dir / name} is a symbolic link to {target}, outside {model_dir}: a push never reads files "
                "outside the model folder; copy the file into it."
            )


def check_perspective_name(name: str) -> str:
    """`name` if it is a plain folder name (letters, digits, `_`, `-`, `.`; not starting with `.` or `-`), else a
    `ValueError`: a perspective is a subfolder of the repo (and of `--local-dir`), never a path out of it."""
    if not isinstance(name, str) or not re.fullmatch(r"\w[\w.-]*", name):
        raise ValueError(
            f"perspective {name!r} is not a plain folder name (letters, digits, '_', '-', '.', starting with a "
            "letter or digit), e.g. 'fidelity'."
        )
    return name


def _is_local_path(value) -> bool:
    return isinstance(value, str) and bool(re.match(r"(/|~|\\\\|[A-Za-z]:[\\/])", value))


def without_local_paths(payload, replace):
    """`payload` (parsed JSON) with every string that is an absolute local path replaced by `replace(path)`: what is
    uploaded must not reveal this machine's folders (nor point anyone else to them)."""
    if isinstance(payload, dict):
        return {key: without_local_paths(value, replace) for key, value in payload.items()}
    if isinstance(payload, list):
        return [without_local_paths(value, replace) for value in payload]
    return replace(payload) if _is_local_path(payload) else payload


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
    check_perspective_name(perspective)
    model_dir = Path(model_dir)
    files: dict[str, Path | bytes] = {name: model_dir / name for name in files_that_belong(model_dir)}
    config = LlavaRewardConfig.from_pretrained(model_dir)
    updates = {"perspective": perspective}
    if base_model is not None:
        updates.update(base_model=base_model, base_model_revision=base_model_revision)
    saved = json.loads((model_dir / "config.json").read_text())
    # A local path is replaced by null (e.g. a full model's local `base_model`, the VLM config's `_name_or_path`).
    uploaded = without_local_paths(saved | updates, lambda path: None)
    if uploaded != saved:
        files["config.json"] = (json.dumps(uploaded, indent=2, sort_keys=True) + "\n").encode()
    for key, value in updates.items():
        setattr(config, key, value)
    portable = is_hub_id(config.base_model) or str(config.base_model).startswith(DEFAULT_BACKBONE_PREFIX)
    if is_adapter_bundle(model_dir) and not portable:
        raise ValueError(
            f"{model_dir / 'config.json'} names the base model {config.base_model!r}, which is not a Hub id: nobody "
            "else could load it. Pass the Hub id it was downloaded from (`base_model=`, `--base-model ORG/NAME`)."
        )
    if not is_adapter_bundle(model_dir) and _is_local_path(config.base_model):
        config.base_model = None  # a full model trained from a local base: the card shows no path of this machine
    # Local paths of the evaluation (model, data, image root) keep their last folder name only.
    metrics = without_local_paths(read_metrics(metrics, model_dir), lambda path: PurePath(path).name)
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


def write_local(files: dict[str, Path | bytes], folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `perspective_files(...)` into `folder`, laid out as on the Hub.

    The files are written into a new staging folder beside `folder`, which then takes its place: an earlier export
    there is replaced whole (nothing of it mixes with the new one), and a failure leaves it as it was. A `folder`
    holding anything an export does not write (another file, a link, a subfolder) is refused unless `overwrite`:
    nothing this command did not write is deleted without being asked. When `folder` is the model folder itself, the
    rendered files (card, configs, metrics) are written in place, each atomically, and nothing else is touched.
    """
    folder = Path(folder)
    if any(isinstance(source, Path) and source.parent.resolve() == folder.resolve() for source in files.values()):
        for name, source in files.items():
            if isinstance(source, bytes):
                _write_bytes(folder / name, source)
        return folder
    if not overwrite and (foreign := _not_exported(folder)):
        raise FileExistsError(
            f"{folder} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which an export does not "
            "write: choose another --local-dir, or replace the folder with --overwrite."
        )
    staging = staging_dir(folder)
    try:
        for name, source in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                (staging / name).write_bytes(source)
            else:
                shutil.copyfile(source, staging / name)
    except BaseException:
        shutil.rmtree(staging)
        raise
    return publish(staging, folder)


def _not_exported(folder: Path) -> list[str]:
    """What in `folder` an export never writes (sorted, relative to it): the things a re-export must not delete."""
    if not os.path.lexists(folder):
        return []
    if folder.is_symlink() or not folder.is_dir():
        return [f"{folder.name} (not a folder)"]
    exported = MODEL_FILES | PROCESSOR_FILES | CARD_FILES | _package_code_files()
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_symlink() or (not path.is_dir() and path.name not in exported and not FULL_MODEL_FILES.fullmatch(path.name))
    )


def _package_code_files() -> set[str]:
    """Names of the code files an export may hold: this package's modules (what `auto_map` can name)."""
    import llava_reward

    return {path.name for path in Path(llava_reward.__file__).parent.glob("*.py")}


def _write_bytes(path: Path, content: bytes) -> None:
    with replacing(path, binary=True) as file:
        file.write(content)


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
