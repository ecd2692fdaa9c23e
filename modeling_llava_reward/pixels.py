"""Differentiable image preprocessing: a float pixel tensor in, the VLM family's image inputs out, with gradients.

Reward fine-tuning of generators by backpropagation (ReFL, DRaFT, AlignProp) needs `reward(pixels)` with gradients
to the pixels. The family processors go through PIL and numpy, which cuts the graph. This module re-expresses each
supported image processor in torch, step for step: PIL's resampling filters with their antialiasing (as PIL
computes them: two separable passes in Pillow's order, each clipped to the 8-bit range), centre crop, padding,
rescale, normalisation, and the family's patching (Qwen's `smart_resize`, patch grid, temporal duplication and 2x2
merge order; LLaVA-NeXT's anyres tiles; Idefics3's image splitting; Gemma3's pan-and-scan crops).

The one step the PIL path has and this one does not is the 8-bit quantisation: PIL rounds the input and the output
of every resampling pass to integers. With `quantize=True` those roundings are applied too, with straight-through
gradients, and the pixel values then equal the PIL path's bit for bit. The default (`quantize=False`) keeps the
values continuous: they differ from the PIL path by about 1.2 levels of 255 at most per resize (the rounding, nothing
else). `torch.nn.functional.interpolate(mode="bicubic", antialias=True)` is not used: it differs from PIL by up to
15 levels on photos (24 on noise) where PIL clips between its two passes (`benchmarks/pixels_parity.py`).

Supported image processors: CLIP, BiT, SigLIP, LLaVA (pad to square), LLaVA-NeXT, Qwen2-VL (also used by Qwen2.5-VL
and Qwen3-VL), Idefics3, SmolVLM and Gemma3. Their torchvision ("fast") variants are preprocessed as the PIL variants
do (torchvision's own resize differs from PIL's by a few levels). Anything else (e.g. Phi-3.5-vision's remote-code
processor) raises `NotDifferentiableError`.

Example:
    >>> import torch
    >>> from llava_reward import LlavaRewardProcessor
    >>> from llava_reward.pixels import pixel_inputs
    >>> from llava_reward.testing import tiny_vlm
    >>> processor = LlavaRewardProcessor.from_vlm_processor(tiny_vlm("qwen2_5_vl")[1])
    >>> pixels = torch.rand(2, 3, 40, 24, requires_grad=True)   # e.g. a generator's decoded images
    >>> inputs = pixel_inputs(processor, "a red cat", pixels)
    >>> inputs["pixel_values"].shape, inputs["image_grid_thw"].tolist(), inputs["pixel_values"].requires_grad
    (torch.Size([120, 96]), [[1, 10, 6], [1, 10, 6]], True)
"""

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import get_patch_output_size
from transformers.image_processing_utils import select_best_resolution
from transformers.image_transforms import divide_to_patches
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_transforms import get_size_with_aspect_ratio
from transformers.image_utils import ChannelDimension
from transformers.image_utils import PILImageResampling
from transformers.image_utils import SizeDict
from transformers.image_utils import get_image_size_for_max_height_width
from transformers.models.idefics3.image_processing_pil_idefics3 import (
    get_resize_output_image_size as idefics3_output_size,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from .image_inputs import InputError


class NotDifferentiableError(ValueError):
    """The processor's image preprocessing has no differentiable counterpart here; the message says which and why."""


# --- PIL's resampling, in torch ----------------------------------------------------------------------------------
# Pillow's Resample.c: a separable convolution whose kernel is stretched by the downscaling factor (that stretch is
# the antialiasing), normalised per output pixel, then rounded to 22-bit fixed point for 8-bit images.

_FIXED_POINT = 1 << 22  # PRECISION_BITS = 32 - 8 - 2


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x: float) -> float:
    return 1.0 if x == 0.0 else math.sin(math.pi * x) / (math.pi * x)


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


_F32_054, _F32_046 = float(np.float32(0.54)), float(np.float32(0.46))


