"""PyTorch LLaVA-Reward model: a vision-language model read as a reward model for text-to-image generation.

Reference: "Multimodal LLMs as Customized Reward Models for Text-to-Image Generation" (ICCV 2025, arXiv 2507.21391).

The reward of (prompt, image) is read from the VLM's hidden state `h` at the reward token (the last token of
`<image> + prompt`), refined by Skip-connection Cross-Attention (SkipCA) over the projected visual tokens `e_v`:

    h' = RMSNorm(h + softmax((h Wq)(e_v Wk)^T / sqrt(H)) (e_v Wv)),    reward = g(h')

This file only imports torch, transformers and its sibling `families.py`, so that `save_pretrained` can ship it
next to a checkpoint and `AutoModel.from_pretrained(dir, trust_remote_code=True)` works without this package.
"""

import os
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers import PreTrainedConfig
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils import can_return_tuple

from .families import VlmFamily
from .families import get_family


try:  # installed package: the config class lives in the `configuration` package
    from llava_reward.configuration import LlavaRewardConfig
except ImportError:
    # Code files shipped next to a checkpoint (trust_remote_code), where the two files are siblings. This relative
    # import is also what makes `save_pretrained` ship the config file (a symlink in this package's folder).
    from .configuration_llava_reward import LlavaRewardConfig


@dataclass
class LlavaRewardOutput(ModelOutput):
    r"""
    Output of [`LlavaRewardModel`].

    Args:
        rewards (`torch.FloatTensor` of shape `(batch_size,)` or `(batch_size, reward_dim)`):
            The reward (BT), logit (CE) or preference embedding (GPM, shape `(batch_size, reward_dim)`).
        logits (`torch.FloatTensor` of shape `(batch_size, reward_dim)`):
            The value head's output, always 2-D (what TRL's trainers read).
        reward_hidden_states (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The state the value head reads: `h'` after SkipCA (or `h` with the linear head).
    """

    rewards: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    reward_hidden_states: torch.FloatTensor | None = None


