"""`llava-reward score` / `compare` on tiny saved models.

The exit codes, the published sample data and the bad-row batch file run the installed console script as real
subprocesses (what a shell sees). Each process pays ~5 s of CPU importing torch and transformers, so the exhaustive
matrix of usage errors and bad inputs runs `main(argv)` in this process by default (the console script is
`sys.exit(main())`: the same code and exit codes), and again as subprocesses under `make test-slow`.
"""

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward import LlavaRewardScorer
from llava_reward.cli import main
from llava_reward.cli.score import read_rows
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm
from llava_reward.testing import write_bad_image_files


LLAVA_REWARD = Path(sys.executable).parent / "llava-reward"
SAMPLE = Path("/work/shared/data/llava_reward_sample_test")
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="the shared sample data is not on this machine")


def run_subprocesses(*commands) -> list[subprocess.CompletedProcess]:
    """Run each command (the arguments after `llava-reward`) as its own process, three at a time."""

    def run(arguments):
        return subprocess.run([str(LLAVA_REWARD), *arguments], capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(run, commands))


def run_in_process(*commands) -> list[subprocess.CompletedProcess]:
    """`main(argv)` for each command, with its exit code and what it printed."""
    results = []
    for arguments in commands:
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main([os.fsdecode(argument) for argument in arguments])  # bytes decode as Python's argv does
            except SystemExit as exit:  # argparse: --help and usage errors
                code = exit.code
        results.append(subprocess.CompletedProcess(arguments, code, stdout.getvalue(), stderr.getvalue()))
    return results


@pytest.fixture(params=["in_process", pytest.param("subprocess", marks=pytest.mark.slow)])
def run_cli(request):
    return run_in_process if request.param == "in_process" else run_subprocesses


