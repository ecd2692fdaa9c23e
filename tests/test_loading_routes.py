"""Every way a Hugging Face user loads a model `llava-reward train` wrote (a LoRA perspective, and a full model), from
a directory outside the checkout, with the package importable and not: each gives the rewards of
`LlavaRewardScorer`. (The default model's routes are in tests/test_demo.py, where its backbone is built.)"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModel
from transformers import AutoProcessor
from transformers import pipeline

import llava_reward
from llava_reward import LlavaRewardConfig
from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardScorer
from llava_reward.hub_cards.testing import put_in_hub_cache
from llava_reward.testing import tiny_images


PROMPTS = ["a red square", "a blue square", ""]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def trained(tiny_trained) -> dict[str, Path]:
    return tiny_trained


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    paths = [folder / f"{index}.png" for index in range(3)]
    for image, path in zip(tiny_images(3, seed=4), paths):
        image.save(path)
    return [str(path) for path in paths]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: nothing may depend on the working directory
    return tmp_path


def reference(model_dir: Path, images) -> torch.Tensor:
    return LlavaRewardScorer.from_pretrained(model_dir).score(PROMPTS, images)


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_the_scorer_routes_agree(trained, images, elsewhere, tuning):
    expected = reference(trained[tuning], images)
    scorer = llava_reward.load(trained[tuning])
    torch.testing.assert_close(scorer(PROMPTS, images), expected, atol=1e-5, rtol=0)
    matrix = scorer.score_matrix(PROMPTS, images)  # every prompt with every image
    assert matrix.shape == (3, 3)
    torch.testing.assert_close(matrix.diagonal(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(matrix[0], scorer([PROMPTS[0]] * 3, images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_auto_model_and_auto_processor(trained, images, elsewhere, tuning):
    model = AutoModel.from_pretrained(trained[tuning])
    processor = AutoProcessor.from_pretrained(trained[tuning])
    assert isinstance(model, LlavaRewardModel) and not model.training
    with torch.no_grad():
        rewards = model(**processor(images=images, text=PROMPTS)).rewards
    torch.testing.assert_close(rewards, reference(trained[tuning], images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_the_transformers_pipeline(trained, images, elsewhere, tuning):
    reward = pipeline("text-to-image-reward", model=str(trained[tuning]))
    results = reward(images, prompts=PROMPTS, batch_size=2)
    assert [result["prompt"] for result in results] == PROMPTS
    expected = reference(trained[tuning], images).tolist()
    assert [result["reward"] for result in results] == pytest.approx(expected, abs=1e-5)
    assert reward(images[0], prompts="a red square")["reward"] == pytest.approx(expected[0], abs=1e-5)


def test_peft_loads_the_whole_perspective_or_refuses(trained, images, elsewhere):
    from peft import AutoPeftModel
    from peft import PeftModel

    bundle = trained["lora"]
    fresh = LlavaRewardModel(LlavaRewardConfig.from_pretrained(bundle), vlm=AutoModel.from_pretrained(bundle / "../base"))
    processor = AutoProcessor.from_pretrained(bundle)
    # PEFT's own loader on the adapter folder restores LoRA, projector, SkipCA and head: the same rewards.
    peft_model = PeftModel.from_pretrained(fresh, bundle, subfolder="lora").eval()
    with torch.no_grad():
        rewards = peft_model(**processor(PROMPTS, images)).rewards
    torch.testing.assert_close(rewards, reference(bundle, images), atol=1e-5, rtol=0)
    # Pointed at the perspective itself, or asked to find the base on its own, PEFT refuses (never a LoRA-only model).
    with pytest.raises(ValueError, match="adapter_config.json"):
        PeftModel.from_pretrained(fresh, bundle)
    with pytest.raises(ValueError, match="import allowlist"):
        AutoPeftModel.from_pretrained(bundle / "lora")
    with pytest.raises(ValueError, match="not through PEFT's AutoPeftModel"):
        AutoPeftModel.from_pretrained(bundle / "lora", import_allowlist=["llava_reward.modeling_llava_reward"])


def test_a_perspective_travels_with_its_base_or_takes_another(trained, images, tmp_path):
    bundle = trained["lora"]
    assert json.loads((bundle / "config.json").read_text())["base_model"] == "../base"  # relative, not a local path
    expected = reference(bundle, images)
    moved = tmp_path / "elsewhere"
    shutil.copytree(bundle.parent, moved, ignore=shutil.ignore_patterns("checkpoint-*"))
    torch.testing.assert_close(reference(moved / bundle.name, images), expected, atol=1e-5, rtol=0)
    alone = shutil.copytree(bundle, tmp_path / "alone" / "reward")
    with pytest.raises(OSError, match=r"relative to its folder.*pass `base_model=`"):
        AutoModel.from_pretrained(alone)
    model = AutoModel.from_pretrained(alone, base_model=str(bundle.parent / "base"))  # (a string, as config fields)
    processor = AutoProcessor.from_pretrained(alone)
    with torch.no_grad():
        torch.testing.assert_close(model(**processor(PROMPTS, images)).rewards, expected, atol=1e-5, rtol=0)


FROM_THE_HUB = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModel, AutoProcessor
    import llava_reward
    images = sys.argv[1:]
    prompts = ["a red square", "a blue square", ""]
    model = AutoModel.from_pretrained("me/llava-reward-tiny", subfolder="alignment")
    processor = AutoProcessor.from_pretrained("me/llava-reward-tiny", subfolder="alignment")
    with torch.no_grad():
        auto = model(**processor(prompts, images)).rewards.tolist()
    loaded = llava_reward.load("me/llava-reward-tiny", perspective="alignment")(prompts, images).tolist()
    print(json.dumps({"auto": auto, "load": loaded}))
    """
)