class LlavaRewardRMSNorm(nn.Module):
    """RMSNorm computed in float32, as in the published SkipCA head (`ca_layernorm`)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self):
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class LlavaRewardSkipCrossAttention(nn.Module):
    """Single-head cross-attention from text queries to visual tokens, with a residual and RMSNorm.

    No output projection and no dropout, as in the paper. Padded visual tokens are masked out (the published
    Phi-3.5 head did not mask them: defect 2).
    """

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm = LlavaRewardRMSNorm(hidden_size, eps=eps)

    def forward(
        self,
        query_states: torch.Tensor,  # (B, Q, H): the reward-token state, Q = 1 in practice
        visual_states: torch.Tensor,  # (B, V, H): projected visual tokens, right-padded to the longest row
        visual_mask: torch.BoolTensor,  # (B, V): True for real visual tokens
    ) -> torch.Tensor:  # (B, Q, H)
        query = self.q_proj(query_states)
        key = self.k_proj(visual_states)
        value = self.v_proj(visual_states)
        # A single head of width H: SDPA's default scale 1/sqrt(H) is the paper's.
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=visual_mask[:, None, :])
        return self.norm(query_states + attended)


class LlavaRewardPreTrainedModel(PreTrainedModel):
    config_class = LlavaRewardConfig
    base_model_prefix = "vlm"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = "past_key_values"

    def _init_weights(self, module):
        # Only the reward head reaches this method: the wrapped VLM initialises itself (it is a PreTrainedModel).
        hidden_size = self.config.vlm_config.get_text_config(decoder=True).hidden_size
        std = self.config.head_initializer_std or 1.0 / (hidden_size + 1)  # the published initialisation
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, LlavaRewardRMSNorm):
            init.ones_(module.weight)


class LlavaRewardModel(LlavaRewardPreTrainedModel):
    r"""
    LLaVA-Reward: a VLM (without its LM head) whose hidden state at the reward token, refined by SkipCA over the
    projected visual tokens, feeds a value head.

    Only the decoder layers the reward needs are kept (`config.hidden_layer`, `config.visual_layer`), the vision
    tower runs once per image, and just the two hidden states the head reads are captured (not all of them).

    Example:

    ```python
    >>> import torch
    >>> from llava_reward import LlavaRewardModel
    >>> from llava_reward.testing import tiny_vlm, tiny_images
    >>> vlm, processor = tiny_vlm("llava")
    >>> model = LlavaRewardModel.from_vlm(vlm, objective="bt").eval()
    >>> inputs = processor(text=["<image>A red square"] * 2, images=tiny_images(2), return_tensors="pt")
    >>> with torch.no_grad():
    ...     model(**inputs).rewards.shape
    torch.Size([2])
    ```"""

    def __init__(self, config: LlavaRewardConfig, vlm: PreTrainedModel | None = None):
        super().__init__(config)
        self.family: VlmFamily = get_family(config.vlm_config.model_type)
        if vlm is not None:
            _check_same_architecture(config.vlm_config, vlm.config)
            config.vlm_config = vlm.config  # one config object for the wrapper and the VLM it runs
        self.vlm = vlm if vlm is not None else AutoModel.from_config(config.vlm_config)
        self._drop_unused_decoder_layers()
        hidden_size = config.vlm_config.get_text_config(decoder=True).hidden_size
        self.skip_cross_attention = (
            LlavaRewardSkipCrossAttention(hidden_size, eps=config.head_norm_eps or self.family.head_norm_eps)
            if config.head == "skipca"
            else None
        )
        self.value_head = nn.Linear(hidden_size, config.reward_dim, bias=False)
        self.post_init()

    @classmethod
    def from_vlm(
        cls,
        vlm: str | os.PathLike | PreTrainedModel,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        **kwargs,
    ) -> "LlavaRewardModel":
        r"""
        Graft a pretrained VLM into a new reward model (fresh SkipCA and value head).

        Args:
            vlm (`str`, `os.PathLike` or `PreTrainedModel`):
                A local folder or Hub id loaded with `AutoModel.from_pretrained`, or a model instance (a base model
                or a `...ForConditionalGeneration`, whose LM head is dropped). An instance is used in place, not
                copied: the decoder layers the reward does not need are removed from it.
            revision (`str`, *optional*): Hub revision of `vlm` to load (pin it for reproducibility).
            trust_remote_code (`bool`, defaults to `False`): needed for non-native families (Phi-3.5-vision);
                never implied.
            kwargs: `LlavaRewardConfig` fields (`objective`, `head`, `hidden_layer`, ...); the rest
                (`dtype`, `device_map`, `attn_implementation`, ...) go to `AutoModel.from_pretrained`.

        Example:

        ```python
        >>> from llava_reward import LlavaRewardModel
        >>> from llava_reward.testing import tiny_vlm
        >>> model = LlavaRewardModel.from_vlm(tiny_vlm("qwen2_5_vl")[0], objective="gpm", reward_dim=2)
        >>> model.config.perspective, model.value_head.out_features
        ('overall', 2)
        ```"""
        reward_fields = LlavaRewardConfig.__dataclass_fields__.keys() - PreTrainedConfig.__dataclass_fields__.keys()
        config_fields = {key: kwargs.pop(key) for key in list(kwargs) if key in reward_fields}
        base_model = None
        if isinstance(vlm, (str, os.PathLike)):
            base_model = str(vlm)
            vlm = AutoModel.from_pretrained(vlm, revision=revision, trust_remote_code=trust_remote_code, **kwargs)
        elif kwargs:
            raise TypeError(f"Loading arguments {sorted(kwargs)} only apply when `vlm` is a path or Hub id.")
        vlm = vlm.base_model  # a ...ForConditionalGeneration's base model: its LM head is never used
        config = LlavaRewardConfig(
            vlm_config=vlm.config,
            base_model=base_model or vlm.config.name_or_path or None,
            base_model_revision=revision,
            # A new config sets `attn_implementation` recursively on its sub-configs: keep the VLM's own choices.
            attn_implementation={"": vlm.config._attn_implementation, "vlm_config": _attn_implementations(vlm.config)},
            **config_fields,
        )
        model = cls(config, vlm=vlm)
        model.place_head_with_decoder()
        return model

    def place_head_with_decoder(self):
        """Move the head to the VLM's dtype and to the device of its final hidden state (respects device_map)."""
        device = self.decoder.norm.weight.device
        for module in (self.skip_cross_attention, self.value_head):
            if module is not None:
                module.to(device=device, dtype=self.vlm.dtype)

    @property
    def decoder(self) -> nn.Module:
        """The language model's decoder (holding `layers` and the final `norm`)."""
        return self.vlm.get_submodule(self.family.language_model)

    def _drop_unused_decoder_layers(self):
        # Layers after max(hidden_layer, visual_layer) cannot influence the reward: never build or run them.
        decoder = self.decoder
        num_used = self.config.num_decoder_layers_used
        if num_used < len(decoder.layers):
            decoder.layers = decoder.layers[:num_used]

    def get_input_embeddings(self) -> nn.Module:
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.vlm.set_input_embeddings(value)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,  # (B, T), image positions marked by the family's image token
        attention_mask: torch.Tensor | None = None,  # (B, T), 1 for real tokens; any padding side
        position_ids: torch.LongTensor | None = None,
        **vlm_inputs,  # pixel_values and the family's extras (image_grid_thw, image_sizes, mm_token_type_ids, ...)
    ) -> LlavaRewardOutput:
        r"""
        Args:
            input_ids, attention_mask, **vlm_inputs: the outputs of the family's processor (or of
                `LlavaRewardProcessor`), for one image per row.

        Returns:
            [`LlavaRewardOutput`] with `rewards` of shape `(B,)` (`reward_dim == 1`) or `(B, D)`.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None and self.family.positions_from_attention_mask:
            # Positions count real tokens only, so left padding gives the same rewards as right padding.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

        config = self.config
        read_layers = {config.hidden_layer, config.visual_layer} if self.skip_cross_attention else {config.hidden_layer}
        # The final state (-1, or k = number of layers as in transformers' `hidden_states`) is the normed output.
        final_layers = {-1, config.vlm_config.get_text_config(decoder=True).num_hidden_layers}
        with _capture_residual_stream(self.decoder, read_layers - final_layers) as residual_stream:
            outputs = self.vlm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                return_dict=True,
                **vlm_inputs,
            )
        residual_stream.update(dict.fromkeys(final_layers, outputs.last_hidden_state))
        reward_states = _pool(residual_stream[config.hidden_layer], attention_mask, config.pooling)  # (B, H)

        if self.skip_cross_attention is not None:
            image_mask = self.family.image_token_mask(input_ids, getattr(self.vlm.config, "image_token_id", None))
            visual_states, visual_mask = _gather_visual_tokens(residual_stream[config.visual_layer], image_mask)
            reward_states = self.skip_cross_attention(reward_states[:, None], visual_states, visual_mask)[:, 0]

        logits = self.value_head(reward_states)  # (B, D)
        rewards = logits.squeeze(-1) if config.reward_dim == 1 else logits
        return LlavaRewardOutput(rewards=rewards, logits=logits, reward_hidden_states=reward_states)


def _check_same_architecture(expected, given):
    """A VLM grafted into a saved reward config must be the architecture the head was trained on."""
    expected_text, given_text = expected.get_text_config(decoder=True), given.get_text_config(decoder=True)
    mismatches = [
        f"{name}: expected {want}, got {have}"
        for name, want, have in (
            ("model_type", expected.model_type, given.model_type),
            ("hidden_size", expected_text.hidden_size, given_text.hidden_size),
            ("num_hidden_layers", expected_text.num_hidden_layers, given_text.num_hidden_layers),
        )
        if want != have
    ]
    if mismatches:
        raise ValueError(f"The VLM does not match the reward model's `vlm_config` ({'; '.join(mismatches)}).")


def _attn_implementations(config) -> dict:
    """The attention implementation of a config and, recursively, of its sub-configs, keyed as the setter expects."""
    nested = {key: _attn_implementations(getattr(config, key)) for key in config.sub_configs if getattr(config, key)}
    return {"": config._attn_implementation, **nested}


# The residual-stream states the running forward asks for: `{module: its input}`, one dict per call. The hooks that
# fill it are installed once per module and shared by every caller; each call reads and writes only its own dict (a
# context variable: every thread, and every asyncio task, sees its own), so that one model serves concurrent calls.
_RESIDUAL_STREAM: ContextVar[dict | None] = ContextVar("llava_reward_residual_stream", default=None)
_HOOK_INSTALLATION = threading.Lock()


def _store_residual_stream(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: keep `module`'s input when the running call asked for it (a no-op for any other call)."""
    requested = _RESIDUAL_STREAM.get()
    if requested is not None and module in requested:
        requested[module] = args[0] if args else kwargs["hidden_states"]


