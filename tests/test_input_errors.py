"""Inputs that used to be scored wrongly or to fail with an unrelated error (issue 15, cases 5, 6 and parts of 11).

A float TIFF (mode F, values in [0, 1]) was decoded all black and scored; `score({"a": 1}, images)` paired the dict's
keys with the images and `score(None, images)` raised a TypeError; a (3, 0, 0) tensor raised numpy's "zero-size
array" ValueError; a symbolic link loop was reported as a missing file.
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward import LlavaRewardScorer
from llava_reward.data_formats import read_rows
from llava_reward.image_inputs import InputError
from llava_reward.image_inputs import load_image
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm
from llava_reward.trainers.train import RecipeError
from llava_reward.trainers.train import load_recipe


@pytest.fixture(scope="module")
def scorer():
    vlm, vlm_processor = tiny_vlm("llava")
    torch.manual_seed(0)
    return LlavaRewardScorer(LlavaRewardModel.from_vlm(vlm), LlavaRewardProcessor.from_vlm_processor(vlm_processor))


@pytest.fixture
def loop(tmp_path):
    """`a.png` -> `b.png` -> `a.png`: a symbolic link loop."""
    os.symlink(tmp_path / "b.png", tmp_path / "a.png")
    os.symlink(tmp_path / "a.png", tmp_path / "b.png")
    return tmp_path / "a.png"


# ----------------------------------------------------------------------------- case 5: float TIFF


def test_a_float_tiff_in_0_1_is_read_as_its_grey_levels_and_scored_as_them(scorer, tmp_path):
    values = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    with Image.open(tmp_path / "float.tif") as opened:
        assert opened.mode == "F"  # what Pillow reads back: 32-bit float pixels

    image = load_image(tmp_path / "float.tif")

    grey = np.round(values * 255).astype(np.uint8)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.repeat(grey[..., None], 3, axis=-1))
    expected = scorer.score("a gradient", [Image.fromarray(grey).convert("RGB")])
    assert torch.equal(scorer.score("a gradient", [tmp_path / "float.tif"]), expected)


@pytest.mark.parametrize(
    "values, message",
    [(np.full((8, 8), 200.0, dtype=np.float32), r"float values must lie in \[0, 1\], got \[200, 200\]"),
     (np.full((8, 8), np.nan, dtype=np.float32), "contains NaN or infinite values")],
    ids=["0-255 range", "nan"],
)
def test_a_float_image_outside_0_1_is_refused_naming_the_file(values, message, tmp_path):
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    with pytest.raises(InputError, match=rf"^image 0 \({tmp_path / 'float.tif'}\) \(32-bit float pixels\): {message}"):
        load_image(tmp_path / "float.tif")


# ----------------------------------------------------------------------------- case 6: prompts that are no prompts


@pytest.mark.parametrize("prompts", [{"a": 1}, None, {"a red cat"}, 3], ids=["dict", "None", "set", "int"])
def test_prompts_that_are_not_a_string_or_a_list_raise_input_error(scorer, prompts):
    with pytest.raises(InputError, match=rf"^prompts: expected a string .* got {type(prompts).__name__}\.$"):
        scorer.score(prompts, tiny_images(1))


def test_a_tuple_or_generator_of_prompts_still_scores(scorer):
    images = tiny_images(2)
    expected = scorer.score(["a cat", "a dog"], images)
    assert torch.equal(scorer.score(("a cat", "a dog"), images), expected)
    assert torch.equal(scorer.score((prompt for prompt in ["a cat", "a dog"]), images), expected)


# ----------------------------------------------------------------------------- case 11: empty images, link loops


@pytest.mark.parametrize(
    "image", [torch.zeros(3, 0, 0), torch.zeros(3, 0, 5, dtype=torch.uint8), np.zeros((0, 4, 3), dtype=np.float32)],
    ids=["float (3, 0, 0)", "uint8 (3, 0, 5)", "array (0, 4, 3)"],
)
def test_an_image_without_pixels_is_an_input_error(scorer, image):
    with pytest.raises(InputError, match=r"^image 1 \((tensor|array)\): the image has no pixels \(shape \("):
        scorer.score("a cat", [tiny_images(1)[0], image])


def test_a_pil_image_without_pixels_is_an_input_error(scorer):
    with pytest.raises(InputError, match=r"^image 0: the image has no pixels \(0x0\)"):
        scorer.score("a cat", [Image.new("RGB", (0, 0))])


def test_a_symbolic_link_loop_is_named_as_such(scorer, loop, tmp_path):
    with pytest.raises(InputError, match=rf"^image 0 \({loop}\): a symbolic link loop"):
        scorer.score("a cat", [loop])

    tiny_images(1)[0].save(tmp_path / "ok.png")
    (tmp_path / "pairs.json").write_text(json.dumps([{"prompt": "p", "chosen_path": "a.png", "reject_path": "ok.png"}]))
    assert [str(bad) for bad in read_rows(tmp_path / "pairs.json").bad_rows] == [
        "row 0: 'chosen_path': image file 'a.png' is a symbolic link loop (its links lead back to a link already "
        "followed)."
    ]
    with pytest.raises(InputError, match=rf"^{loop}: a symbolic link loop"):
        read_rows(loop)
    with pytest.raises(RecipeError, match=rf"^Recipe {loop}: a symbolic link loop"):
        load_recipe(loop)


def test_a_broken_link_names_its_target(scorer, tmp_path):
    os.symlink(tmp_path / "gone.png", tmp_path / "link.png")
    with pytest.raises(InputError, match=r"link\.png\): a broken symbolic link \(to '.*gone\.png', which does not exist\)"):
        scorer.score("a cat", [tmp_path / "link.png"])


def test_a_long_string_in_an_image_field_is_a_bad_row_not_an_os_error(tmp_path):
    tiny_images(1)[0].save(tmp_path / "ok.png")
    rows = [{"prompt": "p", "image": "iVBORw0KGgo" * 40}, {"prompt": "q", "image": "ok.png"}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    read = read_rows(tmp_path / "rows.jsonl")
    assert [str(bad) for bad in read.bad_rows] == [
        "row 0: 'image': image path 'iVBORw0KGgoiVBORw0KGgoiVBORw0KGgoiVBORw0KGgoiVBORw0KGgoiVBOR... (440 characters)': "
        "file name too long."
    ]
    assert len(read.rows) == 1


def test_a_missing_image_never_resolves_to_another_file_of_the_same_name(tmp_path, caplog):
    """`sdxl/001.png` missing while some `001.png` exists elsewhere: refused, not compared with that file (issue 15,
    case 3). A repository prefix is only dropped when the folder is absent, for every path alike, and logged."""
    (tmp_path / "sdxl").mkdir()
    first, second = tiny_images(2)
    first.save(tmp_path / "sdxl" / "002.png")
    second.save(tmp_path / "001.png")  # the same name as the missing image, in another folder
    rows = [{"prompt": "p", "chosen_path": "sdxl/002.png", "reject_path": "sdxl/001.png"}]
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    assert [str(bad) for bad in read_rows(tmp_path / "pairs.json").bad_rows] == [
        f"row 0: 'reject_path': image file 'sdxl/001.png' not found (looked under {tmp_path})."
    ]

    # A folder the data names that is not there at all (a repository prefix): dropped for every path, with a warning
    # naming both paths.
    (tmp_path / "pairs.json").write_text(json.dumps([{"prompt": "p", "chosen_path": "repo/001.png",
                                                      "reject_path": "sdxl/002.png"}]))
    with caplog.at_level("WARNING"):
        read = read_rows(tmp_path / "pairs.json")
    assert read.rows[0]["chosen"] == str(tmp_path / "001.png") and not read.bad_rows
    assert f"'repo/001.png' as {tmp_path / '001.png'}" in caplog.text
