"""Fidelity preference pairs made from real photos: the photo against a copy with local, generator-like defects.

Text-to-image models fail locally: a face or a hand swirls, an object is duplicated or displaced, a texture smears,
a straight edge breaks, a detail melts. `make_artifact_pairs` turns real photographs into preference pairs that
teach a fidelity reward exactly that contrast: each pair is a random square crop of a photo (chosen) and the same
crop with one or two such defects in discs of random place, size and strength (rejected). Everything outside the
discs is left pixel for pixel as it was, so the only difference a model can learn from is the defect itself.

The pairs are written in the `pairs` format that `llava-reward train` reads (`prompt`, `chosen`, `rejected`,
image paths relative to the JSON file), each row also naming its source photo and its edits. Generation is seeded
and deterministic: the same sources, seed and settings give byte-identical files on any machine.

The sources are given explicitly (`PhotoSource`: an image file and its caption), so that a caller can guarantee
which images the pairs come from, e.g. never those of a held-out test set. `library_photos()` lists the real
photographs that installed packages ship (scikit-image, matplotlib, scikit-learn).

    llava-reward artifacts OUT_DIR --pairs 200 --seed 0            # from the library photos
    llava-reward artifacts OUT_DIR --photos a.jpg b.jpg --prompt "a photo" --size 224
    python -m llava_reward.trainers.artifacts ...                  # the same, without the console command

Example:
    >>> import tempfile
    >>> from llava_reward.trainers.artifacts import library_photos, make_artifact_pairs
    >>> pairs_file = make_artifact_pairs(library_photos()[:2], tempfile.mkdtemp(), num_pairs=3, size=64, seed=0)
    >>> import json; row = json.loads(pairs_file.read_text())[0]
    >>> sorted(row)
    ['chosen', 'edits', 'prompt', 'rejected', 'source']
"""

import argparse
import dataclasses
import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from llava_reward.files import publish
from llava_reward.files import staging_dir
from llava_reward.files import write_json


PAIRS_FILE = "pairs.json"
SUPERSAMPLE = 2  # defects are drawn at twice the output size, then both images are downsampled alike
CROP_SCALE = (0.6, 1.0)  # side of the random square crop, as a fraction of the photo's shorter side
RADIUS = (0.08, 0.24)  # radius of an edited disc, as a fraction of the image side
CENTRE = (0.15, 0.85)  # where disc centres fall, as a fraction of the image side
MAX_EDITS = 2  # edits per rejected image: 1 or 2 (non-overlapping discs are not enforced)
CANDIDATES = 6  # random places considered for each edit; the one with the most detail is edited


@dataclasses.dataclass(frozen=True)
class PhotoSource:
    """A real photograph and a caption describing it (the pair's prompt)."""

    path: str
    prompt: str


@dataclasses.dataclass(frozen=True)
class Edit:
    """One local defect: its kind, disc (centre and radius in pixels of the output image) and strength."""

    kind: str
    centre: tuple[float, float]  # (row, column)
    radius: float
    strength: float


# ---- the defects ----------------------------------------------------------------------------------------------------
# Each takes (image (H, W, 3) float32, window (H, W) in [0, 1] that is 0 outside the disc, disc geometry, strength,
# rng) and returns the edited image; only pixels where the window is > 0 are kept from it.


def _bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`image` sampled at fractional (rows, cols), clamped to the border: (H, W, 3) -> (*rows.shape, 3)."""
    height, width = image.shape[:2]
    rows, cols = np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)
    top, left = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    bottom, right = np.minimum(top + 1, height - 1), np.minimum(left + 1, width - 1)
    dy, dx = (rows - top)[..., None], (cols - left)[..., None]
    upper = image[top, left] * (1 - dx) + image[top, right] * dx
    lower = image[bottom, left] * (1 - dx) + image[bottom, right] * dx
    return (upper * (1 - dy) + lower * dy).astype(np.float32)


def _grid(shape) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return rows.astype(np.float32), cols.astype(np.float32)


def _displace(image, window, d_rows, d_cols):
    """Backward warp: each pixel takes the colour found at (row, col) + window * displacement."""
    rows, cols = _grid(window.shape)
    return _bilinear(image, rows + window * d_rows, cols + window * d_cols)


def swirl(image, window, centre, radius, strength, rng):
    """A whirl around the disc's centre (warped, twisted detail): rotation by `strength` radians at the centre."""
    rows, cols = _grid(window.shape)
    angle = strength * window
    y, x = rows - centre[0], cols - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    return _bilinear(image, centre[0] + cos * y - sin * x, centre[1] + sin * y + cos * x)


