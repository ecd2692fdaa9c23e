"""load_perspectives / MultiPerspectiveScorer: one base, one adapter per perspective, the vision encoder once per
image; and loading by Hub repo id from a hand-made local cache, offline, at a pinned revision."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from llava_reward import LlavaRewardScorer
from llava_reward import load_perspectives
from llava_reward.hub_cards.testing import put_in_hub_cache
from llava_reward.testing import save_tiny_perspective
from llava_reward.testing import save_tiny_vlm
from llava_reward.testing import tiny_images


# Different objectives, heads and LoRA-or-not; every perspective also trained (here: perturbed) its projector.
PERSPECTIVES = {
    "alignment": dict(objective="bt"),
    "fidelity": dict(objective="gpm", reward_dim=2),
    "safety": dict(objective="ce", head="linear", lora=False),
}
PROMPTS = ["a red cat", "two dogs on a mat", "a lighthouse at dusk"]
SIZES = [(32, 32), (24, 40), (40, 24)]
# An inner layer of each vision encoder: it runs only when the encoder really computes.
VISION_LAYER = {"llava": "vision_tower.encoder.layers.0", "qwen2_5_vl": "visual.blocks.0.attn"}


def save_repo(root, family, perspectives=PERSPECTIVES, base_model=None):
    base = save_tiny_vlm(family, root / "base")
    for seed, (name, fields) in enumerate(perspectives.items()):
        save_tiny_perspective(base, root / "repo" / name, perspective=name, seed=seed, base_model=base_model, **fields)
    return root / "repo"


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_scores_equal_each_perspective_alone_and_the_vision_encoder_runs_once(family, tmp_path):
    repo = save_repo(tmp_path, family)
    images = tiny_images(3, SIZES, seed=2)
    scorer = load_perspectives(repo, list(PERSPECTIVES))
    models = scorer._all.models
    assert len({id(model.vlm) for model in models.values()}) == 1  # one base model in memory
    vision_calls = []
    scorer._all.vlm.get_submodule(VISION_LAYER[family]).register_forward_hook(lambda *_: vision_calls.append(1))

    scores = scorer.score(PROMPTS, images, batch_size=2)

    assert len(vision_calls) == 2  # one per batch of images (2 batches), not one per batch and perspective
    assert list(scores) == list(PERSPECTIVES)
    for name in PERSPECTIVES:
        alone = LlavaRewardScorer.from_pretrained(repo / name).score(PROMPTS, images, batch_size=2)
        assert scores[name].shape == alone.shape == ((3, 2) if name == "fidelity" else (3,))
        torch.testing.assert_close(scores[name], alone, atol=1e-5, rtol=1e-5)
    # The perspectives are really different models (adapters, heads and projectors are not mixed up).
    assert not torch.allclose(scores["alignment"], scores["safety"], atol=1e-3)


def test_perspectives_with_different_decoder_layers_cannot_share_a_base(tmp_path):
    repo = save_repo(tmp_path, "llava", {"alignment": dict(hidden_layer=1), "fidelity": dict(hidden_layer=-1)})
    with pytest.raises(ValueError, match=r"read different decoder layers \(alignment: hidden_layer=1, visual_layer=0"):
        load_perspectives(repo, ["alignment", "fidelity"])


def test_only_adapter_bundles_of_one_base_can_be_combined(tmp_path):
    repo = save_repo(tmp_path, "llava", {"alignment": {}, "fidelity": {}})
    config_file = repo / "fidelity" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(config | {"base_model": "org/another-vlm"}))
    with pytest.raises(ValueError, match="name different base models .*pass `base=` to choose one"):
        load_perspectives(repo, ["alignment", "fidelity"])
    scorer = load_perspectives(repo, ["alignment", "fidelity"], base=tmp_path / "base")  # `base` decides
    assert scorer.perspectives == ["alignment", "fidelity"]
    with pytest.raises(ValueError, match="must be a non-empty list"):
        load_perspectives(repo, "alignment")
    (repo / "alignment" / "reward_head.safetensors").unlink()
    with pytest.raises(ValueError, match="is not an adapter bundle"):
        load_perspectives(repo, ["alignment", "fidelity"])


def test_remote_code_of_a_base_model_is_never_run_implicitly(tmp_path):
    repo = save_repo(tmp_path, "llava", {"alignment": {}})
    custom = tmp_path / "custom_vlm"
    custom.mkdir()
    marker = tmp_path / "remote_code_ran"
    (custom / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (custom / "config.json").write_text(
        json.dumps({"model_type": "custom_vlm", "auto_map": {"AutoConfig": "modeling_custom.Config", "AutoModel": "modeling_custom.Model"}})
    )
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_perspectives(repo, ["alignment"], base=custom)
    assert not marker.exists()


# Runs in a fresh interpreter: HF_HUB_CACHE and HF_HUB_OFFLINE are read when huggingface_hub is imported.
LOAD_BY_REPO_ID = textwrap.dedent(
    """
    import json, sys
    from llava_reward import load_perspectives
    from llava_reward import LlavaRewardScorer
    from llava_reward.testing import tiny_images
    commit = sys.argv[1]
    images = tiny_images(2, seed=2)
    main = LlavaRewardScorer.from_pretrained("org/llava-reward-tiny", subfolder="fidelity")
    branch = LlavaRewardScorer.from_pretrained("org/llava-reward-tiny", subfolder="fidelity", revision="v1")
    pinned = load_perspectives("org/llava-reward-tiny", ["alignment", "fidelity"], revision=commit)
    print(json.dumps({
        "main": main.score("a cat", images).tolist(),
        "v1": branch.score("a cat", images).tolist(),
        "pinned": {name: rewards.tolist() for name, rewards in pinned.score("a cat", images).items()},
        "base_model": main.model.config.base_model,
    }))
    """
)


def test_loading_by_repo_id_from_a_hand_made_cache_offline(tmp_path):
    """Hub ids resolve offline: the perspectives repo (main and a branch v1) and the base model `org/tiny-llava`."""
    cache = tmp_path / "cache"
    main = save_repo(tmp_path / "main", "llava", {"alignment": {}, "fidelity": {}}, base_model="org/tiny-llava")
    main_commit = put_in_hub_cache(cache, "org/llava-reward-tiny", main)
    # Branch v1: another commit whose fidelity perspective is another model (seeded like main's alignment).
    v1 = save_repo(tmp_path / "v1", "llava", {"fidelity": {}}, base_model="org/tiny-llava")
    put_in_hub_cache(cache, "org/llava-reward-tiny", v1, branch="v1")
    put_in_hub_cache(cache, "org/tiny-llava", tmp_path / "main" / "base")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    env.pop("HF_HOME", None)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_BY_REPO_ID, main_commit], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["base_model"] == "org/tiny-llava"

    images = tiny_images(2, seed=2)
    expected = {
        name: LlavaRewardScorer.from_pretrained(main / name, base=tmp_path / "main" / "base").score("a cat", images)
        for name in ("alignment", "fidelity")
    }
    torch.testing.assert_close(torch.tensor(loaded["main"]), expected["fidelity"], atol=1e-5, rtol=0)
    for name in expected:
        torch.testing.assert_close(torch.tensor(loaded["pinned"][name]), expected[name], atol=1e-5, rtol=0)
    assert not torch.allclose(torch.tensor(loaded["v1"]), expected["fidelity"], atol=1e-3)  # the branch is another model
