"""Differentiable scoring (`llava_reward.pixels`, `LlavaRewardScorer.score_pixels`): parity with the PIL
path, gradients, a finite-difference check, memory, autocast, activation checkpointing and refusals."""

import ctypes
import ctypes.util
import gc
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import skimage.data
import torch
from PIL import Image
from transformers import BitImageProcessorPil
from transformers import CLIPImageProcessorPil
from transformers import Gemma3ImageProcessorPil
from transformers import Idefics3ImageProcessorPil
from transformers import LlavaImageProcessorPil
from transformers import LlavaNextImageProcessorPil
from transformers import Qwen2VLImageProcessorPil
from transformers import SiglipImageProcessorPil
from transformers import SmolVLMImageProcessorPil
from transformers import ViTImageProcessorPil

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward import LlavaRewardScorer
from llava_reward.image_inputs import InputError
from llava_reward.pixels import NotDifferentiableError
from llava_reward.pixels import check_differentiable
from llava_reward.pixels import pil_resize
from llava_reward.pixels import pixel_inputs
from llava_reward.pixels import preprocess_pixels
from llava_reward.scoring import checkpointing_in_eval_mode
from llava_reward.testing import TINY_FAMILIES
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm


FAMILIES = list(TINY_FAMILIES)
PROMPTS = ["a red cat", "an astronaut in a white suit"]
# The continuous path leaves out only the PIL path's 8-bit rounding (of the input and of each resampling pass):
# measured at most 1.22 levels of 255 after one resize, 1.6 after Idefics3's chained resizes (longest edge, then
# the encoder's tile size). The tolerances, in 8-bit levels:
FLOAT_TOLERANCE_LEVELS = 1.5
CHAINED_RESIZES_TOLERANCE_LEVELS = 2.5
# Tiny random models: the reward moves by at most 1.2e-3 between the continuous path and the PIL path (measured on
# the photos below, rewards of order 0.1 to 0.5).
FLOAT_REWARD_TOLERANCE = 0.01


def photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """A scikit-image sample photo (HWC uint8), optionally resized (height, width) with PIL bicubic."""
    array = {"astronaut": skimage.data.astronaut, "chelsea": skimage.data.chelsea, "coffee": skimage.data.coffee}[
        name
    ]()
    return array if size is None else np.asarray(Image.fromarray(array).resize(size[::-1], Image.Resampling.BICUBIC))


def as_pixels(*arrays: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """HWC uint8 arrays of one size -> (B, 3, H, W) floats in [0, 1], on the 8-bit grid the PIL path reads."""
    return torch.stack([torch.from_numpy(array.copy()).permute(2, 0, 1) for array in arrays]).to(dtype) / 255


def make_scorer(family: str, **kwargs) -> LlavaRewardScorer:
    vlm, vlm_processor = tiny_vlm(family)
    torch.manual_seed(0)
    model = LlavaRewardModel.from_vlm(vlm)
    return LlavaRewardScorer(model, LlavaRewardProcessor.from_vlm_processor(vlm_processor), **kwargs)


@pytest.fixture(scope="module", params=FAMILIES)
def scorer(request):
    torch.set_num_threads(1)
    return make_scorer(request.param)


def tolerance(image_processor) -> float:
    """FLOAT_TOLERANCE_LEVELS in the units of `pixel_values` (after rescale and normalisation)."""
    std = np.min(image_processor.image_std) if image_processor.do_normalize else 1.0
    chained = isinstance(image_processor, (Idefics3ImageProcessorPil, SmolVLMImageProcessorPil))
    levels = CHAINED_RESIZES_TOLERANCE_LEVELS if chained else FLOAT_TOLERANCE_LEVELS
    return levels * image_processor.rescale_factor / std


# ----------------------------------------------------------------------------- PIL's resampling


@pytest.mark.parametrize("resample", [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS,
                                      Image.Resampling.BOX, Image.Resampling.HAMMING])
def test_pil_resize_equals_pillow_exactly_when_quantized(resample):
    rng = np.random.default_rng(0)
    for _ in range(40):  # shrinking and growing each side, and both pass orders of Pillow 13
        height, width, new_height, new_width = (int(n) for n in rng.integers(2, 90, 4))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize((new_width, new_height), resample))
        values = torch.from_numpy(image).permute(2, 0, 1).double()
        quantized = pil_resize(values, (new_height, new_width), resample, quantize=True).permute(1, 2, 0)
        continuous = pil_resize(values, (new_height, new_width), resample).permute(1, 2, 0)
        case = f"{height}x{width} -> {new_height}x{new_width}"
        assert np.array_equal(quantized.numpy(), expected), case
        assert np.abs(continuous.numpy() - expected).max() <= FLOAT_TOLERANCE_LEVELS, case


