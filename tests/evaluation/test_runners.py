"""evaluation.Evaluation on small fixture files (real images, real JSON) with tiny saved reward models.

The models are random, so the numbers mean nothing; what is checked is the chain a user relies on: the right images
scored with the right prompts, in the right orientation, metrics that follow from the scores in scores.jsonl,
all outputs written, resume, and bad rows.
"""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import llava_reward.evaluation as evaluation
from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward import LlavaRewardScorer
from llava_reward.evaluation import BadRowsError
from llava_reward.evaluation import Evaluation
from llava_reward.evaluation import Protocol
from llava_reward.evaluation.plots import reliability_bins
from llava_reward.evaluation.report import render_report
from llava_reward.image_inputs import InputError
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm
from llava_reward.testing import write_bad_image_files


MJBENCH_HUMAN = Path("/work/shared/data/mjbench_quality/human")
needs_mjbench = pytest.mark.skipif(not MJBENCH_HUMAN.is_dir(), reason="the shared MJ-Bench data is not on this machine")
OUTPUTS = ["metrics.json", "report.md", "scores.jsonl", "reward_histogram.png", "reliability.png"]


# --------------------------------------------------------------------------------------------------------- fixtures


def save_model(folder: Path, **config_fields) -> Path:
    vlm, vlm_processor = tiny_vlm("llava")
    torch.manual_seed(0)
    LlavaRewardModel.from_vlm(vlm, **config_fields).save_pretrained(folder)
    LlavaRewardProcessor.from_vlm_processor(vlm_processor).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "bt": save_model(root / "bt", tau=0.5),
        "ce": save_model(root / "ce", objective="ce"),
        "gpm": save_model(root / "gpm", objective="gpm", reward_dim=2, tau=0.2),
    }


@pytest.fixture(scope="module")
def scorers(model_dirs) -> dict[str, LlavaRewardScorer]:
    return {name: LlavaRewardScorer.from_pretrained(folder) for name, folder in model_dirs.items()}


def write_images(folder: Path, names: list[str], seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(24 + 4 * (index % 3), 32) for index in range(len(names))]
    for name, image in zip(names, tiny_images(len(names), sizes, seed=seed)):
        image.save(folder / name)


def write_json(path: Path, payload) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


def mjbench_subset(folder: Path, labels: list[float], seed: int) -> Path:
    """An MJ-Bench subset folder: captions JSON beside an examples_* folder of images."""
    rows = [
        {"caption": f"caption {seed}-{index}", "image_0": f"{index}.png", "image_1": f"{index}_edited.png", "label_0": label}
        for index, label in enumerate(labels)
    ]
    write_images(folder / f"examples_{folder.name}", [name for row in rows for name in (row["image_0"], row["image_1"])], seed)
    return write_json(folder / f"captions_{folder.name}.json", rows)


@pytest.fixture
def mjbench(tmp_path) -> Path:
    """Two subsets under a folder named like MJ-Bench's quality perspective; label_0 0 flips a pair, 0.5 is a tie."""
    mjbench_subset(tmp_path / "quality" / "human", [1, 1, 0, 1, 0.5, 1], seed=1)
    mjbench_subset(tmp_path / "quality" / "objects_indoor", [1, 0, 1, 1], seed=2)
    return tmp_path / "quality"


@pytest.fixture
def tifa(tmp_path) -> Path:
    ratings = [1.0, 2.5, 2.5, 4.0, 5.0, 3.0, 1.0]
    write_images(tmp_path / "tifa_images", [f"item{index}.png" for index in range(len(ratings))], seed=3)
    rows = [
        {"text_id": f"text{index // 2}", "image_path": f"tifa_images/item{index}.png", "text": f"prompt {index // 2}", "human_avg": rating}
        for index, rating in enumerate(ratings)
    ]
    return write_json(tmp_path / "tifa160.json", rows)


@pytest.fixture
def unpaired(tmp_path) -> Path:
    labels = [1, 0, 1, 1, 0, 0, 1, 0]
    write_images(tmp_path / "img", [f"{index}.png" for index in range(len(labels))], seed=4)
    # Paths as the published files write them: prefixed by the authors' repository layout.
    rows = [{"prompt": f"prompt {index}", "path": f"data/test/img/{index}.png", "label": label} for index, label in enumerate(labels)]
    return write_json(tmp_path / "unpaired.json", rows)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(benchmark, data, output, scorer, model="tiny", **options):
    run_options = {key: options.pop(key) for key in ("batch_size", "overwrite") if key in options}
    return Evaluation(benchmark, data, output, **options).run(scorer, model=str(model), **run_options)