def bulge(image, window, centre, radius, strength, rng):
    """Swollen (`strength` > 0) or pinched (< 0) detail: radial magnification around the centre."""
    rows, cols = _grid(window.shape)
    scale = 1 - strength * window
    return _bilinear(image, centre[0] + (rows - centre[0]) * scale, centre[1] + (cols - centre[1]) * scale)


def melt(image, window, centre, radius, strength, rng):
    """Melted detail: a smooth random displacement field plus a downward drip, `strength` x radius pixels."""
    height, width = window.shape
    grid = int(rng.integers(3, 7))
    fields = []
    for _ in range(2):
        coarse = rng.standard_normal((grid, grid)).astype(np.float32)
        fields.append(np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)))
    drip = -abs(float(rng.normal(0.8, 0.3)))  # sample from above: content flows down
    amplitude = strength * radius
    return _displace(image, window, amplitude * (fields[0] + drip), amplitude * fields[1])


def ripple(image, window, centre, radius, strength, rng):
    """Wobbly lines: a sinusoidal displacement across a random direction, `strength` x radius pixels."""
    rows, cols = _grid(window.shape)
    angle = rng.uniform(0, np.pi)
    wavelength = radius * rng.uniform(0.3, 0.8)
    phase = rng.uniform(0, 2 * np.pi)
    along = (rows * np.cos(angle) + cols * np.sin(angle)) * (2 * np.pi / wavelength) + phase
    amplitude = strength * radius * np.sin(along)
    return _displace(image, window, -np.sin(angle) * amplitude, np.cos(angle) * amplitude)


def duplicate(image, window, centre, radius, strength, rng):
    """A duplicated or displaced part: the disc shows the content found `strength` x radius away, feathered in."""
    angle = rng.uniform(0, 2 * np.pi)
    distance = strength * radius
    d_rows, d_cols = distance * np.sin(angle), distance * np.cos(angle)
    rows, cols = _grid(window.shape)
    copied = _bilinear(image, rows + d_rows, cols + d_cols)
    alpha = np.clip(window * 3, 0, 1)[..., None]  # mostly opaque, with a soft rim
    return alpha * copied + (1 - alpha) * image


def smear(image, window, centre, radius, strength, rng):
    """Smeared texture: colours averaged along a random direction over `strength` x radius pixels."""
    angle = rng.uniform(0, np.pi)
    length = strength * radius
    rows, cols = _grid(window.shape)
    taps = 9
    smeared = np.zeros_like(image)
    for offset in np.linspace(-0.5, 0.5, taps):
        smeared += _bilinear(image, rows + window * offset * length * np.sin(angle),
                             cols + window * offset * length * np.cos(angle))
    return smeared / taps


def tear(image, window, centre, radius, strength, rng):
    """A broken edge: the disc is cut along a random line through it and one side slides along the cut."""
    rows, cols = _grid(window.shape)
    angle = rng.uniform(0, np.pi)
    normal = (rows - centre[0]) * np.cos(angle) - (cols - centre[1]) * np.sin(angle)
    side = (normal > 0).astype(np.float32)
    shift = strength * radius * side
    return _displace(image, window, shift * np.sin(angle), shift * np.cos(angle))


# kind -> (function, strength range); a negative lower bound means either sign.
DEFECTS = {
    "swirl": (swirl, (1.5, 4.0)),
    "bulge": (bulge, (-0.6, 0.6)),
    "melt": (melt, (0.25, 0.6)),
    "ripple": (ripple, (0.08, 0.2)),
    "duplicate": (duplicate, (0.8, 1.6)),
    "smear": (smear, (0.6, 1.4)),
    "tear": (tear, (0.2, 0.5)),
}


def _window(shape, centre, radius) -> np.ndarray:
    """(H, W) smooth bump: 1 at the centre, 0 at and beyond `radius` ((1 - (r/R)^2)^2, no seam at the rim)."""
    rows, cols = _grid(shape)
    distance2 = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / radius**2
    return np.clip(1 - distance2, 0, None) ** 2


def apply_edit(image: np.ndarray, edit: Edit, rng: np.random.Generator) -> np.ndarray:
    """`image` (H, W, 3 float32) with `edit` applied; pixels outside the edit's disc are returned unchanged."""
    function, _ = DEFECTS[edit.kind]
    window = _window(image.shape[:2], edit.centre, edit.radius)
    edited = function(image, window, edit.centre, edit.radius, edit.strength, rng)
    inside = (window > 0)[..., None]
    return np.where(inside, edited, image)