def test_pil_resize_skips_unchanged_sides_and_refuses_nearest():
    values = torch.rand(3, 5, 7, dtype=torch.float64) * 255
    assert torch.equal(pil_resize(values, (5, 7), Image.Resampling.LANCZOS), values)  # Pillow returns a copy
    with pytest.raises(NotDifferentiableError, match="NEAREST"):
        pil_resize(values, (4, 4), Image.Resampling.NEAREST)


# ----------------------------------------------------------------------------- parity with the PIL path


@pytest.mark.parametrize("size", [(40, 24), (17, 53), (96, 96), (300, 451)])
def test_model_inputs_match_the_pil_path(scorer, size):
    """Tiny processors of every family: the text side is identical; pixel_values are bit-exact with `quantize`
    and within FLOAT_TOLERANCE_LEVELS without."""
    images = [photo("chelsea", size), photo("coffee", size)]
    expected = scorer.processor(PROMPTS, images)
    image_processor = scorer.processor.image_processor
    for quantize in (True, False):
        inputs = pixel_inputs(scorer.processor, PROMPTS, as_pixels(*images), quantize=quantize)
        assert sorted(inputs) == sorted(expected)
        for key in expected:
            if key != "pixel_values":
                assert torch.equal(inputs[key], expected[key]), key
        difference = (inputs["pixel_values"] - expected["pixel_values"]).abs().max().item()
        if quantize:
            assert difference == 0.0
        else:
            assert difference <= tolerance(image_processor)


# The image processors at their published settings (no model needed), and the settings the tiny ones leave off:
# LLaVA's pad-to-square, Idefics3's splitting, Gemma3's pan-and-scan, LLaVA-NeXT's real pinpoints.
PUBLISHED_IMAGE_PROCESSORS = {
    "clip-336": lambda: CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
    "llava-pad-to-square": lambda: LlavaImageProcessorPil(do_pad=True),
    "bit-default-backbone": lambda: BitImageProcessorPil(
        size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112},
        image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225),
    ),
    "siglip": lambda: SiglipImageProcessorPil(),
    "llava-next-336": lambda: LlavaNextImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    ),
    "qwen2-vl": lambda: Qwen2VLImageProcessorPil(),
    "qwen3-vl": lambda: Qwen2VLImageProcessorPil(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3),
    "idefics3-splitting": lambda: Idefics3ImageProcessorPil(size={"longest_edge": 728}),
    "smolvlm-splitting": lambda: SmolVLMImageProcessorPil(
        size={"longest_edge": 1024}, max_image_size={"longest_edge": 512}
    ),
    "gemma3-pan-and-scan": lambda: Gemma3ImageProcessorPil(
        do_pan_and_scan=True, pan_and_scan_min_crop_size=64, pan_and_scan_max_num_crops=4,
        pan_and_scan_min_ratio_to_activate=1.2,
    ),
}


@pytest.mark.parametrize("name", list(PUBLISHED_IMAGE_PROCESSORS))
@pytest.mark.parametrize("image", ["chelsea", "coffee-portrait"])
def test_published_image_processors_match(name, image, one_intraop_thread):
    image_processor = PUBLISHED_IMAGE_PROCESSORS[name]()
    array = photo("chelsea") if image == "chelsea" else photo("coffee")[:, 150:350]  # 300x451 and 400x200
    expected = image_processor(images=[Image.fromarray(array)], return_tensors="pt")["pixel_values"]
    quantized = preprocess_pixels(image_processor, as_pixels(array), quantize=True)
    continuous = preprocess_pixels(image_processor, as_pixels(array))
    assert quantized.shape == continuous.shape == expected.shape
    assert torch.equal(quantized, expected)
    assert (continuous - expected).abs().max().item() <= tolerance(image_processor)


