"""convert_original_checkpoint: a checkpoint in the published layout, generated here for tiny Qwen2.5-VL and LLaVA-NeXT
bases, converts to an adapter bundle whose rewards equal the original math computed independently below."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import AutoModel

from llava_reward import LlavaRewardScorer
from llava_reward.cli import main
from llava_reward.hub_cards.convert_original import PUBLISHED_LAYOUTS
from llava_reward.hub_cards.convert_original import convert_original_checkpoint
from llava_reward.testing import save_tiny_vlm
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm


H = 32  # hidden size of the tiny models
LORA_RANK, LORA_ALPHA = 4, 8
# The module paths the published model classes (transformers 4.4x) gave the language model.
PUBLISHED_LM_PREFIX = {"qwen2_5_vl": "model.", "llava_next": "language_model.model."}
# The text the published checkpoints were trained on (REFERENCE section 2), written out by hand.
PUBLISHED_TEXT = {
    "qwen2_5_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>",
    "llava_next": "USER: <image>\n{prompt}</s>",
}
PROJECTOR = {  # published key -> parameter of the transformers 5 base model
    "qwen2_5_vl": {
        "visual.merger.ln_q.weight": "visual.merger.ln_q.weight",
        "visual.merger.mlp.0.weight": "visual.merger.mlp.0.weight",
        "visual.merger.mlp.0.bias": "visual.merger.mlp.0.bias",
        "visual.merger.mlp.2.weight": "visual.merger.mlp.2.weight",
        "visual.merger.mlp.2.bias": "visual.merger.mlp.2.bias",
    },
    "llava_next": {
        f"multi_modal_projector.linear_{i}.{kind}": f"multi_modal_projector.linear_{i}.{kind}"
        for i in (1, 2)
        for kind in ("weight", "bias")
    },
}
LM_LINEARS = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]


def write_published_checkpoint(folder, family, base_vlm, *, gpm, cross_attention, adapter_format="safetensors"):
    """A perspective folder in the published layout; returns the raw weights for the reference computation."""
    generator = torch.Generator().manual_seed(7)

    def random(*shape, scale=0.2):
        return torch.randn(*shape, generator=generator) * scale

    dim = 2 if gpm else 1
    head = {"value_head.weight": random(dim, H)}
    if cross_attention:
        head |= {f"{name}.weight": random(H, H) for name in ("W_q", "W_k", "W_v")}
        head["ca_layernorm.weight"] = 1 + random(H, scale=0.1)
    base = dict(base_vlm.named_parameters())
    projector = {key: base[ours].detach() + random(*base[ours].shape, scale=0.05) for key, ours in PROJECTOR[family].items()}
    folder.mkdir(parents=True)
    torch.save(head | projector, folder / "pytorch_model.bin")
    (folder / "reward_config.yaml").write_text(
        yaml.safe_dump(
            dict(
                general_preference_tau=0.1,
                value_head_dim=2,
                add_cross_attention=cross_attention,
                is_general_preference=gpm,
            )
        )
    )
    lora = {}  # our module path (relative to the base model) -> (A, B)
    adapter = {}
    for layer in range(2):
        for linear in LM_LINEARS:
            weight = base[f"language_model.layers.{layer}.{linear}.weight"]
            a, b = random(LORA_RANK, weight.shape[1]), random(weight.shape[0], LORA_RANK)
            lora[f"language_model.layers.{layer}.{linear}"] = (a, b)
            published = f"base_model.model.{PUBLISHED_LM_PREFIX[family]}layers.{layer}.{linear}"
            adapter[f"{published}.lora_A.weight"], adapter[f"{published}.lora_B.weight"] = a, b
    (folder / "lora").mkdir()
    (folder / "lora" / "adapter_config.json").write_text(
        json.dumps(
            dict(
                peft_type="LORA",
                task_type="CAUSAL_LM",
                r=LORA_RANK,
                lora_alpha=LORA_ALPHA,
                lora_dropout=0.05,
                bias="none",
                init_lora_weights="gaussian",
                target_modules=sorted({key.rsplit(".lora_", 1)[0].removeprefix("base_model.model.") for key in adapter}),
                base_model_name_or_path="Qwen/Qwen2.5-VL-7B-Instruct",
            )
        )
    )
    if adapter_format == "safetensors":
        save_file(adapter, folder / "lora" / "adapter_model.safetensors")
    else:
        torch.save(adapter, folder / "lora" / "adapter_model.bin")
    return dict(head=head, projector=projector, lora=lora)


@torch.no_grad()
def original_reward(family, base_dir, weights, prompt, image, *, cross_attention, eps):
    """REFERENCE 1.4-1.5 written out: LoRA merged by hand, h = final state at the last token, e_v = the projected
    visual tokens (layer 0 at the image positions), h' = RMSNorm(h + softmax(Q K^T / sqrt(H)) V), reward = g(h')."""
    vlm = AutoModel.from_pretrained(base_dir).eval()
    for module, (a, b) in weights["lora"].items():
        vlm.get_submodule(module).weight += (LORA_ALPHA / LORA_RANK) * b @ a
    parameters = dict(vlm.named_parameters())
    for key, ours in PROJECTOR[family].items():
        parameters[ours].copy_(weights["projector"][key])
    _, processor = tiny_vlm(family)
    text = PUBLISHED_TEXT[family].format(prompt=prompt)
    inputs = processor(text=[text], images=[[image]], return_tensors="pt")
    outputs = vlm(**inputs, output_hidden_states=True)
    h = outputs.last_hidden_state[0, -1]  # (H,)
    head = weights["head"]
    if cross_attention:
        image_token = getattr(vlm.config, "image_token_id", None) or vlm.config.image_token_index
        e_v = outputs.hidden_states[0][0, inputs["input_ids"][0] == image_token]  # (V, H)
        q, k, v = h @ head["W_q.weight"].T, e_v @ head["W_k.weight"].T, e_v @ head["W_v.weight"].T
        attended = torch.softmax(q @ k.T / H**0.5, dim=-1) @ v
        x = h + attended
        h = head["ca_layernorm.weight"] * x * torch.rsqrt(x.pow(2).mean() + eps)
    return head["value_head.weight"] @ h  # (D,)


CASES = {
    # Qwen2.5-VL GPM with SkipCA; LLaVA-NeXT BT whose published config asks for SkipCA (its code never applied it).
    "qwen2_5_vl": dict(gpm=True, cross_attention=True, eps=1e-6, adapter_format="safetensors"),
    "llava_next": dict(gpm=False, cross_attention=True, eps=1e-5, adapter_format="bin"),
}


@pytest.mark.parametrize("family", list(CASES))
def test_converted_checkpoint_reproduces_the_original_math(family, tmp_path):
    case = CASES[family]
    base_dir = save_tiny_vlm(family, tmp_path / "base")
    source = tmp_path / "published" / "fidelity" / f"llavareward_{family}_fidelity"
    weights = write_published_checkpoint(
        source,
        family,
        AutoModel.from_pretrained(base_dir),
        gpm=case["gpm"],
        cross_attention=case["cross_attention"],
        adapter_format=case["adapter_format"],
    )
    out = convert_original_checkpoint(source, base_dir, tmp_path / "converted" / "fidelity", published_image_size=False)

    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    assert {"config.json", "reward_head.safetensors", "lora/adapter_config.json", "lora/adapter_model.safetensors"} <= set(
        written
    )
    assert {"README.md", "conversion.json", "processor_config.json"} <= set(written)
    assert not [name for name in written if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    config = json.loads((out / "config.json").read_text())
    assert config["perspective"] == "fidelity"  # read from the published folder's path
    assert config["objective"] == ("gpm" if case["gpm"] else "bt") and config["reward_dim"] == (2 if case["gpm"] else 1)
    assert config["head"] == ("skipca" if family == "qwen2_5_vl" else "linear") and config["tau"] == 0.1
    assert (out / config["base_model"]).resolve() == base_dir.resolve()  # recorded relative to the converted folder

    scorer = LlavaRewardScorer.from_pretrained(out)
    images = tiny_images(2, [(32, 32), (24, 40)], seed=5)
    prompts = ["a red cat", "two dogs on a mat"]
    rewards = scorer.score(prompts, images)
    expected = torch.stack(
        [
            original_reward(family, base_dir, weights, prompt, image, cross_attention=config["head"] == "skipca", eps=case["eps"])
            for prompt, image in zip(prompts, images)
        ]
    ).reshape(rewards.shape)
    torch.testing.assert_close(rewards, expected, atol=2e-5, rtol=1e-4)

    # The LoRA adapter and the projector matter: without them the rewards differ.
    plain = dict(weights, lora={})
    without = original_reward(family, base_dir, plain, prompts[0], images[0], cross_attention=config["head"] == "skipca", eps=case["eps"])
    assert not torch.allclose(without.reshape(rewards[0].shape), rewards[0], atol=1e-3)

    notes = json.loads((out / "conversion.json").read_text())["notes"]
    card = (out / "README.md").read_text()
    assert "## Conversion from the published checkpoint" in card
    if family == "qwen2_5_vl":
        assert any("151643" in note for note in notes) and "151643" in card
    else:
        assert any("no SkipCA path" in note for note in notes) and "W_q.weight" in " ".join(notes)


def test_the_published_qwen_image_size_is_kept_by_default(tmp_path):
    base_dir = save_tiny_vlm("qwen2_5_vl", tmp_path / "base")
    source = tmp_path / "safety_ckpt"
    write_published_checkpoint(source, "qwen2_5_vl", AutoModel.from_pretrained(base_dir), gpm=False, cross_attention=True)
    out = convert_original_checkpoint(source, base_dir, tmp_path / "safety", objective="ce")
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert processor_config["image_processor"]["size"] == {"shortest_edge": 256 * 28 * 28, "longest_edge": 1280 * 28 * 28}
    config = json.loads((out / "config.json").read_text())
    assert config["objective"] == "ce" and config["perspective"] == "safety"


class RunsAShellCommand:
    """Unpickling this runs `touch <path>`: what a malicious pytorch_model.bin could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("where", ["pytorch_model.bin", "lora/adapter_model.bin"])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, where):
    base_dir = save_tiny_vlm("llava_next", tmp_path / "base")
    source = tmp_path / "alignment"
    write_published_checkpoint(
        source, "llava_next", AutoModel.from_pretrained(base_dir), gpm=False, cross_attention=False, adapter_format="bin"
    )
    marker = tmp_path / "pwned"
    torch.save({"value_head.weight": torch.zeros(1, H), "payload": RunsAShellCommand(marker)}, source / where)
    with pytest.raises(ValueError, match="refusing to load it"):
        convert_original_checkpoint(source, base_dir, tmp_path / "out")
    assert not marker.exists()
    # The same file does run its payload when unpickled without weights_only: the test's payload is real.
    torch.load(source / where, weights_only=False)
    assert marker.exists()