def random_edit(rng: np.random.Generator, detail: np.ndarray, kinds=tuple(DEFECTS)) -> Edit:
    """An edit of a random kind, size and strength, placed on detail: of `CANDIDATES` random discs, the one with the
    most edge energy in `detail` ((side, side) gradient magnitude). Defects of generators sit on objects (faces,
    hands, furniture), and a warp of a flat sky would change nothing a model could see."""
    side = detail.shape[0]
    kind = kinds[int(rng.integers(len(kinds)))]
    low, high = DEFECTS[kind][1]
    if low < 0:
        strength = rng.uniform(abs(low) / 3, high) * rng.choice([-1, 1])  # either sign, never near zero
    else:
        strength = rng.uniform(low, high)
    radius = float(rng.uniform(*RADIUS) * side)
    centres = rng.uniform(*CENTRE, size=(CANDIDATES, 2)) * side
    energy = [float((detail * (_window(detail.shape, centre, radius) > 0)).sum()) for centre in centres]
    centre = tuple(float(v) for v in centres[int(np.argmax(energy))])
    return Edit(kind, centre, radius, float(strength))


def _detail(pixels: np.ndarray) -> np.ndarray:
    """(H, W) gradient magnitude of the grey levels of (H, W, 3) `pixels`."""
    grey = pixels.mean(axis=2)
    d_rows, d_cols = np.gradient(grey)
    return np.hypot(d_rows, d_cols)


# ---- pairs ----------------------------------------------------------------------------------------------------------


def make_pair(photo: Image.Image, size: int, rng: np.random.Generator, kinds=tuple(DEFECTS)):
    """(chosen, rejected, edits): a random square crop of `photo` at `size` px and a copy with 1-2 local defects."""
    photo = photo.convert("RGB")
    short = min(photo.size)
    crop = int(round(rng.uniform(*CROP_SCALE) * short))
    left = int(rng.integers(0, photo.width - crop + 1))
    top = int(rng.integers(0, photo.height - crop + 1))
    work = size * SUPERSAMPLE
    region = photo.crop((left, top, left + crop, top + crop)).resize((work, work), Image.LANCZOS)
    if rng.random() < 0.5:
        region = region.transpose(Image.FLIP_LEFT_RIGHT)
    pixels = np.asarray(region, dtype=np.float32)
    detail = _detail(pixels)
    edits = [random_edit(rng, detail, kinds) for _ in range(int(rng.integers(1, MAX_EDITS + 1)))]
    edited = pixels
    for edit in edits:
        edited = apply_edit(edited, edit, rng)
    chosen = region.resize((size, size), Image.LANCZOS)
    rejected = Image.fromarray(np.clip(np.rint(edited), 0, 255).astype(np.uint8)).resize((size, size), Image.LANCZOS)
    scaled = [Edit(e.kind, (e.centre[0] / SUPERSAMPLE, e.centre[1] / SUPERSAMPLE), e.radius / SUPERSAMPLE, e.strength)
              for e in edits]
    return chosen, rejected, scaled


