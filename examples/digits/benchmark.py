"""Inference-time scaling on a real (tiny) text-to-image model: plain sampling vs best-of-N vs FK steering.

For each seed, the ten prompts "a handwritten digit 0" ... "9" go through the digits generator (a diffusers
StableDiffusionPipeline trained by prepare.py) with every method; the independent judge (a CNN trained on its own
split of the digits, which the reward never saw) says whether each prompt's chosen image shows the digit asked for.
Every method runs the same sampler (DDIM, eta = 1, the same steps and guidance) and the same seeds: particle k of
prompt p starts from the same noise in best-of-N and FK steering, and plain sampling is particle 0.

    python examples/digits/benchmark.py                         # after prepare.py (or it trains what is missing)
    python examples/digits/benchmark.py --seeds 5 --particles 2 4 8 --lmbda 10 1 --potential max
    python examples/digits/benchmark.py --quick                  # one seed, N = 2: a smoke run

Accuracy intervals: 95 % percentile bootstrap over the (prompt, seed) cells; the gain over plain sampling is paired
(same prompt and seed) and bootstrapped the same way. Time: wall seconds of each call (all ten prompts), the share
spent inside the reward model, and the share spent decoding x0 for it (FK steering).
Writes a JSON report (default: examples/digits/results/benchmark.json) and prints a table.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import digits  # noqa: E402

from llava_reward import LlavaRewardScorer  # noqa: E402
from llava_reward.files import write_json  # noqa: E402
from llava_reward.steering import best_of_n  # noqa: E402
from llava_reward.steering import fk_steering  # noqa: E402
from llava_reward.steering import particle_generators  # noqa: E402


def run_plain(pipe, prompts, scorer, seed, call) -> dict:
    start = time.perf_counter()
    images = pipe(prompts, generator=particle_generators(seed, len(prompts), 1), output_type="pt", **call).images
    seconds = time.perf_counter() - start
    rewards, _ = scorer.reward_fn(images, prompts)  # for the table only, outside the timing
    return {"images": images, "rewards": rewards, "total_s": seconds, "reward_s": 0.0, "decode_s": 0.0}


def run_method(method, pipe, prompts, scorer, seed, particles, call, fk_options) -> dict:
    if method == "plain":
        return run_plain(pipe, prompts, scorer, seed, call)
    if method == "best-of-n":
        out = best_of_n(pipe, prompts, scorer, n=particles, seed=seed, **call)
    else:  # "fk lmbda=<value>"
        lmbda = float(method.split("=")[1])
        out = fk_steering(pipe, prompts, scorer, num_particles=particles, seed=seed, lmbda=lmbda, **fk_options,
                          **call)
    return {"images": out.best_images, "rewards": out.best_rewards, **{key: out.timings[key] for key in
            ("total_s", "reward_s", "decode_s", "reward_calls", "rewarded_images")}}


def summarise(cells: list[dict], plain: list[dict]) -> dict:
    """Accuracy with its interval, the paired gain over plain sampling (same prompts and seeds), rewards, times."""
    correct = np.stack([cell["correct"] for cell in cells])  # (seeds, prompts)
    gain = correct - np.stack([cell["correct"] for cell in plain])
    total = sum(cell["total_s"] for cell in cells)
    return {
        "accuracy": float(correct.mean()),
        "interval_95": digits.bootstrap_interval(correct.flatten()),
        "gain_over_plain": float(gain.mean()),
        "gain_interval_95": digits.bootstrap_interval(gain.flatten()),
        "per_digit_accuracy": correct.mean(axis=0).tolist(),
        "per_seed_accuracy": correct.mean(axis=1).tolist(),
        "correct": correct.astype(int).tolist(),
        "mean_reward": float(np.mean([cell["rewards"].mean() for cell in cells])),
        "seconds_per_prompt": total / correct.size,
        "reward_share": sum(cell["reward_s"] for cell in cells) / total,
        "decode_share": sum(cell["decode_s"] for cell in cells) / total,
        "reward_calls_per_run": float(np.mean([cell.get("reward_calls", 0) for cell in cells])),
        "cells": int(correct.size),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| method | N | judge accuracy (95% CI) | gain over plain (paired 95% CI) | mean reward | s / prompt | "
        "reward share | decode share |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        low, high = row["interval_95"]
        gain_low, gain_high = row["gain_interval_95"]
        lines.append(
            f"| {row['method']} | {row['particles']} | {row['accuracy']:.3f} [{low:.3f}, {high:.3f}] | "
            f"{row['gain_over_plain']:+.3f} [{gain_low:+.3f}, {gain_high:+.3f}] | {row['mean_reward']:.3f} | "
            f"{row['seconds_per_prompt']:.2f} | {row['reward_share']:.0%} | {row['decode_share']:.0%} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="cache folder (default: $LLAVA_REWARD_HOME/digits)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--particles", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--potential", default="max")
    parser.add_argument("--lmbda", type=float, nargs="+", default=[10.0], help="one FK row per value")
    parser.add_argument("--reward-base", default=digits.RewardSettings.base, help="see prepare.py")
    parser.add_argument("--reward-steps", type=int, default=digits.RewardSettings.max_steps)
    parser.add_argument("--reward-model", help="a trained reward folder to use instead of the cached one")
    parser.add_argument("--quick", action="store_true", help="one seed, N = 2")
    parser.add_argument("--output", default=str(HERE / "results" / "benchmark.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.particles = 1, [2]
    torch.set_num_threads(args.threads)
    home = digits.digits_home(args.home)
    start = time.perf_counter()

    judge, judge_metrics = digits.trained_judge(home)
    generator = digits.trained_generator(home)
    pipe = digits.load_generator(generator)
    if args.reward_model:
        reward_model, reward_metrics = Path(args.reward_model), {"folder": args.reward_model}
    else:
        reward_folder = digits.trained_reward(home, digits.RewardSettings(base=args.reward_base,
                                                                          max_steps=args.reward_steps))
        reward_model = reward_folder / "model"
        reward_metrics = json.loads((reward_folder / "metrics.json").read_text())
    scorer = LlavaRewardScorer.from_pretrained(reward_model)
    prompts = [digits.prompt_for(digit) for digit in range(10)]
    labels = torch.arange(10)
    call = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, eta=1.0)
    # -inf: the max potential starts from the first reward itself (BT rewards can be negative; see FKResampler)
    fk_options = dict(potential=args.potential, reward_min_value=float("-inf") if args.potential == "max" else 0.0)
    fk_methods = [f"fk lmbda={lmbda:g}" for lmbda in args.lmbda]
    methods = [("plain", 1)] + [(method, n) for n in args.particles for method in ("best-of-n", *fk_methods)]
    cells = {method: [] for method in methods}
    for seed in range(args.seeds):
        for method, particles in methods:  # interleaved: drift of a shared machine hits every method alike
            result = run_method(method, pipe, prompts, scorer, seed, particles, call, fk_options)
            result["correct"] = (judge.classify(result["images"]) == labels).float().numpy()
            result["rewards"] = np.asarray(result["rewards"], dtype=np.float64)
            cells[(method, particles)].append(result)
            print(f"seed {seed} {method:15s} N={particles}: judge accuracy {result['correct'].mean():.2f}, "
                  f"{result['total_s']:.1f} s", flush=True)
    rows = [{"method": method, "particles": n, **summarise(cells[(method, n)], cells[("plain", 1)])}
            for method, n in methods]

    report = {
        "benchmark": "digits_steering",
        "description": __doc__.splitlines()[0],
        "command": "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - start,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "load_average": os.getloadavg()},
        "versions": {"torch": torch.__version__, **{name: __import__(name).__version__
                                                    for name in ("diffusers", "transformers")}},
        "settings": {**vars(args), **call, **{k: v for k, v in fk_options.items() if k != "reward_min_value"},
                     "reward_min_value": str(fk_options["reward_min_value"]), "prompts": prompts},
        "judge": judge_metrics,
        "reward": reward_metrics,
        "generator": {**json.loads((generator / "metrics.json").read_text()), "folder": str(generator)},
        "results": rows,
        "table": table(rows),
    }
    output = write_json(args.output, report)
    print(report["table"])
    print(f"judge: {judge_metrics['test_accuracy']:.3f} on held-out real digits; reward: "
          f"{report['reward'].get('pair_accuracy', float('nan')):.3f} held-out pair accuracy; report in {output}")


if __name__ == "__main__":
    main()
