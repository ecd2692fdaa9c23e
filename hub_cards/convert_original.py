"""Convert a published LLaVA-Reward checkpoint (github sjz5202/LLaVA-Reward, Hub smz8599/LLaVA-Reward) to an adapter
bundle of this package: `convert_original_checkpoint(src_dir, base_vlm, out_dir)`.

The published folder of one perspective holds:

* `reward_config.yaml`: `general_preference_tau`, `value_head_dim`, `add_cross_attention`, `is_general_preference`;
* `pytorch_model.bin` (a pickle, read with `torch.load(weights_only=True)` only: a file that needs anything but plain
  tensors is refused): `value_head`, SkipCA (`W_q`, `W_k`, `W_v`, `ca_layernorm`) and, when the projector was
  trained, its weights (Qwen2.5-VL `visual.merger` as `ln_q.weight`, `0.*`, `2.*`; LLaVA-NeXT
  `multi_modal_projector.linear_{1,2}.*`; Phi-3.5-vision `img_projection.{0,2}.*`);
* `lora/adapter_config.json` + `lora/adapter_model.{safetensors,bin}`: a PEFT LoRA adapter whose keys name the
  modules of the published model classes (transformers 4.x `...ForConditionalGeneration` subclasses), mapped here
  onto this package's module paths.

The converted model computes the paper's math on the published weights; where the published code computed
something else (e.g. which tokens its Qwen cross-attention saw), the difference is recorded in `conversion.json` and
the model card.

Example:
    >>> from llava_reward.hub_cards.convert_original import PUBLISHED_LAYOUTS
    >>> sorted(PUBLISHED_LAYOUTS)
    ['llava_next', 'phi3_v', 'qwen2_5_vl']
"""

import json
import logging
import os
import pickle
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoConfig

from llava_reward.bundle import save_reward_bundle
from llava_reward.families import get_family
from llava_reward.modeling_llava_reward import LlavaRewardModel
from llava_reward.objectives import get_objective
from llava_reward.processing_llava_reward import LlavaRewardProcessor

from .cards import CONVERSION_FILE
from .cards import PERSPECTIVES
from .cards import render_perspective_card


logger = logging.getLogger(__name__)

