"""trainers.data: every supported source format, path resolution, lazy decoding, errors that name file and row."""

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from llava_reward import LlavaRewardProcessor
from llava_reward.data_formats import detect_format
from llava_reward.image_inputs import InputError
from llava_reward.testing import tiny_vlm
from llava_reward.trainers.data import LlavaRewardDataCollator
from llava_reward.trainers.data import load_preference_data
from llava_reward.trainers.synthetic import colour_square
from llava_reward.trainers.synthetic import write_colour_task


# Resolved: the loaders resolve symlinks, and ../shared may itself be one.
SHARED = (Path(__file__).resolve().parents[2] / "shared" / "data").resolve()
SAMPLE = SHARED / "llava_reward_sample_test"
MJBENCH = SHARED / "mjbench_quality"
needs_shared = pytest.mark.skipif(not SAMPLE.is_dir(), reason="the shared sample data is not next to the repository")


@pytest.fixture(scope="module")
def processor():
    return LlavaRewardProcessor.from_vlm_processor(tiny_vlm("llava")[1])


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


def write_images(directory: Path, names: list[str]) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        colour_square("red", rng).save(directory / name)


@needs_shared
def test_published_pairwise_sample_resolves_the_repository_prefix_and_reads_margins():
    pairs = load_preference_data(SAMPLE / "pairwise_sample.json")
    records = json.loads((SAMPLE / "pairwise_sample.json").read_text())
    assert len(pairs) == len(records) == 4
    assert set(pairs.column_names) == {"prompt", "rejected_prompt", "chosen", "rejected", "margin", "row"}
    for row, record in zip(pairs, records):
        # "data/sample_test/sample_img/x.jpg" -> <folder>/sample_img/x.jpg: the leading folders that do not exist go.
        assert row["chosen"] == str(SAMPLE / "sample_img" / Path(record["chosen_path"]).name)
        assert row["rejected"] == str(SAMPLE / "sample_img" / Path(record["reject_path"]).name)
        assert [row["prompt"], row["rejected_prompt"]] == record["prompt"]
        assert row["margin"] == record["c_rate"] - record["r_rate"]
    assert pairs["row"] == [0, 1, 2, 3]


@needs_shared
def test_published_unpaired_sample():
    rows = load_preference_data(SAMPLE / "non_pairwise_sample.json")
    assert rows.column_names == ["prompt", "image", "label", "row"]
    assert rows["label"] == [1.0] * 4
    assert rows[0]["image"] == str(SAMPLE / "sample_img" / "0_c.jpg")


@needs_shared
@pytest.mark.parametrize(
    ("subset", "captions"), [("human", "captions_human.json"), ("objects_indoor", "captions_objects.json")]
)
def test_mjbench_caption_files(subset, captions):
    pairs = load_preference_data(MJBENCH / subset / captions)
    records = json.loads((MJBENCH / subset / captions).read_text())
    assert len(pairs) == len(records) == 100
    first = pairs[0]
    assert first["prompt"] == records[0]["caption"]  # label_0 = 1: image_0 (the original) is chosen
    assert first["chosen"] == str(MJBENCH / subset / f"examples_{subset}" / records[0]["image_0"])
    assert first["rejected"] == str(MJBENCH / subset / f"examples_{subset}" / records[0]["image_1"])


def test_mjbench_label_order_and_ties(tmp_path, caplog):
    write_images(tmp_path / "examples_x", ["a.png", "b.png"])
    rows = [
        {"caption": "one", "image_0": "a.png", "image_1": "b.png", "label_0": 1},
        {"caption": "two", "image_0": "a.png", "image_1": "b.png", "label_0": 0},
        {"caption": "tie", "image_0": "a.png", "image_1": "b.png", "label_0": 0.5},
    ]
    with caplog.at_level(logging.WARNING, logger="llava_reward.trainers.data"):
        pairs = load_preference_data(write_json(tmp_path / "captions_x.json", rows))
    assert pairs["prompt"] == ["one", "two"] and pairs["row"] == [0, 1]
    assert Path(pairs[0]["chosen"]).name == "a.png" and Path(pairs[1]["chosen"]).name == "b.png"
    assert "dropped 1 tied pairs" in caplog.text


