"""Parity of the differentiable scoring path (`llava_reward.pixels`) with the PIL path, per family.

On real images (scikit-image's sample photos and MJ-Bench's 1024 px photos), for the tiny model of every family and
for the default backbone (`--models`), each image scored alone at its own size through
- the PIL path: `LlavaRewardScorer.score` (PIL resampling of 8-bit images, numpy rescale and normalisation);
- `score_pixels(pixels, quantize=True)`: the PIL path's 8-bit roundings, with straight-through gradients;
- `score_pixels(pixels)`: the continuous path (no rounding), the one a generator's gradient goes through.
Reported per model: the largest |difference| of `pixel_values` (normalised units, and an upper bound in 8-bit levels
of 255) and of the rewards, beside the spread of the rewards over the images (their standard deviation), and on
MJ-Bench pairs how often the continuous path flips the preference the PIL path gives.

A second table compares resampling methods with PIL's (8-bit, what the image processors use) on the photos: this
module's resize (continuous), and `torch.nn.functional.interpolate(antialias=True)`, bicubic and bilinear.

    python benchmarks/pixels_parity.py                    # tiny models of every family, and the default backbone
    python benchmarks/pixels_parity.py --models tiny      # tiny models only
    python benchmarks/pixels_parity.py --quick            # smoke run

Writes `benchmarks/results/pixels_parity.json` (and `pixels_resize.json`) and prints markdown tables.
"""

import json

import numpy as np
import torch
import torch.nn.functional as F
from common import MJBENCH_CAPTIONS
from common import MJBENCH_DIR
from common import Report
from common import default_backbone
from common import parse_args


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # 512x512, 300x451, 400x600, 427x640


def photos() -> list[tuple[str, np.ndarray]]:
    import skimage.data

    return [(name, getattr(skimage.data, name)()) for name in PHOTOS]


