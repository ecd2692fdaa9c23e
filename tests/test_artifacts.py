"""The artifact-pair generator: deterministic, local, and made only from the photos it is given."""

import json

import numpy as np
import pytest
from PIL import Image

from llava_reward.trainers.artifacts import DEFECTS
from llava_reward.trainers.artifacts import Edit
from llava_reward.trainers.artifacts import PhotoSource
from llava_reward.trainers.artifacts import apply_edit
from llava_reward.trainers.artifacts import library_photos
from llava_reward.trainers.artifacts import main
from llava_reward.trainers.artifacts import make_artifact_pairs
from llava_reward.trainers.data import load_preference_data


@pytest.fixture(scope="module")
def photos():
    found = library_photos()
    assert len(found) >= 6, "scikit-image (a default-backbone dependency) ships the sample photos"
    return found


def files_of(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_same_seed_gives_the_same_bytes_and_another_seed_other_pairs(tmp_path, photos):
    first = make_artifact_pairs(photos[:3], tmp_path / "a", num_pairs=5, size=48, seed=7).parent
    second = make_artifact_pairs(photos[:3], tmp_path / "b", num_pairs=5, size=48, seed=7).parent
    other = make_artifact_pairs(photos[:3], tmp_path / "c", num_pairs=5, size=48, seed=8).parent
    assert files_of(first) == files_of(second)
    assert len(files_of(first)) == 11  # pairs.json + 5 x (chosen, rejected)
    differing = [name for name, data in files_of(first).items() if files_of(other)[name] != data]
    assert len(differing) == 11


def test_the_pairs_file_trains_as_pairs_with_the_original_preferred(tmp_path, photos):
    pairs_file = make_artifact_pairs(photos[:2], tmp_path / "pairs", num_pairs=4, size=40, seed=0)
    dataset = load_preference_data(pairs_file)
    assert len(dataset) == 4
    rows = json.loads(pairs_file.read_text())
    for row, loaded in zip(rows, dataset):
        assert loaded["prompt"] == row["prompt"]
        chosen, rejected = (np.asarray(Image.open(tmp_path / "pairs" / row[key])) for key in ("chosen", "rejected"))
        assert chosen.shape == rejected.shape == (40, 40, 3)
        assert (chosen != rejected).any(), "the rejected image carries a defect"
        assert 1 <= len(row["edits"]) <= 2 and all(edit["kind"] in DEFECTS for edit in row["edits"])


def test_pixels_away_from_the_edited_discs_are_unchanged(tmp_path, photos):
    size, margin = 96, 3  # the downsampling filter reaches ~3 output pixels beyond the disc
    pairs_file = make_artifact_pairs(photos, tmp_path / "pairs", num_pairs=12, size=size, seed=3)
    rows, cols = np.mgrid[0:size, 0:size]
    for row in json.loads(pairs_file.read_text()):
        chosen, rejected = (np.asarray(Image.open(tmp_path / "pairs" / row[key])) for key in ("chosen", "rejected"))
        near = np.zeros((size, size), bool)
        for edit in row["edits"]:
            (centre_row, centre_col), radius = edit["centre"], edit["radius"]
            near |= np.hypot(rows + 0.5 - centre_row, cols + 0.5 - centre_col) < radius + margin
        assert (~near).sum() > 0.3 * size * size, "the discs leave most of the image alone"
        assert np.array_equal(chosen[~near], rejected[~near]), row["edits"]
        assert not np.array_equal(chosen[near], rejected[near])


@pytest.mark.parametrize("kind", sorted(DEFECTS))
def test_every_defect_changes_its_disc_and_nothing_else(kind, photos):
    photo = np.asarray(Image.open(photos[0].path).convert("RGB").resize((64, 64)), dtype=np.float32)
    low, high = DEFECTS[kind][1]
    edit = Edit(kind, (30.0, 34.0), 14.0, high)
    edited = apply_edit(photo, edit, np.random.default_rng(0))
    rows, cols = np.mgrid[0:64, 0:64]
    outside = np.hypot(rows - 30.0, cols - 34.0) >= 14.0
    assert np.array_equal(edited[outside], photo[outside])
    assert np.abs(edited[~outside] - photo[~outside]).mean() > 1.0, f"{kind} left its disc nearly as it was"


def test_only_the_given_sources_are_used(tmp_path, photos):
    given = photos[2:4]
    pairs_file = make_artifact_pairs(given, tmp_path / "pairs", num_pairs=6, size=32, seed=0)
    used = [row["source"] for row in json.loads(pairs_file.read_text())]
    assert used == [given[index % 2].path for index in range(6)]  # each source in turn, nothing else


def test_library_photos_are_real_photos_with_captions(photos):
    for photo in photos:
        with Image.open(photo.path) as image:
            assert min(image.size) >= 256
        assert photo.prompt


def test_bad_arguments_are_refused_with_a_clear_message(tmp_path, photos):
    with pytest.raises(ValueError, match="sources.*empty"):
        make_artifact_pairs([], tmp_path / "x", num_pairs=1)
    with pytest.raises(ValueError, match="unknown defect kinds \\['blur'\\]"):
        make_artifact_pairs(photos, tmp_path / "x", num_pairs=1, kinds=("swirl", "blur"))
    with pytest.raises(ValueError, match="cannot read photo .*missing.jpg"):
        make_artifact_pairs([PhotoSource(str(tmp_path / "missing.jpg"), "a photo")], tmp_path / "x", num_pairs=1)
    users = tmp_path / "users-folder"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        make_artifact_pairs(photos, users, num_pairs=1)
    assert (users / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()  # an empty folder (e.g. from tempfile.mkdtemp) holds nothing to lose
    assert make_artifact_pairs(photos, tmp_path / "empty", num_pairs=1, size=16).is_file()
    assert not (tmp_path / "x").exists()


def test_command_line_writes_pairs_from_given_photos(tmp_path, photos, capsys):
    assert main([str(tmp_path / "out"), "--photos", photos[0].path, "--prompt", "a cat", "--pairs", "2",
                 "--size", "32", "--kinds", "swirl", "tear"]) == 0
    rows = json.loads((tmp_path / "out" / "pairs.json").read_text())
    assert [row["prompt"] for row in rows] == ["a cat", "a cat"]
    assert {edit["kind"] for row in rows for edit in row["edits"]} <= {"swirl", "tear"}
    assert "wrote 2 pairs from 1 photos" in capsys.readouterr().out


def test_console_command_writes_the_same_pairs_and_refuses_a_users_folder(tmp_path, photos, capsys):
    from llava_reward.cli import main as llava_reward

    arguments = ["--pairs", "3", "--size", "32", "--seed", "5"]
    assert llava_reward(["artifacts", str(tmp_path / "cli"), *arguments]) == 0
    assert main([str(tmp_path / "module"), *arguments]) == 0
    assert files_of(tmp_path / "cli") == files_of(tmp_path / "module")  # one generator behind both entry points
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert llava_reward(["artifacts", str(tmp_path / "mine"), *arguments]) == 1
    error = capsys.readouterr().err
    assert error.startswith("llava-reward artifacts: error: ") and "refusing to replace it" in error
    assert error.count("\n") == 1 and (tmp_path / "mine" / "notes.txt").read_text() == "mine"


# ---- in the demo's cross-subset protocol ----------------------------------------------------------------------------


@pytest.fixture
def two_subsets(tmp_path, photos, monkeypatch):
    """A folder of two MJ-Bench-style subsets (`people`, `things`) made of library photos, prepared for a tiny base
    in a temporary LLAVA_REWARD_HOME; returns (prepared data, tiny base)."""
    from llava_reward.cli.demo_workflow import prepare_data
    from llava_reward.testing import save_tiny_vlm

    monkeypatch.setenv("LLAVA_REWARD_HOME", str(tmp_path / "home"))
    data = tmp_path / "mjbench"
    for subset, chosen in (("people", photos[:2]), ("things", photos[2:4])):
        images = data / subset / f"examples_{subset}"
        images.mkdir(parents=True)
        rows = []
        for index, photo in enumerate(chosen):
            original = Image.open(photo.path).convert("RGB").resize((48, 48))
            original.save(images / f"{index}.png")
            original.transpose(Image.FLIP_TOP_BOTTOM).save(images / f"{index}_edited.png")
            rows.append({"caption": photo.prompt, "image_0": f"{index}.png", "image_1": f"{index}_edited.png",
                         "label_0": 1})
        (data / subset / f"captions_{subset}.json").write_text(json.dumps(rows))
    base = save_tiny_vlm("llava", tmp_path / "base")
    return prepare_data(data, base, progress=False), base


def test_artifact_pairs_of_a_cross_subset_run_never_use_the_held_out_images(two_subsets):
    from llava_reward.cli.demo_workflow import ArtifactPlan
    from llava_reward.cli.demo_workflow import artifact_pairs

    prepared, base = two_subsets
    plan = ArtifactPlan(pairs=24, sources="library+train")
    pairs_file = artifact_pairs(prepared, ["people"], base, plan)
    used = {row["source"] for row in json.loads(pairs_file.read_text())}
    people = {path for path, _ in prepared.originals["people"]}
    things = {path for path, _ in prepared.originals["things"]}
    assert people <= used and not used & things  # the held-out subset's images are never a source
    assert used - people <= {photo.path for photo in library_photos()}
    with Image.open(pairs_file.parent / json.loads(pairs_file.read_text())[0]["chosen"]) as image:
        assert image.size == (32, 32)  # the tiny base's input size: no resizing at training time
    assert artifact_pairs(prepared, ["people"], base, plan) == pairs_file  # cached
    library_only = artifact_pairs(prepared, ["people"], base, ArtifactPlan(pairs=24, sources="library"))
    assert not {row["source"] for row in json.loads(library_only.read_text())} & (people | things)


@pytest.mark.usefixtures("one_intraop_thread")
@pytest.mark.parametrize("mode", ["mix", "pretrain"])
def test_training_with_artifact_pairs_mixed_in_or_first(two_subsets, tmp_path, mode):
    from llava_reward.cli.demo_workflow import ArtifactPlan
    from llava_reward.cli.demo_workflow import train_on

    prepared, base = two_subsets
    plan = ArtifactPlan(pairs=6, mode=mode, pretrain_steps=2 if mode == "pretrain" else 0)
    settings = {"training.max_steps": 2, "training.per_device_train_batch_size": 2, "training.lora_r": 4,
                "training.lora_alpha": 8, "model.hidden_layer": 1}
    messages = []
    seconds = train_on(prepared, ["people"], base, tmp_path / "model", overrides=settings, artifacts=plan,
                       progress=False, say=messages.append)
    assert seconds["wall"] > 0 and (tmp_path / "model" / "reward_head.safetensors").is_file()
    record = json.loads((tmp_path / "model" / "training_data.json").read_text())
    assert record["num_images"] == 2 * 2 + 2 * 6  # the subset's pairs and the artifact pairs, both seen
    if mode == "pretrain":
        assert messages == ["pre-training on 6 artifact pairs (library+train photos), 2 steps"]
        assert record["sources"][1].startswith("initialised from ")
        assert not (tmp_path / "model-pretrained").exists()  # the first run is only a starting point
    else:
        assert messages == ["adding 6 artifact pairs (library+train photos)"]
        assert len(record["sources"]) == 1


def test_invalid_artifact_plans_are_refused():
    from llava_reward.cli.demo_workflow import ArtifactPlan

    for settings in ({"pairs": 0}, {"pairs": 5, "sources": "everything"}, {"pairs": 5, "mode": "pretrain"},
                     {"pairs": 5, "pretrain_steps": 3}):
        with pytest.raises(ValueError, match="ArtifactPlan"):
            ArtifactPlan(**settings)


@pytest.mark.usefixtures("one_intraop_thread")
def test_cross_subset_holds_out_only_the_subsets_asked_for(two_subsets, tmp_path):
    from llava_reward.cli.demo_workflow import DefaultModelError
    from llava_reward.cli.demo_workflow import cross_subset

    prepared, base = two_subsets
    with pytest.raises(DefaultModelError, match="no subset 'faces' in the data"):
        cross_subset(prepared, base, tmp_path / "work", held_out_subsets=["faces"])
    settings = {"training.max_steps": 1, "training.per_device_train_batch_size": 2, "training.lora_r": 4,
                "training.lora_alpha": 8, "model.hidden_layer": 1}
    results = cross_subset(prepared, base, tmp_path / "work", overrides=settings, held_out_subsets=["things"],
                           progress=False)
    assert list(results) == ["things"] and results["things"]["num_pairs"] == 2
    assert not (tmp_path / "work" / "people").exists()  # no model trained for the subset not asked for
