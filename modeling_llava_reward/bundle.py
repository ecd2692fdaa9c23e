"""A trained perspective on disk: the folder `llava-reward train` writes, and every loader reads.

Two layouts, told apart by their files, both loaded by `LlavaRewardModel.from_pretrained` (and so by
`AutoModel.from_pretrained`, with or without `trust_remote_code`), `LlavaRewardScorer.from_pretrained` and
`llava_reward.load`:

* **adapter perspective** (LoRA or head-only training; what the Hub shares, one subfolder per perspective):
  `config.json` (the `LlavaRewardConfig`, naming `base_model` and its revision, with the `auto_map` and code files of
  `trust_remote_code` loading), `reward_head.safetensors` (the trained non-LoRA parameters: projector, SkipCA, value
  head), optionally `lora/` (the PEFT LoRA adapter on the language model; its `modules_to_save` carry a copy of the
  head, so that PEFT's own `PeftModel.from_pretrained(model, folder, subfolder="lora")` restores the whole
  perspective), the processor files, and `training_data.json` (what the model was trained on). The base VLM's weights
  are not copied: they load from `base_model`.
* **full model** (full fine-tuning): `LlavaRewardModel.save_pretrained` output (`model.safetensors` + code files).

Example:
    >>> from llava_reward.bundle import REWARD_HEAD_WEIGHTS
    >>> REWARD_HEAD_WEIGHTS
    'reward_head.safetensors'
"""

import copy
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save_file
from transformers.dynamic_module_utils import custom_object_save

from .default_backbone import backbone_reference
from .default_backbone import build_fingerprint
from .default_backbone import is_default_backbone
from .default_backbone import read_build_info
from .modeling_llava_reward import ADAPTER_CONFIG
from .modeling_llava_reward import ADAPTER_WEIGHTS
from .modeling_llava_reward import LORA_FOLDER
from .modeling_llava_reward import REWARD_HEAD_WEIGHTS
from .modeling_llava_reward import LlavaRewardModel
from .modeling_llava_reward import lora_folder


METRICS_FILE = "metrics.json"  # evaluation results (`llava-reward evaluate`), shown in the model card
CARD_FILE = "README.md"  # the model card
# PEFT's save_pretrained writes a blank model card of its own into the adapter folder: not ours to ship.
PEFT_CARD = "README.md"


def unwrap(model) -> LlavaRewardModel:
    """The `LlavaRewardModel` inside a PEFT or DDP wrapper (or the model itself)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_reward_bundle(model, output_dir: str | os.PathLike, processor=None, state_dict=None) -> Path:
    """Write an adapter perspective for `model` (a `LlavaRewardModel`, possibly inside a `PeftModel`).

    `state_dict`: the trained parameters, whole and named as in `model.named_parameters()`, for a model whose own
    parameters are shards (FSDP, DeepSpeed ZeRO-3 training gathers them first); by default they are read from
    `model`. The files are the same either way.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    reward_model = unwrap(model)
    config = copy.deepcopy(reward_model.config)
    config.base_model, config.base_model_revision = portable_base_reference(
        config.base_model, config.base_model_revision, output_dir
    )
    # The modeling code files and `auto_map`, so that AutoModel loads the folder (also with trust_remote_code).
    custom_object_save(reward_model, output_dir, config=config)
    config.save_pretrained(output_dir)
    head = reward_model.reward_head_state_dict()
    if state_dict is not None:
        prefix = reward_model_prefix(model)
        head = {name: state_dict[prefix + name].detach().contiguous() for name in head}
    head = {name: tensor.cpu() for name, tensor in head.items()}
    save_file(head, output_dir / REWARD_HEAD_WEIGHTS, metadata={"format": "pt"})
    if reward_model is not model and hasattr(model, "peft_config"):
        save_lora(model, output_dir / LORA_FOLDER, head, head_modules(reward_model), state_dict=state_dict)
    if processor is not None:
        processor.save_pretrained(output_dir)
    return output_dir


def portable_base_reference(base_model: str | None, revision: str | None, saved_in: str | os.PathLike):
    """How a model saved in `saved_in` records its base so that it loads on another machine: the default backbone
    by its stable name (and its build fingerprint as the revision), another local folder relative to `saved_in`
    (`../base`), a Hub id as it is. Returns `(base_model, base_model_revision)`."""
    if not base_model or not os.path.isdir(base_model):
        return base_model, revision
    info = read_build_info(Path(base_model))
    if info is not None and is_default_backbone(Path(base_model), info.get("image_size"), info.get("tiles", 1)):
        return backbone_reference(info["image_size"], info.get("tiles", 1)), build_fingerprint(info)
    relative = os.path.relpath(Path(base_model).resolve(), Path(saved_in).resolve())
    return (relative if relative.startswith("..") else f"./{relative}"), None


