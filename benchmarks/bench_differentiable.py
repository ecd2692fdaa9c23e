"""Differentiable scoring: the cost of rewards with gradients to the pixels vs the normal scoring forward.

Alternatives, per model and batch size, on the same weights and the same decoded images (MJ-Bench photos given as
a float (B, 3, H, W) tensor in [0, 1], `--input-px` square, as a generator's decoder outputs them):
- `score`: `LlavaRewardScorer.score(prompts, pixels)`, the normal path (tensor -> 8-bit PIL images -> PIL image
  processor -> forward under `inference_mode`): what a non-differentiable reward costs;
- `forward`: the model's forward alone on inputs processed beforehand, under `inference_mode`;
- `pixels`: `score_pixels(pixels, prompts)` under `no_grad`: the torch preprocessing plus the forward;
- `pixels+backward`: `score_pixels` with `pixels.requires_grad`, then `backward()` to the pixels: what a ReFL /
  DRaFT / AlignProp step pays for the reward;
- `pixels+backward ckpt`: the same with activation checkpointing on every layer (less memory, one more forward);
- `preprocess+backward`: `preprocess_pixels` and its backward alone (the share of the torch preprocessing).

    python benchmarks/bench_differentiable.py            # tiny model and the default backbone (112 px)
    python benchmarks/bench_differentiable.py --quick    # smoke run
"""

import numpy as np
import torch
from common import Report
from common import default_backbone
from common import measure
from common import megabytes
from common import parse_args
from common import ratio
from common import scoring_inputs
from common import seconds
from common import shown
from common import tiny_backbone
from transformers.modeling_layers import GradientCheckpointingLayer

from llava_reward import LlavaRewardScorer  # after `common`, which puts the checkout on the path
from llava_reward.pixels import preprocess_pixels


def set_checkpointing(model: torch.nn.Module, enabled: bool):
    """Switch the layers' activation checkpointing (set up once by `activation_checkpointing_enable`)."""
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.gradient_checkpointing = enabled


def main():
    args = parse_args(__doc__.splitlines()[0], dict(batch_sizes=(1, 2)), batch_sizes=(1, 4), backbone_px=112)
    report = Report("differentiable", __doc__.splitlines()[0], args)
    prompts, images = scoring_inputs(max(args.batch_sizes), args.input_px)
    all_pixels = torch.stack([torch.from_numpy(np.array(image)) for image in images])  # (N, H, W, 3) uint8
    all_pixels = all_pixels.permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W) in [0, 1]
    builders = {"tiny": tiny_backbone, "default": lambda report: default_backbone(report, image_size=args.backbone_px)}
    for name in args.models.split(","):
        backbone = builders[name](report)
        report.models[backbone.name] = backbone.summary()
        model = backbone.reward_model()
        scorer = LlavaRewardScorer(model, backbone.reward_processor())
        model.activation_checkpointing_enable()
        set_checkpointing(model, False)
        for batch_size in args.batch_sizes:
            batch_prompts, pixels = prompts[:batch_size], all_pixels[:batch_size]
            inputs = scorer.processor(batch_prompts, list(pixels))

            @torch.inference_mode()
            def run_forward():
                model(**inputs)

            def run_pixels():
                with torch.no_grad():
                    scorer.score_pixels(pixels, batch_prompts)

            def run_pixels_backward(checkpointing: bool = False):
                set_checkpointing(model, checkpointing)
                leaf = pixels.clone().requires_grad_()
                scorer.score_pixels(leaf, batch_prompts).sum().backward()
                set_checkpointing(model, False)

            def run_preprocess_backward():
                leaf = pixels.clone().requires_grad_()
                preprocess_pixels(scorer.processor, leaf).sum().backward()

            results = measure(
                {
                    "score": lambda: scorer.score(batch_prompts, pixels, batch_size=batch_size),
                    "forward": run_forward,
                    "pixels": run_pixels,
                    "pixels+backward": run_pixels_backward,
                    "pixels+backward ckpt": lambda: run_pixels_backward(checkpointing=True),
                    "preprocess+backward": run_preprocess_backward,
                },
                args,
            )
            row = report.add(
                model=backbone.name,
                image_px=backbone.image_size,
                input_px=args.input_px,
                batch=batch_size,
                tokens=inputs["input_ids"].shape[1],
                results=results,
                backward_over_score=ratio(results["pixels+backward"], results["score"]),
                backward_over_forward=ratio(results["pixels+backward"], results["forward"]),
                pixels_over_score=ratio(results["pixels"], results["score"]),
                checkpointed_over_backward=ratio(results["pixels+backward ckpt"], results["pixels+backward"]),
            )
            print(row["model"], batch_size, {key: round(value["median_s"], 4) for key, value in results.items()})
    report.write(
        {
            **shown(model="model", image_px="image px", input_px="input px", batch="batch", tokens="tokens"),
            **{
                f"{name} s": (lambda row, name=name: seconds(row["results"][name]))
                for name in ("score", "forward", "pixels", "pixels+backward", "pixels+backward ckpt")
            },
            "preprocess+backward s": lambda row: seconds(row["results"]["preprocess+backward"]),
            "pixels/score": lambda row: row["pixels_over_score"],
            "(pixels+backward)/score": lambda row: row["backward_over_score"],
            "(pixels+backward)/forward": lambda row: row["backward_over_forward"],
            "ckpt/no ckpt": lambda row: row["checkpointed_over_backward"],
            "peak MB score / pixels+backward / ckpt": lambda row: " / ".join(
                megabytes(row["results"][name]) for name in ("score", "pixels+backward", "pixels+backward ckpt")
            ),
        }
    )


if __name__ == "__main__":
    main()
