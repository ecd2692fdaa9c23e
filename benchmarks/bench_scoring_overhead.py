"""Item 1 - scoring overhead: `LlavaRewardScorer.score` vs the bare backbone forward up to the same layer.

Alternatives, per model, image size and batch size, on the same weights and the same images:
- `backbone`: the base VLM's forward (vision tower, projector, every decoder layer the reward reads) on inputs
  processed beforehand: the least any reward read from this backbone can cost;
- `model`: `LlavaRewardModel(**inputs)` on the same processed inputs (adds the state capture, pooling, SkipCA and
  the value head);
- `head`: SkipCA and the value head alone, on states of the forward's shapes (what `model` adds, measured apart:
  a difference of two noisy forwards cannot resolve it);
- `scorer`: `LlavaRewardScorer.score(prompts, images, batch_size=B)`: what a user pays, from decoded 1024 px
  images to rewards (adds input checks, image preprocessing, tokenization);
- `preprocess`: the processor alone, on the same images (the part of `scorer` that is not a forward).
Target: scorer / backbone <= 1.05. Batch sizes 1/4/16 at the first image size, `--large-image-batch-sizes` (1/4)
at the larger ones.

    python benchmarks/bench_scoring_overhead.py            # tiny model and the default backbone
    python benchmarks/bench_scoring_overhead.py --quick    # smoke run
"""

import torch
from common import Report
from common import load_backbones
from common import measure
from common import megabytes
from common import parse_args
from common import ratio
from common import scoring_inputs
from common import seconds
from common import shown


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        dict(batch_sizes=(1, 2)),
        batch_sizes=(1, 4, 16),
        image_sizes=(112, 224),
        large_image_batch_sizes=(1, 4),
    )
    report = Report("scoring_overhead", __doc__.splitlines()[0], args)
    prompts, images = scoring_inputs(max(args.batch_sizes + args.large_image_batch_sizes), args.input_px)
    for backbone in load_backbones(args, report):
        from llava_reward import LlavaRewardScorer

        model = backbone.reward_model()
        processor = backbone.reward_processor()
        scorer = LlavaRewardScorer(model, processor)
        image_sizes = [backbone.image_size] if backbone.name == "tiny" else args.image_sizes
        for image_size in image_sizes:
            backbone.set_image_size(image_size)
            # Above the smallest image size, only the smaller batches: 224 px costs ~3x per image, and its batch-16
            # row (minutes) would repeat what the 112 px batch-16 row shows. `make bench` must stay under 15 minutes.
            large = image_size > min(image_sizes)
            for batch_size in args.large_image_batch_sizes if large else args.batch_sizes:
                batch_prompts, batch_images = prompts[:batch_size], images[:batch_size]
                inputs = processor(batch_prompts, batch_images)

                @torch.inference_mode()
                def run_backbone():
                    model.vlm(**inputs, use_cache=False)

                @torch.inference_mode()
                def run_model():
                    model(**inputs)

                batch, hidden_size = len(batch_prompts), model.value_head.in_features
                reward_states = torch.randn(batch, 1, hidden_size)
                visual_states = torch.randn(batch, backbone.visual_tokens, hidden_size)
                visual_mask = torch.ones(batch, backbone.visual_tokens, dtype=torch.bool)

                @torch.inference_mode()
                def run_head():
                    model.value_head(model.skip_cross_attention(reward_states, visual_states, visual_mask)[:, 0])

                results = measure(
                    {
                        "backbone": run_backbone,
                        "model": run_model,
                        "head": run_head,
                        "scorer": lambda: scorer.score(batch_prompts, batch_images, batch_size=batch_size),
                        "preprocess": lambda: processor(batch_prompts, batch_images),
                    },
                    args,
                )
                row = report.add(
                    model=backbone.name,
                    image_px=image_size,
                    batch=batch_size,
                    tokens=inputs["input_ids"].shape[1],
                    results=results,
                    model_over_backbone=ratio(results["model"], results["backbone"]),
                    head_over_backbone=1 + ratio(results["head"], results["backbone"]),
                    scorer_over_backbone=ratio(results["scorer"], results["backbone"]),
                )
                print(row["model"], image_size, batch_size, {k: round(v["median_s"], 4) for k, v in results.items()})
    report.write(
        {
            **shown(model="model", image_px="image px", batch="batch", tokens="tokens"),
            "backbone s": lambda row: seconds(row["results"]["backbone"]),
            "model s": lambda row: seconds(row["results"]["model"]),
            "head s": lambda row: seconds(row["results"]["head"]),
            "scorer s": lambda row: seconds(row["results"]["scorer"]),
            "preprocess s": lambda row: seconds(row["results"]["preprocess"]),
            "model/backbone": lambda row: row["model_over_backbone"],
            "(backbone+head)/backbone": lambda row: row["head_over_backbone"],
            "scorer/backbone (target <= 1.05)": lambda row: row["scorer_over_backbone"],
            "peak MB backbone / model / scorer": lambda row: " / ".join(
                megabytes(row["results"][name]) for name in ("backbone", "model", "scorer")
            ),
        }
    )


if __name__ == "__main__":
    main()