def test_rewards_match_the_pil_path(scorer):
    images = [photo("astronaut", (64, 48)), photo("chelsea", (64, 48))]
    expected = scorer.score(PROMPTS, images)
    with torch.no_grad():
        quantized = scorer.score_pixels(as_pixels(*images), PROMPTS, quantize=True)
        continuous = scorer.score_pixels(as_pixels(*images), PROMPTS)
    assert torch.equal(quantized.cpu(), expected)
    assert (continuous.cpu() - expected).abs().max().item() <= FLOAT_REWARD_TOLERANCE


# ----------------------------------------------------------------------------- gradients


def test_gradients_reach_every_used_pixel(scorer):
    pixels = as_pixels(photo("astronaut", (48, 40)), photo("coffee", (48, 40))).requires_grad_()
    rewards = scorer.score_pixels(pixels, PROMPTS)
    assert rewards.shape == (2,) and rewards.dtype == torch.float32 and rewards.requires_grad
    rewards.sum().backward()
    assert pixels.grad.shape == pixels.shape and torch.isfinite(pixels.grad).all()
    # Every pixel reaches the model except those a centre crop drops (CLIP/LLaVA: 48x40 -> 38x32 -> 32x32).
    used = 32 / 38 if scorer.processor.family == "llava" else 1.0
    assert (pixels.grad != 0).float().mean().item() >= used - 0.01
    # Each image's reward depends on its own pixels only.
    pixels.grad = None
    scorer.score_pixels(pixels, PROMPTS)[0].backward()
    assert pixels.grad[1].abs().max() == 0 and pixels.grad[0].abs().max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_preprocessing_gradient_is_exact_in_float64(family):
    """`torch.autograd.gradcheck` of pixels -> pixel_values (fast mode: the Jacobian along random directions)."""
    processor = LlavaRewardProcessor.from_vlm_processor(tiny_vlm(family)[1])
    pixels = 0.25 + 0.5 * torch.rand(1, 3, 18, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    inputs = (pixels.requires_grad_(),)
    assert torch.autograd.gradcheck(lambda x: preprocess_pixels(processor, x), inputs, fast_mode=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_gradient_matches_finite_differences(family, one_intraop_thread):
    """d reward / d pixels along a random direction, against a central difference, on a float64 model.

    The model is not float64 throughout (RMSNorms compute in float32), which bounds the step from below: 1e-3,
    where the float32 rounding (~1e-7 of the reward) costs ~1e-4 and the central difference's own error is
    O(step^2)."""
    scorer = make_scorer(family, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    pixels = 0.25 + 0.5 * torch.rand(2, 3, 36, 28, dtype=torch.float64, generator=generator)  # no clipping
    direction = torch.randn(pixels.shape, dtype=torch.float64, generator=generator)
    pixels.requires_grad_()
    scorer.score_pixels(pixels, PROMPTS).sum().backward()
    analytic = (pixels.grad * direction).sum().item()
    step = 1e-3
    with torch.no_grad():
        plus = scorer.score_pixels(pixels + step * direction, PROMPTS).sum().item()
        minus = scorer.score_pixels(pixels - step * direction, PROMPTS).sum().item()
    numeric = (plus - minus) / (2 * step)
    assert abs(analytic) > 1e-3
    assert abs(numeric - analytic) <= 2e-3 * abs(analytic) + 2e-4, (numeric, analytic)


def test_low_precision_input_gets_gradients_in_its_dtype():
    scorer = make_scorer("qwen2_5_vl")
    pixels = torch.rand(2, 3, 32, 32).to(torch.bfloat16).requires_grad_()
    scorer.score_pixels(pixels, PROMPTS).sum().backward()
    assert pixels.grad.dtype == torch.bfloat16 and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    assert preprocess_pixels(scorer.processor, pixels).dtype == torch.float32  # preprocessing in full precision


# ----------------------------------------------------------------------------- autocast, checkpointing, memory


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "idefics3"])
def test_autocast_bfloat16_on_cpu(family, one_intraop_thread):
    scorer = make_scorer(family)
    pixels = as_pixels(photo("astronaut", (40, 40)), photo("chelsea", (40, 40))).requires_grad_()
    full = scorer.score_pixels(pixels, PROMPTS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inputs = pixel_inputs(scorer.processor, PROMPTS, pixels)
        rewards = scorer.score_pixels(pixels, PROMPTS)
    # The preprocessing is left out of autocast: bit-identical to the full-precision one.
    assert inputs["pixel_values"].dtype == torch.float32
    assert torch.equal(inputs["pixel_values"], pixel_inputs(scorer.processor, PROMPTS, pixels)["pixel_values"])
    assert rewards.dtype == torch.float32 and torch.isfinite(rewards).all()
    assert (rewards - full).abs().max().item() < 0.05  # bfloat16 matmuls: about 3 significant digits
    (gradient,) = torch.autograd.grad(rewards.sum(), pixels)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "gemma3"])
