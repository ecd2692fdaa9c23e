"""`save_pretrained` ships the code: a process without this package loads the model with trust_remote_code."""

import json
import subprocess
import sys
import textwrap

import torch

from llava_reward import LlavaRewardModel
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm


# Runs in a fresh interpreter from an empty folder, with this package's modules made unimportable first.
REMOTE_LOAD = textwrap.dedent(
    """
    import importlib.abc, json, sys
    BLOCKED = ("llava_reward", "modeling_llava_reward", "configuration", "trainers", "evaluation", "hub_cards")

    class BlockThisPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

    sys.meta_path.insert(0, BlockThisPackage())
    import torch
    from transformers import AutoModel
    checkpoint, batch_file = sys.argv[1:3]
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    batch = torch.load(batch_file, weights_only=True)
    with torch.no_grad():
        rewards = model(**batch).rewards
    print(json.dumps({
        "class": type(model).__module__ + "." + type(model).__name__,
        "rewards": rewards.tolist(),
        "package_imported": any(name.split(".")[0] in BLOCKED for name in sys.modules),
    }))
    """
)


def test_auto_model_loads_the_shipped_code_without_the_package(tmp_path):
    vlm, processor = tiny_vlm("qwen2_5_vl")
    model = LlavaRewardModel.from_vlm(vlm, objective="gpm", reward_dim=2).eval()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_llava_reward.LlavaRewardConfig",
        "AutoModel": "modeling_llava_reward.LlavaRewardModel",
    }
    shipped = {path.name for path in checkpoint.glob("*.py")}
    assert shipped == {"configuration_llava_reward.py", "modeling_llava_reward.py", "families.py", "objectives.py"}

    batch = processor(
        text=[processor.image_placeholder + "a cat", processor.image_placeholder + "a dog"],
        images=[[image] for image in tiny_images(2)],
        return_tensors="pt",
        padding=True,
    )
    torch.save(dict(batch), tmp_path / "batch.pt")
    with torch.no_grad():
        expected = model(**batch).rewards.tolist()

    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(checkpoint), str(tmp_path / "batch.pt")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["class"].startswith("transformers_modules.") and loaded["class"].endswith(".LlavaRewardModel")
    assert not loaded["package_imported"]
    torch.testing.assert_close(torch.tensor(loaded["rewards"]), torch.tensor(expected), atol=1e-6, rtol=0)
