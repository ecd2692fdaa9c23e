"""LlavaRewardConfig validation and serialisation."""

import pytest
from transformers import AutoConfig

from llava_reward.configuration import LlavaRewardConfig


def test_defaults_are_the_papers():
    config = LlavaRewardConfig()
    assert (config.head, config.objective, config.reward_dim, config.tau) == ("skipca", "bt", 1, 0.1)
    assert (config.hidden_layer, config.visual_layer, config.pooling) == (-1, 0, "last")
    assert config.perspective == "overall" and config.num_labels == 1
    assert config.vlm_config.model_type == "llava"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(head="mlp"), r"`head` must be one of \('skipca', 'linear'\), got 'mlp'"),
        (dict(objective="dpo"), r"`objective` must be one of \('bt', 'gpm', 'ce'\)"),
        (dict(pooling="max"), r"`pooling` must be one of \('last', 'mean', 'image'\)"),
        (dict(objective="gpm"), r"`reward_dim` must be even and >= 2 for objective='gpm', got 1"),
        (dict(objective="gpm", reward_dim=3), r"`reward_dim` must be even and >= 2 for objective='gpm', got 3"),
        (dict(objective="bt", reward_dim=2), r"`reward_dim` must be 1 for objective='bt', got 2"),
        (dict(objective="ce", reward_dim=2), r"`reward_dim` must be 1 for objective='ce', got 2"),
        (dict(tau=0), r"`tau` must be > 0, got 0"),
        (dict(tau=-0.5), r"`tau` must be > 0"),
        (dict(hidden_layer=33), r"`hidden_layer` must be -1 \(final normed state\) or in \[0, 32\].*got 33"),
        (dict(hidden_layer=-2), r"`hidden_layer` must be -1"),
        (dict(visual_layer=-1), r"`visual_layer` must be in \[0, 32\], got -1"),
        (dict(visual_layer=40), r"`visual_layer` must be in \[0, 32\], got 40"),
        (dict(head="linear", visual_layer=3), r"`visual_layer` is only used by head='skipca'"),
        (dict(head_norm_eps=0.0), r"`head_norm_eps` must be > 0 or None"),
        (dict(head_initializer_std=-1.0), r"`head_initializer_std` must be > 0 or None"),
        (dict(num_labels=2), r"`num_labels` must be 1 for a reward model, got 2"),
    ],
)
def test_invalid_values_raise_a_value_error_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        LlavaRewardConfig(**fields)


def test_layer_bounds_follow_the_wrapped_language_model():
    vlm_config = {"model_type": "qwen2_5_vl", "text_config": {"num_hidden_layers": 4}}
    assert LlavaRewardConfig(vlm_config=vlm_config, hidden_layer=4).num_decoder_layers_used == 4
    assert LlavaRewardConfig(vlm_config=vlm_config, hidden_layer=2, visual_layer=3).num_decoder_layers_used == 3
    assert LlavaRewardConfig(vlm_config=vlm_config).num_decoder_layers_used == 4
    with pytest.raises(ValueError, match=r"in \[0, 4\] for this 4-layer language model, got 5"):
        LlavaRewardConfig(vlm_config=vlm_config, hidden_layer=5)


def test_round_trip_through_auto_config(tmp_path):
    config = LlavaRewardConfig(
        vlm_config={"model_type": "qwen2_vl"}, objective="gpm", reward_dim=4, tau=1, perspective="safety"
    )
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert type(reloaded) is LlavaRewardConfig
    assert reloaded.vlm_config.model_type == "qwen2_vl"
    assert (reloaded.objective, reloaded.reward_dim, reloaded.tau, reloaded.perspective) == ("gpm", 4, 1, "safety")
    assert reloaded.num_labels == 1