def _hamming(x: float) -> float:
    x = abs(x)
    # Pillow writes the window's constants as float literals (0.54f, 0.46f): their float32 values.
    return 1.0 if x == 0.0 else 0.0 if x >= 1.0 else _sinc(x) * (_F32_054 + _F32_046 * math.cos(math.pi * x))


# resample -> (support, kernel), as in Pillow. NEAREST takes another code path in Pillow and is not offered here.
_FILTERS = {
    PILImageResampling.BOX: (0.5, _box),
    PILImageResampling.BILINEAR: (1.0, _bilinear),
    PILImageResampling.HAMMING: (1.0, _hamming),
    PILImageResampling.BICUBIC: (2.0, _bicubic),
    PILImageResampling.LANCZOS: (3.0, _lanczos),
}


@lru_cache(maxsize=64)
def _resampling_matrix(in_size: int, out_size: int, resample: PILImageResampling) -> np.ndarray:
    """(out_size, in_size) float64 matrix of Pillow's fixed-point coefficients (`precompute_coeffs`)."""
    support, kernel = _FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    inverse_filterscale = 1.0 / filterscale
    matrix = np.zeros((out_size, in_size))
    for out in range(out_size):
        center = (out + 0.5) * scale
        first, stop = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        weights = [kernel((x - center + 0.5) * inverse_filterscale) for x in range(first, stop)]
        total = sum(weights)  # summed in order, as Pillow does
        weights = [weight / total for weight in weights] if total != 0.0 else weights
        matrix[out, first:stop] = [math.trunc(w * _FIXED_POINT + (0.5 if w >= 0 else -0.5)) for w in weights]
    return matrix / _FIXED_POINT


def _round_half_up(values: torch.Tensor) -> torch.Tensor:
    """Pillow's rounding of a resampling pass, with straight-through gradients."""
    return values + (torch.floor(values + 0.5) - values).detach()


def pil_resize(
    values: torch.Tensor,  # (..., H, W), in 8-bit units: 0 to 255
    size: tuple[int, int],  # (height, width)
    resample: PILImageResampling | int,
    *,
    quantize: bool = False,
) -> torch.Tensor:  # (..., height, width)
    """`PIL.Image.resize` of an 8-bit image, differentiable: two separable passes in Pillow's order, each clipped
    to [0, 255] (and rounded when `quantize`), a pass skipped when its size does not change, as in Pillow.

    With `quantize=True` and `values` integers in float64, the result equals Pillow's exactly.
    """
    resample = PILImageResampling(resample)
    if resample not in _FILTERS:
        raise NotDifferentiableError(f"Resampling filter {resample.name} has no differentiable counterpart here.")
    height, width = size
    passes = [(-1, width), (-2, height)]
    if _vertical_first(values.shape[-2], values.shape[-1], height, width):
        passes.reverse()
    for axis, new_size in passes:
        if values.shape[axis] == new_size:
            continue
        matrix = torch.as_tensor(
            _resampling_matrix(values.shape[axis], new_size, resample), dtype=values.dtype, device=values.device
        )
        values = values @ matrix.T if axis == -1 else matrix @ values
        values = values.clamp(0, 255)
        values = _round_half_up(values) if quantize else values
    return values


# Pillow 13 resamples vertically first when the height shrinks by more than twice as many pixels as the width
# (python-pillow/Pillow#9549; found by comparing both orders with Pillow's output); before, always horizontally first.
# The order matters through the rounding and clipping of the intermediate image.
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def _vertical_first(height: int, width: int, new_height: int, new_width: int) -> bool:
    return _PILLOW_MAJOR >= 13 and new_height < height and height - new_height > 2 * (width - new_width)


# --- The steps the image processors share ------------------------------------------------------------------------


