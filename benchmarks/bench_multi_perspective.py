"""Item 5 - multi-perspective: K of 4 perspectives on one base (`load_perspectives`) vs K separate scorers.

Up to four perspective bundles (alignment, fidelity, safety, overall) are written on the same base checkpoint, as
`llava-reward train` writes them: a LoRA adapter (`prepare_for_training`, rank `--lora-r`, by default the default
model's recipe's 16, with random non-zero up-projections standing in for training), projector, SkipCA and value
head. An unmerged adapter adds two small matrix products per adapted linear (their dispatch, and r (d_in + d_out)
multiply-adds per token, which grow with the rank; `--lora-r 128` is the paper's). `separate` loads K bundles with
`LlavaRewardScorer.from_pretrained` (K copies of the base, LoRA merged into each) and scores the images with each
in turn; `one base` loads them with `llava_reward.multi_perspective.load_perspectives` (one base, LoRA adapters kept apart
and switched per perspective, the vision encoder run once) and scores all perspectives in one call. Both score the
same images; the report gives the largest reward difference between the two, the load time (one run) and the
memory each keeps loaded, next to the scoring time and its peak memory.

    python benchmarks/bench_multi_perspective.py            # tiny model and the default backbone
    python benchmarks/bench_multi_perspective.py --quick    # smoke run
"""

import tempfile
import time
from pathlib import Path

import torch
from common import Report
from common import default_recipe
from common import load_backbones
from common import measure
from common import megabytes
from common import memory_use
from common import parse_args
from common import ratio
from common import scoring_inputs
from common import seconds
from common import shown


PERSPECTIVES = ("alignment", "fidelity", "safety", "overall")


def write_bundles(base_dir: Path, processor, folder: Path, perspectives: tuple[str, ...], lora_r: int):
    """One LoRA adapter bundle (rank `lora_r`) per perspective on the checkpoint at `base_dir`, in `folder/<name>`."""
    from llava_reward import LlavaRewardModel
    from llava_reward.bundle import save_reward_bundle
    from llava_reward.trainers.trainer import LlavaRewardTrainingConfig
    from llava_reward.trainers.trainer import prepare_for_training

    with tempfile.TemporaryDirectory() as output_dir:
        config = LlavaRewardTrainingConfig(
            output_dir=output_dir, tuning="lora", lora_r=lora_r, lora_alpha=2 * lora_r, use_cpu=True, report_to=[]
        )
    for seed, name in enumerate(perspectives):
        torch.manual_seed(seed)
        model = prepare_for_training(LlavaRewardModel.from_vlm(str(base_dir), perspective=name), config)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if "lora_B" in parameter_name:  # zero at initialisation: a trained adapter is not
                    parameter.normal_(std=0.02)
        save_reward_bundle(model, folder / name, processor)


def timed_load(function):
    """(result, seconds, MiB kept loaded) of one call."""
    start = time.perf_counter()
    result, _, kept = memory_use(function)
    return result, time.perf_counter() - start, kept


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        dict(images=2, perspective_counts=(1, 2)),
        images=4,
        image_size=112,
        perspective_counts=(1, 2, 4),
        lora_r=default_recipe()["training"]["lora_r"],
    )
    report = Report("multi_perspective", __doc__.splitlines()[0], args)
    try:
        from llava_reward.multi_perspective import load_perspectives
    except ImportError as error:
        report.note(f"llava_reward.multi_perspective is unavailable ({error}): nothing to compare.")
        report.write({})
        return
    from llava_reward import LlavaRewardScorer

    captions, images = scoring_inputs(args.images, args.input_px)
    perspectives = PERSPECTIVES[: max(args.perspective_counts)]
    for backbone in load_backbones(args, report):
        if backbone.name != "tiny":
            backbone.set_image_size(args.image_size)
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            base_dir = backbone.checkpoint(scratch / "base")
            write_bundles(base_dir, backbone.reward_processor(), scratch / "bundles", perspectives, args.lora_r)
            separate = [
                timed_load(lambda name=name: LlavaRewardScorer.from_pretrained(scratch / "bundles" / name))
                for name in perspectives
            ]
            shared = [
                timed_load(lambda k=k: load_perspectives(scratch / "bundles", list(perspectives[:k])))
                for k in args.perspective_counts
            ]
        alternatives = {}
        for k, (multi, _, _) in zip(args.perspective_counts, shared):
            scorers = [scorer for scorer, _, _ in separate[:k]]
            alternatives[f"separate K={k}"] = lambda s=scorers: [scorer.score(captions, images) for scorer in s]
            alternatives[f"one base K={k}"] = lambda m=multi: m.score(captions, images)
        results = measure(alternatives, args)
        for k, (_, shared_load_s, shared_kept_mb) in zip(args.perspective_counts, shared):
            separate_rewards = alternatives[f"separate K={k}"]()
            shared_rewards = alternatives[f"one base K={k}"]()
            difference = max(
                (shared_rewards[name] - rewards).abs().max().item()
                for name, rewards in zip(perspectives, separate_rewards)
            )
            for kind, load_seconds, kept_mb in (
                ("separate", sum(s for _, s, _ in separate[:k]), _sum_or_none(kept for _, _, kept in separate[:k])),
                ("one base", shared_load_s, shared_kept_mb),
            ):
                report.add(
                    model=backbone.name,
                    image_px=backbone.image_size,
                    images=args.images,
                    lora_r=args.lora_r,
                    perspectives=k,
                    kind=kind,
                    result=results[f"{kind} K={k}"],
                    over_separate=ratio(results[f"{kind} K={k}"], results[f"separate K={k}"]),
                    load_s=load_seconds,
                    loaded_mb=kept_mb,
                    max_reward_difference=difference,
                )
        print(backbone.name, {key: round(value["median_s"], 4) for key, value in results.items()}, flush=True)
    report.write(
        {
            **shown(
                model="model", image_px="image px", images="images", lora_r="LoRA r", perspectives="K", kind="scorer"
            ),
            "score s": lambda row: seconds(row["result"]),
            "x separate": lambda row: row["over_separate"],
            "scoring peak MB": lambda row: megabytes(row["result"]),
            "load s (1 run)": lambda row: row["load_s"],
            "loaded MB": lambda row: "n/a" if row["loaded_mb"] is None else f"{row['loaded_mb']:.0f}",
            "max reward diff": lambda row: f"{row['max_reward_difference']:.1e}",
        }
    )


def _sum_or_none(values):
    values = list(values)
    return None if None in values else sum(values)


if __name__ == "__main__":
    main()
