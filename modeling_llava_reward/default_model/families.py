"""Registry of the vision-language model families LLaVA-Reward can wrap.

Families differ in a handful of facts (where the projector and the language model live, how image positions are
marked, how positions are computed, which linear layers LoRA targets, and which text the published checkpoints were
trained on). Those facts live here, keyed by the VLM config's ``model_type``, instead of ``if "qwen" in path``
branches scattered through the code (the published implementation's defect 7).

Example:
    >>> from llava_reward.families import get_family
    >>> get_family("qwen2_5_vl").projector_modules
    ('visual.merger',)
"""

import re
from dataclasses import dataclass

import torch


# LoRA goes on the language model's attention and MLP projections only (the vision tower stays frozen; Qwen's
# vision MLP also has gate/up/down projections and CLIP's attention has q/k/v/o, hence the anchoring on the path of
# the language model inside the reward model's `vlm`, optionally under PEFT's wrappers).
_LORA_TEMPLATE = r"(.*\.)?vlm\.{lm}layers\.\d+\.({linears})"
# Llama-style decoders: separate q/k/v/o attention projections and a gated MLP.
_LLAMA_LINEARS = r"self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj"


@dataclass(frozen=True)
class VlmFamily:
    """What LLaVA-Reward needs to know about one family of VLM base models (the output of ``AutoModel``).

    Attributes:
        name: registry key, also used in recipes and model cards.
        model_types: ``config.model_type`` values of the VLM configs of this family.
        language_model: dotted path from the base model to the decoder holding ``layers`` and ``norm``
            (``""`` when the base model is itself the decoder, as for Phi-3.5-vision).
        projector_modules: dotted paths of the vision-to-language projector's modules or parameters (trained with
            the reward head).
        vision_modules: dotted paths of the vision encoder (frozen), excluding the projector.
        positions_from_attention_mask: whether 1-D position ids must be derived from the attention mask so that
            left and right padding give identical rewards. ``False`` where the model computes its own (multimodal
            RoPE in Qwen-VL, whose ``get_rope_index`` already honours the mask).
        head_norm_eps: epsilon of the SkipCA RMSNorm, as in the published heads (1e-5 Phi/Llama, 1e-6 Qwen).
        prompt_template: the exact text the published checkpoints were trained on, with ``{image}``, ``{prompt}``
            and ``{eos}`` placeholders; ``None`` means "use the tokenizer's chat template" (see the processor).
        image_positions_are_negative_ids: Phi-3.5-vision marks image positions with negative token ids instead of
            a dedicated image token.
        requires_remote_code: the family is not native to transformers (``trust_remote_code`` must be given
            explicitly by the user; it is never implied).
        lora_linears: regex of the decoder layer's linear layers LoRA adapts, relative to the layer (the attention
            and MLP projections; Phi-3 fuses them into ``qkv_proj`` and ``gate_up_proj``).
    """

    name: str
    model_types: tuple[str, ...]
    language_model: str
    projector_modules: tuple[str, ...]
    vision_modules: tuple[str, ...]
    positions_from_attention_mask: bool = True
    head_norm_eps: float = 1e-5
    prompt_template: str | None = None
    image_positions_are_negative_ids: bool = False
    requires_remote_code: bool = False
    lora_linears: str = _LLAMA_LINEARS

    @property
    def lora_target_modules(self) -> str:
        """PEFT ``target_modules`` regex matching the language model's attention and MLP projections."""
        lm = self.language_model.replace(".", r"\.") + r"\." if self.language_model else ""
        return _LORA_TEMPLATE.format(lm=lm, linears=self.lora_linears)

    def vision_blocks(self, vlm: torch.nn.Module) -> tuple[str, int]:
        """`(path, used)`: the dotted path (from `vlm`) of the vision encoder's list of transformer blocks, and how
        many of its first blocks the image features come from (all of them, unless the config's
        `vision_feature_layer` reads an earlier layer, as LLaVA's -2 does)."""
        lists = [
            (f"{path}.{name}" if name else path, module)
            for path in self.vision_modules
            for name, module in vlm.get_submodule(path).named_modules()
            if isinstance(module, torch.nn.ModuleList)
            and any(isinstance(child, torch.nn.Linear) for child in module.modules())
        ]
        if not lists:
            raise ValueError(
                f"The {self.name} vision encoder ({', '.join(self.vision_modules)}) has no list of blocks."
            )
        path, blocks = max(lists, key=lambda item: len(item[1]))  # the encoder's layers, not a block's sub-lists
        layer = getattr(vlm.config, "vision_feature_layer", -1)
        layer = max(layer) if isinstance(layer, (list, tuple)) else layer
        used = len(blocks) + 1 + layer if layer < 0 else layer  # hidden_states[k]: the output of k blocks
        return path, used

    def vision_lora_target_modules(self, vlm: torch.nn.Module, num_blocks: int) -> str:
        """PEFT ``target_modules`` regex matching every linear layer of the last `num_blocks` vision encoder blocks
        that feed the image features (anchored at the reward model's `vlm`, like `lora_target_modules`)."""
        path, used = self.vision_blocks(vlm)
        if not 0 < num_blocks <= used:
            raise ValueError(
                f"The {self.name} vision encoder has {used} blocks feeding the image features; cannot adapt the last "
                f"{num_blocks}."
            )
        blocks = vlm.get_submodule(path)
        indices = range(used - num_blocks, used)
        linears = sorted(
            {name for index in indices for name, module in blocks[index].named_modules()
             if isinstance(module, torch.nn.Linear)}
        )
        names = "|".join(re.escape(name) for name in linears)
        return rf"(.*\.)?vlm\.{re.escape(path)}\.({'|'.join(map(str, indices))})\.({names})"

    def projector_parameters(self, vlm: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """The projector's parameters, by name relative to `vlm` (paths may name modules or bare parameters)."""
        return {
            name: parameter
            for name, parameter in vlm.named_parameters()
            if any(name == path or name.startswith(path + ".") for path in self.projector_modules)
        }

    def image_token_mask(self, input_ids: torch.LongTensor, image_token_id: int | None) -> torch.BoolTensor:
        """(B, T) mask of the positions holding image tokens (the projected visual tokens after merging)."""
        if self.image_positions_are_negative_ids:
            return input_ids < 0
        return input_ids == image_token_id


FAMILIES: dict[str, VlmFamily] = {
    family.name: family
    for family in (
        VlmFamily(
            name="llava",
            model_types=("llava",),
            language_model="language_model",
            projector_modules=("multi_modal_projector",),
            vision_modules=("vision_tower",),
        ),
        VlmFamily(
            name="llava_next",
            model_types=("llava_next",),
            language_model="language_model",
            # As in the published checkpoints: the projector's two linear layers (the learned anyres row separator
            # `image_newline` stays as pretrained; llava-reward 0.1 trained it too, and its bundles still load).
            projector_modules=("multi_modal_projector",),
            vision_modules=("vision_tower",),
            prompt_template="USER: {image}\n{prompt}{eos}",
        ),
        VlmFamily(
            name="qwen2_vl",
            model_types=("qwen2_vl",),
            language_model="language_model",
            projector_modules=("visual.merger",),
            vision_modules=("visual.patch_embed", "visual.blocks"),
            positions_from_attention_mask=False,
            head_norm_eps=1e-6,
        ),
        VlmFamily(
            name="qwen2_5_vl",
            model_types=("qwen2_5_vl",),
            language_model="language_model",
            projector_modules=("visual.merger",),
            vision_modules=("visual.patch_embed", "visual.blocks"),
            positions_from_attention_mask=False,
            head_norm_eps=1e-6,
            prompt_template="<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{prompt}<|im_end|>",
        ),
        VlmFamily(
            name="qwen3_vl",
            model_types=("qwen3_vl",),
            language_model="language_model",
            # Qwen3-VL also injects "deepstack" projections of intermediate vision layers into early decoder layers.
            projector_modules=("visual.merger", "visual.deepstack_merger_list"),
            vision_modules=("visual.patch_embed", "visual.pos_embed", "visual.blocks"),
            positions_from_attention_mask=False,
            head_norm_eps=1e-6,
        ),
        VlmFamily(
            name="idefics3",
            model_types=("idefics3", "smolvlm"),
            language_model="text_model",
            projector_modules=("connector",),
            vision_modules=("vision_model",),
        ),
        VlmFamily(
            name="gemma3",
            model_types=("gemma3",),
            language_model="language_model",
            projector_modules=("multi_modal_projector",),
            vision_modules=("vision_tower",),
            head_norm_eps=1e-6,
        ),
        VlmFamily(
            name="phi3_v",
            model_types=("phi3_v",),
            language_model="",
            projector_modules=("vision_embed_tokens.img_projection",),
            vision_modules=("vision_embed_tokens.img_processor",),
            prompt_template="<|user|>\n<|image_1|>\n{prompt}{eos}",
            image_positions_are_negative_ids=True,
            requires_remote_code=True,
            lora_linears=r"self_attn\.(qkv|o)_proj|mlp\.(gate_up|down)_proj",
        ),
    )
}

_BY_MODEL_TYPE = {model_type: family for family in FAMILIES.values() for model_type in family.model_types}


def supported_model_types() -> list[str]:
    """The VLM ``model_type`` values LLaVA-Reward supports, sorted."""
    return sorted(_BY_MODEL_TYPE)


def get_family(model_type: str) -> VlmFamily:
    """Return the family of a VLM ``config.model_type``; raise a ``ValueError`` listing the supported ones."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise ValueError(
            f"Unsupported VLM model_type {model_type!r}. LLaVA-Reward supports: {', '.join(supported_model_types())}."
        ) from None

