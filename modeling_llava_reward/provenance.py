"""What a reward model was trained on, so that an evaluation can tell held-out numbers from contaminated ones.

Training writes `training_data.json` beside the model: a fingerprint of every training image (a hash of the file's
size and its first and last 64 KiB, or of the bytes of an image held in a dataset: cheap enough for millions of
files, and equal only for the same file). `llava-reward evaluate` fingerprints the benchmark's images the same way
and reports the overlap; a number measured on images the model was trained on is never reported as held out.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from llava_reward.provenance import image_fingerprint
    >>> path = Path(tempfile.mkdtemp()) / "a.png"
    >>> _ = path.write_bytes(b"not really an image")
    >>> image_fingerprint(path) == image_fingerprint(str(path)), len(image_fingerprint(path))
    (True, 16)
"""

import hashlib
import json
import os
from pathlib import Path

from .files import write_json


TRAINING_DATA_FILE = "training_data.json"
FORMAT = 1
_EDGE = 64 * 1024  # bytes read from each end of a file


def image_fingerprint(image) -> str | None:
    """A 16-hex-digit fingerprint of an image file (path) or of encoded image bytes (or a `{"bytes", "path"}`
    dict); None for anything else (a decoded image has no file to recognise)."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    digest = hashlib.sha256()
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        digest.update(len(data).to_bytes(8, "little") + data[:_EDGE] + data[-_EDGE:])
    elif isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        size = os.path.getsize(image)
        with open(image, "rb") as file:
            head = file.read(_EDGE)
            file.seek(max(size - _EDGE, 0))
            digest.update(size.to_bytes(8, "little") + head + file.read(_EDGE))
    else:
        return None
    return digest.hexdigest()[:16]


def fingerprints(images) -> set[str]:
    """The fingerprints of `images` (those that have one)."""
    return {found for found in map(image_fingerprint, images) if found is not None}


def write_training_data(folder: str | os.PathLike, image_fingerprints, *, sources: list[str]) -> Path:
    """Record the fingerprints of the training images (`fingerprints(images)`) and the data sources they came from
    in `folder`."""
    found = sorted(image_fingerprints)
    payload = {"format": FORMAT, "num_images": len(found), "sources": sources, "image_fingerprints": found}
    return write_json(Path(folder) / TRAINING_DATA_FILE, payload)


def read_training_data(folder: str | os.PathLike) -> frozenset[str] | None:
    """The training images' fingerprints recorded in `folder`, or None when the model records none."""
    path = Path(folder) / TRAINING_DATA_FILE
    if not path.is_file():
        return None
    return frozenset(json.loads(path.read_text(encoding="utf-8"))["image_fingerprints"])


__all__ = ["TRAINING_DATA_FILE", "fingerprints", "image_fingerprint", "read_training_data", "write_training_data"]