def test_activation_checkpointing_recomputes_layers_and_keeps_the_numbers(family, one_intraop_thread):
    scorer = make_scorer(family)
    pixels = as_pixels(photo("astronaut", (40, 40)), photo("coffee", (40, 40))).requires_grad_()
    # transformers checkpoints a layer's `forward`, not its `__call__`: the recomputation shows in its submodules.
    calls = []
    scorer.model.decoder.layers[0].mlp.register_forward_pre_hook(lambda module, args: calls.append(1))

    def rewards_and_gradient():
        calls.clear()
        rewards = scorer.score_pixels(pixels, PROMPTS)
        (gradient,) = torch.autograd.grad(rewards.sum(), pixels)
        return rewards.detach(), gradient, len(calls)

    plain = rewards_and_gradient()
    scorer.model.activation_checkpointing_enable()
    checkpointed = rewards_and_gradient()
    assert (plain[2], checkpointed[2]) == (1, 2)  # the backward pass ran the layer again
    assert torch.allclose(plain[0], checkpointed[0], atol=1e-6)
    assert torch.allclose(plain[1], checkpointed[1], atol=1e-6, rtol=1e-5)
    assert not any(module.training for module in scorer.model.modules())  # eval mode restored


def test_repeated_calls_keep_no_graph_and_no_memory(one_intraop_thread):
    scorer = make_scorer("qwen2_5_vl")
    trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim if sys.platform.startswith("linux") else None
    process = psutil.Process()

    def resident_mb() -> float:
        gc.collect()
        if trim is not None:
            trim(0)
        return process.memory_info().rss / 2**20

    references, resident = [], {}
    for call in range(20):
        # 192 px: each call's graph holds several MB (input, resampling, patches), so a kept graph would show.
        pixels = torch.rand(2, 3, 192, 192, requires_grad=True)
        rewards = scorer.score_pixels(pixels, PROMPTS)
        rewards.sum().backward()
        references.append(weakref.ref(pixels))
        del pixels, rewards
        if call in (4, 19):  # after warm-up (caches filled), and at the end
            resident[call] = resident_mb()
    assert all(reference() is None for reference in references)  # nothing holds an input, hence no graph
    assert resident[19] - resident[4] < 15.0, resident


@pytest.mark.parametrize("checkpointing", [False, True])
def test_threads_sharing_one_scorer_get_the_sequential_rewards_and_gradients(checkpointing, one_intraop_thread):
    # hidden_layer=1: the reward state comes from the hook on an inner layer, the state threads must not share.
    vlm, vlm_processor = tiny_vlm("qwen2_5_vl")
    torch.manual_seed(0)
    model = LlavaRewardModel.from_vlm(vlm, hidden_layer=1)
    scorer = LlavaRewardScorer(model, LlavaRewardProcessor.from_vlm_processor(vlm_processor))
    if checkpointing:
        scorer.model.activation_checkpointing_enable()
    layer_calls = []
    scorer.model.decoder.layers[0].mlp.register_forward_pre_hook(lambda module, args: layer_calls.append(1))
    generator = torch.Generator().manual_seed(0)
    work = [  # batch shapes differ per call: image sizes (visual tokens) and prompt lengths (padding)
        (torch.rand(2, 3, 24 + 8 * (index % 3), 32, generator=generator), [f"prompt {index}", "detail " * (index % 5)])
        for index in range(16)
    ]

    def call(pixels, prompts):
        pixels = pixels.clone().requires_grad_()
        rewards = scorer.score_pixels(pixels, prompts)
        (gradient,) = torch.autograd.grad(rewards.sum(), pixels)
        return rewards.detach(), gradient

    sequential = [call(*item) for item in work]
    layer_calls.clear()
    barrier = threading.Barrier(4)

    def worker(thread: int) -> list:
        barrier.wait()
        return [call(*item) for item in work[thread::4]]

    with ThreadPoolExecutor(4) as pool:
        per_thread = list(pool.map(worker, range(4)))
    concurrent = [None] * len(work)
    for thread, results in enumerate(per_thread):
        concurrent[thread::4] = results
    for index, ((rewards, gradient), (got_rewards, got_gradient)) in enumerate(zip(sequential, concurrent)):
        assert torch.equal(rewards, got_rewards), f"call {index}: {got_rewards.tolist()} != {rewards.tolist()}"
        assert torch.equal(gradient, got_gradient), f"call {index}: gradients differ"
    # With checkpointing, every call's backward recomputed the layer: no thread switched it off under another.
    assert len(layer_calls) == len(work) * (2 if checkpointing else 1)
    assert not any(module.training for module in scorer.model.modules())  # eval mode restored


