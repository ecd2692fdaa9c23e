"""Train (or load from the cache) the digits generator, the judge and the alignment reward; report their numbers.

    python examples/digits/prepare.py                      # everything, cached under $LLAVA_REWARD_HOME/digits
    python examples/digits/prepare.py --home /tmp/digits --skip-reward
    python examples/digits/prepare.py --reward-base default-backbone-56   # the default backbone at 56 px

Prints the judge's accuracy on held-out real digits, the plain sampling accuracy of the generator (the fraction of
images generated for "a handwritten digit k" that the judge classifies as k, over `--samples` images per digit) and
the reward's held-out pair accuracy, and writes them to `<home>/prepare.json`.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits  # noqa: E402

from llava_reward.steering import particle_generators  # noqa: E402


def plain_accuracy(pipe, judge, *, samples: int, seed: int, **call) -> dict:
    """Judge accuracy of plain sampling: `samples` images for each of the ten prompts, in one seeded call."""
    prompts = [digits.prompt_for(digit) for digit in range(10)]
    images = pipe(prompts, num_images_per_prompt=samples, generator=particle_generators(seed, 10, samples),
                  output_type="pt", **call).images
    correct = (judge.classify(images) == torch.arange(10).repeat_interleave(samples)).float().view(10, samples)
    return {"accuracy": correct.mean().item(), "per_digit": correct.mean(1).tolist(),
            "interval_95": digits.bootstrap_interval(correct.flatten().numpy()), "images": correct.numel()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="cache folder (default: $LLAVA_REWARD_HOME/digits)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the models are tiny)")
    parser.add_argument("--samples", type=int, default=20, help="plain samples per digit for the accuracy")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps for the plain samples")
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--reward-base", default=digits.RewardSettings.base,
                        help="'default-backbone-<px>', 'tiny-llava' or a base VLM folder")
    parser.add_argument("--reward-steps", type=int, default=digits.RewardSettings.max_steps)
    parser.add_argument("--skip-reward", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    home = digits.digits_home(args.home)
    report = {"home": str(home), "threads": args.threads}

    start = time.perf_counter()
    judge, report["judge"] = digits.trained_judge(home)
    generator = digits.trained_generator(home)
    report["generator"] = json.loads((generator / "metrics.json").read_text())
    pipe = digits.load_generator(generator)
    call = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, eta=1.0)
    report["plain_sampling"] = {**plain_accuracy(pipe, judge, samples=args.samples, seed=0, **call), **call}
    if not args.skip_reward:
        settings = digits.RewardSettings(base=args.reward_base, max_steps=args.reward_steps)
        reward = digits.trained_reward(home, settings)
        report["reward"] = {**json.loads((reward / "metrics.json").read_text()), "folder": str(reward / "model")}
    report["seconds"] = time.perf_counter() - start

    print(f"judge: {report['judge']['test_accuracy']:.3f} on {report['judge']['test_images']} held-out real digits")
    plain = report["plain_sampling"]
    print(f"plain sampling: {plain['accuracy']:.3f} judge accuracy ({plain['images']} images, 95% "
          f"[{plain['interval_95'][0]:.3f}, {plain['interval_95'][1]:.3f}]); per digit "
          + " ".join(f"{value:.2f}" for value in plain["per_digit"]))
    if "reward" in report:
        print(f"reward: {report['reward']['pair_accuracy']:.3f} held-out pair accuracy ({report['reward']['pairs']} "
              f"pairs), in {report['reward']['folder']}")
    (home / "prepare.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
