"""Model cards: valid front matter, every section, the evaluation table from metrics.json, and usage snippets that run
as printed against a local folder."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard

from llava_reward.hub_cards.cards import metric_rows
from llava_reward.hub_cards.cards import render_perspective_card
from llava_reward.testing import save_tiny_perspective
from llava_reward.testing import save_tiny_vlm


SECTIONS = [
    "## Model",
    "## How to read the reward",
    "## Usage",
    "## Training",
    "## Evaluation",
    "## Intended use and limitations",
    "## Citation",
]
PERSPECTIVES = {
    "alignment": dict(objective="bt", tau=0.5),
    "fidelity": dict(objective="gpm", reward_dim=2),
    "safety": dict(objective="ce", head="linear", lora=False),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A local folder laid out like a Hub repo of perspectives, on a tiny LLaVA base recorded as `org/tiny-llava`."""
    root = tmp_path_factory.mktemp("cards")
    base = save_tiny_vlm("llava", root / "base")
    for seed, (name, fields) in enumerate(PERSPECTIVES.items()):
        save_tiny_perspective(base, root / "repo" / name, perspective=name, seed=seed, **fields)
    return root / "repo"


def front_matter(card_text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card_text, flags=re.DOTALL)
    assert match, "the card must start with a YAML front matter block"
    return yaml.safe_load(match.group(1))


def python_blocks(card_text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card_text, flags=re.DOTALL)


@pytest.mark.parametrize("perspective", list(PERSPECTIVES))
def test_card_has_valid_front_matter_and_every_section(repo, perspective):
    card = render_perspective_card(repo / perspective, repo_id="me/llava-reward-tiny", license="apache-2.0")
    text = str(card)
    metadata = front_matter(text)
    assert metadata["license"] == "apache-2.0"
    assert {"llava-reward", "reward-model", "text-to-image", perspective} <= set(metadata["tags"])
    assert "base_model" not in metadata  # the recorded base is a local path: not a Hub reference
    assert ModelCard(text).data.to_dict() == metadata  # huggingface_hub reads back what was written
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert "Reward hacking" in text and "@inproceedings{zhou2025llavareward" in text
    assert f"**{perspective}** perspective" in text
    assert f'llava_reward.load("me/llava-reward-tiny", perspective="{perspective}")' in text
    assert f'AutoModel.from_pretrained("me/llava-reward-tiny", subfolder="{perspective}")' in text
    # What the Hub reads: library, task, tags; no model-index without metrics.
    assert metadata["library_name"] == "llava-reward" and metadata["pipeline_tag"] == "zero-shot-image-classification"
    assert "text-to-image-reward" in metadata["tags"] and "model-index" not in metadata


def test_how_the_reward_reads_follows_the_objective(repo):
    bt = str(render_perspective_card(repo / "alignment", repo_id="me/x"))
    assert "P(a > b) = sigmoid((r_a - r_b) / tau),   tau = 0.5" in bt
    assert "LoRA adapter on the language model (rank 4, alpha 8)" in bt
    gpm = str(render_perspective_card(repo / "fidelity", repo_id="me/x"))
    assert "s(a, b) = sum_k (a[2k] * b[2k+1] - a[2k+1] * b[2k])" in gpm and "R^2" in gpm
    ce = str(render_perspective_card(repo / "safety", repo_id="me/x"))
    assert "P(label = 1 | image, prompt) = sigmoid(r)" in ce and "label 1 = safe" in ce
    assert "linear value head on the hidden state (no SkipCA)" in ce and "LoRA" not in ce.split("## Usage")[0]


def test_a_hub_base_model_is_referenced_in_the_front_matter(repo, tmp_path):
    from llava_reward.configuration import LlavaRewardConfig

    config = LlavaRewardConfig.from_pretrained(repo / "alignment")
    config.base_model, config.base_model_revision = "org/tiny-llava", "0123abc"
    text = str(render_perspective_card(repo / "alignment", repo_id="me/x", config=config))
    metadata = front_matter(text)
    assert metadata["base_model"] == "org/tiny-llava" and metadata["base_model_relation"] == "adapter"
    assert "/" not in text.split("org/tiny-llava")[0].split("## Model")[-1]  # no path of the training machine
    assert "`org/tiny-llava` at revision `0123abc`" in text


