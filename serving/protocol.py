"""The reward service's wire format: JSON requests checked field by field, images decoded under limits.

Requests (JSON objects; unknown fields are refused, so that a typo never passes unnoticed):

* `POST /score`: `{"prompt": str}` (for every image) or `{"prompts": [str, ...]}` (one per image), and
  `{"images": [image, ...]}`. Answer: `{"rewards": [...]}`, or `{"rewards": {perspective: [...]}}` when the server
  holds several perspectives. A reward is a number (BT, CE) or a list of numbers (GPM embedding).
* `POST /compare`: a prompt or prompts as above, `{"images_a": [image, ...], "images_b": [image, ...]}`. Answer:
  `{"p_a": [...]}` (P(images_a[i] preferred over images_b[i])), or `{"p_a": {perspective: [...]}}`, computed with
  each perspective's objective and tau; perspectives with the `ce` objective have no pairwise preference and are
  left out.

An image is a base64 string of a PNG, JPEG or WebP file (a `data:image/...;base64,` prefix is accepted), or, only
when the server was started with an image root, `{"path": "relative/path.png"}` naming a file inside that root.

Errors answer `{"error": "<field>: <what is wrong>", "field": "<field>"}` with a 4xx status: 400 (not a JSON
object), 403 (a path outside the image root), 413 (body over the size limit), 422 (a field missing, of the wrong
type, or an image that cannot be used). Nothing here is ever unpickled.

Example:
    >>> limits = Limits(max_images=4)
    >>> parse_request(b'{"prompt": "a cat", "images": []}', limits, "score")
    Traceback (most recent call last):
    ...
    llava_reward.serving.protocol.RequestError: images: expected a non-empty list of images
"""

import base64
import binascii
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from PIL import UnidentifiedImageError

from llava_reward.image_inputs import InputError
from llava_reward.image_inputs import load_image


FORMATS = ("PNG", "JPEG", "WEBP")
IMAGE_FIELDS = {"score": ("images",), "compare": ("images_a", "images_b")}


class RequestError(ValueError):
    """A request the server refuses: `status` (4xx), the `field` at fault, and a one-line message naming it."""

    def __init__(self, field: str | None, message: str, status: int = 422):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.status = status

    def to_json(self) -> dict:
        return {"error": str(self), "field": self.field}


@dataclass(frozen=True)
class Limits:
    """What one request may carry. `image_root`: the folder `{"path": ...}` images may come from (None: none)."""

    max_body_bytes: int = 64 * 2**20
    max_images: int = 256
    max_pixels: int = 4096 * 4096
    max_prompt_chars: int = 20_000
    image_root: str | None = None


@dataclass
class ParsedRequest:
    """A checked request: one prompt per image (or per pair), the raw image bytes still to decode."""

    prompts: list[str]
    images: dict[str, list]  # field -> [(field name of the image, bytes or resolved Path)]


def parse_request(body: bytes, limits: Limits, kind: str) -> ParsedRequest:
    """Check a `/score` or `/compare` body (`kind`); images are located, not decoded (see `decode_image`)."""
    if len(body) > limits.max_body_bytes:
        raise RequestError("body", f"{len(body)} bytes is over the limit of {limits.max_body_bytes} bytes", 413)
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError("body", f"not valid JSON ({error})", 400) from None
    if not isinstance(request, dict):
        raise RequestError("body", f"expected a JSON object, got {type(request).__name__}", 400)
    image_fields = IMAGE_FIELDS[kind]
    unknown = sorted(set(request) - {"prompt", "prompts", *image_fields})
    if unknown:
        allowed = ", ".join(("prompt", "prompts", *image_fields))
        raise RequestError(unknown[0], f"unknown field (the fields of /{kind} are {allowed})")
    images = {field: _image_list(request, field, limits) for field in image_fields}
    counts = {len(found) for found in images.values()}
    if len(counts) > 1:
        raise RequestError(image_fields[1], f"has {len(images[image_fields[1]])} images, "
                           f"{image_fields[0]} has {len(images[image_fields[0]])}: they are compared pairwise")
    return ParsedRequest(_prompts(request, counts.pop(), limits), images)