def assert_fails(result: subprocess.CompletedProcess, code: int, message: str):
    assert result.returncode == code, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny reward models (full layout: weights, config, processor, code): BT on Qwen2.5-VL, GPM and CE on
    LLaVA."""
    folders = {}
    for name, family, config_fields in [
        ("bt", "qwen2_5_vl", {"tau": 0.5}),
        ("gpm", "llava", {"objective": "gpm", "reward_dim": 4, "tau": 0.2}),
        ("ce", "llava", {"objective": "ce"}),
    ]:
        vlm, vlm_processor = tiny_vlm(family)
        folders[name] = tmp_path_factory.mktemp(name)
        LlavaRewardModel.from_vlm(vlm, **config_fields).save_pretrained(folders[name])
        LlavaRewardProcessor.from_vlm_processor(vlm_processor).save_pretrained(folders[name])
    return folders


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = [folder / f"image_{index}.png" for index in range(3)]
    for image, path in zip(tiny_images(3, [(32, 32), (24, 40), (40, 24)], seed=11), paths):
        image.save(path)
    return paths


def gpm_probability(a: list[float], b: list[float], tau: float) -> float:
    logit = sum(a[2 * k] * b[2 * k + 1] - a[2 * k + 1] * b[2 * k] for k in range(len(a) // 2))
    return 1 / (1 + math.exp(-logit / tau))


# ----------------------------------------------------------------------------- exit codes


def test_exit_codes_of_the_console_script(models, image_files, tmp_path):
    model, image = str(models["bt"]), str(image_files[0])
    help_, usage, bad_image, non_utf8 = run_subprocesses(
        ["score", "--help"],
        ["compare", "--model", model, "--prompt", "a cat", image],
        ["score", "--model", model, "--prompt", "a cat", image, str(tmp_path / "missing.png")],
        [b"score", b"--model", model.encode(), b"--prompt", b"caf\xe9", image.encode()],  # not UTF-8
    )
    assert help_.returncode == 0 and "usage: llava-reward score" in help_.stdout
    assert_fails(usage, 2, "compare takes exactly two images, IMAGE_A IMAGE_B; got 1")
    assert_fails(bad_image, 1, f"llava-reward score: error: image 1 ({tmp_path / 'missing.png'}): file not found.")
    assert_fails(non_utf8, 1, "llava-reward score: error: prompt 0: contains characters that are not valid Unicode")
    assert bad_image.stdout == non_utf8.stdout == ""


# ----------------------------------------------------------------------------- help and usage


def test_help_for_every_command(run_cli):
    top, score, compare = run_cli(["--help"], ["score", "--help"], ["compare", "--help"])
    assert top.returncode == score.returncode == compare.returncode == 0
    assert "score" in top.stdout and "compare" in top.stdout
    for result in (score, compare):
        for option in ("--model", "--prompt", "--input", "--image-root", "--output", "--batch-size", "--device",
                       "--dtype", "--skip-bad", "Exit codes: 0 success, 1 bad input"):
            assert option in result.stdout, option


def test_usage_errors_exit_2(run_cli, models, image_files):
    model = str(models["bt"])
    image = str(image_files[0])
    results = run_cli(
        ["compare", "--model", model, "--prompt", "a cat", image],
        ["score", "--model", model, "--input", "rows.json", "--prompt", "a cat"],
        ["score", "--model", model, "--prompt", "a cat", image, "--batch-size", "0"],
        ["score", "--model", model, "--prompt", "a cat", image, "--dtype", "float8"],
        ["score", "--model", model, image],
        ["score", "--model", model, "--prompt", "a cat", image, "--skip-bad"],
    )
    messages = [
        "compare takes exactly two images, IMAGE_A IMAGE_B; got 1",
        "give either --input FILE or --prompt TEXT with IMAGEs, not both",
        "argument --batch-size: expected a positive integer, got '0'",
        "argument --dtype: invalid choice: 'float8'",
        "give --prompt TEXT and IMAGE files, or --input FILE",
        "--skip-bad and --image-root apply to --input files only",
    ]
    for result, message in zip(results, messages):
        assert_fails(result, 2, message)
        assert "usage: llava-reward" in result.stderr


# ----------------------------------------------------------------------------- the published sample data


@needs_sample
def test_score_and_compare_on_the_published_pairwise_sample(models, tmp_path):
    output, pairs = tmp_path / "rewards.jsonl", SAMPLE / "pairwise_sample.json"
    bt, gpm = run_subprocesses(
        ["score", "--model", str(models["bt"]), "--input", str(pairs), "--output", str(output)],
        ["compare", "--model", str(models["gpm"]), "--input", str(pairs), "--batch-size", "3"],
    )
    assert bt.returncode == 0 and bt.stdout == "", bt.stderr
    assert "llava-reward score: scored 4 of 4 rows" in bt.stderr and "skipped 0" in bt.stderr
    source = json.loads((SAMPLE / "pairwise_sample.json").read_text())
    lines = json_lines(output.read_text())
    assert [line["row"] for line in lines] == [0, 1, 2, 3]
    assert all({key: line[key] for key in source[0]} == row for line, row in zip(lines, source))  # the row, kept

    # The command's numbers are the API's: the scorer on the same files, found under sample_img/.
    scorer = LlavaRewardScorer.from_pretrained(models["bt"])
    images = [SAMPLE / "sample_img" / Path(row[key]).name for row in source for key in ("chosen_path", "reject_path")]
    expected = scorer.score([row["prompt"][0] for row in source for _ in range(2)], images).view(4, 2)
    for line, (chosen, rejected) in zip(lines, expected.tolist()):
        assert line["chosen_reward"] == pytest.approx(chosen, abs=1e-5)
        assert line["reject_reward"] == pytest.approx(rejected, abs=1e-5)
        assert line["p_chosen"] == pytest.approx(1 / (1 + math.exp(-(chosen - rejected) / 0.5)), abs=1e-5)
    preferred = sum(line["p_chosen"] > 0.5 for line in lines)
    assert f"P(chosen > rejected) > 0.5 on {preferred} of 4 pairwise rows" in bt.stderr

    assert gpm.returncode == 0, gpm.stderr
    for line in json_lines(gpm.stdout):
        assert len(line["chosen_reward"]) == len(line["reject_reward"]) == 4
        expected_p = gpm_probability(line["chosen_reward"], line["reject_reward"], tau=0.2)
        assert line["p_chosen"] == pytest.approx(expected_p, abs=1e-5)


@needs_sample
def test_score_on_the_published_unpaired_sample_with_a_ce_model(models):
    (result,) = run_subprocesses(
        ["score", "--model", str(models["ce"]), "--input", str(SAMPLE / "non_pairwise_sample.json")]
    )
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert [(line["row"], line["label"]) for line in lines] == [(0, 1), (1, 1), (2, 1), (3, 1)]
    for line in lines:
        assert line["probability"] == pytest.approx(1 / (1 + math.exp(-line["reward"])), abs=1e-6)


def test_images_on_the_command_line(models, image_files):
    paths = [str(path) for path in image_files]
    broadcast, compare = run_subprocesses(
        ["score", "--model", str(models["bt"]), "--prompt", "a red cat", *paths, "--batch-size", "2"],
        ["compare", "--model", str(models["bt"]), "--prompt", "a red cat", *paths[:2]],
    )
    (per_image,) = run_in_process(["score", "--model", str(models["bt"]), "--prompt", "a", "--prompt", "b",
                                   "--prompt", "", *paths])
    scorer = LlavaRewardScorer.from_pretrained(models["bt"])
    assert broadcast.returncode == per_image.returncode == compare.returncode == 0
    lines = json_lines(broadcast.stdout)
    assert [(line["prompt"], line["image"]) for line in lines] == [("a red cat", path) for path in paths]
    expected = scorer.score("a red cat", paths)
    assert [line["reward"] for line in lines] == pytest.approx(expected.tolist(), abs=1e-5)
    per_image_lines = json_lines(per_image.stdout)
    assert [line["prompt"] for line in per_image_lines] == ["a", "b", ""]
    assert [line["reward"] for line in per_image_lines] == pytest.approx(
        scorer.score(["a", "b", ""], paths).tolist(), abs=1e-5
    )
    (line,) = json_lines(compare.stdout)
    assert (line["image_a"], line["image_b"]) == tuple(paths[:2])
    assert line["p_a"] == pytest.approx(scorer.compare("a red cat", *paths[:2]), abs=1e-5)


def test_image_paths_resolve_under_image_root_with_leading_folders_dropped(tmp_path, image_files):
    rows = [
        {"prompt": "a", "path": image_files[0].name},  # as written
        {"prompt": "b", "path": f"data/sample_test/{image_files[1].name}"},  # leading folders dropped
        {"prompt": "c", "path": str(image_files[2])},  # absolute
        {"prompt": "d", "path": "data/elsewhere/nothing.png"},
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    parsed = read_rows(tmp_path / "rows.jsonl", image_root=str(image_files[0].parent))
    assert [Path(row.images[0]).name for row in parsed[:3]] == [path.name for path in image_files]
    assert str(parsed[3]) == (
        f"row 3: 'path': image file 'data/elsewhere/nothing.png' not found (looked under {image_files[0].parent})."
    )


# ----------------------------------------------------------------------------- bad input


def test_bad_image_files_exit_1_naming_the_file(run_cli, models, image_files, tmp_path):
    bad = write_bad_image_files(tmp_path)
    kinds = {
        "missing": "file not found.",
        "empty": "the file is empty.",
        "truncated": "the image data is corrupt or truncated",
        "not_an_image": "not an image file Pillow can read.",
        "decompression_bomb": "refused as a possible decompression bomb",
        "folder": "is a folder, not an image file.",
    }
    commands = [["score", "--model", str(models["bt"]), "--prompt", "a cat", str(image_files[0]), str(bad[kind])]
                for kind in kinds]
    for result, (kind, message) in zip(run_cli(*commands), kinds.items()):
        assert_fails(result, 1, f"llava-reward score: error: image 1 ({bad[kind]}): {message}")
        assert result.stdout == "", kind


def test_bad_prompts_exit_1_and_edge_cases_are_scored(run_cli, models, image_files, tmp_path, caplog):
    one_pixel = tmp_path / "one_pixel.png"
    Image.new("RGB", (1, 1), (200, 30, 90)).save(one_pixel)
    long_prompt = "a cat on a mat " * 6_667  # 100 005 characters: one argument still fits the OS limit
    model, image = str(models["bt"]), str(image_files[0])
    non_utf8, mismatch, special, edge = run_cli(
        [b"score", b"--model", model.encode(), b"--prompt", b"caf\xe9", image.encode()],
        ["score", "--model", model, "--prompt", "a", "--prompt", "b", *map(str, image_files)],
        ["score", "--model", model, "--prompt", "a <|im_end|> cat", image],
        ["score", "--model", model, "--prompt", "", "--prompt", long_prompt, "--prompt", "a dot",
         image, image, str(one_pixel)],
    )
    assert_fails(non_utf8, 1, "error: prompt 0: contains characters that are not valid Unicode")
    assert_fails(mismatch, 1, "error: Got 2 prompts and 3 images: pass one prompt per image, or one prompt for all")
    assert_fails(special, 1, "error: prompt 0: contains the tokenizer's special token '<|im_end|>'")
    # Documented handling: an empty prompt scores the image alone; a long prompt is truncated with a warning;
    # a 1x1 image is upscaled by the image processor like any other.
    assert edge.returncode == 0, edge.stderr
    # (in this process, pytest's log capture takes the warning; a subprocess prints it on stderr)
    assert "prompt 1 has 100005 tokens; truncated to max_prompt_tokens=256." in edge.stderr + caplog.text
    rewards = [line["reward"] for line in json_lines(edge.stdout)]
    assert len(rewards) == 3 and all(math.isfinite(reward) for reward in rewards)


def test_file_and_model_level_errors_exit_1(run_cli, models, image_files, tmp_path):
    (tmp_path / "broken.json").write_text('[{"prompt": "a", "path": "x.png"},')
    (tmp_path / "object.json").write_text('{"prompt": "a", "path": "x.png"}')
    (tmp_path / "unpaired.json").write_text(json.dumps([{"prompt": "a", "path": str(image_files[0])}]))
    (tmp_path / "all_bad.json").write_text(json.dumps([{"prompt": "a", "path": "gone.png"}]))
    bt, ce = str(models["bt"]), str(models["ce"])
    images = [str(image_files[0]), str(image_files[1])]
    commands_and_messages = [
        (["score", "--model", bt, "--input", str(tmp_path / "absent.json")], "absent.json: file not found."),
        (["score", "--model", bt, "--input", str(tmp_path / "broken.json")], "broken.json: not valid JSON (Expecting"),
        (["score", "--model", bt, "--input", str(tmp_path / "object.json")],
         "expected a JSON list of rows (one object per row), got a JSON dict"),
        (["compare", "--model", bt, "--input", str(tmp_path / "unpaired.json")],
         "unpaired.json: row 0: compare needs a pairwise row (prompt, chosen_path, reject_path)."),
        (["score", "--model", bt, "--input", str(tmp_path / "all_bad.json"), "--skip-bad"],
         "all_bad.json: no row could be scored."),
        (["score", "--model", str(tmp_path / "no_model"), "--prompt", "a", images[0]],
         "no_model: no such folder (nor a valid Hub repo id)."),
        (["score", "--model", str(tmp_path), "--prompt", "a", images[0]], "cannot load a LLaVA-Reward model"),
        (["compare", "--model", ce, "--prompt", "a", *images], "compare needs a model with a pairwise objective"),
        (["score", "--model", bt, "--prompt", "a", images[0], "--device", "gpu0"], "--device gpu0: "),
        (["score", "--model", bt, "--prompt", "a", images[0], "--output", str(tmp_path / "no" / "out.jsonl")],
         "out.jsonl: cannot write it (No such file or directory)."),
    ]
    results = run_cli(*[command for command, _ in commands_and_messages])
    for result, (command, message) in zip(results, commands_and_messages):
        assert_fails(result, 1, message)


def write_rows_with_every_bad_input(folder: Path, good_image: Path) -> Path:
    """A JSON-lines file: rows 0, 13, 14 and 16 are good; every other row has one of the bad inputs."""
    bad = write_bad_image_files(folder)
    shutil.copy(good_image, folder)
    Image.new("RGB", (1, 1)).save(folder / "one_pixel.png")
    Image.new("RGB", (1, 300)).save(folder / "sliver.png")  # aspect ratio 300: Qwen-VL cannot process it
    good = f"data/sample_test/{good_image.name}"  # published layout: found with its leading folders dropped
    rows = [
        {"prompt": "a cat", "chosen_path": good, "reject_path": good, "c_rate": 7, "r_rate": 6},
        {"prompt": "a cat", "path": "missing.png", "label": 1},
        *({"prompt": "a cat", "path": bad[kind].name} for kind in
          ["empty", "truncated", "not_an_image", "decompression_bomb", "folder"]),
        {"prompt": "NON_UTF8", "path": good},
        {"prompt": "a <|image_pad|> cat", "path": good},
        {"prompt": ["a", "b", "c"], "chosen_path": good, "reject_path": good},
        {"prompt": "a cat"},
        42,
        {"prompt": "", "path": "one_pixel.png"},
        {"prompt": ["a cat " * 20_000, "a dog"], "chosen_path": good, "reject_path": "one_pixel.png"},
        {"prompt": "a cat", "path": "sliver.png"},
        {"prompt": "a dog", "path": good, "label": 0},
    ]
    text = "\n".join(json.dumps(row) for row in rows)
    lines = text.encode().replace(b"NON_UTF8", b"caf\xe9").split(b"\n")  # row 7: a byte that is not UTF-8
    lines.insert(11, b'{"prompt": "a cat", "path": ')  # row 11: not JSON; then a blank line, which is no row
    lines.insert(12, b"")
    (folder / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return folder / "rows.jsonl"


def test_a_batch_file_with_bad_rows(models, image_files, tmp_path):
    rows = write_rows_with_every_bad_input(tmp_path, image_files[0])
    output = tmp_path / "out.jsonl"
    model = str(models["bt"])
    stopped, skipped = run_subprocesses(
        ["score", "--model", model, "--input", str(rows), "--batch-size", "3"],
        ["score", "--model", model, "--input", str(rows), "--batch-size", "3", "--skip-bad", "--output", str(output)],
    )
    assert_fails(stopped, 1, f"{rows}: row 1: 'path': image file 'missing.png' not found (looked under {tmp_path}). "
                             "(--skip-bad skips bad rows)")

    assert skipped.returncode == 0, skipped.stderr
    lines = json_lines(output.read_text())
    assert [line["row"] for line in lines] == [0, 13, 14, 16]  # every good row, in file order
    assert all(math.isfinite(line.get("reward", line.get("p_chosen"))) for line in lines)
    assert lines[3]["label"] == 0 and "p_chosen" in lines[2]
    expected_skips = {
        1: "'path': image file 'missing.png' not found",
        2: f"image 0 ({tmp_path / 'empty.png'}): the file is empty.",
        3: "the image data is corrupt or truncated",
        4: "not an image file Pillow can read.",
        5: "refused as a possible decompression bomb",
        6: "'path': image path 'a_folder.png' is a folder, not an image file.",
        7: "contains bytes that are not valid UTF-8.",
        8: "prompt 0: contains the tokenizer's special token '<|image_pad|>'",
        9: "'prompt' must be a string or [prompt_chosen, prompt_rejected].",
        10: "missing field 'chosen_path' (has ['prompt']).",
        11: "not valid JSON (Expecting value",
        12: "expected a JSON object, got int.",
        15: "image 0 (1x300 pixels): Qwen2VLImageProcessorPil cannot process it",
    }
    skip_lines = [line for line in skipped.stderr.splitlines() if line.startswith("llava-reward score: skipped row")]
    assert len(skip_lines) == len(expected_skips)
    for line, (number, message) in zip(skip_lines, expected_skips.items()):
        assert line.startswith(f"llava-reward score: skipped row {number}: ") and message in line, line
    assert "scored 4 of 17 rows" in skipped.stderr and "skipped 13." in skipped.stderr
    assert "row 14's prompt has 120000 tokens; truncated to max_prompt_tokens=256." in skipped.stderr


def test_a_parquet_file_with_embedded_image_bytes_is_scored_and_the_bytes_are_not_repeated(models, image_files,
                                                                                           tmp_path):
    import datasets

    encoded = [{"bytes": path.read_bytes(), "path": None} for path in image_files[:2]]
    source = tmp_path / "rows.parquet"
    datasets.Dataset.from_dict(
        {"prompt": ["a red cat", "a blue dog"], "image": encoded},
        features=datasets.Features({"prompt": datasets.Value("string"), "image": datasets.Image()}),
    ).to_parquet(source)

    (result,) = run_in_process(["score", "--model", str(models["bt"]), "--input", str(source)])

    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert [line["prompt"] for line in lines] == ["a red cat", "a blue dog"]
    assert all(line["image"] is None or line["image"].get("bytes") is None for line in lines)
    expected = LlavaRewardScorer.from_pretrained(models["bt"]).score(["a red cat", "a blue dog"], image_files[:2])
    assert [line["reward"] for line in lines] == pytest.approx(expected.tolist(), abs=1e-5)
