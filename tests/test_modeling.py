"""LlavaRewardModel on tiny random backbones of every native family."""

import copy

import pytest
import torch
from transformers import AutoModel

from llava_reward import LlavaRewardModel
from llava_reward.modeling_llava_reward import LlavaRewardSkipCrossAttention
from llava_reward.testing import TINY_FAMILIES
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm


FAMILIES = list(TINY_FAMILIES)
# Families whose processors give each image its own number of visual tokens (so batches pad visual tokens).
VARIABLE_TOKEN_FAMILIES = ["llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
PROMPTS = ["a red cat on a mat", "two dogs"]
SIZES = [(32, 32), (24, 40)]


def encode(processor, prompts, images, padding_side="right"):
    processor.tokenizer.padding_side = padding_side
    text = [processor.image_placeholder + prompt for prompt in prompts]
    return processor(text=text, images=[[image] for image in images], return_tensors="pt", padding=True)


def reward_model(family, **config_fields):
    vlm, processor = tiny_vlm(family)
    torch.manual_seed(0)
    return LlavaRewardModel.from_vlm(vlm, **config_fields).eval(), processor


@torch.no_grad()
def rewards_of(model, batch):
    return model(**batch).rewards


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_shapes_bt_and_gpm(family):
    model, processor = reward_model(family)
    batch = encode(processor, PROMPTS, tiny_images(2, SIZES))
    output = model(**batch)
    assert output.rewards.shape == (2,)
    assert output.logits.shape == (2, 1)
    assert output.reward_hidden_states.shape == (2, 32)
    assert torch.isfinite(output.rewards).all()

    model, processor = reward_model(family, objective="gpm", reward_dim=4)
    output = model(**encode(processor, PROMPTS, tiny_images(2, SIZES)))
    assert output.rewards.shape == (2, 4)
    assert output.logits.shape == (2, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_and_right_padding_agree(family):
    model, processor = reward_model(family)
    images = tiny_images(2, SIZES)
    right = encode(processor, PROMPTS, images, padding_side="right")
    left = encode(processor, PROMPTS, images, padding_side="left")
    assert not torch.equal(right["input_ids"], left["input_ids"])  # the padding really differs
    torch.testing.assert_close(rewards_of(model, left), rewards_of(model, right), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_rows_one_by_one(family):
    model, processor = reward_model(family, objective="gpm", reward_dim=2)
    prompts = PROMPTS + ["a very long prompt about a lighthouse at dusk"]
    images = tiny_images(3, SIZES + [(40, 24)])
    batched = rewards_of(model, encode(processor, prompts, images, padding_side="left"))
    one_by_one = torch.cat([rewards_of(model, encode(processor, [p], [i])) for p, i in zip(prompts, images)])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_changing_only_the_image_changes_the_reward(family):
    model, processor = reward_model(family)
    first, second = tiny_images(2, seed=1)
    rewards = rewards_of(model, encode(processor, [PROMPTS[0]] * 2, [first, second]))
    assert abs(rewards[0] - rewards[1]) > 1e-4


def test_padded_visual_tokens_are_masked_out():
    torch.manual_seed(0)
    head = LlavaRewardSkipCrossAttention(hidden_size=16, eps=1e-6)
    query = torch.randn(1, 1, 16)
    visual = torch.randn(1, 5, 16)
    alone = head(query, visual, torch.ones(1, 5, dtype=torch.bool))
    padded_visual = torch.cat([visual, 100 * torch.randn(1, 3, 16)], dim=1)
    padded_mask = torch.tensor([[True] * 5 + [False] * 3])
    torch.testing.assert_close(head(query, padded_visual, padded_mask), alone, atol=1e-6, rtol=0)
    # ...whereas attending to them would change the result.
    assert not torch.allclose(head(query, padded_visual, torch.ones(1, 8, dtype=torch.bool)), alone, atol=1e-3)


@pytest.mark.parametrize("family", VARIABLE_TOKEN_FAMILIES)
def test_rows_with_fewer_visual_tokens_are_unaffected_by_visual_padding(family):
    model, processor = reward_model(family)
    small, large = tiny_images(2, [(16, 16), (48, 48)])
    batch = encode(processor, [PROMPTS[0]] * 2, [small, large])
    image_token_counts = (batch["input_ids"] == model.vlm.config.image_token_id).sum(-1)
    assert image_token_counts[0] < image_token_counts[1]  # the small image's visual tokens get padded in the head
    alone = rewards_of(model, encode(processor, [PROMPTS[0]], [small]))
    torch.testing.assert_close(rewards_of(model, batch)[:1], alone, atol=1e-5, rtol=0)


def capture_head_inputs(model):
    captured = {}

    def hook(module, args):
        captured["query"], captured["visual"], captured["mask"] = args

    model.skip_cross_attention.register_forward_pre_hook(hook)
    return captured


@torch.no_grad()
def projector_output(model, batch) -> torch.Tensor:
    """(total visual tokens, H): the family's projected image features, row by row."""
    text_only = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
    features = model.vlm.get_image_features(**{key: value for key, value in batch.items() if key not in text_only})
    features = features.pooler_output
    return torch.cat(list(features)) if isinstance(features, (list, tuple)) else features.flatten(0, -2)


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_layer_0_keys_are_the_projector_output(family):
    model, processor = reward_model(family)
    batch = encode(processor, PROMPTS, tiny_images(2, SIZES))
    captured = capture_head_inputs(model)
    rewards_of(model, batch)
    features = projector_output(model, batch)
    gathered = captured["visual"][captured["mask"]]  # (total visual tokens, H), row by row
    torch.testing.assert_close(gathered, features, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_hidden_layer_k_is_the_backbone_hidden_state_k(family, layer):
    vlm, processor = tiny_vlm(family)
    batch = encode(processor, PROMPTS[:1], tiny_images(1))
    with torch.no_grad():
        full = vlm(**batch, output_hidden_states=True).hidden_states[layer][:, -1]  # (1, H) at the reward token
    model = LlavaRewardModel.from_vlm(copy.deepcopy(vlm), head="linear", hidden_layer=layer).eval()
    assert len(model.decoder.layers) == layer  # later layers are not even kept
    with torch.no_grad():
        reward_state = model(**batch).reward_hidden_states
    torch.testing.assert_close(reward_state, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_final_hidden_layer_keeps_every_layer_and_uses_the_normed_state(family):
    vlm, processor = tiny_vlm(family)
    batch = encode(processor, PROMPTS[:1], tiny_images(1))
    with torch.no_grad():
        last = vlm(**batch).last_hidden_state[:, -1]
    model = LlavaRewardModel.from_vlm(vlm, head="linear").eval()
    assert len(model.decoder.layers) == 2
    torch.testing.assert_close(model(**batch).reward_hidden_states, last, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_mean_pooling_averages_over_the_mask(family):
    model, processor = reward_model(family, pooling="mean", head="linear")
    images = tiny_images(2, SIZES)
    left = encode(processor, PROMPTS, images, padding_side="left")
    right = encode(processor, PROMPTS, images, padding_side="right")
    torch.testing.assert_close(rewards_of(model, left), rewards_of(model, right), atol=1e-5, rtol=0)
    last, _ = reward_model(family, pooling="last", head="linear")
    assert not torch.allclose(rewards_of(model, right), rewards_of(last, right))


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_5_vl"])
def test_image_pooling_at_layer_0_is_the_mean_projector_output_and_reads_no_prompt(family):
    model, processor = reward_model(family, pooling="image", head="linear", hidden_layer=0)
    assert len(model.decoder.layers) == 0  # no decoder layer is kept: the prompt cannot reach the reward
    images = tiny_images(2, SIZES)
    batch = encode(processor, PROMPTS, images)
    with torch.no_grad():
        states = model(**batch).reward_hidden_states
    features = projector_output(model, batch)
    counts = model.family.image_token_mask(batch["input_ids"], getattr(model.vlm.config, "image_token_id", None)).sum(-1)
    expected = torch.stack([row.mean(dim=0) for row in features.split(counts.tolist())])
    torch.testing.assert_close(states, expected, atol=1e-6, rtol=1e-5)
    other_prompts = encode(processor, ["a blue whale", "nothing like the first prompt at all"], images)
    torch.testing.assert_close(rewards_of(model, other_prompts), rewards_of(model, batch), atol=1e-6, rtol=0)


def test_image_pooling_rejects_rows_without_an_image():
    model, processor = reward_model("llava", pooling="image", head="linear", hidden_layer=1)
    with pytest.raises(ValueError, match=r"Rows \[0\] of the batch contain no image tokens"):
        model(**processor.tokenizer(["no image here"], return_tensors="pt"))


def test_standardised_features_feed_the_value_head_and_are_saved(tmp_path):
    model, processor = reward_model("llava", head="linear", pooling="mean", standardize_features=True)
    batch = encode(processor, PROMPTS, tiny_images(2, SIZES))
    with torch.no_grad():
        output = model(**batch)
        standardizer = model.feature_standardizer
        assert not standardizer.fitted  # the identity until fitted
        torch.testing.assert_close(output.rewards, model.value_head(output.reward_hidden_states)[:, 0])
        standardizer.fit(output.reward_hidden_states)
        states = output.reward_hidden_states
        expected = model.value_head((states - states.mean(0)) / (states.std(0, correction=0) + 1e-6))[:, 0]
        torch.testing.assert_close(rewards_of(model, batch), expected, atol=1e-6, rtol=1e-5)
        assert standardizer.fitted and torch.equal(model(**batch).reward_hidden_states, states)  # read before it
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded.feature_standardizer.scale, standardizer.scale, atol=0, rtol=0)
    torch.testing.assert_close(rewards_of(reloaded, batch), rewards_of(model, batch), atol=0, rtol=0)


def test_rows_without_an_image_are_rejected():
    model, processor = reward_model("llava")
    batch = processor.tokenizer(["no image here"], return_tensors="pt")
    with pytest.raises(ValueError, match=r"Rows \[0\] of the batch contain no image tokens"):
        model(**batch)


def test_vision_tower_runs_once_per_forward():
    model, processor = reward_model("llava")
    calls = []
    model.vlm.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    rewards_of(model, encode(processor, PROMPTS, tiny_images(2)))
    assert len(calls) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_every_decoder_linear_and_nothing_else(family):
    from peft import LoraConfig
    from peft import get_peft_model

    model, _ = reward_model(family)
    decoder_linears = {
        f"{model.family.language_model}.layers.{index}.{name}".lstrip(".")
        for index, layer in enumerate(model.decoder.layers)
        for name, module in layer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    peft_model = get_peft_model(model, LoraConfig(target_modules=model.family.lora_target_modules, r=2))
    adapted = {
        name.removeprefix("base_model.model.vlm.")
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A")
    }
    assert adapted == decoder_linears and len(adapted) >= 7 * len(model.decoder.layers)


def test_phi3_v_lora_targets_its_fused_projections_not_the_clip_tower():
    import re

    from llava_reward.families import get_family

    # Module names of Phi-3.5-vision's remote code (Phi3VModel), wrapped as the reward model's `vlm`.
    decoder = ["vlm.layers.0.self_attn.qkv_proj", "vlm.layers.0.self_attn.o_proj", "vlm.layers.31.mlp.gate_up_proj",
               "vlm.layers.31.mlp.down_proj", "base_model.model.vlm.layers.3.self_attn.qkv_proj"]
    others = ["vlm.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.self_attn.q_proj",
              "vlm.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.self_attn.out_proj",
              "vlm.vision_embed_tokens.img_projection.0", "vlm.layers.0.self_attn", "value_head"]
    pattern = get_family("phi3_v").lora_target_modules
    assert [name for name in decoder + others if re.fullmatch(pattern, name)] == decoder


def test_unsupported_family_lists_the_supported_ones():
    from transformers import AutoConfig

    from llava_reward.configuration import LlavaRewardConfig

    config = LlavaRewardConfig(vlm_config=AutoConfig.for_model("blip-2").to_dict())
    with pytest.raises(ValueError, match=r"Unsupported VLM model_type 'blip-2'.*gemma3.*llava.*qwen2_5_vl"):
        LlavaRewardModel(config)


def test_from_vlm_unwraps_a_conditional_generation_model_and_loads_paths(tmp_path):
    from transformers import LlavaForConditionalGeneration

    vlm, processor = tiny_vlm("llava")
    generator = LlavaForConditionalGeneration(vlm.config)
    generator.save_pretrained(tmp_path / "llava")
    loaded = LlavaRewardModel.from_vlm(tmp_path / "llava", objective="gpm", reward_dim=2)
    assert loaded.config.base_model == str(tmp_path / "llava")
    expected = generator.model.state_dict()
    for name, tensor in loaded.vlm.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0)
    in_memory = LlavaRewardModel.from_vlm(generator)
    assert in_memory.vlm is generator.model
    with pytest.raises(TypeError, match="only apply when `vlm` is a path"):
        LlavaRewardModel.from_vlm(generator, dtype=torch.bfloat16)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_give_identical_rewards(family, tmp_path):
    model, processor = reward_model(family, objective="gpm", reward_dim=2, hidden_layer=1, perspective="fidelity")
    batch = encode(processor, PROMPTS, tiny_images(2, SIZES))
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is LlavaRewardModel
    assert reloaded.config.perspective == "fidelity" and len(reloaded.decoder.layers) == 1
    torch.testing.assert_close(rewards_of(reloaded, batch), rewards_of(model, batch), atol=0, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    model, processor = reward_model("qwen2_5_vl")
    batch = encode(processor, PROMPTS, tiny_images(2, SIZES))

    def gradients():
        model.zero_grad()
        model.train()
        model(**batch).rewards.sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.gradient_checkpointing_enable()
    assert model.decoder.layers[0].gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    assert any(name.startswith("vlm.language_model.layers.0") for name in plain)
    assert "skip_cross_attention.q_proj.weight" in plain and "vlm.visual.merger.mlp.0.weight" in plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_dtype_and_device_map_and_attention_implementations(tmp_path):
    model, processor = reward_model("llava")
    batch = encode(processor, PROMPTS, tiny_images(2))
    model.save_pretrained(tmp_path)
    expected = rewards_of(model, batch)

    bf16 = LlavaRewardModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert bf16.value_head.weight.dtype == torch.bfloat16 and bf16.vlm.dtype == torch.bfloat16
    bf16_batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()}
    torch.testing.assert_close(rewards_of(bf16, bf16_batch).float(), expected, atol=5e-2, rtol=5e-2)

    mapped = LlavaRewardModel.from_pretrained(tmp_path, device_map="cpu").eval()
    assert {parameter.device.type for parameter in mapped.parameters()} == {"cpu"}
    torch.testing.assert_close(rewards_of(mapped, batch), expected, atol=0, rtol=0)

    eager = LlavaRewardModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.vlm.config.text_config._attn_implementation == "eager"
    assert model.vlm.config.text_config._attn_implementation == "sdpa"
    torch.testing.assert_close(rewards_of(eager, batch), expected, atol=1e-5, rtol=1e-5)


def test_head_initialisation_is_the_published_one():
    model, _ = reward_model("llava")
    std = 1 / (32 + 1)
    for weight in (model.skip_cross_attention.q_proj.weight, model.value_head.weight):
        assert abs(weight.std().item() - std) < 0.35 * std  # 32x32 or 1x32 samples of normal(0, 1/(H+1))
        assert abs(weight.mean().item()) < 3 * std / weight.numel() ** 0.5 + 1e-3
    assert torch.equal(model.skip_cross_attention.norm.weight, torch.ones(32))
    assert model.skip_cross_attention.norm.variance_epsilon == 1e-5
    qwen, _ = reward_model("qwen2_5_vl")
    assert qwen.skip_cross_attention.norm.variance_epsilon == 1e-6