def test_plain_scoring_is_unchanged_while_checkpointing_is_switched_on(one_intraop_thread):
    # What a `score` running in another thread sees during a `score_pixels` call: checkpointed layers in training
    # mode, under `inference_mode`.
    scorer = make_scorer("llava")
    images = tiny_images(3)
    expected = scorer.score(PROMPTS[:1], images)
    scorer.model.activation_checkpointing_enable()
    with checkpointing_in_eval_mode(scorer.model), checkpointing_in_eval_mode(scorer.model):
        assert all(layer.training for layer in scorer.model.decoder.layers)
        assert torch.equal(scorer.score(PROMPTS[:1], images), expected)
    assert not any(module.training for module in scorer.model.modules())


# ----------------------------------------------------------------------------- reward_fn, errors, refusals


def test_reward_fn_differentiable():
    scorer = make_scorer("llava_next")
    pixels = torch.rand(3, 3, 40, 24, requires_grad=True)
    scores, info = scorer.reward_fn(pixels, ["a red cat"], None, differentiable=True)
    assert scores.shape == (3,) and scores.requires_grad
    assert info == {"objective": "bt", "perspective": scorer.model.config.perspective}
    assert torch.allclose(scores.detach(), scorer.score_pixels(pixels, "a red cat").detach())
    scores.sum().backward()
    assert pixels.grad.abs().sum() > 0
    with pytest.raises(InputError, match=r"reward_fn\(differentiable=True\) needs the images as a float tensor"):
        scorer.reward_fn([Image.new("RGB", (8, 8))], ["a cat"], differentiable=True)


@pytest.mark.parametrize(
    "pixels, message",
    [
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), r"expected a float tensor .* got a torch.uint8 tensor"),
        (np.zeros((1, 3, 8, 8), dtype=np.float32), "expected a float tensor .* got ndarray"),
        (torch.zeros(3, 8, 8), r"expected shape \(B, 3, H, W\) with B, H, W > 0, got \(3, 8, 8\)"),
        (torch.zeros(1, 4, 8, 8), r"got \(1, 4, 8, 8\)"),
        (torch.zeros(0, 3, 8, 8), r"got \(0, 3, 8, 8\)"),
        (torch.full((1, 3, 8, 8), -0.5), r"values must lie in \[0, 1\], got \[-0.5, -0.5\]"),
        (torch.full((1, 3, 8, 8), float("nan")), "contains NaN or infinite values"),
    ],
)
def test_bad_pixels_are_named(pixels, message):
    scorer = make_scorer("llava")
    with pytest.raises(InputError, match=message):
        scorer.score_pixels(pixels, "a cat")


def test_prompt_count_must_match():
    with pytest.raises(InputError, match="Got 2 prompts and 3 images"):
        make_scorer("llava").score_pixels(torch.rand(3, 3, 16, 16), ["a", "b"])


def test_unsupported_preprocessing_refuses_with_the_supported_list():
    with pytest.raises(NotDifferentiableError, match="No differentiable preprocessing for ViTImageProcessorPil: .*"
                       "Qwen2VLImageProcessor"):
        check_differentiable(ViTImageProcessorPil())
    nearest = CLIPImageProcessorPil(resample=Image.Resampling.NEAREST)
    with pytest.raises(NotDifferentiableError, match="NEAREST"):
        preprocess_pixels(nearest, torch.rand(1, 3, 300, 300))