def _install_residual_stream_hook(module: nn.Module) -> None:
    if getattr(module, "_llava_reward_stores_residual_stream", False):
        return
    with _HOOK_INSTALLATION:  # two threads' first calls must not install it twice
        if not getattr(module, "_llava_reward_stores_residual_stream", False):
            module.register_forward_pre_hook(_store_residual_stream, with_kwargs=True)
            module._llava_reward_stores_residual_stream = True


@contextmanager
def _capture_residual_stream(decoder: nn.Module, layer_indices: set[int]):
    """Capture `hidden_states[k]` (the residual stream entering decoder layer k) for each requested k.

    Forward pre-hooks on the layers (or on the final norm for k == number of kept layers) hold on to just the requested
    states, instead of `output_hidden_states=True` keeping every layer's. The dict this yields is filled when the
    context exits without error. The hooks stay installed (and do nothing outside a call that asks them); what a call
    captures lives in its own context (`_RESIDUAL_STREAM`), never on the shared modules.
    """
    modules = {index: decoder.layers[index] if index < len(decoder.layers) else decoder.norm for index in layer_indices}
    for module in modules.values():
        _install_residual_stream_hook(module)
    requested = dict.fromkeys(modules.values())
    token = _RESIDUAL_STREAM.set(requested)
    captured: dict[int, torch.Tensor] = {}
    try:
        yield captured
    finally:
        _RESIDUAL_STREAM.reset(token)
    captured.update((index, requested[module]) for index, module in modules.items())