def test_the_model_table_says_what_the_reward_reads_and_what_was_trained(repo):
    from llava_reward.configuration import LlavaRewardConfig

    plain = str(render_perspective_card(repo / "safety", repo_id="me/x"))
    assert "its hidden state at the last token" in plain and "prompt is not read" not in plain
    assert "| Trained weights | vision projector and value head (`reward_head.safetensors`) |" in plain
    config = LlavaRewardConfig.from_pretrained(repo / "safety")
    config.pooling, config.hidden_layer, config.standardize_features = "image", 0, True
    recipe = {"training": {"tuning": "head", "train_projector": False}}
    text = str(render_perspective_card(repo / "safety", repo_id="me/x", config=config, recipe=recipe))
    assert "the mean of its projected image tokens (no language-model layer runs: the prompt is not read)" in text
    assert "| Hidden state read | hidden state 0, mean over the image tokens (the projector output" in text
    assert "each feature standardised with the training images' mean and deviation (no SkipCA)" in text
    assert ("| Trained weights | value head (`reward_head.safetensors`, with the feature standardiser fitted before "
            "training) |") in text


def test_evaluation_table_comes_from_metrics_json(repo, tmp_path):
    without = str(render_perspective_card(repo / "fidelity", repo_id="me/x"))
    assert "No evaluation results were recorded" in without
    metrics = {"mjbench_fidelity": {"accuracy_with_ties": 0.912345, "accuracy_without_ties": 0.9}, "eval_loss": 0.31}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    text = str(render_perspective_card(repo / "fidelity", repo_id="me/x", metrics=tmp_path / "metrics.json"))
    table = text.split("## Evaluation")[1].split("##")[0]
    assert "| mjbench_fidelity | accuracy_with_ties | 0.9123 |" in table
    assert "| mjbench_fidelity | accuracy_without_ties | 0.9 |" in table
    assert "|  | eval_loss | 0.31 |" in table
    assert metric_rows({"a": {"b": {"c": 1}}, "ci": [1, 2], "long": [1, 2, 3, 4, 5]}) == [("a", "b / c", "1"), ("", "ci", "[1, 2]")]
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json must hold a JSON object of metrics"):
        render_perspective_card(repo / "fidelity", repo_id="me/x", metrics=tmp_path / "bad.json")


def test_evaluation_table_reads_llava_reward_evaluate_runs(repo, tmp_path):
    def run(dataset, accuracy):
        return {
            "benchmark": "mjbench",
            "dataset_name": dataset,
            "model": "/home/me/outputs/fidelity",
            "data": "/home/me/data/mjbench",
            "skipped_rows": [{"row": 3, "reason": "unreadable image"}],
            "results": {
                "overall": {"accuracy_with_ties": accuracy, "accuracy_with_ties_ci": [0.9, 1.0], "num_pairs": 100},
                "subsets": {"faces": {"accuracy_with_ties": 0.5}},
            },
        }

    (tmp_path / "human.json").write_text(json.dumps(run("human", 0.97)))
    (tmp_path / "objects.json").write_text(json.dumps(run("objects_indoor", 0.81234)))
    metrics = [tmp_path / "human.json", tmp_path / "objects.json"]
    text = str(render_perspective_card(repo / "fidelity", repo_id="me/x", metrics=metrics))
    table = text.split("## Evaluation")[1].split("##")[0]
    assert "| mjbench (human) | accuracy_with_ties | 0.97 |" in table
    assert "| mjbench (human) | accuracy_with_ties_ci | [0.9, 1] |" in table
    assert "| mjbench (human) | subsets / faces / accuracy_with_ties | 0.5 |" in table
    assert "| mjbench (objects_indoor) | accuracy_with_ties | 0.8123 |" in table
    assert "/home/me" not in table and "unreadable" not in table

    # The model-index: each run's headline metrics, overall and per subset, read back by huggingface_hub.
    results = ModelCard(text).data.eval_results
    found = {(result.dataset_name, result.metric_type): result.metric_value for result in results}
    assert found == {
        ("MJ-Bench human", "accuracy_with_ties"): 0.97,
        ("MJ-Bench faces", "accuracy_with_ties"): 0.5,
        ("MJ-Bench objects_indoor", "accuracy_with_ties"): 0.8123,
    }
    assert {result.dataset_type for result in results} == {"MJ-Bench/MJ-Bench"}
    assert all(result.task_type == "zero-shot-image-classification" for result in results)