def mjbench_pairs(count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(caption, preferred, distorted) of the first `count` MJ-Bench `human` pairs, as HWC uint8 arrays."""
    from PIL import Image

    rows = json.loads(MJBENCH_CAPTIONS.read_text())[:count]
    read = lambda name: np.asarray(Image.open(MJBENCH_DIR / "examples_human" / name).convert("RGB"))  # noqa: E731
    return [(row["caption"], read(row["image_0"]), read(row["image_1"])) for row in rows]


def as_pixels(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W) on the 8-bit grid


def family_scorers(args, report: Report) -> list[tuple[str, object]]:
    from llava_reward import LlavaRewardModel
    from llava_reward import LlavaRewardProcessor
    from llava_reward import LlavaRewardScorer
    from llava_reward.testing import TINY_FAMILIES
    from llava_reward.testing import tiny_vlm

    scorers = []
    if "tiny" in args.models.split(","):
        for family in TINY_FAMILIES:
            vlm, vlm_processor = tiny_vlm(family)
            torch.manual_seed(0)
            model = LlavaRewardModel.from_vlm(vlm)
            scorers.append((f"tiny {family}", LlavaRewardScorer(model, LlavaRewardProcessor.from_vlm_processor(vlm_processor))))
    if "default" in args.models.split(","):
        backbone = default_backbone(report, image_size=args.backbone_px)
        report.models[backbone.name] = backbone.summary()
        scorers.append((f"{backbone.name} ({args.backbone_px} px)", LlavaRewardScorer(backbone.reward_model(), backbone.reward_processor())))
    return scorers


def measure(name: str, scorer, images: list[tuple[str, np.ndarray]], pairs) -> dict:
    from llava_reward.pixels import pixel_inputs

    image_processor = scorer.processor.image_processor
    levels_per_unit = max(image_processor.image_std) / image_processor.rescale_factor  # normalised -> 8-bit levels
    prompts = [caption for caption, _ in images]
    pixel_gap = {True: 0.0, False: 0.0}
    rewards = {"pil": [], True: [], False: []}
    for prompt, array in images:
        pixels = as_pixels(array)
        reference = scorer.processor([prompt], [array])
        rewards["pil"].append(scorer.score([prompt], [array]))
        for quantize in (True, False):
            inputs = pixel_inputs(scorer.processor, [prompt], pixels, quantize=quantize)
            gap = (inputs["pixel_values"] - reference["pixel_values"]).abs().max().item()
            pixel_gap[quantize] = max(pixel_gap[quantize], gap)
            with torch.no_grad():
                rewards[quantize].append(scorer.score_pixels(pixels, [prompt], quantize=quantize).cpu())
    rewards = {key: torch.cat(value) for key, value in rewards.items()}
    flips = None
    if pairs:  # images list ends with the pairs, interleaved preferred/distorted
        pil = rewards["pil"][-2 * len(pairs) :].reshape(-1, 2)
        continuous = rewards[False][-2 * len(pairs) :].reshape(-1, 2)
        flips = int(((pil[:, 0] > pil[:, 1]) != (continuous[:, 0] > continuous[:, 1])).sum())
    spread = rewards["pil"].std().item()
    return {
        "model": name,
        "image_processor": type(image_processor).__name__,
        "images": len(prompts),
        "pixel_max_diff_quantized": pixel_gap[True],
        "pixel_max_diff_continuous": pixel_gap[False],
        "pixel_max_diff_continuous_levels_at_most": pixel_gap[False] * levels_per_unit,
        "reward_max_diff_quantized": (rewards[True] - rewards["pil"]).abs().max().item(),
        "reward_max_diff_continuous": (rewards[False] - rewards["pil"]).abs().max().item(),
        "reward_std_over_images": spread,
        "reward_max_diff_continuous_over_std": (rewards[False] - rewards["pil"]).abs().max().item() / spread,
        "pairs": len(pairs),
        "pair_preferences_flipped": flips,
    }


def resize_comparison(targets: tuple[int, ...]) -> list[dict]:
    """PIL's 8-bit bicubic/bilinear resize vs this module's continuous resize and F.interpolate(antialias=True)."""
    from PIL import Image

    from llava_reward.pixels import pil_resize

    rows = []
    for name, array in photos():
        height, width = array.shape[:2]
        values = torch.from_numpy(array.copy()).permute(2, 0, 1).double()
        for target in targets:  # shortest edge -> target, both down- and upscaling
            scale = target / min(height, width)
            size = (round(height * scale), round(width * scale))
            for resample, mode in ((Image.Resampling.BICUBIC, "bicubic"), (Image.Resampling.BILINEAR, "bilinear")):
                expected = np.asarray(Image.fromarray(array).resize(size[::-1], resample)).astype(np.float64)
                ours = pil_resize(values, size, resample).permute(1, 2, 0).numpy()
                torch_aa = F.interpolate(values[None], size=size, mode=mode, antialias=True, align_corners=False)
                torch_aa = torch_aa[0].clamp(0, 255).permute(1, 2, 0).numpy()
                rows.append(
                    {
                        "photo": f"{name} {height}x{width}",
                        "to": f"{size[0]}x{size[1]}",
                        "filter": mode,
                        "ours_max_levels": float(np.abs(ours - expected).max()),
                        "ours_mean_levels": float(np.abs(ours - expected).mean()),
                        "interpolate_max_levels": float(np.abs(torch_aa - expected).max()),
                        "interpolate_mean_levels": float(np.abs(torch_aa - expected).mean()),
                    }
                )
    return rows


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        dict(pairs=2, resize_targets=(112,)),
        pairs=8,
        backbone_px=112,
        resize_targets=(112, 224, 336, 768),
    )
    report = Report("pixels_parity", __doc__.splitlines()[0], args)
    pairs = mjbench_pairs(args.pairs) if MJBENCH_CAPTIONS.is_file() else []
    if not pairs:
        report.note(f"MJ-Bench data not found at {MJBENCH_DIR}: photos only")
    images = [("a photo", array) for _, array in photos()]
    images += [(caption, array) for caption, *arrays in pairs for array in arrays]
    torch.set_grad_enabled(False)
    for name, scorer in family_scorers(args, report):
        row = report.add(**measure(name, scorer, images, pairs))
        print(json.dumps(row), flush=True)
    report.write(
        {
            "model": lambda row: row["model"],
            "image processor": lambda row: row["image_processor"],
            "images": lambda row: row["images"],
            "pixel max diff, quantize": lambda row: row["pixel_max_diff_quantized"],
            "pixel max diff, continuous (<= 8-bit levels)": lambda row: (
                f"{row['pixel_max_diff_continuous']:.3g} (<= {row['pixel_max_diff_continuous_levels_at_most']:.2f})"
            ),
            "reward max diff, quantize": lambda row: row["reward_max_diff_quantized"],
            "reward max diff, continuous": lambda row: row["reward_max_diff_continuous"],
            "reward std over images": lambda row: row["reward_std_over_images"],
            "pairs flipped": lambda row: f"{row['pair_preferences_flipped']}/{row['pairs']}",
        }
    )
    resize = Report("pixels_resize", "PIL 8-bit resize vs continuous resizes (levels of 255)", args)
    resize.rows = resize_comparison(args.resize_targets)
    resize.write(
        {
            "photo": lambda row: row["photo"],
            "to": lambda row: row["to"],
            "filter": lambda row: row["filter"],
            "pixels.pil_resize max / mean": lambda row: f"{row['ours_max_levels']:.2f} / {row['ours_mean_levels']:.3f}",
            "F.interpolate(antialias) max / mean": lambda row: (
                f"{row['interpolate_max_levels']:.2f} / {row['interpolate_mean_levels']:.3f}"
            ),
        }
    )


if __name__ == "__main__":
    main()
