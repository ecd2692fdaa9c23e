"""Turn whatever a user holds into RGB PIL images, or say precisely what is wrong with which input.

Accepted: PIL images, file paths (`str` / `pathlib.Path`), encoded bytes, numpy arrays (HWC or HW, uint8, or float
in [0, 1]) and torch tensors (CHW or NCHW; float in [0, 1] or uint8). EXIF orientation is applied; every mode
(P, LA, RGBA, CMYK, I;16, 1, ...) becomes RGB, alpha composited on white; animated images give their first frame.

Example:
    >>> import numpy as np
    >>> from llava_reward.image_inputs import load_images
    >>> [image.size for image in load_images([np.zeros((4, 6, 3), dtype=np.uint8)])]
    [(6, 4)]
"""

import errno
import io
import os
import warnings

import numpy as np
import torch
from PIL import ExifTags
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError


class InputError(ValueError):
    """An input the user gave cannot be used; the message names which one (index or file) and why."""


def missing_path_problem(path: str | os.PathLike, missing: str = "not found") -> str:
    """Why a path a user named does not exist: `missing` when there is nothing there, or the broken symbolic link it
    is (a loop, or a link to nothing), so that the message says what to fix.

    Example:
        >>> missing_path_problem("/no/such/file", "file not found")
        'file not found'
    """
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop (its links lead back to a link already followed)"
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)!r}, which does not exist)"
    return missing


def load_images(images) -> list[Image.Image]:
    """Expand and convert `images` (one image, a list, or an NCHW tensor) into a list of RGB PIL images."""
    return [load_image(image, index) for index, image in enumerate(as_image_list(images))]


def as_image_list(images) -> list:
    """`images` as a list of single images, unconverted: an NCHW tensor / NHWC array is split, one image is wrapped.

    A 3-D tensor or array is one image (CHW / HWC), never a batch of channels or rows.
    """
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def load_image(image, index: int = 0) -> Image.Image:
    """One input -> an RGB PIL image; raises `InputError` naming `index` (and the file, if any).

    A `{"bytes": ..., "path": ...}` dict (a `datasets` Image feature, undecoded) is read from its bytes, else its path.
    """
    if isinstance(image, dict) and set(image) <= {"bytes", "path"}:
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (str, os.PathLike)):
        return _open(image, f"image {index} ({os.fspath(image)})", path=image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _open(io.BytesIO(bytes(image)), f"image {index} (bytes)")
    if isinstance(image, Image.Image):
        if 0 in image.size:
            raise InputError(f"image {index}: the image has no pixels ({image.width}x{image.height}).")
        return _to_rgb(_first_frame(image), f"image {index}")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        array = (image.float() if image.is_floating_point() else image).numpy()  # numpy has no bfloat16
        return _from_array(array, f"image {index} (tensor)", channels_first=True)
    if isinstance(image, np.ndarray):
        return _from_array(image, f"image {index} (array)", channels_first=False)
    raise InputError(
        f"image {index}: unsupported type {type(image).__name__}; expected a PIL image, a path, bytes, a numpy "
        "array (HWC) or a torch tensor (CHW)."
    )


def _open(source, label: str, path=None) -> Image.Image:
    if path is not None:
        if not os.path.exists(path):
            raise InputError(f"{label}: {missing_path_problem(path, 'file not found')}.")
        if os.path.isdir(path):
            raise InputError(f"{label}: is a folder, not an image file.")
        if os.path.getsize(path) == 0:
            raise InputError(f"{label}: the file is empty.")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: treat every bomb alike.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                image = _first_frame(opened)
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"{label}: refused as a possible decompression bomb ({error}).") from None
    except UnidentifiedImageError:
        raise InputError(f"{label}: not an image file Pillow can read.") from None
    except OSError as error:  # truncated or corrupt data
        raise InputError(f"{label}: the image data is corrupt or truncated ({error}).") from None
    return _to_rgb(image, label)


def _first_frame(image: Image.Image) -> Image.Image:
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    elif image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return image  # upright: exif_transpose would only copy it (benchmarks/RESULTS.md, optimisations)
    return ImageOps.exif_transpose(image)


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "F":
        # 32-bit float pixels (e.g. a float TIFF): convert() clips them to 0..255, so values in [0, 1] became black.
        # Read as a float array: values in [0, 1] scale to 0..255 like float arrays do; any other range is refused.
        return _from_array(np.asarray(image, dtype=np.float32), f"{label} (32-bit float pixels)", channels_first=False)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale to 8 bits instead of letting convert() clip everything above 255 to white.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray, label: str, channels_first: bool) -> Image.Image:
    given_shape = tuple(array.shape)
    if array.ndim == 3 and channels_first:
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        layout = "CHW" if channels_first else "HWC"
        raise InputError(f"{label}: expected {layout} with 1, 3 or 4 channels, got shape {given_shape}.")
    if 0 in array.shape[:2]:
        raise InputError(f"{label}: the image has no pixels (shape {given_shape}).")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"{label}: expected uint8 or float values, got dtype {array.dtype}.")
        if not np.isfinite(array).all():
            raise InputError(f"{label}: contains NaN or infinite values.")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise InputError(
                f"{label}: float values must lie in [0, 1], got [{low:.3g}, {high:.3g}] "
                "(for outputs in [-1, 1] pass (x + 1) / 2)."
            )
        array = np.round(array * 255.0).astype(np.uint8)
    if array.shape[-1] == 1:
        array = array[..., 0]  # Pillow infers L, RGB or RGBA from the shape
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array)), label)