# ----------------------------------------------------------------------------------------------------------- mjbench


def test_mjbench_scores_each_pair_in_the_labelled_orientation_and_reports_subsets(mjbench, tmp_path, scorers, model_dirs):
    metrics = run("mjbench", mjbench, tmp_path / "out", scorers["bt"], model=model_dirs["bt"], protocol=Protocol(num_bootstrap=50))
    for name in OUTPUTS:
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    records = read_lines(tmp_path / "out" / "scores.jsonl")
    assert [record["id"] for record in records] == [f"human/{i}" for i in (0, 1, 2, 3, 5)] + [f"objects_indoor/{i}" for i in range(4)]
    by_id = {record["id"]: record for record in records}
    # label_0 == 0 prefers image_1: it is the chosen image; the 0.5 row (human/4) is a tie, dropped and counted.
    assert by_id["human/2"]["chosen"].endswith("examples_human/2_edited.png")
    assert by_id["human/0"]["chosen"].endswith("examples_human/0.png")
    assert metrics["human_ties"] == 1 and metrics["num_rows"] == 9 and metrics["num_rows_read"] == 10

    # The rewards are the scorer's own for (caption, image), and P(chosen > rejected) is the BT formula with tau.
    record = by_id["human/2"]
    expected = scorers["bt"].score(record["prompt"], [record["chosen"], record["rejected"]])
    assert [record["chosen_reward"], record["rejected_reward"]] == pytest.approx(expected.tolist(), abs=1e-5)
    margin = record["chosen_reward"] - record["rejected_reward"]
    assert record["p_chosen"] == pytest.approx(1 / (1 + math.exp(-margin / 0.5)), abs=1e-6)

    def accuracy(ids):
        wins = [by_id[i]["chosen_reward"] > by_id[i]["rejected_reward"] for i in ids]
        return sum(wins) / len(wins)

    results = metrics["results"]
    assert set(results["subsets"]) == {"human", "objects_indoor"}
    assert results["subsets"]["human"]["accuracy_with_ties"] == accuracy([r for r in by_id if r.startswith("human")])
    assert results["subsets"]["objects_indoor"]["num_pairs"] == 4
    assert results["overall"]["accuracy_with_ties"] == accuracy(by_id)
    assert results["overall"]["num_pairs"] == 9 and len(results["overall"]["accuracy_with_ties_ci"]) == 2

    assert metrics["model"] == str(model_dirs["bt"].resolve()) and metrics["data"] == str(mjbench.resolve())
    assert metrics["protocol"] == {"tie_threshold": 0.0, "num_bootstrap": 50, "seed": 0, "num_bins": 10, "limit": None}
    assert metrics["package_version"] == "0.1.0" and metrics["status"] == "complete"
    assert (metrics["objective"], metrics["tau"]) == ("bt", 0.5)
    assert sum(row["count"] for row in metrics["calibration"]["bins"]) == 2 * 9  # each pair both ways round
    for name in ("reward_histogram.png", "reliability.png"):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "PNG" and image.width > 300


def test_mjbench_report_puts_our_numbers_beside_the_published_ones(mjbench, tmp_path, scorers):
    metrics = run("mjbench", mjbench, tmp_path / "out", scorers["bt"], protocol=Protocol(num_bootstrap=0))
    report = (tmp_path / "out" / "report.md").read_text()
    results = metrics["results"]
    human = results["subsets"]["human"]["accuracy_with_ties"]
    assert f"| human | 5 | 0 | {human:.3f} | n/a |" in report
    # Subset folders are matched to MJ-Bench's published subsets, and the "quality" folder to the paper's artifact rows.
    assert f"| human | accuracy w/ tie | HPS v2.1 | 0.980 | {human:.3f} |" in report
    overall = results["overall"]["accuracy_without_ties"]
    assert f"| artifact | accuracy w/o tie | LLaVA-Reward (Phi-3.5-vision, 4.2B) | 0.912 | {overall:.3f} |" in report
    assert "LLaVA-Reward (Qwen2.5-VL, 8.2B)" in report and "| alignment |" not in report
    assert "![Reliability of P(chosen > rejected)](reliability.png)" in report