def test_rated_rows_become_pairs_per_prompt_with_the_rating_gap_as_margin(tmp_path, caplog):
    write_images(tmp_path, ["a.png", "b.png", "c.png", "d.png", "e.png"])
    rows = [
        {"prompt": "cat", "image": "a.png", "rating": 2},
        {"prompt": "cat", "image": "b.png", "rating": 5},
        {"prompt": "cat", "image": "c.png", "rating": 2},  # ties with a.png: that pair is dropped
        {"prompt": "dog", "image": "d.png", "rating": 1.5},
        {"prompt": "dog", "image": "e.png", "rating": 1},
    ]
    with caplog.at_level(logging.WARNING, logger="llava_reward.trainers.data"):
        pairs = load_preference_data(write_json(tmp_path / "rated.json", rows))
    got = sorted(
        (
            row["prompt"],
            Path(row["chosen"]).name,
            Path(row["rejected"]).name,
            row["margin"],
            row["row"],
            row["rejected_row"],
        )
        for row in pairs
    )
    assert got == [
        ("cat", "b.png", "a.png", 3.0, 1, 0),
        ("cat", "b.png", "c.png", 3.0, 1, 2),
        ("dog", "d.png", "e.png", 0.5, 3, 4),
    ]
    assert "dropped 1 tied pairs" in caplog.text


def test_datasets_with_image_columns_stay_undecoded_until_collated(tmp_path, processor):
    images = [colour_square(colour, np.random.default_rng(index)) for index, colour in enumerate(["red", "blue"] * 2)]
    features = datasets.Features(
        {"prompt": datasets.Value("string"), "chosen": datasets.Image(), "rejected": datasets.Image()}
    )
    dataset = datasets.Dataset.from_dict(
        {"prompt": ["a red square", "a red square"], "chosen": images[0::2], "rejected": images[1::2]},
        features=features,
    )
    pairs = load_preference_data(dataset)
    assert pairs.features["chosen"] == datasets.Image(decode=False)
    assert isinstance(pairs[0]["chosen"]["bytes"], bytes) and pairs["row"] == [0, 1]
    batch = LlavaRewardDataCollator(processor)(list(pairs))
    assert batch["input_ids"].shape[0] == 4 and "margin" not in batch


def test_labelled_dataset_from_disk(tmp_path):
    write_images(tmp_path, ["a.png"])
    datasets.Dataset.from_dict({"prompt": ["p"], "image": ["a.png"], "label": [1]}).save_to_disk(tmp_path / "saved")
    rows = load_preference_data(tmp_path / "saved", image_root=tmp_path)
    assert rows[0] == {"prompt": "p", "image": str(tmp_path / "a.png"), "label": 1.0, "row": 0}


def test_collator_puts_chosen_then_rejected_in_one_batch_with_margins(tmp_path, processor):
    files = write_colour_task(tmp_path, train_pairs=3, eval_pairs=1)
    pairs = load_preference_data(files["train_pairs"]).add_column("margin", [0.5, 1.0, 2.0])
    batch = LlavaRewardDataCollator(processor)(list(pairs))
    assert batch["pixel_values"].shape[0] == batch["input_ids"].shape[0] == 6
    assert torch.equal(batch["margin"], torch.tensor([0.5, 1.0, 2.0]))
    chosen_first = processor(pairs["prompt"][:1], [Image.open(pairs[0]["chosen"])])
    assert torch.equal(batch["pixel_values"][0], chosen_first["pixel_values"][0])
    rejected_first = processor(pairs["prompt"][:1], [Image.open(pairs[0]["rejected"])])
    assert torch.equal(batch["pixel_values"][3], rejected_first["pixel_values"][0])

    labelled = LlavaRewardDataCollator(processor)(list(load_preference_data(files["train_labelled"]))[:4])
    assert labelled["input_ids"].shape[0] == 4 and labelled["label"].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_missing_image_names_the_json_file_row_and_path(tmp_path):
    write_images(tmp_path, ["a.png"])
    path = write_json(
        tmp_path / "pairs.json",
        [
            {"prompt": "p", "chosen_path": "a.png", "reject_path": "a.png"},
            {"prompt": "p", "chosen_path": "a.png", "reject_path": "gone.png"},
        ],
    )
    with pytest.raises(InputError, match=r"pairs\.json row 1: 'reject_path': image file 'gone\.png' not found"):
        load_preference_data(path)


