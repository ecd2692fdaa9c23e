"""Checkpoints written before the `llava_reward` namespace (package 0.1.0, top-level `modeling_llava_reward` /
`configuration`) still load, and give the rewards they gave then.

`tests/fixtures/checkpoints_v0_1/` was written by that code: a tiny base VLM, a full model (`save_pretrained`, with
the code files of that version) and a LoRA adapter bundle (whose config records the absolute base path of the machine
it was written on), plus the rewards of three images scored then.
"""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward import LlavaRewardScorer


FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_v0_1"
PROMPTS = ["a red cat", "a blue dog", ""]


@pytest.fixture(scope="module")
def expected():
    return json.loads((FIXTURES / "expected_rewards.json").read_text())


@pytest.fixture(scope="module")
def images():
    return sorted(FIXTURES.glob("image_*.png"))


def test_a_full_model_of_0_1_scores_as_it_did(expected, images):
    scorer = LlavaRewardScorer.from_pretrained(FIXTURES / "full")
    assert scorer.score(PROMPTS, images).tolist() == pytest.approx(expected["full"], abs=1e-5)


def test_a_full_model_of_0_1_loads_with_auto_model(expected, images):
    model = AutoModel.from_pretrained(FIXTURES / "full")
    assert type(model) is LlavaRewardModel
    processor = LlavaRewardProcessor.from_pretrained(FIXTURES / "full")
    with torch.no_grad():
        rewards = model.eval()(**processor(PROMPTS, [str(path) for path in images])).rewards
    assert rewards.tolist() == pytest.approx(expected["full"], abs=1e-5)


def test_an_adapter_bundle_of_0_1_scores_as_it_did(expected, images):
    recorded = json.loads((FIXTURES / "lora_bundle" / "config.json").read_text())["base_model"]
    assert Path(recorded).is_absolute()  # the machine it was written on: the base is given here instead
    scorer = LlavaRewardScorer.from_pretrained(FIXTURES / "lora_bundle", base=FIXTURES / "base")
    assert scorer.score(PROMPTS, images).tolist() == pytest.approx(expected["lora_bundle"], abs=1e-5)