PUBLISHED_CONFIG_KEYS = ("general_preference_tau", "value_head_dim", "add_cross_attention", "is_general_preference")
# Published SkipCA / value-head parameter names (a component of the saved key) -> this package's module.
HEAD_MODULES = {
    "W_q": "skip_cross_attention.q_proj",
    "W_k": "skip_cross_attention.k_proj",
    "W_v": "skip_cross_attention.v_proj",
    "ca_layernorm": "skip_cross_attention.norm",
    "value_head": "value_head",
}
SKIPCA_MODULES = ("W_q", "W_k", "W_v", "ca_layernorm")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# LoRA settings carried over from the published adapter_config.json (targets are rewritten; the rest is irrelevant).
LORA_FIELDS = ("r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "use_dora", "fan_in_fan_out")


@dataclass(frozen=True)
class PublishedLayout:
    """How the published code named one VLM family's modules and what it computed differently.

    Attributes:
        module_prefixes: (published module-path prefix, this package's prefix relative to `LlavaRewardModel`), most
            specific first; both the transformers 4.4x layouts and the later `model.language_model` layout.
        projector_marker: a name component of the published projector keys.
        projector_keys: the last two components of a published projector key -> this package's parameter name.
        has_skipca: whether the published forward applied SkipCA at all.
        notes: differences between the published code's computation and this package's, for the model card.
        image_processor_size: the image-processor `size` the published scripts used, if not the base's default.
    """

    module_prefixes: tuple[tuple[str, str], ...]
    projector_marker: str
    projector_keys: dict[str, str]
    has_skipca: bool = True
    notes: tuple[str, ...] = ()
    image_processor_size: dict[str, int] | None = field(default=None)

    def our_module(self, published: str) -> str:
        for prefix, ours in self.module_prefixes:
            if published.startswith(prefix):
                return ours + published[len(prefix) :]
        raise ValueError(f"no module of this package corresponds to the published module {published!r}")


def _merger_keys(prefix: str) -> dict[str, str]:
    keys = {"ln_q.weight": f"{prefix}.ln_q.weight"}
    keys.update({f"{layer}.{kind}": f"{prefix}.mlp.{layer}.{kind}" for layer in (0, 2) for kind in ("weight", "bias")})
    return keys


PUBLISHED_LAYOUTS = {
    "qwen2_5_vl": PublishedLayout(
        module_prefixes=(
            ("model.language_model.", "vlm.language_model."),
            ("model.visual.", "vlm.visual."),
            ("model.", "vlm.language_model."),
            ("visual.", "vlm.visual."),
        ),
        projector_marker="merger",
        projector_keys=_merger_keys("vlm.visual.merger"),
        notes=(
            "The published Qwen2.5-VL code selected SkipCA's visual tokens by the hard-coded token id 151643 "
            "(`<|endoftext|>`, the padding token) instead of the image token, so its cross-attention attended to "
            "padding (or to nothing) rather than to the image. This model attends to the projected image tokens, as "
            "the paper describes: on the same weights its rewards differ from the published code's.",
            "The published scripts resized images to between 256x28x28 and 1280x28x28 pixels; the converted "
            "processor does the same.",
        ),
        image_processor_size={"shortest_edge": 256 * 28 * 28, "longest_edge": 1280 * 28 * 28},
    ),
    "llava_next": PublishedLayout(
        module_prefixes=(
            ("model.language_model.", "vlm.language_model."),
            ("language_model.model.", "vlm.language_model."),
            ("model.vision_tower.", "vlm.vision_tower."),
            ("vision_tower.", "vlm.vision_tower."),
            ("model.multi_modal_projector.", "vlm.multi_modal_projector."),
            ("multi_modal_projector.", "vlm.multi_modal_projector."),
        ),
        projector_marker="multi_modal_projector",
        projector_keys={
            f"linear_{index}.{kind}": f"vlm.multi_modal_projector.linear_{index}.{kind}"
            for index in (1, 2)
            for kind in ("weight", "bias")
        },
        has_skipca=False,
        notes=(
            "The published LLaVA-NeXT code has no SkipCA path: its reward is the value head on the final hidden "
            "state at the last token. This model computes the same (`head='linear'`); SkipCA weights in the "
            "checkpoint, if any, were never used and are not converted.",
        ),
    ),
    "phi3_v": PublishedLayout(
        module_prefixes=(("model.", "vlm."),),
        projector_marker="img_projection",
        projector_keys={
            f"{index}.{kind}": f"vlm.vision_embed_tokens.img_projection.{index}.{kind}"
            for index in (0, 2)
            for kind in ("weight", "bias")
        },
        notes=(
            "The published Phi-3.5-vision code took SkipCA's keys and values from the final hidden state at every "
            "position (text and image tokens, padding unmasked). This model uses the projected visual tokens, with "
            "padding masked, as the paper describes: on the same weights its rewards differ from the published code's.",
            "Phi-3.5-vision needs remote code (`trust_remote_code=True`); this conversion path was not tested end to "
            "end, since that code could not be downloaded where this package was developed.",
        ),
    ),
}


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or of a `.bin` pickle loaded with `weights_only=True` (nothing else)."""
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} is not a plain tensor checkpoint; refusing to load it, since unpickling it could run arbitrary "
            f"code ({str(error).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({str(error).splitlines()[0]}).") from None
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ValueError(f"{path} does not hold a flat dict of tensors (a state dict).")
    return state_dict


def read_published_config(src_dir: Path) -> dict:
    path = src_dir / "reward_config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {src_dir} is not a published LLaVA-Reward checkpoint folder.")
    published = yaml.safe_load(path.read_text()) or {}
    missing = [key for key in PUBLISHED_CONFIG_KEYS if key not in published]
    if missing:
        raise ValueError(f"{path} lacks {missing}; a published reward_config.yaml has {list(PUBLISHED_CONFIG_KEYS)}.")
    return published


def convert_original_checkpoint(
    src_dir: str | os.PathLike,
    base_vlm: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    perspective: str | None = None,
    objective: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    published_image_size: bool = True,
    dtype=None,
) -> Path:
    r"""
    Convert the published checkpoint folder `src_dir` (on the base VLM `base_vlm`) to an adapter bundle in `out_dir`.

    Args:
        src_dir: a published perspective folder (`reward_config.yaml`, `pytorch_model.bin`, `lora/`).
        base_vlm: the base VLM it was trained on (Hub id or local folder): `Qwen/Qwen2.5-VL-7B-Instruct`,
            `llava-hf/llava-v1.6-vicuna-13b-hf` or `microsoft/Phi-3.5-vision-instruct`. Recorded as `base_model`.
        out_dir: where to write the bundle (safetensors only), its `conversion.json` and model card.
        perspective (`str`, *optional*): defaults to a perspective named in `src_dir`'s path (e.g.
            `.../alignment/llavareward_phi_alignment`), else `"overall"`.
        objective (`str`, *optional*): `"ce"` for checkpoints trained with cross-entropy (safety): the published
            config does not record it. Defaults to `"gpm"` or `"bt"` from `is_general_preference`.
        revision (`str`, *optional*): the base VLM's Hub revision (pin it: it is recorded).
        trust_remote_code (`bool`, defaults to `False`): needed for Phi-3.5-vision; never implied.
        published_image_size (`bool`, defaults to `True`): give the processor the image size range of the
            published scripts (Qwen2.5-VL), so inputs match theirs.
        dtype: dtype to load the base VLM in (the bundle stores the head in it).

    Example:

    ```python
    >>> convert_original_checkpoint(
    ...     "LLaVA-Reward/alignment/llavareward_qwen_alignment", "Qwen/Qwen2.5-VL-7B-Instruct", "converted/alignment"
    ... )  # doctest: +SKIP
    ```"""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    published = read_published_config(src_dir)
    weights = read_tensors(src_dir / "pytorch_model.bin")
    vlm_config = AutoConfig.from_pretrained(str(base_vlm), revision=revision, trust_remote_code=trust_remote_code)
    family = get_family(vlm_config.model_type).name
    if family not in PUBLISHED_LAYOUTS:
        raise ValueError(
            f"{base_vlm} is a {family} model; the published checkpoints were trained on {sorted(PUBLISHED_LAYOUTS)}."
        )
    layout = PUBLISHED_LAYOUTS[family]
    use_skipca = bool(published["add_cross_attention"]) and layout.has_skipca
    model = LlavaRewardModel.from_vlm(
        str(base_vlm),
        revision=revision,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        **_reward_fields(published, weights, objective, use_skipca, perspective or _perspective_in(src_dir)),
    )
    notes = list(layout.notes) + _load_head_weights(model, weights, layout, use_skipca, src_dir / "pytorch_model.bin")
    peft_model = _with_lora(model, src_dir / "lora", layout)
    processor = LlavaRewardProcessor.from_base(str(base_vlm))
    if published_image_size and layout.image_processor_size:
        processor.image_processor.size = dict(layout.image_processor_size)
    save_reward_bundle(peft_model, out_dir, processor)
    (out_dir / "README.md").unlink(missing_ok=True)  # PEFT's generic card; ours follows
    conversion = {"source": str(src_dir), "published_config": published, "base_model": str(base_vlm), "notes": notes}
    (out_dir / CONVERSION_FILE).write_text(json.dumps(conversion, indent=2) + "\n")
    render_perspective_card(out_dir, repo_id=str(out_dir.parent), subfolder=out_dir.name).save(out_dir / "README.md")
    return out_dir


def _perspective_in(src_dir: Path) -> str:
    """The perspective a published folder's path names (`.../alignment/llavareward_phi_alignment`), else overall."""
    names = {perspective: perspective for perspective in PERSPECTIVES} | {"artifact": "fidelity"}  # the paper's name
    for part in reversed(src_dir.resolve().parts):
        for name, perspective in names.items():
            if name in part.lower():
                return perspective
    return "overall"


