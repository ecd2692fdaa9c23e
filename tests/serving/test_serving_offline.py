"""Offline scoring with Ray Data on a local Ray (2 CPU scorer actors): `llava-reward score --engine ray` writes the
local engine's lines row for row, shards are written whole, a rerun resumes, and every kind of source reads the
rows the local engine reads."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from llava_reward import LlavaRewardScorer
from llava_reward import load_perspectives
from llava_reward.cli import main
from llava_reward.image_inputs import InputError
from llava_reward.serving import read_scores
from llava_reward.serving import read_skipped
from llava_reward.serving import score_dataset
from llava_reward.testing import tiny_images
from llava_reward.testing import write_bad_image_files


SIZES = [(32 + index % 5, 30 + index % 3) for index in range(10)]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generated")
    for index, image in enumerate(tiny_images(10, SIZES, seed=11)):
        (folder / ("sub" if index % 2 else "")).mkdir(exist_ok=True)
        image.save(folder / ("sub" if index % 2 else "") / f"{index:02d}.png")
    return folder


@pytest.fixture(scope="module")
def rows_file(image_folder):
    """A JSON list of 7 unpaired rows and 3 pairwise rows (the published layouts), images beside it."""
    names = [f"{'sub/' if index % 2 else ''}{index:02d}.png" for index in range(10)]
    rows = [{"prompt": f"prompt {index}", "path": names[index], "label": index % 2} for index in range(7)]
    rows += [{"prompt": ["a red cat", "a blue cat"], "chosen_path": names[index], "reject_path": names[9 - index],
              "c_rate": 3, "r_rate": 1} for index in range(3)]
    path = image_folder / "rows.json"
    path.write_text(json.dumps(rows))
    return path


def local_rewards(model_dir, prompts, images) -> torch.Tensor:
    return LlavaRewardScorer.from_pretrained(model_dir).score(prompts, images, batch_size=4)


def assert_same_lines(lines: list[dict], expected: list[dict]):
    """The same lines, key for key, in order; numbers equal to 1e-5 (batches differ between the engines)."""
    assert [list(line) for line in lines] == [list(line) for line in expected]
    for line, other in zip(lines, expected):
        for key, value in line.items():
            if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
                torch.testing.assert_close(torch.tensor(value), torch.tensor(other[key]), atol=1e-5, rtol=1e-5)
            else:
                assert value == other[key], key


@pytest.fixture(scope="module")
def scored_rows(ray_cluster, tiny_reward_repo, rows_file, tmp_path_factory):
    """`llava-reward score --engine ray` over the rows with 2 CPU actors (the session's Ray): 10 rows, shards of 4,
    batches of 3; and the local engine's lines of the same file."""
    work = tmp_path_factory.mktemp("scores")
    model = str(tiny_reward_repo / "alignment")
    command = ["score", "--model", model, "--input", str(rows_file), "--batch-size", "3", "--no-progress"]
    assert main([*command, "--engine", "ray", "--num-workers", "2", "--shard-size", "4",
                 "--output", str(work / "ray")]) == 0
    assert main([*command, "--output", str(work / "local.jsonl")]) == 0
    local = [json.loads(line) for line in (work / "local.jsonl").read_text().splitlines()]
    return work / "ray", local


def test_ray_engine_writes_the_local_engines_lines_row_for_row(scored_rows, capsys):
    output, local = scored_rows
    assert sorted(path.name for path in output.iterdir()) == [
        "scoring.json", "shard-00000-of-00003.jsonl", "shard-00001-of-00003.jsonl", "shard-00002-of-00003.jsonl"]
    lines = read_scores(output)
    assert [line["row"] for line in lines] == list(range(10))
    assert set(lines[0]) == {"row", "prompt", "path", "label", "reward"}
    assert {"chosen_reward", "reject_reward", "p_chosen"} <= set(lines[9])  # pairwise rows, as the local engine
    assert_same_lines(lines, local)
    # Run again: every shard is finished, nothing is scored (no model, no actor).
    capsys.readouterr()
    model = json.loads((output / "scoring.json").read_text())["model"]
    source = json.loads((output / "scoring.json").read_text())["source"]
    assert main(["score", "--engine", "ray", "--model", model, "--input", source, "--output", str(output),
                 "--batch-size", "3", "--shard-size", "4", "--no-progress"]) == 0
    assert "(0 written now, 3 done before); skipped 0." in capsys.readouterr().err
    assert read_scores(output) == lines


def test_ray_engine_refuses_a_bad_row_before_any_model_loads(tiny_reward_repo, image_folder, tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": "a", "path": "missing.png"}) + "\n")
    code = main(["score", "--engine", "ray", "--model", str(tiny_reward_repo / "alignment"), "--input",
                 str(tmp_path / "rows.jsonl"), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 1 and error.count("\n") == 1
    assert error.startswith(f"llava-reward score: error: {tmp_path / 'rows.jsonl'}: row 0: ")
    assert "missing.png" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_image_folder_and_a_rerun_that_scores_only_the_lost_shard(ray_cluster, tiny_reward_repo, image_folder,
                                                                      tmp_path):
    model = str(tiny_reward_repo / "alignment")
    output = tmp_path / "out"

    def run():
        return score_dataset(model, image_folder, output, prompt="a red cat", num_workers=2, threads=1, batch_size=3,
                             shard_size=4, progress=False)

    summary = run()
    assert (summary.num_rows, summary.shards, summary.skipped) == (10, 3, [])
    lines = read_scores(output)
    files = sorted(path.relative_to(image_folder).as_posix() for path in image_folder.rglob("*.png"))
    assert [line["image"] for line in lines] == files and {line["prompt"] for line in lines} == {"a red cat"}
    expected = local_rewards(model, "a red cat", [image_folder / name for name in files])
    torch.testing.assert_close(torch.tensor([line["reward"] for line in lines]), expected, atol=1e-5, rtol=1e-5)
    # A lost shard (an interrupted run) is the only one scored again; finished shards are not touched.
    (output / "shard-00001-of-00003.jsonl").unlink()
    (output / ".shard-00001-of-00003.jsonl.x1y2.tmp").write_text("half a shard")
    kept = {name: (output / name).stat().st_mtime_ns for name in ("shard-00000-of-00003.jsonl",
                                                                   "shard-00002-of-00003.jsonl")}
    again = run()
    assert [path.name for path in again.written] == ["shard-00001-of-00003.jsonl"]
    assert [path.name for path in again.skipped] == list(kept)
    assert {name: (output / name).stat().st_mtime_ns for name in kept} == kept
    assert not list(output.glob(".*tmp"))
    assert read_scores(output) == lines


@pytest.mark.slow
def test_bad_images_skipped_or_stopping_the_run(ray_cluster, tiny_reward_repo, image_folder, tmp_path):
    model = str(tiny_reward_repo / "alignment")
    bad = write_bad_image_files(tmp_path)  # exist, so only an actor finds out that they cannot be read
    rows = [
        {"prompt": "a cat", "path": str(image_folder / "00.png")},
        {"prompt": "a dog", "path": str(bad["truncated"])},
        {"prompt": "a car", "path": "missing.png"},  # known before Ray starts
        {"prompt": "a tree", "path": str(image_folder / "sub" / "01.png")},
        {"prompt": ["a boat", "a ship"], "chosen_path": str(image_folder / "02.png"),
         "reject_path": str(bad["not_an_image"])},
        {"prompt": "a house", "path": str(image_folder / "04.png")},
    ]
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    summary = score_dataset(model, source, tmp_path / "out", num_workers=2, threads=1, batch_size=2, shard_size=4,
                            skip_bad=True, progress=False)
    assert [path.name for path in summary.files] == ["shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]
    assert [line["row"] for line in read_scores(tmp_path / "out")] == [0, 3, 5]
    skipped = read_skipped(tmp_path / "out")
    assert [bad_row.row for bad_row in skipped] == [1, 2, 4] and summary.bad_rows == skipped
    assert "corrupt or truncated" in skipped[0].problem and "missing.png" in skipped[1].problem
    assert "not an image file Pillow can read" in skipped[2].problem
    expected = local_rewards(model, ["a cat", "a tree", "a house"],
                             [image_folder / "00.png", image_folder / "sub" / "01.png", image_folder / "04.png"])
    torch.testing.assert_close(torch.tensor([line["reward"] for line in read_scores(tmp_path / "out")]), expected,
                               atol=1e-5, rtol=1e-5)
    del rows[2]  # without skip_bad, the truncated image (now row 1) stops the run, naming the row, in one line
    source.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    with pytest.raises(InputError, match=f"^{source}: row 1: image 0 .*truncated.*corrupt or truncated") as caught:
        score_dataset(model, source, tmp_path / "stops", num_workers=1, threads=1, batch_size=2, shard_size=2,
                      progress=False)
    assert "\n" not in str(caught.value)
    # Whatever shards were finished before the failure are whole (which ones depends on the streaming order).
    for shard in (tmp_path / "stops").glob("shard-*"):
        assert len(shard.read_text().splitlines()) == 2
    assert not list((tmp_path / "stops").glob(".*tmp"))


@pytest.mark.slow
def test_parquet_and_datasets_sources_with_several_perspectives(ray_cluster, tiny_reward_repo, image_folder, tmp_path):
    from datasets import Dataset
    from datasets import Image

    images = tiny_images(5, seed=13)
    prompts = [f"prompt {index}" for index in range(5)]
    perspectives = ["alignment", "fidelity", "safety"]
    expected = load_perspectives(tiny_reward_repo, perspectives).score(prompts, images)
    for index, image in enumerate(images):
        image.save(tmp_path / f"{index}.png")
    pq.write_table(pa.table({"prompt": prompts, "path": [f"{index}.png" for index in range(5)]}),
                   tmp_path / "rows.parquet", row_group_size=2)
    dataset = Dataset.from_dict({"prompt": prompts, "image": images}).cast_column("image", Image())
    for name, source in (("parquet", tmp_path / "rows.parquet"), ("datasets", dataset)):
        score_dataset(str(tiny_reward_repo), source, tmp_path / name, perspectives=perspectives, num_workers=2,
                      threads=1, batch_size=2, shard_size=3, progress=False)
        lines = read_scores(tmp_path / name)
        assert [line["row"] for line in lines] == list(range(5)) and [line["prompt"] for line in lines] == prompts
        for perspective in perspectives:  # fidelity is GPM: a list of 2 per row
            torch.testing.assert_close(torch.tensor([line[f"reward_{perspective}"] for line in lines]),
                                       expected[perspective], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor([line["probability_safety"] for line in lines]),
                                   expected["safety"].sigmoid(), atol=1e-5, rtol=1e-5)