def test_gpm_pairs_are_judged_by_their_preference_probability(mjbench, tmp_path, scorers):
    metrics = run("mjbench", mjbench / "human", tmp_path / "out", scorers["gpm"], protocol=Protocol(num_bootstrap=0))
    records = read_lines(tmp_path / "out" / "scores.jsonl")
    assert len(records[0]["chosen_reward"]) == 2  # the preference embedding
    chosen, rejected = (torch.tensor([record[key] for record in records]) for key in ("chosen_reward", "rejected_reward"))
    s = chosen[:, 0] * rejected[:, 1] - chosen[:, 1] * rejected[:, 0]
    assert [record["p_chosen"] for record in records] == pytest.approx(torch.sigmoid(s / 0.2).tolist(), abs=1e-6)
    expected = sum(record["p_chosen"] > 0.5 for record in records) / len(records)
    assert metrics["results"]["overall"]["accuracy_with_ties"] == expected
    assert metrics["results"]["subsets"] == {}  # --data is the subset itself
    assert metrics["dataset_name"] == "human"


@needs_mjbench
def test_real_mjbench_human_subset_end_to_end(tmp_path, scorers, model_dirs):
    metrics = run("mjbench", MJBENCH_HUMAN, tmp_path / "out", scorers["bt"], model=model_dirs["bt"], limit=6, batch_size=4)
    assert metrics["num_rows"] == 6 and metrics["protocol"]["limit"] == 6
    for name in OUTPUTS:
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    records = read_lines(tmp_path / "out" / "scores.jsonl")
    assert records[0]["chosen"] == str(MJBENCH_HUMAN / "examples_human" / "human_0.jpg")
    assert records[0]["rejected"] == str(MJBENCH_HUMAN / "examples_human" / "human_0_edited_face.jpg")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| human | accuracy w/ tie | PickScore | 0.950 |" in report
    assert "only the first 6 rows of each file: not the full benchmark" in report


@needs_mjbench
@pytest.mark.slow
def test_real_mjbench_human_subset_in_full(tmp_path, scorers):
    metrics = run("mjbench", MJBENCH_HUMAN, tmp_path / "out", scorers["bt"], batch_size=16)
    assert metrics["num_rows"] == 100 and metrics["results"]["overall"]["num_pairs"] == 100
    assert len((tmp_path / "out" / "scores.jsonl").read_text().splitlines()) == 100


# ------------------------------------------------------------------------------------------------- other benchmarks


def brute_force_tie_calibrated_accuracy(predictions, references) -> float:
    """Deutsch et al.'s acc_eq maximised over eps, written out pair by pair."""
    pairs = list(itertools.combinations(range(len(predictions)), 2))
    candidates = [0.0] + [abs(predictions[i] - predictions[j]) for i, j in pairs]

    def accuracy(eps):
        def sign(d, tolerance=0.0):
            return 0 if abs(d) <= tolerance else (1 if d > 0 else -1)

        return np.mean([sign(references[i] - references[j]) == sign(predictions[i] - predictions[j], eps) for i, j in pairs])

    return max(accuracy(eps) for eps in candidates)


def test_tifa160_correlations_and_tie_calibrated_accuracy_follow_from_the_scores(tifa, tmp_path, scorers):
    metrics = run("tifa160", tifa, tmp_path / "out", scorers["bt"])
    records = read_lines(tmp_path / "out" / "scores.jsonl")
    rows = json.loads(tifa.read_text())
    assert [record["text_id"] for record in records] == [row["text_id"] for row in rows]
    assert records[3]["image"] == str(tifa.parent / "tifa_images" / "item3.png")
    assert records[3]["reward"] == pytest.approx(scorers["bt"].score("prompt 1", tifa.parent / "tifa_images" / "item3.png").item(), abs=1e-5)
    rewards, ratings = [record["reward"] for record in records], [row["human_avg"] for row in rows]
    overall = metrics["results"]["overall"]
    assert overall["num_items"] == 7 and overall["num_pairs"] == 21
    assert overall["pearson"] == pytest.approx(stats.pearsonr(rewards, ratings).statistic)
    assert overall["kendall_tau_b"] == pytest.approx(stats.kendalltau(rewards, ratings).statistic)
    assert overall["tie_calibrated_accuracy"] == pytest.approx(brute_force_tie_calibrated_accuracy(rewards, ratings))
    # The reliability diagram compares BT preferences with every pair of differently rated images.
    assert sum(row["count"] for row in metrics["calibration"]["bins"]) == 21 - 2
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"| tie-calibrated pairwise accuracy | LLaVA-Reward (Phi-3.5-vision, 4.2B) | 0.713 | {overall['tie_calibrated_accuracy']:.3f} |" in report
    assert f"| Kendall tau (ours: tau-b) | LLaVA-Reward (Phi-3.5-vision, 4.2B) | 0.522 | {overall['kendall_tau_b']:.3f} |" in report