def test_from_the_hub_offline(trained, images, tmp_path):
    # A repo of perspectives whose base is a Hub id, both in a hand-made cache (the Hub's servers cannot be reached).
    bundle = trained["lora"]
    repo = tmp_path / "repo"
    shutil.copytree(bundle, repo / "alignment", ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((repo / "alignment" / "config.json").read_text())
    (repo / "alignment" / "config.json").write_text(json.dumps({**config, "base_model": "org/tiny-llava"}))
    put_in_hub_cache(tmp_path / "cache", "me/llava-reward-tiny", repo)
    put_in_hub_cache(tmp_path / "cache", "org/tiny-llava", bundle.parent / "base")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    env.pop("HF_HOME", None)
    done = subprocess.run([sys.executable, "-c", FROM_THE_HUB, *images], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    expected = reference(bundle, images).tolist()
    assert loaded["auto"] == pytest.approx(expected, abs=1e-5) and loaded["load"] == pytest.approx(expected, abs=1e-5)


# Runs in a fresh interpreter from an empty folder, with this package made unimportable first.
WITHOUT_THE_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockThePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "llava_reward":
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

    sys.meta_path.insert(0, BlockThePackage())
    import torch
    from transformers import AutoModel, AutoProcessor
    folder, images = sys.argv[1], sys.argv[2:]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    prompts = ["a red square", "a blue square", ""]
    with torch.no_grad():
        rewards = model(**processor(images=images, text=prompts)).rewards
    print(json.dumps({"rewards": rewards.tolist(), "class": type(model).__module__,
                      "package_imported": any(name.startswith("llava_reward") for name in sys.modules)}))
    """
)


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_without_the_package_with_trust_remote_code(trained, images, tmp_path, tuning):
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_PACKAGE, str(trained[tuning]), *images],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["class"].startswith("transformers_modules.") and not loaded["package_imported"]
    expected = reference(trained[tuning], images).tolist()
    assert loaded["rewards"] == pytest.approx(expected, abs=1e-5)