def _reward_fields(published: dict, weights: dict, objective: str | None, use_skipca: bool, perspective: str) -> dict:
    value_head = [tensor for key, tensor in weights.items() if "value_head" in key.split(".")]
    if len(value_head) != 1:
        raise ValueError(f"Expected one value_head weight in pytorch_model.bin, found {len(value_head)}.")
    if published["is_general_preference"]:
        if objective not in (None, "gpm"):
            raise ValueError(f"The checkpoint is a General Preference Model; objective={objective!r} does not apply.")
        objective = "gpm"
    elif objective is not None and not get_objective(objective).scalar:
        raise ValueError(f"objective must have scalar rewards for this scalar-reward checkpoint, got {objective!r}.")
    return dict(
        objective=objective or "bt",
        reward_dim=value_head[0].shape[0],
        tau=float(published["general_preference_tau"]),
        head="skipca" if use_skipca else "linear",
        hidden_layer=-1,  # the published models read the final hidden state
        visual_layer=0,
        pooling="last",
        perspective=perspective,
    )


def _load_head_weights(model: LlavaRewardModel, weights: dict, layout: PublishedLayout, use_skipca: bool, path) -> list:
    """Copy the published value head, SkipCA and projector into `model`; return notes on what was left out."""
    converted, ignored = {}, []
    for key, tensor in weights.items():
        parts = key.split(".")
        module = next((name for name in HEAD_MODULES if name in parts), None)
        if module is not None and (use_skipca or module not in SKIPCA_MODULES):
            converted[f"{HEAD_MODULES[module]}.{parts[-1]}"] = tensor
        elif layout.projector_marker in parts and ".".join(parts[-2:]) in layout.projector_keys:
            converted[layout.projector_keys[".".join(parts[-2:])]] = tensor
        else:
            ignored.append(key)
    head = {name for name, _ in model.named_parameters() if name.startswith(("skip_cross_attention.", "value_head."))}
    projector = set(layout.projector_keys.values())
    projector_given = converted.keys() & projector
    missing = (head | (projector if projector_given else set())) - converted.keys()
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)} (published names: {', '.join(HEAD_MODULES)}, projector).")
    expected_shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    for name, tensor in converted.items():
        if tensor.shape != expected_shapes[name]:
            raise ValueError(
                f"{path}: {name} has shape {tuple(tensor.shape)}; {model.config.base_model} needs "
                f"{tuple(expected_shapes[name])}. Is this checkpoint for another base model?"
            )
    model.load_state_dict(converted, strict=False)
    notes = []
    if not projector_given:
        notes.append("The checkpoint holds no projector weights (its projector was frozen): the base model's are used.")
    if ignored:
        notes.append(f"Parameters of the published checkpoint this model does not use: {', '.join(sorted(ignored))}.")
    return notes


