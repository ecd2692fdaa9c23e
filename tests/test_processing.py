"""LlavaRewardProcessor and image loading: every input type and mode, pairing, text formats, truncation, bad input."""

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward.families import get_family
from llava_reward.image_inputs import InputError
from llava_reward.image_inputs import load_image
from llava_reward.image_inputs import load_images
from llava_reward.testing import TINY_FAMILIES
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm
from llava_reward.testing import write_bad_image_files


FAMILIES = list(TINY_FAMILIES)
# The token whose hidden state is the reward: the published format's EOS, or the chat template's end of turn.
REWARD_TOKEN = {"llava_next": "</s>", "qwen2_5_vl": "<|im_end|>"}


def reward_processor(family, **kwargs) -> LlavaRewardProcessor:
    return LlavaRewardProcessor.from_vlm_processor(tiny_vlm(family)[1], **kwargs)


def image_token_count(processor, input_ids: torch.Tensor) -> int:
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.vlm_processor.image_token)
    return int((input_ids == image_token_id).sum())


def last_real_token(processor, input_ids, attention_mask) -> list[str]:
    """The last non-pad token of each row, whatever the padding side."""
    positions = [int(mask.nonzero().max()) for mask in attention_mask]
    tokens = [int(row[position]) for row, position in zip(input_ids, positions)]
    return processor.tokenizer.convert_ids_to_tokens(tokens)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 24x40 (HxW) RGB uint8 picture with a distinct value at every pixel and channel position."""
    return np.random.default_rng(7).integers(0, 256, (24, 40, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- image inputs


def test_every_input_type_gives_the_same_rgb_pixels(photo, tmp_path):
    png = tmp_path / "photo.png"
    Image.fromarray(photo).save(png)
    chw = torch.from_numpy(photo).permute(2, 0, 1)
    inputs = {
        "PIL": Image.fromarray(photo),
        "str path": str(png),
        "pathlib.Path": png,
        "bytes": png.read_bytes(),
        "numpy HWC uint8": photo,
        "numpy HWC float": photo / 255.0,
        "torch CHW uint8": chw,
        "torch CHW float": chw / 255.0,
        "torch CHW bfloat16": chw.to(torch.bfloat16) / 255.0,
    }
    for name, image in inputs.items():
        loaded = load_image(image)
        assert loaded.mode == "RGB", name
        tolerance = 1 if name == "torch CHW bfloat16" else 0  # bfloat16 keeps 8 significant bits
        np.testing.assert_allclose(np.asarray(loaded, dtype=int), photo, atol=tolerance, err_msg=name)


def test_a_batch_tensor_is_split_and_a_single_image_tensor_is_not(photo):
    chw = torch.from_numpy(photo).permute(2, 0, 1) / 255.0
    assert [image.size for image in load_images(torch.stack([chw, chw.flip(0)]))] == [(40, 24), (40, 24)]
    assert len(load_images(chw)) == 1  # CHW is one image, not three channels
    assert len(load_images(photo)) == 1  # HWC is one image, not 24 rows
    assert len(load_images(np.stack([photo] * 3))) == 3  # NHWC


def test_grey_arrays_and_four_channel_arrays():
    grey = np.full((5, 6), 77, dtype=np.uint8)
    assert np.asarray(load_image(grey))[0, 0].tolist() == [77, 77, 77]
    transparent_red = np.zeros((5, 6, 4), dtype=np.uint8)
    transparent_red[..., 0] = 255
    assert np.asarray(load_image(transparent_red))[0, 0].tolist() == [255, 255, 255]  # alpha 0: white


def rgb_at_origin(image: Image.Image) -> list[int]:
    return list(load_image(image).getpixel((0, 0)))


@pytest.mark.parametrize(
    "image, expected",
    [
        (Image.new("L", (3, 2), 77), [77, 77, 77]),
        (Image.new("1", (3, 2), 1), [255, 255, 255]),
        (Image.new("RGB", (3, 2), (10, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE), [10, 20, 30]),
        (Image.new("LA", (3, 2), (100, 255)), [100, 100, 100]),
        (Image.new("LA", (3, 2), (100, 0)), [255, 255, 255]),  # fully transparent: the white background
        (Image.new("RGBA", (3, 2), (255, 0, 0, 128)), [255, 127, 127]),  # half transparent red on white
        (Image.new("CMYK", (3, 2), (0, 0, 0, 0)), [255, 255, 255]),
        (Image.new("CMYK", (3, 2), (255, 0, 0, 0)), [0, 255, 255]),
        (Image.new("I;16", (3, 2), 65535), [255, 255, 255]),  # scaled from 16 bits, not clipped
        (Image.new("I;16", (3, 2), 32768), [128, 128, 128]),
    ],
    ids=["L", "1", "P", "LA-opaque", "LA-transparent", "RGBA", "CMYK-white", "CMYK-cyan", "I16-max", "I16-half"],
)
def test_every_mode_becomes_rgb(image, expected):
    assert load_image(image).mode == "RGB"
    np.testing.assert_allclose(rgb_at_origin(image), expected, atol=1)


def test_palette_transparency_is_composited_on_white():
    image = Image.new("P", (3, 2), 0)
    image.putpalette([200, 0, 0] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    assert rgb_at_origin(image) == [255, 255, 255]


def test_modes_through_encoded_files():
    for mode, color, file_format, expected in [
        ("RGBA", (0, 0, 255, 0), "PNG", [255, 255, 255]),
        ("I;16", 65535, "PNG", [255, 255, 255]),
        ("CMYK", (0, 255, 0, 0), "JPEG", [255, 0, 255]),
    ]:
        encoded = io.BytesIO()
        Image.new(mode, (8, 8), color).save(encoded, format=file_format)
        np.testing.assert_allclose(rgb_at_origin(encoded.getvalue()), expected, atol=3, err_msg=mode)


def test_exif_orientation_is_applied(photo):
    stored = Image.fromarray(photo)  # 40 wide, 24 high
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    encoded = io.BytesIO()
    stored.save(encoded, format="PNG", exif=exif)
    loaded = load_image(encoded.getvalue())
    assert loaded.size == (24, 40)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))


def test_animated_images_give_their_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), color) for color in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    for suffix in ("gif", "webp", "png"):
        path = tmp_path / f"animated.{suffix}"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
        with Image.open(path) as opened:
            assert opened.n_frames == 3, suffix
            opened.seek(2)  # an already-advanced image object still gives frame 0
            assert rgb_at_origin(opened) == [255, 0, 0], suffix
        assert rgb_at_origin(path) == [255, 0, 0], suffix


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "file not found"),
        ("empty", "the file is empty"),
        ("truncated", "corrupt or truncated"),
        ("not_an_image", "not an image file Pillow can read"),
        ("folder", "is a folder, not an image file"),
        ("decompression_bomb", "decompression bomb"),
    ],
)
def test_bad_files_name_the_index_the_file_and_the_problem(tmp_path, kind, message):
    path = write_bad_image_files(tmp_path)[kind]
    with pytest.raises(InputError) as error:
        load_images([tiny_images(1)[0], path])
    assert str(error.value).startswith(f"image 1 ({path}): ")
    assert message in str(error.value)


def test_images_over_the_pixel_limit_are_refused_not_just_warned_about(tmp_path, monkeypatch):
    # Pillow raises only above twice MAX_IMAGE_PIXELS and merely warns in between: both are refused.
    path = tmp_path / "large.png"
    Image.new("RGB", (30, 20)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 600 pixels: between the limit and twice it
    with pytest.raises(InputError, match=r"image 0 .*large\.png.*decompression bomb"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    assert load_image(path).size == (30, 20)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN or infinite"),
        (np.full((4, 4, 3), np.inf, dtype=np.float32), "NaN or infinite"),
        (np.full((4, 4, 3), 1.5, dtype=np.float32), r"must lie in \[0, 1\], got \[1.5, 1.5\]"),
        (np.full((4, 4, 3), -0.25, dtype=np.float32), r"must lie in \[0, 1\].*\(x \+ 1\) / 2"),
        (np.zeros((4, 4, 3), dtype=np.int32), "expected uint8 or float values"),
        (np.zeros((4, 4, 5), dtype=np.uint8), r"expected HWC with 1, 3 or 4 channels, got shape \(4, 4, 5\)"),
    ],
    ids=["nan", "inf", "above-one", "negative", "int32", "five-channels"],
)
def test_bad_arrays_and_tensors_name_the_index_and_problem(array, message):
    with pytest.raises(InputError, match=rf"^image 2 \(array\): .*{message}"):
        load_images([np.zeros((4, 4, 3), dtype=np.uint8)] * 2 + [array])
    tensor_message = message.replace("HWC", "CHW").replace("4, 4, 5", "5, 4, 4")  # the shape as given
    with pytest.raises(InputError, match=rf"^image 1 \(tensor\): .*{tensor_message}"):
        load_images([torch.zeros(3, 4, 4), torch.from_numpy(array).permute(2, 0, 1)])


def test_unsupported_types_are_refused():
    with pytest.raises(InputError, match=r"image 0: unsupported type dict; expected a PIL image, a path"):
        load_image({"url": "x"})


# ----------------------------------------------------------------------------- text formats


def test_published_formats_are_exact():
    assert reward_processor("qwen2_5_vl").build_text("a cat") == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a cat<|im_end|>"
    )
    assert reward_processor("llava_next").build_text("a cat") == "USER: <image>\na cat</s>"
    # Phi-3.5-vision needs remote code (not available here): its registered format, filled as the processor does.
    phi = get_family("phi3_v").prompt_template.format(image="<|image_1|>", prompt="a cat", eos="<|endoftext|>")
    assert phi == "<|user|>\n<|image_1|>\na cat<|endoftext|>"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_the_last_real_token_is_the_reward_token(family, padding_side):
    processor = reward_processor(family)
    processor.tokenizer.padding_side = padding_side
    batch = processor(["a cat", "", "three dogs on a very long and winding road"], tiny_images(3))
    expected = REWARD_TOKEN.get(family, "<|im_end|>")
    assert last_real_token(processor, batch["input_ids"], batch["attention_mask"]) == [expected] * 3


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_families_end_on_the_end_of_turn_token(family):
    processor = reward_processor(family)
    text = processor.build_text("a cat")
    if get_family(family).prompt_template is None:
        assert text.endswith("a cat<|im_end|>")  # the template's trailing newline is not the reward token
        assert "assistant" not in text  # no generation prompt


def test_an_empty_prompt_scores_the_image_alone():
    processor = reward_processor("qwen2_5_vl")
    assert processor.build_text("") == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>"
    batch = processor("", tiny_images(1))
    assert image_token_count(processor, batch["input_ids"]) == 16


# ----------------------------------------------------------------------------- pairing


def test_prompts_and_images_pair_element_wise_never_as_a_cross_product():
    processor = reward_processor("qwen2_5_vl")
    sizes = [(32, 32), (16, 48), (48, 16)]  # 16, 12 and 12 visual tokens, in different grids
    batch = processor(["zero", "one", "two"], tiny_images(3, sizes))
    assert batch["input_ids"].shape[0] == 3
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 12, 4], [1, 4, 12]]
    for row, (word, expected_tokens) in enumerate(zip(["zero", "one", "two"], [16, 12, 12])):
        text = processor.tokenizer.decode(batch["input_ids"][row], skip_special_tokens=True)
        assert word in text and not any(other in text for other in {"zero", "one", "two"} - {word})
        assert image_token_count(processor, batch["input_ids"][row]) == expected_tokens


def test_one_prompt_is_broadcast_to_every_image():
    processor = reward_processor("llava")
    batch = processor("a red cat", tiny_images(4))
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape[0] == 4
    assert all(torch.equal(row, batch["input_ids"][0]) for row in batch["input_ids"])
    assert torch.equal(processor(["a red cat"] * 4, tiny_images(4))["input_ids"], batch["input_ids"])


@pytest.mark.parametrize("prompts, images", [(["a", "b"], 3), (["a", "b", "c"], 2), (["a"], 0)])
def test_length_mismatches_are_refused(prompts, images):
    with pytest.raises(InputError, match=rf"Got {len(prompts)} prompts and {images} images"):
        reward_processor("llava")(prompts, tiny_images(images))


# ----------------------------------------------------------------------------- prompts


def test_prompts_with_special_tokens_are_refused_by_index():
    processor = reward_processor("qwen2_5_vl")
    for token in ["<|image_pad|>", "<|im_end|>", "<|endoftext|>"]:
        with pytest.raises(InputError, match=rf"prompt 1: contains the tokenizer's special token '{token}'"):
            processor(["a cat", f"a {token} dog"], tiny_images(2))


def test_non_utf8_and_non_string_prompts_are_refused_by_index():
    processor = reward_processor("llava")
    with pytest.raises(InputError, match="prompt 1: not valid UTF-8"):
        processor([b"ok", b"caf\xe9"], tiny_images(2))
    with pytest.raises(InputError, match="prompt 0: contains characters that are not valid Unicode"):
        processor(["caf\udce9"], tiny_images(1))  # how Python decodes undecodable command-line bytes
    with pytest.raises(InputError, match="prompt 0: expected a string, got int"):
        processor([3], tiny_images(1))
    assert processor.build_text(processor.pair(["café".encode()], tiny_images(1))[0][0]).count("café") == 1


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "llava_next"])
def test_truncation_cuts_the_prompt_only(family, caplog):
    processor = reward_processor(family, max_prompt_tokens=32)
    image = tiny_images(1, [(32, 48)])
    short = processor("a cat", image)
    with caplog.at_level(logging.WARNING):
        long = processor("a cat " * 20_000, image)  # 120 000 characters
    assert "prompt 0 has 120000 tokens; truncated to max_prompt_tokens=32." in caplog.text
    assert image_token_count(processor, long["input_ids"]) == image_token_count(processor, short["input_ids"]) > 0
    reward_token = REWARD_TOKEN.get(family, "<|im_end|>")
    assert last_real_token(processor, long["input_ids"], long["attention_mask"]) == [reward_token]
    prompt_tokens = len(processor.tokenizer("a cat", add_special_tokens=False)["input_ids"])
    assert long["input_ids"].shape[1] == short["input_ids"].shape[1] - prompt_tokens + 32
    for key in short.keys() - {"input_ids", "attention_mask", "mm_token_type_ids"}:
        assert torch.equal(long[key], short[key]), key  # pixels, grids and image sizes are untouched


def test_truncation_never_splits_a_character_and_is_idempotent():
    processor = reward_processor("llava", max_prompt_tokens=16)  # byte-level tokens: 3 per character below
    truncated = processor.truncate_prompt("日本語" * 1000)
    assert truncated == "日本語日本"  # 15 bytes: a 16th would cut the next character in two
    assert processor.truncate_prompt(truncated) == truncated
    assert processor.truncate_prompt("fits") == "fits"


def test_the_default_limit_and_a_saved_custom_limit(tmp_path):
    assert reward_processor("llava").max_prompt_tokens == 256
    reward_processor("llava", max_prompt_tokens=40).save_pretrained(tmp_path)
    assert AutoProcessor.from_pretrained(tmp_path).max_prompt_tokens == 40


# ----------------------------------------------------------------------------- family inputs, saving


def test_family_specific_inputs():
    sizes = [(32, 32), (16, 48)]
    qwen = reward_processor("qwen2_5_vl")(["a", "b"], tiny_images(2, sizes))
    assert qwen["image_grid_thw"].tolist() == [[1, 8, 8], [1, 12, 4]]
    assert qwen["mm_token_type_ids"].shape == qwen["input_ids"].shape
    assert int(qwen["mm_token_type_ids"].sum()) == 16 + 12  # one per visual token
    llava_next = reward_processor("llava_next")(["a", "b"], tiny_images(2, sizes))
    assert llava_next["image_sizes"].tolist() == [[32, 32], [48, 16]]  # (height, width) of each image
    gemma = reward_processor("gemma3")(["a", "b"], tiny_images(2, sizes))
    assert gemma["token_type_ids"].shape == gemma["input_ids"].shape
    idefics = reward_processor("idefics3")(["a", "b"], tiny_images(2, sizes))
    assert "pixel_attention_mask" in idefics


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip(family, tmp_path):
    processor = reward_processor(family, max_prompt_tokens=64)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is LlavaRewardProcessor
    assert (loaded.family, loaded.prompt_template, loaded.max_prompt_tokens) == (
        processor.family,
        processor.prompt_template,
        64,
    )
    arguments = (["a cat", "two dogs in the rain"], tiny_images(2, [(32, 32), (24, 40)]))
    expected, actual = processor(*arguments), loaded(*arguments)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_saved_with_the_model_and_loaded_by_auto_processor(tmp_path):
    vlm, vlm_processor = tiny_vlm("llava_next")
    LlavaRewardModel.from_vlm(vlm).save_pretrained(tmp_path)
    LlavaRewardProcessor.from_vlm_processor(vlm_processor).save_pretrained(tmp_path)
    saved = {path.name for path in Path(tmp_path).iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json"} <= saved
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, LlavaRewardProcessor) and processor.family == "llava_next"


# ----------------------------------------------------------------------------- tiny and extreme images


@pytest.mark.parametrize("family", FAMILIES)
def test_a_one_pixel_image_is_upscaled_and_scored(family):
    vlm, vlm_processor = tiny_vlm(family)
    processor = LlavaRewardProcessor.from_vlm_processor(vlm_processor)
    one_pixel, uniform = Image.new("RGB", (1, 1), (200, 30, 90)), Image.new("RGB", (8, 8), (200, 30, 90))
    batch = processor(["a dot", "a dot"], [one_pixel, uniform])
    torch.testing.assert_close(batch["pixel_values"][0], batch["pixel_values"][1], atol=1e-2, rtol=0)
    with torch.no_grad():
        rewards = LlavaRewardModel.from_vlm(vlm).eval()(**batch).rewards
    assert torch.isfinite(rewards).all()
    torch.testing.assert_close(rewards[0], rewards[1], atol=1e-4, rtol=0)  # the same picture, once upscaled


def test_an_image_the_family_cannot_process_is_named():
    processor = reward_processor("qwen2_5_vl")
    with pytest.raises(InputError, match=r"image 1 \(1x300 pixels\): Qwen2VLImageProcessorPil cannot process it "
                                         r"\(absolute aspect ratio must be smaller than 200"):
        processor(["a", "b"], [tiny_images(1)[0], Image.new("RGB", (1, 300))])
    assert reward_processor("llava")("a", Image.new("RGB", (1, 300)))["pixel_values"].shape == (1, 3, 32, 32)