class _Steps:
    """Resize, crop, pad, rescale and normalise on (B, C, H, W) values in 8-bit units, as the PIL backend does them.

    `quantize` adds the PIL path's 8-bit rounding after each resize and its float32 arithmetic for rescale and
    normalisation, so that the output is bit-exact with the PIL path.
    """

    def __init__(self, image_processor, settings: dict, quantize: bool):
        self.image_processor = image_processor
        self.settings = settings
        self.quantize = quantize

    def resize(self, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return pil_resize(values, size, self.settings["resample"], quantize=self.quantize)

    def resize_to(self, values: torch.Tensor, size: SizeDict) -> torch.Tensor:
        """`PilBackend.resize`: the target size from a size dict (shortest edge, max size, or height and width)."""
        height, width = values.shape[-2:]
        if size.shortest_edge and size.longest_edge:
            new_size = get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge)
        elif size.shortest_edge:
            new_size = get_resize_output_image_size(
                _shape_only(height, width), size.shortest_edge, default_to_square=False,
                input_data_format=ChannelDimension.FIRST,
            )
        elif size.max_height and size.max_width:
            new_size = get_image_size_for_max_height_width((height, width), size.max_height, size.max_width)
        elif size.height and size.width:
            new_size = (size.height, size.width)
        else:
            raise NotDifferentiableError(f"Unsupported image processor size {dict(size)}.")
        return self.resize(values, new_size)

    @staticmethod
    def center_crop(values: torch.Tensor, size: SizeDict) -> torch.Tensor:
        """`image_transforms.center_crop`: zero-pads an image smaller than the crop, then crops the centre."""
        crop_height, crop_width = int(size.height), int(size.width)
        height, width = values.shape[-2:]
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
        if top >= 0 and left >= 0:
            return values[..., top : top + crop_height, left : left + crop_width]
        new_height, new_width = max(crop_height, height), max(crop_width, width)
        top_pad, left_pad = math.ceil((new_height - height) / 2), math.ceil((new_width - width) / 2)
        values = F.pad(values, (left_pad, new_width - width - left_pad, top_pad, new_height - height - top_pad))
        top, left = top + top_pad, left + left_pad
        rows = slice(max(0, top), min(new_height, top + crop_height))
        return values[..., rows, max(0, left) : min(new_width, left + crop_width)]

    def rescale_and_normalize(self, values: torch.Tensor) -> torch.Tensor:
        settings = self.settings
        if self.quantize:  # numpy's order: float64 rescale, cast to float32, normalise in float32
            values = values * settings["rescale_factor"] if settings["do_rescale"] else values
            values = values.float()
        elif settings["do_rescale"]:
            values = values * settings["rescale_factor"]
        if settings["do_normalize"]:
            mean, std = (_per_channel(settings[key], values) for key in ("image_mean", "image_std"))
            values = (values - mean) / std
        return values

    def standard(self, values: torch.Tensor, *, pad: bool = True) -> torch.Tensor:
        """`PilBackend._preprocess`: resize, centre crop, rescale, normalise, pad (unless `pad=False`)."""
        settings = self.settings
        if settings["do_resize"]:
            values = self.resize_to(values, settings["size"])
        if settings.get("do_center_crop"):
            values = self.center_crop(values, settings["crop_size"])
        values = self.rescale_and_normalize(values)
        if pad and settings.get("do_pad"):
            pad_size = settings.get("pad_size")
            if pad_size is not None:  # without a pad size, a batch of equal images needs no padding
                height, width = values.shape[-2:]
                values = F.pad(values, (0, pad_size.width - width, 0, pad_size.height - height))
        return values