def test_errors_name_the_file_and_what_is_missing(tmp_path):
    base_dir = save_tiny_vlm("llava_next", tmp_path / "base")
    with pytest.raises(FileNotFoundError, match="reward_config.yaml not found"):
        convert_original_checkpoint(tmp_path, base_dir, tmp_path / "out")
    source = tmp_path / "ckpt"
    write_published_checkpoint(source, "llava_next", AutoModel.from_pretrained(base_dir), gpm=False, cross_attention=False)
    (source / "reward_config.yaml").write_text("general_preference_tau: 0.1\nvalue_head_dim: 1\n")
    with pytest.raises(ValueError, match=r"reward_config.yaml lacks \['add_cross_attention', 'is_general_preference'\]"):
        convert_original_checkpoint(source, base_dir, tmp_path / "out")


def test_published_module_paths_map_onto_this_packages_modules():
    qwen, llava_next, phi = (PUBLISHED_LAYOUTS[name] for name in ("qwen2_5_vl", "llava_next", "phi3_v"))
    assert qwen.our_module("model.layers.3.mlp.up_proj") == "vlm.language_model.layers.3.mlp.up_proj"
    assert qwen.our_module("model.language_model.layers.3.mlp.up_proj") == "vlm.language_model.layers.3.mlp.up_proj"
    assert qwen.our_module("visual.blocks.0.mlp.up_proj") == "vlm.visual.blocks.0.mlp.up_proj"
    assert llava_next.our_module("language_model.model.layers.0.self_attn.q_proj") == (
        "vlm.language_model.layers.0.self_attn.q_proj"
    )
    assert phi.our_module("model.layers.0.self_attn.qkv_proj") == "vlm.layers.0.self_attn.qkv_proj"
    assert phi.our_module("model.vision_embed_tokens.img_projection.0") == "vlm.vision_embed_tokens.img_projection.0"
    with pytest.raises(ValueError, match="no module of this package corresponds"):
        llava_next.our_module("lm_head")


def test_command_line_conversion(tmp_path, capsys):
    base_dir = save_tiny_vlm("llava_next", tmp_path / "base")
    source = tmp_path / "overall_ckpt"
    write_published_checkpoint(source, "llava_next", AutoModel.from_pretrained(base_dir), gpm=True, cross_attention=False)
    command = [str(Path(sys.executable).parent / "llava-reward"), "convert-original", str(source)]
    done = subprocess.run(command + ["--base", str(base_dir), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"converted {source} to {tmp_path / 'out'}"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["objective"] == "gpm"
    arguments = ["convert-original", str(source), "--base", str(base_dir), "--out", str(tmp_path / "out2")]
    capsys.readouterr()
    assert main(arguments + ["--objective", "ce"]) == 1
    assert capsys.readouterr().err.strip() == (
        "llava-reward convert-original: error: The checkpoint is a General Preference Model; objective='ce' does not apply."
    )