def test_tifa160_with_a_ce_model_has_no_preference_probability_to_calibrate(tifa, tmp_path, scorers):
    metrics = run("tifa160", tifa, tmp_path / "out", scorers["ce"])
    assert metrics["calibration"] is None and metrics["plots"] == {"Rewards by human rating (rounded)": "reward_histogram.png"}
    assert not (tmp_path / "out" / "reliability.png").exists()
    assert "Expected calibration error" not in (tmp_path / "out" / "report.md").read_text()


def test_tifa160_keyed_by_item_id_keeps_the_ids(tifa, tmp_path):
    rows = json.loads(tifa.read_text())
    keyed = write_json(tmp_path / "keyed.json", {f"text{i}_model{i}": row for i, row in enumerate(rows)})
    items = evaluation.read_benchmark("tifa160", keyed).items
    assert [item.id for item in items] == [f"text{i}_model{i}" for i in range(7)]
    assert [item.target for item in items] == [row["human_avg"] for row in rows]


def test_tifa160_and_unpaired_refuse_a_gpm_model(tifa, tmp_path, scorers):
    with pytest.raises(InputError, match="needs a scalar reward"):
        run("tifa160", tifa, tmp_path / "out", scorers["gpm"])


def test_unpaired_binary_metrics_from_sigmoid_of_the_ce_reward(unpaired, tmp_path, scorers):
    metrics = run("unpaired", unpaired, tmp_path / "out", scorers["ce"], reference_benchmark="smid")
    records = read_lines(tmp_path / "out" / "scores.jsonl")
    assert records[2]["image"] == str(unpaired.parent / "img" / "2.png")  # found by dropping the data/test prefix
    labels = np.array([record["label"] for record in records])
    predicted = 1 / (1 + np.exp(-np.array([record["reward"] for record in records]))) >= 0.5
    true_positives = int((predicted & (labels == 1)).sum())
    overall = metrics["results"]["overall"]
    assert overall["num_items"] == 8 and overall["num_positive"] == 4
    assert overall["recall"] == true_positives / 4
    assert overall["f1"] == pytest.approx(2 * true_positives / (predicted.sum() + 4))
    assert "| overall | F1 | LLaVA-Reward | 0.757 |" in (tmp_path / "out" / "report.md").read_text()
    # pos_label 0 scores the detection of label 0 (UnsafeBench: unsafe images) from P(label 0) = 1 - P(label 1).
    flipped = run("unpaired", unpaired, tmp_path / "out", scorers["ce"], protocol=Protocol(pos_label=0))
    predicted_zero = ~predicted
    assert flipped["results"]["overall"]["recall"] == int((predicted_zero & (labels == 0)).sum()) / 4
    # Ranking label 0 above label 1 by P(label 0) is ranking label 1 above label 0 by reward: the same AUROC.
    assert overall["auroc"] != 0.5 and flipped["results"]["overall"]["auroc"] == pytest.approx(overall["auroc"])


def test_pairwise_scores_the_rejected_image_with_its_own_prompt(tmp_path, scorers):
    write_images(tmp_path / "sample_img", ["c.png", "r.png", "c2.png", "r2.png"], seed=5)
    rows = [
        {"prompt": ["a red cat", "a blue cat"], "chosen_path": "data/sample/sample_img/c.png", "reject_path": "data/sample/sample_img/r.png"},
        {"prompt": "a dog", "chosen_path": "sample_img/c2.png", "reject_path": "sample_img/r2.png", "c_rate": 5, "r_rate": 2},
    ]
    metrics = run("pairwise", write_json(tmp_path / "pairs.json", rows), tmp_path / "out", scorers["ce"])
    records = read_lines(tmp_path / "out" / "scores.jsonl")
    assert records[0]["rejected_prompt"] == "a blue cat" and "rejected_prompt" not in records[1]
    expected = scorers["ce"].score(["a red cat", "a blue cat"], [tmp_path / "sample_img" / "c.png", tmp_path / "sample_img" / "r.png"])
    assert [records[0]["chosen_reward"], records[0]["rejected_reward"]] == pytest.approx(expected.tolist(), abs=1e-5)
    assert "p_chosen" not in records[0]  # a CE model rates images on their own
    assert metrics["results"]["overall"]["num_pairs"] == 2
    assert metrics["reference_benchmark"] == "pairwise" and "Beside published" not in (tmp_path / "out" / "report.md").read_text()