def _per_channel(value, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-channel constant, as a (C, 1, 1) tensor of float32 (float64 input stays float64)."""
    dtype = like.dtype if like.dtype == torch.float64 else torch.float32
    constant = torch.tensor(value, dtype=dtype, device=like.device)
    return constant.reshape(-1, 1, 1) if constant.ndim else constant


def _shape_only(height: int, width: int) -> np.ndarray:
    """A (3, height, width) array that allocates nothing: for transformers' size helpers, which read `.shape`."""
    return np.broadcast_to(np.zeros((), dtype=np.uint8), (3, height, width))


# --- One pipeline per image processor ----------------------------------------------------------------------------
# Each takes (B, 3, H, W) values in 8-bit units and returns `pixel_values` shaped as the PIL image processor's.


def _standard(steps: _Steps, values: torch.Tensor) -> torch.Tensor:  # (B, 3, h, w)
    """CLIP, BiT, SigLIP: the backend's plain pipeline."""
    return steps.standard(values)


def _llava(steps: _Steps, values: torch.Tensor) -> torch.Tensor:  # (B, 3, h, w)
    """`LlavaImageProcessor`: `do_pad` pads to a square of the mean colour (whole 8-bit levels) before resizing."""
    settings = steps.settings
    if settings.get("do_pad"):
        mean = settings["image_mean"]
        values = _pad_to_square(values, [int(channel * 255) for channel in mean] if mean else [0])
    return steps.standard(values, pad=False)  # `do_pad` meant the square


def _pad_to_square(values: torch.Tensor, color: list[int]) -> torch.Tensor:
    height, width = values.shape[-2:]
    if height == width:
        return values
    side, dim = max(height, width), (-2 if width > height else -1)
    before = (side - values.shape[dim]) // 2
    fill = torch.tensor(color, dtype=values.dtype, device=values.device).reshape(-1, 1, 1)

    def band(length: int) -> torch.Tensor:
        shape = list(values.shape)
        shape[dim] = length
        return fill.expand(shape)

    return torch.cat([band(before), values, band(side - before - values.shape[dim])], dim=dim)


def _llava_next(steps: _Steps, values: torch.Tensor) -> torch.Tensor:  # (B, 1 + tiles, 3, h, w)
    """`LlavaNextImageProcessor`: the whole image squashed to the base size, then anyres tiles of the image fitted
    into the best pinpoint resolution (aspect kept, centred, zero-padded), each tile resized, cropped, normalised."""
    settings = steps.settings
    size, crop_size = settings["size"], settings["crop_size"]
    height, width = values.shape[-2:]
    base_size = (size.height, size.width) if size.height and size.width else (size.shortest_edge,) * 2
    tile_size = crop_size.height if crop_size and crop_size.height else size.height or size.shortest_edge
    best = select_best_resolution((height, width), settings["image_grid_pinpoints"])
    fitted = steps.resize(values, get_patch_output_size(_shape_only(height, width), best, ChannelDimension.FIRST))
    pad_y, pad_x = best[0] - fitted.shape[-2], best[1] - fitted.shape[-1]
    canvas = F.pad(fitted, (pad_x // 2, pad_x - pad_x // 2, pad_y // 2, pad_y - pad_y // 2))
    tiles = []
    for tile in [steps.resize(values, base_size)] + divide_to_patches(canvas, tile_size):
        if settings["do_resize"]:
            tile = steps.resize_to(tile, size)
        if settings["do_center_crop"]:
            tile = steps.center_crop(tile, crop_size)
        tiles.append(steps.rescale_and_normalize(tile))
    return torch.stack(tiles, dim=1)


def _qwen2_vl(steps: _Steps, values: torch.Tensor) -> torch.Tensor:  # (B * grid_h * grid_w, 3 * T * p * p)
    """`Qwen2VLImageProcessor` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): `smart_resize` to a multiple of patch x merge,
    then flattened patches, grouped by merge window, each repeated over the temporal patch (a still image)."""
    settings = steps.settings
    patch, merge, temporal = settings["patch_size"], settings["merge_size"], settings["temporal_patch_size"]
    if settings["do_resize"]:
        size = settings["size"]
        new_size = smart_resize(
            *values.shape[-2:], factor=patch * merge, min_pixels=size.shortest_edge, max_pixels=size.longest_edge
        )
        values = steps.resize(values, new_size)
    values = steps.rescale_and_normalize(values)
    batch, channels, height, width = values.shape
    grid_h, grid_w = height // patch, width // patch
    values = values.reshape(batch, channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    values = values.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, gh/m, gw/m, m, m, C, p, p): merge windows contiguous
    values = values.unsqueeze(6).expand(*values.shape[:6], temporal, patch, patch)
    return values.reshape(batch * grid_h * grid_w, channels * temporal * patch * patch)


def _idefics3(steps: _Steps, values: torch.Tensor) -> torch.Tensor:  # (B, frames, 3, h, w)
    """`Idefics3ImageProcessor` / `SmolVLMImageProcessor`: longest edge resized, then either split into tiles of
    the encoder's size plus the whole image squashed to one tile, or squashed to one tile; zero-padded."""
    settings = steps.settings
    tile = settings["max_image_size"]["longest_edge"]
    if settings["do_resize"]:
        size = settings["size"]
        height, width = values.shape[-2:]
        new_size = (
            idefics3_output_size(_shape_only(height, width), size.longest_edge)
            if size.longest_edge
            else (size.height, size.width)
        )
        values = steps.resize(values, new_size)
    if settings["do_image_splitting"]:
        values = steps.resize(values, _idefics3_encoder_size(*values.shape[-2:], tile))
        frames = _idefics3_split(steps, values, tile)
    else:
        frames = [steps.resize(values, (tile, tile))]
    frames = [steps.rescale_and_normalize(frame) for frame in frames]
    if settings["do_pad"]:
        height, width = max(frame.shape[-2] for frame in frames), max(frame.shape[-1] for frame in frames)
        frames = [F.pad(frame, (0, width - frame.shape[-1], 0, height - frame.shape[-2])) for frame in frames]
    return torch.stack(frames, dim=1)


def _idefics3_encoder_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """`Idefics3ImageProcessorPil.resize_for_vision_encoder`'s target: both sides multiples of `tile`."""
    aspect_ratio = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect_ratio) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect_ratio) / tile) * tile
    return height, width


