"""Reward fine-tuning (ReFL / DRaFT-K) of the digits generator with the differentiable alignment reward.

The generator's UNet (full tuning: 1.06M parameters; small enough that LoRA would save nothing) is trained to
raise the alignment reward of its own samples: each step samples the ten prompts with the benchmark's sampler (DDIM,
eta 1, 20 steps, guidance 4) with no gradients until the last K steps, decodes in the graph and backpropagates
`-scorer.score_pixels(pixels, prompts)` (`llava_reward.steering.reward_finetune`). The fine-tuned UNet is cached
(safetensors) under `<home>/finetuned-<settings key>` with its settings and training history.

Then the benchmark's plain-sampling protocol (benchmark.py's plain row: ten prompts x `--seeds` seeds, the
independent judge, 95 % bootstrap intervals, paired gain) runs on the generator before and after; the training
noise is seeded apart from those seeds. Reward hacking shows as the reward rising while the judge's accuracy falls.

    python examples/digits/finetune.py --home /work/proto/steer3/cache            # 200 steps, K = 1
    python examples/digits/finetune.py --grad-steps 2 --steps 100 --anchor 1e-3
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchmark  # noqa: E402
import digits  # noqa: E402

from llava_reward import LlavaRewardScorer  # noqa: E402
from llava_reward.files import write_json  # noqa: E402
from llava_reward.steering import reward_finetune  # noqa: E402


REPOSITORY = HERE.parent.parent


@dataclasses.dataclass
class FinetuneSettings:
    generator: str  # the cached generator's folder name (its settings key)
    reward: str  # the reward model's folder
    steps: int = 200
    grad_steps: int = 1  # K: 1 is ReFL-like, > 1 DRaFT-K
    batch_size: int = 10  # the ten prompts, one sample each per step
    learning_rate: float = 1e-4
    anchor: float = 0.0
    max_grad_norm: float = 1.0
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    eta: float = 1.0
    seed: int = 0


def call_of(settings: FinetuneSettings) -> dict:
    return dict(num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                eta=settings.eta)


def finetuned_unet(home: Path, generator: Path, scorer, settings: FinetuneSettings, log=print) -> Path:
    """The folder of the fine-tuned UNet (cached under `home`), training it first if it is not there."""

    def build(folder: Path):
        pipe = digits.load_generator(generator)
        digits.seed_everything(settings.seed)
        prompts = [digits.prompt_for(digit) for digit in range(10)]
        start_cpu = time.process_time()

        def report(record):
            if record["step"] % 10 == 0 or record["step"] == settings.steps - 1:
                log(f"  step {record['step']}: reward {record['reward']:.3f}, grad norm {record['grad_norm']:.3f}, "
                    f"{record['seconds']:.1f} s", flush=True)

        out = reward_finetune(
            pipe, prompts, scorer, steps=settings.steps, grad_steps=settings.grad_steps,
            batch_size=settings.batch_size, learning_rate=settings.learning_rate, anchor=settings.anchor,
            max_grad_norm=settings.max_grad_norm, seed=settings.seed, log=report, **call_of(settings),
        )
        pipe.unet.save_pretrained(folder / "unet", safe_serialization=True)
        metrics = {"train_seconds": out.seconds, "train_cpu_seconds": time.process_time() - start_cpu,
                   "load_average": os.getloadavg(), "torch_threads": torch.get_num_threads(),
                   "history": out.history}
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    folder, built = digits.cached(home / "finetuned", settings, build)
    if not built:
        log(f"fine-tuned UNet: cached in {folder}")
    return folder


def evaluate(pipe, scorer, judge, seeds: int, call: dict) -> list[dict]:
    """benchmark.py's plain row: the ten prompts, seeds 0 .. seeds - 1, judged (one cell per prompt and seed)."""
    prompts = [digits.prompt_for(digit) for digit in range(10)]
    cells = []
    for seed in range(seeds):
        result = benchmark.run_plain(pipe, prompts, scorer, seed, call)
        result["correct"] = (judge.classify(result["images"]) == torch.arange(10)).float().numpy()
        result["rewards"] = result["rewards"].double().numpy()
        cells.append(result)
    return cells


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="cache folder (default: $LLAVA_REWARD_HOME/digits)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=10, help="evaluation seeds (benchmark.py's protocol)")
    parser.add_argument("--reward-model", help="a trained reward folder (default: the cached alignment reward)")
    defaults = FinetuneSettings("", "")
    for field in ("steps", "grad_steps", "batch_size", "learning_rate", "anchor", "seed"):
        parser.add_argument("--" + field.replace("_", "-"), type=type(getattr(defaults, field)),
                            default=getattr(defaults, field))
    parser.add_argument("--output", default=str(REPOSITORY / "benchmarks" / "results" / "digits_finetune.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    home = digits.digits_home(args.home)
    start = time.perf_counter()

    judge, judge_metrics = digits.trained_judge(home)
    generator = digits.trained_generator(home)
    reward_model = Path(args.reward_model) if args.reward_model else digits.trained_reward(home) / "model"
    scorer = LlavaRewardScorer.from_pretrained(reward_model)
    settings = FinetuneSettings(generator.name, str(reward_model), args.steps, args.grad_steps, args.batch_size,
                                args.learning_rate, args.anchor, seed=args.seed)
    call = call_of(settings)

    pipe = digits.load_generator(generator)
    before = evaluate(pipe, scorer, judge, args.seeds, call)
    folder = finetuned_unet(home, generator, scorer, settings)
    pipe.unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    after = evaluate(pipe, scorer, judge, args.seeds, call)

    name = f"ReFL K={settings.grad_steps}" if settings.grad_steps == 1 else f"DRaFT-{settings.grad_steps}"
    rows = [{"method": "plain (before)", "particles": 1, **benchmark.summarise(before, before)},
            {"method": f"plain after {name}, {settings.steps} steps", "particles": 1,
             **benchmark.summarise(after, before)}]
    training = json.loads((folder / "metrics.json").read_text())
    report = {
        "benchmark": "digits_reward_finetune",
        "description": __doc__.splitlines()[0],
        "command": "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - start,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "load_average": os.getloadavg()},
        "versions": {"torch": torch.__version__, **{name: __import__(name).__version__
                                                    for name in ("diffusers", "transformers")}},
        "settings": dataclasses.asdict(settings),
        "finetuned_folder": str(folder),
        "judge": judge_metrics,
        "training": training,
        "results": rows,
        "table": benchmark.table(rows),
    }
    output = write_json(args.output, report)
    print(report["table"])
    print(f"training: {settings.steps} steps in {training['train_seconds']:.0f} s ({training['train_cpu_seconds']:.0f}"
          f" CPU-s); report in {output}")


if __name__ == "__main__":
    main()