def test_numbers_measured_on_training_images_are_marked_and_left_out_of_the_model_index(repo, tmp_path):
    runs = [
        {"benchmark": "mjbench", "dataset_name": name, "held_out": held_out,
         "results": {"overall": {"accuracy_with_ties": accuracy}}}
        for name, held_out, accuracy in (("human", False, 0.99), ("objects_indoor", True, 0.7))
    ]
    text = str(render_perspective_card(repo / "fidelity", repo_id="me/x", metrics=runs))
    assert "| mjbench (human) - NOT held out: the model was trained on these images | accuracy_with_ties | 0.99 |" in text
    assert [(result.dataset_name, result.metric_value) for result in ModelCard(text).data.eval_results] == [
        ("MJ-Bench objects_indoor", 0.7)
    ]


def test_card_notes_are_appended_on_every_render(repo, tmp_path):
    (repo / "alignment" / "card_notes.md").write_text("## About this model\n\nDo not optimise against it.\n")
    try:
        text = str(render_perspective_card(repo / "alignment", repo_id="me/x"))
    finally:
        (repo / "alignment" / "card_notes.md").unlink()
    assert text.rstrip().endswith("## About this model\n\nDo not optimise against it.")


def test_training_section_shows_the_recipe_but_not_machine_paths(repo, tmp_path):
    recipe = {
        "model": {"base_model": "org/tiny-llava", "perspective": "alignment"},
        "data": {"train": "mjbench_pairs.json"},
        "training": {"learning_rate": 0.0002, "num_train_epochs": 1, "output_dir": "/home/me/runs/alignment"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    text = str(render_perspective_card(repo / "alignment", repo_id="me/x", recipe=tmp_path / "recipe.yaml"))
    training = text.split("## Training")[1].split("## Evaluation")[0]
    assert "| data.train" not in training and "| training.learning_rate | 0.0002 |" in training  # a local file
    assert "/home/me" not in training
    assert "No training recipe" in str(render_perspective_card(repo / "safety", repo_id="me/x"))


def test_usage_snippets_run_as_printed_against_a_local_folder(repo, tmp_path):
    script = []
    for perspective in ("alignment", "safety"):
        card = render_perspective_card(repo / perspective, repo_id=str(repo))
        blocks = python_blocks(str(card))
        assert len(blocks) == 3
        script += blocks
    (tmp_path / "snippets.py").write_text("\n".join(script))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "snippets.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    # per perspective: rewards, P(red > green) or sigmoid(rewards); AutoModel's rewards; the pipeline's; the multi-
    # perspective scorer's {perspective: rewards}
    assert lines[0].startswith("tensor([") and 0 < float(lines[1]) < 1 and lines[2].startswith("tensor([")
    assert lines[3].startswith("[{'prompt': 'a red apple on a wooden table', 'reward': ")
    assert lines[4].startswith("{'alignment': tensor(")
    assert lines[5].startswith("tensor([") and lines[6].startswith("tensor([") and lines[9].startswith("{'safety': tensor(")
    # the scorer, AutoModel and the pipeline give the same rewards
    scorer_rewards = [float(value) for value in re.findall(r"-?\d+\.\d+", lines[0])]
    pipeline_rewards = [entry["reward"] for entry in eval(lines[3])]  # noqa: S307 (our own printed list)
    assert pipeline_rewards == pytest.approx(scorer_rewards, abs=1e-4)