def _idefics3_split(steps: _Steps, values: torch.Tensor, tile: int) -> list[torch.Tensor]:
    """`Idefics3ImageProcessorPil.split_images`: row-major tiles, then the whole image squashed to one tile."""
    height, width = values.shape[-2:]
    if height <= tile and width <= tile:
        return [values]
    rows, cols = (height - tile) // tile + 1, (width - tile) // tile + 1
    frames = [
        values[..., row * tile : (row + 1) * tile, col * tile : (col + 1) * tile]
        for row in range(rows)
        for col in range(cols)
    ]
    return frames + [steps.resize(values, (tile, tile))]


def _gemma3(steps: _Steps, values: torch.Tensor) -> torch.Tensor:  # (B * (1 + crops), 3, h, w)
    """`Gemma3ImageProcessor`: the image, then its pan-and-scan crops when enabled, each resized and normalised."""
    settings = steps.settings
    frames = [values]
    if settings.get("do_pan_and_scan"):
        per_image = [
            steps.image_processor.pan_and_scan(
                image,  # (3, H, W): the processor's own crop geometry, applied to a tensor (crops are slices)
                pan_and_scan_min_crop_size=settings["pan_and_scan_min_crop_size"],
                pan_and_scan_max_num_crops=settings["pan_and_scan_max_num_crops"],
                pan_and_scan_min_ratio_to_activate=settings["pan_and_scan_min_ratio_to_activate"],
            )
            for image in values
        ]
        frames += [torch.stack(crops) for crops in zip(*per_image)]
    frames = [_gemma3_frame(steps, frame) for frame in frames]
    return torch.stack(frames, dim=1).flatten(0, 1)


def _gemma3_frame(steps: _Steps, values: torch.Tensor) -> torch.Tensor:
    if steps.settings["do_resize"]:
        values = steps.resize_to(values, steps.settings["size"])
    return steps.rescale_and_normalize(values)