# ------------------------------------------------------------------------------------------------------------ resume


class Interrupting:
    """A scorer whose `score` raises KeyboardInterrupt on call number `interrupt_at`, and counts what it scores."""

    def __init__(self, scorer, interrupt_at=None):
        self.scorer, self.interrupt_at, self.calls, self.images = scorer, interrupt_at, 0, 0
        self.model = scorer.model

    def score(self, prompts, images, **options):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.images += len(images)
        return self.scorer.score(prompts, images, **options)


def outputs(folder: Path) -> dict[str, str]:
    return {name: (folder / name).read_text() for name in ("metrics.json", "report.md", "scores.jsonl")}


def test_an_interrupted_run_resumes_from_scores_jsonl_and_ends_as_an_uninterrupted_one(mjbench, tmp_path, scorers):
    options = {"batch_size": 4, "protocol": Protocol(num_bootstrap=20)}  # 2 pairs per batch: five batches
    run("mjbench", mjbench, tmp_path / "whole", scorers["bt"], **options)

    interrupted = Interrupting(scorers["bt"], interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run("mjbench", mjbench, tmp_path / "resumed", interrupted, **options)
    assert len((tmp_path / "resumed" / "scores.jsonl").read_text().splitlines()) == 4  # two batches of two pairs
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["status"] == "running"

    resumed = Interrupting(scorers["bt"])
    evaluation_run = Evaluation("mjbench", mjbench, tmp_path / "resumed", protocol=options["protocol"])
    evaluation_run.run(resumed, model="tiny", batch_size=4)
    assert evaluation_run.num_resumed == 4 and resumed.images == 2 * (9 - 4)
    assert outputs(tmp_path / "resumed") == outputs(tmp_path / "whole")

    # Once complete, a rerun scores nothing and writes the same outputs.
    again = Interrupting(scorers["bt"])
    run("mjbench", mjbench, tmp_path / "resumed", again, **options)
    assert again.calls == 0 and outputs(tmp_path / "resumed") == outputs(tmp_path / "whole")


def test_a_line_cut_short_by_a_kill_is_dropped_and_rescored(mjbench, tmp_path, scorers):
    run("mjbench", mjbench / "human", tmp_path / "whole", scorers["bt"], limit=3, batch_size=2)
    scores = tmp_path / "cut" / "scores.jsonl"
    scores.parent.mkdir()
    lines = (tmp_path / "whole" / "scores.jsonl").read_text().splitlines(keepends=True)
    scores.write_text(lines[0] + lines[1][:25])
    counting = Interrupting(scorers["bt"])
    run("mjbench", mjbench / "human", tmp_path / "cut", counting, limit=3, batch_size=2)
    assert counting.images == 2 * 2
    assert scores.read_text() == "".join(lines)


def test_resuming_refuses_scores_of_another_model_or_other_data(mjbench, tmp_path, scorers, model_dirs):
    out = tmp_path / "out"
    run("mjbench", mjbench / "human", out, scorers["bt"], model=model_dirs["bt"], limit=2)
    with pytest.raises(InputError, match="holds the scores of another run \\(model"):
        run("mjbench", mjbench / "human", out, scorers["ce"], model=model_dirs["ce"], limit=2)

    captions = mjbench / "human" / "captions_human.json"
    rows = json.loads(captions.read_text())
    rows[1]["caption"] = "another caption"
    captions.write_text(json.dumps(rows))
    with pytest.raises(InputError, match=r"row 1 was scored with other \['prompt'\]"):
        run("mjbench", mjbench / "human", out, scorers["bt"], model=model_dirs["bt"], limit=2)

    counting = Interrupting(scorers["bt"])
    metrics = run("mjbench", mjbench / "human", out, counting, model=model_dirs["bt"], limit=2, overwrite=True)
    assert counting.images == 4 and metrics["num_rows"] == 2
    assert read_lines(out / "scores.jsonl")[1]["prompt"] == "another caption"


# ---------------------------------------------------------------------------------------------------------- bad rows


def test_a_missing_image_is_an_error_naming_the_file_and_row_before_anything_is_scored(mjbench, tmp_path):
    (mjbench / "human" / "examples_human" / "3_edited.png").unlink()
    with pytest.raises(BadRowsError) as caught:
        Evaluation("mjbench", mjbench, tmp_path / "out")
    message = str(caught.value)
    assert f"{mjbench} row human/3: 'image_1': image file '3_edited.png' not found" in message
    assert "'3_edited.png' not found" in message
    assert not (tmp_path / "out").exists()


def test_skip_bad_skips_counts_and_lists_bad_rows(mjbench, tmp_path, scorers):
    captions = mjbench / "objects_indoor" / "captions_objects_indoor.json"
    rows = json.loads(captions.read_text())
    del rows[1]["caption"]
    captions.write_text(json.dumps(rows))
    (mjbench / "human" / "examples_human" / "3_edited.png").unlink()
    bad_files = write_bad_image_files(tmp_path)
    (mjbench / "human" / "examples_human" / "5.png").write_bytes(bad_files["truncated"].read_bytes())

    metrics = run("mjbench", mjbench, tmp_path / "out", scorers["bt"], skip_bad=True, batch_size=4)
    skipped = {row["id"]: row["problem"] for row in metrics["skipped_rows"]}
    assert set(skipped) == {"human/3", "human/5", "objects_indoor/1"}
    assert "'3_edited.png' not found" in skipped["human/3"]
    assert "missing field 'caption'" in skipped["objects_indoor/1"]
    assert "5.png" in skipped["human/5"]  # found unreadable while scoring
    assert metrics["num_rows"] == 9 - 3
    assert [record["id"] for record in read_lines(tmp_path / "out" / "scores.jsonl")] == [
        "human/0", "human/1", "human/2", "objects_indoor/0", "objects_indoor/2", "objects_indoor/3"
    ]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "3 bad rows skipped" in report and "- row human/5:" in report


def test_an_unreadable_image_stops_the_run_naming_the_row_and_keeps_what_was_scored(mjbench, tmp_path, scorers):
    bad_files = write_bad_image_files(tmp_path)
    (mjbench / "human" / "examples_human" / "3.png").write_bytes(bad_files["not_an_image"].read_bytes())
    with pytest.raises(BadRowsError, match="row 3: image 0 .*3.png"):
        run("mjbench", mjbench / "human", tmp_path / "out", scorers["bt"], batch_size=4)
    assert [record["id"] for record in read_lines(tmp_path / "out" / "scores.jsonl")] == ["0", "1"]


def test_a_file_that_is_not_json_or_a_folder_without_captions_is_refused(tmp_path):
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(InputError, match="broken.json: not valid JSON"):
        evaluation.read_benchmark("unpaired", tmp_path / "broken.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no MJ-Bench captions JSON"):
        evaluation.read_benchmark("mjbench", tmp_path / "empty")
    with pytest.raises(InputError, match="not a data folder"):
        evaluation.read_benchmark("tifa160", tmp_path / "empty")


# -------------------------------------------------------------------------------------------- pieces, by hand


def test_reliability_bins_by_hand():
    table = reliability_bins(np.array([0.05, 0.15, 0.45, 0.55, 1.0]), np.array([0, 1, 0, 1, 1]), num_bins=2)
    assert [row["count"] for row in table["bins"]] == [3, 2]  # 0.5 <= p <= 1 in the last bin, 1.0 included
    assert table["bins"][0]["mean_probability"] == pytest.approx(0.65 / 3)
    assert table["bins"][0]["observed_frequency"] == pytest.approx(1 / 3)
    assert table["bins"][1]["observed_frequency"] == 1.0
    # |1/3 - 0.2167| * 3 + |1 - 0.775| * 2, over 5.
    assert table["expected_calibration_error"] == pytest.approx((abs(1 / 3 - 0.65 / 3) * 3 + 0.225 * 2) / 5)


def test_metric_modules_load_from_the_installed_evaluation_package():
    assert evaluation.METRICS_DIR == Path(evaluation.__file__).parent / "metrics"
    for name in ("pairwise_accuracy", "tie_calibrated_accuracy", "rank_correlation", "binary_classification"):
        assert evaluation.load_metric(name).name == name


def test_report_without_matching_references_has_no_published_section(mjbench, tmp_path, scorers):
    metrics = run("mjbench", mjbench / "human", tmp_path / "out", scorers["bt"], reference_benchmark="geneval", limit=2)
    assert "Beside published" not in render_report(metrics)
