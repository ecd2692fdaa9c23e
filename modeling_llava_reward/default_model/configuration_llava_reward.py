"""LLaVA-Reward model configuration."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


try:  # installed package: the one registry of objectives
    from llava_reward.objectives import get_objective
except ImportError:  # code files shipped next to a checkpoint (trust_remote_code), where the files are siblings
    from .objectives import get_objective


HEADS = ("skipca", "linear")
POOLINGS = ("last", "mean", "image")


@strict(accept_kwargs=True)
class LlavaRewardConfig(PreTrainedConfig):
    r"""
    Configuration of a [`LlavaRewardModel`]: a vision-language model (VLM) read as a reward model for text-to-image
    generation (LLaVA-Reward, ICCV 2025). The reward is read from the VLM's hidden state at the last token of
    `<image> + prompt`, refined by Skip-connection Cross-Attention (SkipCA) over the projected visual tokens.

    Args:
        vlm_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the wrapped VLM (any supported family, see `llava_reward.families`).
            Defaults to a LLaVA-1.5 configuration.
        head (`str`, *optional*, defaults to `"skipca"`):
            `"skipca"` (the paper's head) or `"linear"` (the "w/o SkipCA" ablation: value head on `h` directly).
        objective (`str`, *optional*, defaults to `"bt"`):
            `"bt"` (Bradley-Terry reward), `"gpm"` (General Preference Model embedding) or `"ce"` (a logit trained
            with cross-entropy, e.g. safety): a key of `llava_reward.objectives.OBJECTIVES`.
        reward_dim (`int`, *optional*, defaults to 1):
            Output size of the value head: 1 for `bt`/`ce`, an even number >= 2 for `gpm`.
        tau (`float`, *optional*, defaults to 0.1):
            Temperature: P(a > b) = sigmoid((r_a - r_b) / tau) for BT, sigmoid(<R a, b> / tau) for GPM.
        hidden_layer (`int`, *optional*, defaults to -1):
            Which hidden state feeds the head: -1 is the final, normed state; k >= 0 is the backbone's
            `hidden_states[k]`: the residual stream after k decoder layers (k = number of layers is the final normed
            state, as in transformers). Layers after it are never computed.
        visual_layer (`int`, *optional*, defaults to 0):
            Where SkipCA's keys/values come from: 0 is the projector output as merged into the input embeddings;
            k is the hidden state after k decoder layers, at the image positions.
        pooling (`str`, *optional*, defaults to `"last"`):
            `"last"` reads the reward token (last non-pad token); `"mean"` averages over the attention mask; `"image"`
            averages over the image tokens only (with `hidden_layer=0`, the projector output: the prompt is not read,
            which suits a fidelity judge).
        standardize_features (`bool`, *optional*, defaults to `False`):
            Standardise each feature of the state the value head reads, with a mean and deviation fitted on the
            training images before training (`LlavaRewardTrainer` does it) and saved with the head. A linear head on
            standardised features learns from every feature alike, whatever its scale.
        perspective (`str`, *optional*, defaults to `"overall"`):
            What the reward judges, e.g. `"alignment"`, `"fidelity"`, `"safety"`, `"overall"`.
        head_norm_eps (`float`, *optional*):
            Epsilon of the SkipCA RMSNorm. Defaults to the VLM family's published value.
        head_initializer_std (`float`, *optional*):
            Std of the normal initialisation of SkipCA and the value head. Defaults to the published 1 / (H + 1).
        base_model (`str`, *optional*):
            Hub id or path of the pretrained VLM the reward model was grafted onto (recorded by `from_vlm`).
        base_model_revision (`str`, *optional*):
            The Hub revision of `base_model`, when pinned.

    Example:

    ```python
    >>> from llava_reward import LlavaRewardConfig
    >>> config = LlavaRewardConfig(objective="gpm", reward_dim=2)
    >>> config.vlm_config.model_type, config.num_labels
    ('llava', 1)
    ```"""

    model_type = "llava_reward"
    sub_configs_defaults = {"vlm_config": SubConfigSpec(config_class=AutoConfig, model_type="llava")}

    vlm_config: dict | PreTrainedConfig | None = None
    head: str = "skipca"
    objective: str = "bt"
    reward_dim: int = 1
    tau: float | int = 0.1
    hidden_layer: int = -1
    visual_layer: int = 0
    pooling: str = "last"
    standardize_features: bool = False
    perspective: str = "overall"
    head_norm_eps: float | int | None = None
    head_initializer_std: float | int | None = None
    base_model: str | None = None
    base_model_revision: str | None = None

    def __post_init__(self, **kwargs):
        # A reward model has one output per reward dimension; TRL's RewardTrainer also demands num_labels == 1.
        num_labels = kwargs.pop("num_labels", 1)
        if num_labels != 1:
            raise ValueError(f"`num_labels` must be 1 for a reward model, got {num_labels}.")
        super().__post_init__(num_labels=1, **kwargs)
        self._check_fields()

    def _check_fields(self):
        """Raise a `ValueError` naming the field of the first invalid value or combination."""
        for field, value, allowed in (("head", self.head, HEADS), ("pooling", self.pooling, POOLINGS)):
            if value not in allowed:
                raise ValueError(f"`{field}` must be one of {allowed}, got {value!r}.")
        get_objective(self.objective).check_reward_dim(self.reward_dim)
        if not self.tau > 0:
            raise ValueError(f"`tau` must be > 0, got {self.tau}.")
        num_layers = self.vlm_config.get_text_config(decoder=True).num_hidden_layers
        if not -1 <= self.hidden_layer <= num_layers:
            raise ValueError(
                f"`hidden_layer` must be -1 (final normed state) or in [0, {num_layers}] for this "
                f"{num_layers}-layer language model, got {self.hidden_layer}."
            )
        if not 0 <= self.visual_layer <= num_layers:
            raise ValueError(f"`visual_layer` must be in [0, {num_layers}], got {self.visual_layer}.")
        if self.head == "linear" and self.visual_layer != 0:
            raise ValueError("`visual_layer` is only used by head='skipca'; leave it at 0 with head='linear'.")
        for field in ("head_norm_eps", "head_initializer_std"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"`{field}` must be > 0 or None, got {value}.")

    @property
    def num_decoder_layers_used(self) -> int:
        """How many decoder layers the reward needs: those after `max(hidden_layer, visual_layer)` are skipped."""
        num_layers = self.vlm_config.get_text_config(decoder=True).num_hidden_layers
        last_needed = num_layers if self.hidden_layer == -1 else self.hidden_layer
        return max(last_needed, self.visual_layer)


LlavaRewardConfig.register_for_auto_class()

__all__ = ["LlavaRewardConfig"]