def _pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, H) -> (B, H): the last non-pad token (whatever the padding side), or the mean over the mask."""
    if pooling == "mean":
        weights = attention_mask.to(hidden_states.dtype)[..., None]  # (B, T, 1)
        return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1)
    sequence_length = attention_mask.shape[1]
    last_index = sequence_length - 1 - attention_mask.flip(-1).long().argmax(-1)  # (B,)
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last_index]


def _gather_visual_tokens(
    hidden_states: torch.Tensor,  # (B, T, H)
    image_mask: torch.BoolTensor,  # (B, T)
) -> tuple[torch.Tensor, torch.BoolTensor]:  # (B, V, H), (B, V) with V the largest image-token count
    """The states at image positions, in order, right-padded per row to the longest row, with their mask."""
    counts = image_mask.sum(-1)  # (B,)
    if not counts.all():
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"Rows {rows} of the batch contain no image tokens; every row needs exactly one image.")
    num_visual = int(counts.max())
    # A stable descending sort puts each row's image positions first, in their original order.
    positions = torch.argsort(image_mask.to(torch.int8), dim=-1, descending=True, stable=True)[:, :num_visual]
    visual_states = hidden_states.gather(1, positions[..., None].expand(-1, -1, hidden_states.shape[-1]))
    visual_mask = torch.arange(num_visual, device=counts.device)[None, :] < counts[:, None]
    return visual_states, visual_mask


LlavaRewardModel.register_for_auto_class("AutoModel")

__all__ = ["LlavaRewardModel", "LlavaRewardOutput", "LlavaRewardPreTrainedModel", "LlavaRewardSkipCrossAttention"]