_PIPELINES: dict[str, Callable[[_Steps, torch.Tensor], torch.Tensor]] = {
    "CLIPImageProcessor": _standard,
    "BitImageProcessor": _standard,
    "SiglipImageProcessor": _standard,
    "LlavaImageProcessor": _llava,
    "LlavaNextImageProcessor": _llava_next,
    "Qwen2VLImageProcessor": _qwen2_vl,
    "Idefics3ImageProcessor": _idefics3,
    "SmolVLMImageProcessor": _idefics3,
    "Gemma3ImageProcessor": _gemma3,
}
SUPPORTED_IMAGE_PROCESSORS = tuple(sorted(_PIPELINES))


# --- Public API --------------------------------------------------------------------------------------------------


def check_differentiable(processor) -> None:
    """Raise `NotDifferentiableError` unless `processor`'s image preprocessing has a differentiable counterpart.

    `processor`: a `LlavaRewardProcessor`, a family's transformers processor, or an image processor.
    """
    _pipeline(_image_processor(processor))


def preprocess_pixels(processor, pixels: torch.Tensor, *, quantize: bool = False) -> torch.Tensor:
    r"""
    The `pixel_values` the family's image processor makes of `pixels`, computed differentiably.

    Args:
        processor: a `LlavaRewardProcessor`, a family's transformers processor (its processor-level image settings,
            e.g. LLaVA-NeXT's `do_pad` or Gemma3's pan-and-scan switch, apply) or a bare image processor.
        pixels (`torch.Tensor` of shape `(B, 3, H, W)`): floats in [0, 1] (what `image_inputs.load_image` reads
            as 8-bit levels `round(255 * x)`), on any device, any float dtype, `requires_grad` allowed.
        quantize (`bool`, defaults to `False`): round to 8-bit levels where the PIL path does (the input and each
            resampling pass), with straight-through gradients: the output then equals the PIL path's exactly.
            Computes in float64 (not on devices without it).

    Returns:
        `torch.Tensor`: `pixel_values` shaped as the PIL image processor returns them for a batch of B images of
        size H x W, in float32 (float64 for float64 input without `quantize`), on `pixels.device`.

    Preprocessing runs outside any `torch.autocast` region (in full precision): resampling in bfloat16 would cost
    more than the 8-bit rounding it replaces.

    Example:

    ```python
    >>> import torch
    >>> from llava_reward.pixels import preprocess_pixels
    >>> from llava_reward.testing import tiny_vlm
    >>> preprocess_pixels(tiny_vlm("llava_next")[1], torch.rand(2, 3, 40, 24)).shape   # whole image + 2x2 tiles
    torch.Size([2, 5, 3, 16, 16])
    ```"""
    _check_pixels(pixels)
    return _preprocess(processor, pixels, quantize)


def _preprocess(processor, pixels: torch.Tensor, quantize: bool) -> torch.Tensor:
    image_processor = _image_processor(processor)
    pipeline = _pipeline(image_processor)
    steps = _Steps(image_processor, _settings(processor, image_processor), quantize)
    with torch.autocast(pixels.device.type, enabled=False):
        if quantize:  # `load_image`'s conversion: round(255 * x) in float32, half to even
            values = pixels.float() * 255
            values = (values + (torch.round(values) - values).detach()).double()
        else:
            values = pixels.to(torch.promote_types(pixels.dtype, torch.float32)) * 255
        return pipeline(steps, values)