def test_corrupt_image_fails_when_decoded_naming_row_and_file(tmp_path, processor):
    write_images(tmp_path, ["a.png"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    path = write_json(
        tmp_path / "pairs.json",
        [
            {"prompt": "p", "chosen_path": "a.png", "reject_path": "a.png"},
            {"prompt": "p", "chosen_path": "broken.png", "reject_path": "a.png"},
        ],
    )
    pairs = load_preference_data(path)  # lazy: nothing decoded yet
    with pytest.raises(InputError, match=r"row 1, 'chosen': .*broken\.png"):
        LlavaRewardDataCollator(processor)(list(pairs))


def test_skip_option_drops_and_counts_unreadable_rows(tmp_path, caplog):
    write_images(tmp_path, ["a.png"])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    path = write_json(
        tmp_path / "labelled.json",
        [
            {"prompt": "p", "path": "a.png", "label": 1},
            {"prompt": "p", "path": "broken.png", "label": 0},
            {"prompt": "p", "path": "a.png", "label": 0},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="llava_reward.trainers.data"):
        rows = load_preference_data(path, on_bad_image="skip")
    assert rows["row"] == [0, 2]
    assert "skipped 1 of 3 rows" in caplog.text and "broken.png" in caplog.text


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"prompt": "p", "chosen_path": "a.png", "reject_path": "a.png"}, {"prompt": "p", "chosen_path": "a.png"}],
            r"data\.json row 1: missing field .reject_path.",
        ),
        ([{"prompt": "p", "path": "a.png", "label": 2}], r"row 0: 'label' must be 0 or 1, got 2"),
        (
            [{"prompt": ["a", "b", "c"], "chosen_path": "a.png", "reject_path": "a.png"}],
            r"\[prompt_chosen, prompt_rejected\]",
        ),
        ([{"caption": "c", "image_0": "a.png", "image_1": "a.png", "label_0": 3}], r"'label_0' must be 1"),
        ([{"prompt": "p", "image": "a.png", "rating": "good"}], r"'rating' must be a finite number"),
        ([{"prompt": "p", "image": "a.png", "rating": 1}], r"no prompt has two differently rated images"),
        ([{"text": "p", "picture": "a.png"}], r"Cannot tell the format .* from its fields \['picture', 'text'\]"),
        ({"prompt": "p"}, r"expected a JSON list of rows \(one object per row\), got a JSON dict"),
    ],
)
def test_malformed_rows_are_reported(tmp_path, rows, message):
    write_images(tmp_path, ["a.png"])
    with pytest.raises(ValueError, match=message):
        load_preference_data(write_json(tmp_path / "data.json", rows))


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(InputError, match=r"nope\.json: file not found"):
        load_preference_data(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON"):
        load_preference_data(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="`on_bad_image` must be 'raise' or 'skip'"):
        load_preference_data(tmp_path / "bad.json", on_bad_image="ignore")


def test_detect_format_prefers_the_most_specific_signature():
    assert detect_format({"prompt", "chosen_path", "reject_path", "chosen"}) == "published_pairs"
    assert detect_format({"prompt", "image", "rating", "label"}) == "rated"
    assert detect_format({"prompt", "image", "label"}) == "labelled"
