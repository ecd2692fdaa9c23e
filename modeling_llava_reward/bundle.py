"""A trained perspective on disk: the folder `llava-reward train` writes and `LlavaRewardScorer` reads.

Two layouts, told apart by their files:

* **adapter bundle** (LoRA or head-only training; what the Hub shares, one subfolder per perspective):
  `config.json` (the `LlavaRewardConfig`, naming `base_model` and its revision), `reward_head.safetensors` (the
  trained non-LoRA parameters: projector, SkipCA, value head), optionally `adapter_config.json` +
  `adapter_model.safetensors` (the PEFT LoRA adapter on the language model), and the processor files.
  The base VLM weights are not copied: they load from `base_model`.
* **full model** (full fine-tuning): `LlavaRewardModel.save_pretrained` output (`model.safetensors` + code files).

Example:
    >>> from llava_reward.bundle import REWARD_HEAD_WEIGHTS
    >>> REWARD_HEAD_WEIGHTS
    'reward_head.safetensors'
"""

import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save_file
from transformers import AutoModel

from .configuration import LlavaRewardConfig
from .modeling_llava_reward import LlavaRewardModel


REWARD_HEAD_WEIGHTS = "reward_head.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
METRICS_FILE = "metrics.json"  # evaluation results (`llava-reward evaluate`), shown in the model card
CARD_FILE = "README.md"  # the model card


def reward_head_state_dict(model: LlavaRewardModel) -> dict[str, torch.Tensor]:
    """The parameters trained besides LoRA: the projector, SkipCA and the value head (names as in `model`)."""
    projector = {f"vlm.{name}" for name in model.family.projector_parameters(model.vlm)}
    return {
        name: parameter.detach().contiguous()
        for name, parameter in model.named_parameters()
        if name in projector or name.startswith(("skip_cross_attention.", "value_head."))
    }


def unwrap(model) -> LlavaRewardModel:
    """The `LlavaRewardModel` inside a PEFT or DDP wrapper (or the model itself)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_reward_bundle(model, output_dir: str | os.PathLike, processor=None) -> Path:
    """Write an adapter bundle for `model` (a `LlavaRewardModel`, possibly inside a `PeftModel`)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    reward_model = unwrap(model)
    reward_model.config.save_pretrained(output_dir)
    head = {name: tensor.cpu() for name, tensor in reward_head_state_dict(reward_model).items()}
    save_file(head, output_dir / REWARD_HEAD_WEIGHTS, metadata={"format": "pt"})
    if reward_model is not model and hasattr(model, "peft_config"):
        model.save_pretrained(output_dir)  # adapter_config.json + adapter_model.safetensors (LoRA only)
    if processor is not None:
        processor.save_pretrained(output_dir)
    return output_dir


def is_adapter_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / REWARD_HEAD_WEIGHTS).is_file()


def load_reward_bundle(
    path: str | os.PathLike,
    *,
    base=None,
    revision: str | None = None,
    dtype=None,
    device_map=None,
    merge_lora: bool = True,
    trust_remote_code: bool = False,
) -> LlavaRewardModel:
    """Load an adapter bundle onto its base VLM (`base` overrides the recorded `base_model`: a path or instance).

    With `merge_lora`, LoRA weights are merged into the base (fastest inference); otherwise the `PeftModel` is kept.
    """
    path = Path(path)
    vlm = load_base_vlm(
        path, base=base, revision=revision, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code
    )
    model = reward_model_on(path, vlm)
    if (path / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path, is_trainable=False)
        if merge_lora:
            model = model.merge_and_unload()
    return model


def load_base_vlm(
    path: str | os.PathLike,
    *,
    base=None,
    revision: str | None = None,
    dtype=None,
    device_map=None,
    trust_remote_code: bool = False,
):
    """The base VLM (its base model, no LM head) of the adapter bundle at `path`.

    `base` (a path, Hub id or loaded model) overrides the recorded `base_model`; `revision` overrides the recorded
    `base_model_revision`.
    """
    config = LlavaRewardConfig.from_pretrained(path)
    if base is None or isinstance(base, (str, os.PathLike)):
        source = base or config.base_model
        if not source:
            raise ValueError(f"{Path(path) / 'config.json'} names no `base_model`; pass `base=` (a path or Hub id).")
        base = AutoModel.from_pretrained(
            source,
            revision=revision or (config.base_model_revision if base is None else None),
            dtype=dtype,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
        )
    return base.base_model


def reward_model_on(path: str | os.PathLike, vlm) -> LlavaRewardModel:
    """The reward model of the adapter bundle at `path` on `vlm` (used in place), with its head and projector loaded.

    LoRA is not applied: see `load_reward_bundle`.
    """
    model = LlavaRewardModel(LlavaRewardConfig.from_pretrained(path), vlm=vlm)
    model.place_head_with_decoder()
    load_reward_head(model, Path(path) / REWARD_HEAD_WEIGHTS)
    return model


def load_reward_head(model: LlavaRewardModel, weights_file: str | os.PathLike) -> None:
    """Copy the projector, SkipCA and value-head weights of `weights_file` (a `reward_head.safetensors`) into `model`.

    Raises a `ValueError` naming the file when its tensors are not exactly the ones `model` trains.
    """
    saved = load_file(weights_file)
    expected = reward_head_state_dict(model)
    missing, unexpected = expected.keys() - saved.keys(), saved.keys() - expected.keys()
    if missing or unexpected:
        raise ValueError(
            f"{weights_file} does not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}."
        )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in saved:
                parameter.copy_(saved[name].to(parameter.dtype))


def model_folder(path_or_repo: str | os.PathLike, *, subfolder: str | None = None, revision: str | None = None) -> Path:
    """The local folder of a saved model: `path_or_repo/subfolder` when it is a folder here, otherwise the snapshot of
    Hub repo `path_or_repo` at `revision` (downloaded, or read from the offline cache), restricted to `subfolder`."""
    local = Path(path_or_repo) / (subfolder or "")
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    allow = [f"{subfolder}/*"] if subfolder else None
    return Path(snapshot_download(str(path_or_repo), revision=revision, allow_patterns=allow)) / (subfolder or "")