def pixel_inputs(processor, prompts, pixels: torch.Tensor, *, quantize: bool = False) -> BatchFeature:
    r"""
    The reward model's inputs for `prompts[i]` with `pixels[i]`, with `pixel_values` differentiable w.r.t. `pixels`.

    The text side (input ids with as many image tokens as the image grid needs, attention mask, and the family's
    extras: `image_grid_thw`, `mm_token_type_ids`, `image_sizes`, `pixel_attention_mask`, ...) comes from
    `processor` run on blank placeholder images of the same size, which fixes every image-size-dependent quantity
    exactly as for real images; its `pixel_values` are then replaced by `preprocess_pixels(pixels)`, after checking
    that the two have the same shape.

    Args:
        processor (`LlavaRewardProcessor`): the reward model's processor.
        prompts (`str` or list of `str`): one per image, or one for all.
        pixels (`torch.Tensor` of shape `(B, 3, H, W)`), quantize: as for `preprocess_pixels`.

    Example:

    ```python
    >>> import torch
    >>> from llava_reward import LlavaRewardProcessor
    >>> from llava_reward.pixels import pixel_inputs
    >>> from llava_reward.testing import tiny_vlm
    >>> processor = LlavaRewardProcessor.from_vlm_processor(tiny_vlm("qwen2_5_vl")[1])
    >>> inputs = pixel_inputs(processor, "a red cat", torch.rand(2, 3, 40, 24, requires_grad=True))
    >>> inputs["image_grid_thw"].tolist(), inputs["pixel_values"].requires_grad
    ([[1, 10, 6], [1, 10, 6]], True)
    ```"""
    check_differentiable(processor)
    _check_pixels(pixels)
    batch, _, height, width = pixels.shape
    placeholder = Image.new("RGB", (width, height))
    inputs = processor(prompts, [placeholder] * batch)
    pixel_values = _preprocess(processor, pixels, quantize)
    if tuple(pixel_values.shape) != tuple(inputs["pixel_values"].shape):
        raise RuntimeError(
            f"The differentiable preprocessing made pixel_values of shape {tuple(pixel_values.shape)} where "
            f"{type(_image_processor(processor)).__name__} makes {tuple(inputs['pixel_values'].shape)} for "
            f"{height}x{width} images: its settings are not handled by llava_reward.pixels."
        )
    inputs["pixel_values"] = pixel_values
    return inputs


def _image_processor(processor):
    return getattr(processor, "image_processor", processor)


def _pipeline(image_processor) -> Callable[[_Steps, torch.Tensor], torch.Tensor]:
    for cls in type(image_processor).__mro__:
        name = cls.__name__.removesuffix("Pil").removesuffix("Fast")
        if name in _PIPELINES:
            return _PIPELINES[name]
    raise NotDifferentiableError(
        f"No differentiable preprocessing for {type(image_processor).__name__}: differentiable scoring supports "
        f"the image processors {', '.join(SUPPORTED_IMAGE_PROCESSORS)} (PIL and torchvision variants)."
    )


def _settings(processor, image_processor) -> dict:
    """The settings the image processor's `preprocess` resolves when `processor` calls it (the processor's image
    defaults first, then the image processor's attributes), as `_preprocess` receives them."""
    vlm_processor = getattr(processor, "vlm_processor", processor)
    settings = dict(vlm_processor._merge_kwargs()["images_kwargs"]) if vlm_processor is not image_processor else {}
    for name in image_processor._valid_kwargs_names:
        settings.setdefault(name, getattr(image_processor, name, None))
    return image_processor._standardize_kwargs(**settings)


def _check_pixels(pixels) -> None:
    if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point():
        kind = f"a {pixels.dtype} tensor" if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise InputError(f"pixels: expected a float tensor of shape (B, 3, H, W) in [0, 1], got {kind}.")
    if pixels.ndim != 4 or pixels.shape[1] != 3 or 0 in pixels.shape:
        raise InputError(f"pixels: expected shape (B, 3, H, W) with B, H, W > 0, got {tuple(pixels.shape)}.")
    low, high = (float(value) for value in torch.aminmax(pixels.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError("pixels: contains NaN or infinite values.")
    if low < 0.0 or high > 1.0:
        raise InputError(
            f"pixels: values must lie in [0, 1], got [{low:.3g}, {high:.3g}] (for outputs in [-1, 1] pass "
            "(x + 1) / 2)."
        )


__all__ = [
    "NotDifferentiableError",
    "SUPPORTED_IMAGE_PROCESSORS",
    "check_differentiable",
    "pil_resize",
    "pixel_inputs",
    "preprocess_pixels",
]