def save_lora(peft_model, folder: Path, head: dict[str, torch.Tensor], modules: list[str], state_dict=None) -> None:
    """The PEFT adapter of `peft_model` in `folder`, with the head as `modules_to_save`: PEFT's own loaders then
    restore the whole perspective, not the LoRA weights alone (which would give another reward). `state_dict`: as in
    `save_reward_bundle` (PEFT picks the LoRA weights out of it)."""
    peft_model.save_pretrained(folder, state_dict=state_dict)
    (folder / PEFT_CARD).unlink(missing_ok=True)
    weights = load_file(folder / ADAPTER_WEIGHTS)
    weights.update({f"base_model.model.{name}": tensor for name, tensor in head.items()})
    save_file(weights, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    config["modules_to_save"] = modules
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def reward_model_prefix(model) -> str:
    """Where the `LlavaRewardModel` sits in `model`'s parameter names: `"base_model.model."` in a `PeftModel`, `""`
    for the model itself."""
    reward_model = unwrap(model)
    name = next(name for name, module in model.named_modules() if module is reward_model)
    return f"{name}." if name else ""


def reward_bundle_state_dict(model, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The trained tensors of the adapter perspective at `path`, named as in `model.named_parameters()`: the inverse of
    `save_reward_bundle(model, path)` for the same `model` (a `LlavaRewardModel`, possibly inside a `PeftModel`).

    Nothing is loaded into `model`, whose parameters may be shards (resuming FSDP or ZeRO-3 training). The LoRA
    weights come from `lora/`, without the head's `modules_to_save` copy (`reward_head.safetensors` is read).
    """
    path = Path(path)
    prefix = reward_model_prefix(model)
    state_dict = {prefix + name: tensor for name, tensor in load_file(path / REWARD_HEAD_WEIGHTS).items()}
    lora = lora_folder(path)
    if lora is not None and hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        # PEFT renames parameters when it saves them (it drops the adapter name): ask it for each name's saved key
        # by handing it the parameters' indices instead of their values.
        names = [name for name, _ in model.named_parameters()]
        saved_as = get_peft_model_state_dict(model, state_dict={name: torch.tensor(i) for i, name in enumerate(names)})
        adapter = {key: value for key, value in load_file(lora / ADAPTER_WEIGHTS).items() if "lora_" in key}
        missing, unexpected = saved_as.keys() - adapter.keys(), adapter.keys() - saved_as.keys()
        if missing or unexpected:
            raise ValueError(
                f"{lora / ADAPTER_WEIGHTS} does not match the model's LoRA adapter: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}."
            )
        state_dict.update({names[int(index)]: adapter[key] for key, index in saved_as.items()})
    return state_dict


def head_modules(model: LlavaRewardModel) -> list[str]:
    """The module paths of the head (value head, SkipCA, feature standardiser, projector): what PEFT's
    `modules_to_save` names."""
    optional = {"skip_cross_attention": model.skip_cross_attention, "feature_standardizer": model.feature_standardizer}
    modules = ["value_head"] + [name for name, module in optional.items() if module is not None]
    for path in model.family.projector_modules:
        module = model.vlm.get_submodule(path)
        children = [f"{path}.{index}" for index in range(len(module))] if isinstance(module, torch.nn.ModuleList) else [path]
        modules += [f"vlm.{child}" for child in children]
    return modules


def is_adapter_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / REWARD_HEAD_WEIGHTS).is_file()


def model_folder(path_or_repo: str | os.PathLike, *, subfolder: str | None = None, revision: str | None = None) -> Path:
    """The local folder of a saved model: `path_or_repo/subfolder` when it is a folder here, otherwise the snapshot of
    Hub repo `path_or_repo` at `revision` (downloaded, or read from the offline cache), restricted to `subfolder`."""
    local = Path(path_or_repo) / (subfolder or "")
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    allow = [f"{subfolder}/*", f"{subfolder}/{LORA_FOLDER}/*"] if subfolder else None
    return Path(snapshot_download(str(path_or_repo), revision=revision, allow_patterns=allow)) / (subfolder or "")


__all__ = [
    "CARD_FILE",
    "METRICS_FILE",
    "REWARD_HEAD_WEIGHTS",
    "head_modules",
    "portable_base_reference",
    "is_adapter_bundle",
    "reward_bundle_state_dict",
    "reward_model_prefix",
    "model_folder",
    "save_reward_bundle",
    "unwrap",
]
