"""A tiny, separable text-to-image preference task, written as real files in the published JSON formats.

Each image is a red or a blue square on a noisy grey background (random size, place and shade). For the prompt
"a red square" the red image is preferred. With `conditional=True`, half the pairs ask for "a blue square" and
prefer the blue image, so a reward model must combine the prompt with the image (a random tiny VLM learns that
much more slowly). Used by the tests, the tiny recipe and the docs' learning curve.

    python -m llava_reward.trainers.synthetic tiny-task     # tiny-task/{base/, train_pairs.json, eval_pairs.json, ...}

Example:
    >>> import tempfile
    >>> from llava_reward.trainers.synthetic import write_colour_task
    >>> files = write_colour_task(tempfile.mkdtemp(), train_pairs=4, eval_pairs=2)
    >>> sorted(files)
    ['eval_labelled', 'eval_pairs', 'train_labelled', 'train_pairs']
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image


COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def colour_square(colour: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A `colour` square (its shade jittered) on a noisy grey background."""
    pixels = rng.integers(90, 166, (size, size, 3)).astype(np.int16)
    side = int(rng.integers(size // 3, size - 4))
    top, left = rng.integers(0, size - side + 1, 2)
    shade = np.array(COLOURS[colour]) + rng.integers(-25, 26, 3)
    pixels[top : top + side, left : left + side] = shade
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_colour_task(
    directory, *, train_pairs: int = 64, eval_pairs: int = 32, conditional: bool = False, seed: int = 0
) -> dict[str, Path]:
    """Write images and JSON files (published formats, paths relative to the JSON file) for the colour task.

    Returns the paths of `train_pairs`, `eval_pairs` (pairwise: `prompt`, `chosen_path`, `reject_path`) and
    `train_labelled`, `eval_labelled` (unpaired: `prompt`, `path`, `label`, 1 when the colour matches the prompt).
    """
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = {}
    for split, count in (("train", train_pairs), ("eval", eval_pairs)):
        pairs, labelled = [], []
        for index in range(count):
            wanted, other = ("blue", "red") if conditional and index % 2 else ("red", "blue")
            prompt = f"a {wanted} square"
            paths = {}
            for colour in (wanted, other):
                paths[colour] = f"images/{split}_{index}_{colour}.png"
                colour_square(colour, rng).save(directory / paths[colour])
            pairs.append({"prompt": prompt, "chosen_path": paths[wanted], "reject_path": paths[other]})
            labelled += [
                {"prompt": prompt, "path": paths[wanted], "label": 1},
                {"prompt": prompt, "path": paths[other], "label": 0},
            ]
        for kind, rows in (("pairs", pairs), ("labelled", labelled)):
            files[f"{split}_{kind}"] = directory / f"{split}_{kind}.json"
            files[f"{split}_{kind}"].write_text(json.dumps(rows, indent=1))
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the colour task and a tiny base VLM (for the tiny recipe).")
    parser.add_argument("directory")
    parser.add_argument("--family", default="llava", help="tiny VLM family of the base model (default: llava)")
    args = parser.parse_args(argv)
    from llava_reward.testing import save_tiny_vlm

    write_colour_task(args.directory)
    save_tiny_vlm(args.family, Path(args.directory) / "base")
    print(f"wrote {args.directory}/base (tiny {args.family} VLM) and the colour task's JSON files")


if __name__ == "__main__":
    main()