def _with_lora(model: LlavaRewardModel, lora_dir: Path, layout: PublishedLayout):
    """`model` with the published LoRA adapter of `lora_dir` (keys mapped to this package's modules), as a PeftModel."""
    from peft import LoraConfig
    from peft import get_peft_model
    from peft import set_peft_model_state_dict

    config_file = lora_dir / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: the published checkpoints carry a LoRA adapter in lora/.")
    published = json.loads(config_file.read_text())
    if published.get("peft_type", "LORA") != "LORA" or published.get("rank_pattern") or published.get("alpha_pattern"):
        raise ValueError(f"{config_file}: only plain LoRA adapters (no rank/alpha patterns) can be converted.")
    weights_file = next((lora_dir / name for name in ADAPTER_WEIGHTS if (lora_dir / name).is_file()), None)
    if weights_file is None:
        raise FileNotFoundError(f"{lora_dir} holds none of {list(ADAPTER_WEIGHTS)}.")
    adapter = {}
    for key, tensor in read_tensors(weights_file).items():
        module, separator, rest = key.removeprefix("base_model.model.").partition(".lora_")
        if not separator:
            raise ValueError(f"{weights_file}: {key} is not a LoRA weight (modules_to_save and biases are not supported).")
        try:
            adapter[f"base_model.model.{layout.our_module(module)}.lora_{rest}"] = tensor
        except ValueError as error:
            raise ValueError(f"{weights_file}: {key}: {error}.") from None
    targets = sorted({key.removeprefix("base_model.model.").partition(".lora_")[0] for key in adapter})
    modules = dict(model.named_modules())
    if unknown := [target for target in targets if not isinstance(modules.get(target), torch.nn.Linear)]:
        raise ValueError(f"{weights_file}: LoRA targets {unknown[:5]} are not linear layers of {model.config.base_model}.")
    lora_config = LoraConfig(
        target_modules=targets,
        **{key: published[key] for key in LORA_FIELDS if key in published},
    )
    peft_model = get_peft_model(model, lora_config)
    loaded = set_peft_model_state_dict(peft_model, adapter)
    uncovered = [key for key in loaded.missing_keys if ".lora_" in key]
    if loaded.unexpected_keys or uncovered:
        raise ValueError(
            f"{weights_file}: the adapter does not match the modules it targets (unexpected "
            f"{loaded.unexpected_keys[:3]}, missing {uncovered[:3]})."
        )
    return peft_model