def _prompts(request: dict, count: int, limits: Limits) -> list[str]:
    if ("prompt" in request) == ("prompts" in request):
        raise RequestError("prompt", "give exactly one of `prompt` (a string for every image) or `prompts` (a list)")
    if "prompt" in request:
        prompts, names = [request["prompt"]] * count, ["prompt"] * count
    else:
        prompts = request["prompts"]
        if not isinstance(prompts, list) or len(prompts) != count:
            got = f"a list of {len(prompts)}" if isinstance(prompts, list) else type(prompts).__name__
            raise RequestError("prompts", f"expected a list of {count} strings (one per image), got {got}")
        names = [f"prompts[{index}]" for index in range(count)]
    for name, prompt in zip(names, prompts):
        if not isinstance(prompt, str):
            raise RequestError(name, f"expected a string, got {type(prompt).__name__}")
        if len(prompt) > limits.max_prompt_chars:
            raise RequestError(name, f"{len(prompt)} characters is over the limit of {limits.max_prompt_chars}", 413)
    return prompts


def _image_list(request: dict, field: str, limits: Limits) -> list:
    if field not in request:
        raise RequestError(field, "missing (a list of base64-encoded PNG, JPEG or WebP images)")
    images = request[field]
    if not isinstance(images, list) or not images:
        raise RequestError(field, "expected a non-empty list of images")
    if len(images) > limits.max_images:
        raise RequestError(field, f"{len(images)} images is over the limit of {limits.max_images} per request", 413)
    return [_locate(item, f"{field}[{index}]", limits) for index, item in enumerate(images)]


def _locate(item, name: str, limits: Limits) -> tuple[str, bytes | Path]:
    """(name, the encoded bytes) for a base64 string; (name, the resolved file) for `{"path": ...}`."""
    if isinstance(item, str):
        encoded = item.split(",", 1)[1] if item.startswith("data:") else item
        try:
            return name, base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(name, "not valid base64") from None
    if isinstance(item, dict) and set(item) == {"path"} and isinstance(item["path"], str):
        return name, resolve_under(limits.image_root, item["path"], f"{name}.path")
    raise RequestError(name, f"expected a base64 string or {{\"path\": str}}, got {_kind(item)}")


def _kind(value) -> str:
    return "an object with keys " + str(sorted(value)) if isinstance(value, dict) else type(value).__name__


def resolve_under(root: str | None, path: str, name: str) -> Path:
    """The file `path` names inside `root`, symlinks resolved; refused (403) if it leads outside `root`."""
    if root is None:
        raise RequestError(name, "file paths are not accepted: the server was started without an image root", 403)
    root_path = Path(root).resolve()
    try:
        # strict: every link on the way is followed, so a symlink inside the root pointing out of it is caught.
        resolved = (root_path / path).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise RequestError(name, f"no such file under the image root: {path!r}") from None
    except (OSError, RuntimeError) as error:  # a symlink loop, a name too long
        raise RequestError(name, f"cannot resolve {path!r} ({error})") from None
    if not resolved.is_relative_to(root_path):
        raise RequestError(name, f"{path!r} is outside the image root", 403)
    if not resolved.is_file():
        raise RequestError(name, f"{path!r} is not a file")
    return resolved


def decode_image(name: str, source: bytes | Path, limits: Limits) -> Image.Image:
    """An RGB image from PNG/JPEG/WebP bytes or file, refused (422, naming `name`) if anything is wrong with it.

    The size is read from the header and checked against `limits.max_pixels` before any pixel is decoded; the image
    is then converted exactly as the local scorer converts a file (`load_image`), so rewards match it.
    """
    if isinstance(source, Path):
        if os.path.getsize(source) > limits.max_body_bytes:
            raise RequestError(name, f"the file is over the limit of {limits.max_body_bytes} bytes", 413)
        source = source.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source)) as opened:  # lazy: reads the header only
                image_format, (width, height) = opened.format, opened.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise RequestError(name, f"over the pixel limit ({error})", 413) from None
    except (UnidentifiedImageError, OSError):
        raise RequestError(name, "not a PNG, JPEG or WebP image (undecodable)") from None
    if image_format not in FORMATS:
        raise RequestError(name, f"{image_format} images are not accepted; send PNG, JPEG or WebP")
    if width * height > limits.max_pixels:
        raise RequestError(
            name, f"{width}x{height} = {width * height} pixels is over the limit of {limits.max_pixels}", 413
        )
    try:
        return load_image(source)
    except InputError as error:  # truncated or corrupt pixel data
        raise RequestError(name, str(error).removeprefix("image 0 (bytes): ")) from None