def make_artifact_pairs(
    sources, output_dir, *, num_pairs: int, size: int = 224, seed: int = 0, kinds=tuple(DEFECTS)
) -> Path:
    """Write `num_pairs` artifact pairs made from `sources` to `output_dir`; return the path of its pairs JSON.

    Args:
        sources: `PhotoSource`s (or `(path, prompt)` tuples): the only images the pairs are made from. Sources are
            used in turn (pair i comes from source i mod len(sources)), each pair with a fresh crop and fresh edits.
        output_dir: a new or empty folder, or one this function wrote before (replaced atomically); it gets
            `pairs.json` and `images/NNNNN_{chosen,rejected}.png` at `size` x `size` px.
        num_pairs: how many pairs.
        size: side of the square images in pixels (e.g. the model's input size, so that they need no resizing).
        seed: the random seed; the same seed, sources and settings give byte-identical files.
        kinds: the defect kinds to draw from (keys of `DEFECTS`).

    Each row: `prompt` (the source's caption), `chosen` (the crop), `rejected` (the edited crop), `source` (the
    photo's path) and `edits` (kind, centre (row, col) and radius in pixels, strength).
    """
    sources = [PhotoSource(*source) if not isinstance(source, PhotoSource) else source for source in sources]
    if not sources:
        raise ValueError("make_artifact_pairs: `sources` is empty: give at least one real photo.")
    unknown = sorted(set(kinds) - set(DEFECTS))
    if unknown or not kinds:
        raise ValueError(f"make_artifact_pairs: unknown defect kinds {unknown or 'none given'}; use {list(DEFECTS)}.")
    if num_pairs < 1 or size < 8:
        raise ValueError(f"make_artifact_pairs: need num_pairs >= 1 and size >= 8, got {num_pairs} and {size}.")
    output_dir = Path(output_dir)
    empty_folder = output_dir.is_dir() and not any(output_dir.iterdir())
    if output_dir.exists() and not empty_folder and not (output_dir / PAIRS_FILE).is_file():
        raise FileExistsError(f"{output_dir} exists and holds no {PAIRS_FILE}: refusing to replace it.")
    staging = staging_dir(output_dir)
    try:
        (staging / "images").mkdir()
        rows = [None] * num_pairs
        for first, source in enumerate(sources[:num_pairs]):  # one photo in memory at a time
            photo = _read_photo(source.path)
            for index in range(first, num_pairs, len(sources)):
                rng = np.random.default_rng([seed, index])  # each pair on its own stream: pairs do not depend on order
                chosen, rejected, edits = make_pair(photo, size, rng, tuple(kinds))
                names = [f"images/{index:05d}_{role}.png" for role in ("chosen", "rejected")]
                for image, name in zip((chosen, rejected), names):
                    image.save(staging / name)
                rows[index] = {"prompt": source.prompt, "chosen": names[0], "rejected": names[1],
                               "source": source.path, "edits": [_edit_record(edit) for edit in edits]}
        write_json(staging / PAIRS_FILE, rows)
        publish(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir / PAIRS_FILE


def _read_photo(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise ValueError(f"make_artifact_pairs: cannot read photo {path}: {error}") from None


def _edit_record(edit: Edit) -> dict:
    return {"kind": edit.kind, "centre": [round(v, 2) for v in edit.centre], "radius": round(edit.radius, 2),
            "strength": round(edit.strength, 3)}


# ---- sources --------------------------------------------------------------------------------------------------------

# Real photographs shipped inside packages: (package, path inside it, caption). Drawings, scans, textures, space and
# microscope images and motion-blurred test shots are left out: they are not what a text-to-image model is asked for.
LIBRARY_PHOTOS = (
    ("skimage", "data/astronaut.png", "a portrait of an astronaut in a spacesuit in front of a flag"),
    ("skimage", "data/camera.png", "a black and white photo of a man with a camera on a tripod"),
    ("skimage", "data/chelsea.png", "a close-up photo of a tabby cat"),
    ("skimage", "data/coffee.png", "a cup of coffee on a saucer with a spoon"),
    ("skimage", "data/rocket.jpg", "a rocket on the launch pad"),
    ("skimage", "data/motorcycle_left.png", "a motorcycle parked in a workshop"),
    ("skimage", "data/coins.png", "old coins on a table, black and white photo"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "a portrait of a woman in a navy uniform"),
    ("sklearn", "datasets/images/china.jpg", "a photo of a temple with a red roof among trees"),
    ("sklearn", "datasets/images/flower.jpg", "a close-up photo of a pink flower"),
)


def library_photos() -> list[PhotoSource]:
    """The real photos of `LIBRARY_PHOTOS` that the installed packages ship (scikit-image is a default-backbone
    dependency; matplotlib and scikit-learn are used when present), found without importing the packages."""
    found = []
    for package, relative, caption in LIBRARY_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if path.is_file():
            found.append(PhotoSource(str(path), caption))
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line's arguments (``python -m llava_reward.trainers.artifacts`` and ``llava-reward artifacts``)."""
    parser.add_argument("output_dir", metavar="OUT", help="a new folder (or one written by this command before)")
    parser.add_argument("--photos", nargs="+", metavar="FILE",
                        help="photo files (default: the photos installed packages ship)")
    parser.add_argument("--prompt", default="a photo", help="the prompt of every pair made from --photos")
    parser.add_argument("--pairs", type=int, default=200, help="how many pairs (default 200)")
    parser.add_argument("--size", type=int, default=224, help="side of the square images in pixels (default 224)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", choices=list(DEFECTS), default=list(DEFECTS), help="defect kinds")


def write_from_arguments(args: argparse.Namespace) -> str:
    """Make the pairs `args` (from `add_arguments`) ask for; return the line that says what was written. Bad input
    raises `ValueError` or `FileExistsError` with a one-line message."""
    if args.photos:
        sources = [PhotoSource(str(Path(path).resolve()), args.prompt) for path in args.photos]
    else:
        sources = library_photos()
    if not sources:
        raise ValueError("no --photos given and no installed package ships sample photos (pip install scikit-image)")
    path = make_artifact_pairs(sources, args.output_dir, num_pairs=args.pairs, size=args.size, seed=args.seed,
                               kinds=args.kinds)
    return f"wrote {args.pairs} pairs from {len(sources)} photos to {path}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    try:
        print(write_from_arguments(parser.parse_args(argv)))
    except (ValueError, FileExistsError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
