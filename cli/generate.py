"""`llava-reward generate`: images from a diffusers pipeline, steered by a reward model (best-of-N or FK steering).

Each prompt gets N candidates from the pipeline: with `--best-of N`, N independent samples ranked by the reward; with
`--fk-particles N`, N particles resampled by the reward while they denoise (Feynman-Kac steering,
`llava_reward.steering`). The chosen image of a prompt is its highest-reward candidate. Written into `--output DIR`:

- `prompt-000/candidate-0.png`, ...: every final candidate of every prompt;
- `prompt-000/grid.png`: the prompt's candidates side by side with their rewards, the chosen one framed in green;
- `generate.json`: the settings, and for each prompt its seed, every candidate's reward, the chosen index, FK
  steering's history (for each resampling step: the rewards, the weights, the effective sample size, whether it
  resampled and each new particle's parent) and the timings.

The folder is built beside DIR and takes its place when every prompt is done: an interrupted run leaves DIR as it
was. A DIR holding files this command did not write is refused unless `--overwrite`.

Prompt i runs with seed `--seed + i`: `best_of_n(pipe, [prompt_i], reward, n=N, seed=S + i)` or
`fk_steering(...)` in Python gives the same images.

Example:
    >>> from llava_reward.cli import build_parser
    >>> args = build_parser().parse_args(
    ...     ["generate", "--pipeline", "my-sd", "--prompt", "a cat", "--reward", "my-reward", "--fk-particles", "4",
    ...      "--output", "out"]
    ... )
    >>> args.fk_particles, args.model, args.seed
    (4, 'my-reward', 0)
"""

import argparse
import functools
import json
import math
import os
import shutil
import sys
from pathlib import Path

from .errors import UserInputError
from .options import DTYPES
from .options import add_progress_argument
from .options import checked_device
from .options import first_line
from .options import load_scorer
from .options import positive_int
from .options import progress_option


RESULTS_FILE = "generate.json"
KIND = "llava-reward generate"  # the results file's "kind": what marks a folder as written by this command
POTENTIALS = ("max", "add", "diff", "rt")  # llava_reward.steering.POTENTIALS, without importing diffusers for --help
# FK option -> fk_steering keyword; their defaults are fk_steering's.
FK_OPTIONS = {
    "fk_potential": "potential",
    "fk_lmbda": "lmbda",
    "fk_resampling_t_start": "resampling_t_start",
    "fk_resampling_t_end": "resampling_t_end",
    "fk_resample_frequency": "resample_frequency",
    "fk_adaptive": "adaptive_resampling",
    "fk_reward_min_value": "reward_min_value",
}
EPILOG = """\
Output (DIR): prompt-NNN/candidate-K.png for every candidate, prompt-NNN/grid.png (candidates with their rewards,
  the chosen one framed), generate.json (settings, rewards, chosen index, FK history, timings).
FK steering needs a stochastic sampler: DDIM (run with eta=1), DDPM, Euler ancestral, or flow matching (run with
  stochastic sampling); other schedulers are refused. Best-of-N runs with any scheduler.
Exit codes: 0 success, 1 bad input (one line on stderr), 2 usage error.

Examples:
  llava-reward generate --pipeline ./my-sd --prompt 'a red cube' --reward ./my-reward --best-of 4 --output out
  llava-reward generate --pipeline ./my-sd --prompts prompts.txt --reward default --fk-particles 4 \\
      --fk-potential max --fk-lmbda 10 --num-inference-steps 50 --output out
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate images with a diffusers pipeline, best-of-N or FK-steered by a reward model",
        description="Generate images with a diffusers text-to-image pipeline, steered by a LLaVA-Reward model: "
        "best-of-N or Feynman-Kac steering. Writes every candidate, a grid per prompt and a JSON of rewards.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pipeline", required=True, metavar="DIR_OR_HUB_ID",
        help="a diffusers text-to-image pipeline: folder or Hub id",
    )
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeat for several)")
    parser.add_argument("--prompts", metavar="FILE", help="a text file of prompts, one per line (blank lines skipped)")
    parser.add_argument(
        "--reward", dest="model", required=True, metavar="MODEL",
        help="the reward model: 'default' (the embedded one), a trained folder or a Hub repo id",
    )
    parser.add_argument("--subfolder", help="the reward model's subfolder in MODEL (one perspective of a repo)")
    method = parser.add_mutually_exclusive_group(required=True)
    method.add_argument("--best-of", type=positive_int, metavar="N", help="N candidates per prompt, keep the best")
    method.add_argument(
        "--fk-particles", type=positive_int, metavar="N", help="FK steering with N particles per prompt"
    )
    fk = parser.add_argument_group("FK steering (with --fk-particles; defaults: llava_reward.steering.fk_steering's)")
    fk.add_argument("--fk-potential", choices=POTENTIALS, help="max (default), add, diff or rt")
    fk.add_argument("--fk-lmbda", type=float, metavar="X", help="inverse temperature of the potential (default 10)")
    fk.add_argument("--fk-resampling-t-start", type=int, metavar="STEP", help="first resampling step, from 0")
    fk.add_argument("--fk-resampling-t-end", type=int, metavar="STEP", help="last resampling step of the window")
    fk.add_argument("--fk-resample-frequency", type=positive_int, metavar="K", help="resample every K steps")
    fk.add_argument("--fk-adaptive", action="store_true", default=None,
                    help="resample only when the effective sample size is below N/2")
    fk.add_argument("--fk-reward-min-value", type=float, metavar="X",
                    help="the carried reward before the first step (default: -inf with max, 0 with the others)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--seed", type=int, default=0, help="prompt i runs with seed SEED + i (default 0)")
    sampling.add_argument("--num-inference-steps", type=positive_int, metavar="K", help="default: the pipeline's")
    sampling.add_argument("--guidance-scale", type=float, metavar="G", help="default: the pipeline's")
    sampling.add_argument("--height", type=positive_int, metavar="PX", help="default: the pipeline's")
    sampling.add_argument("--width", type=positive_int, metavar="PX", help="default: the pipeline's")
    parser.add_argument("--device", help="where to run the pipeline and the reward, e.g. cpu, cuda (default: cpu)")
    parser.add_argument(
        "--dtype", choices=DTYPES, help="cast the pipeline and the reward to this dtype (default: as saved)"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="the folder to write (replaced when done)")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR even if it holds files of other origin")
    add_progress_argument(parser)
    parser.set_defaults(func=functools.partial(run, parser=parser))


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    fk_options = {keyword: getattr(args, option) for option, keyword in FK_OPTIONS.items()
                  if getattr(args, option) is not None}
    if args.best_of and fk_options:
        parser.error("the --fk-* options apply to --fk-particles only")
    if args.fk_particles and fk_options.get("potential", "max") == "max":
        # Reward models give negative rewards: floored at fk_steering's default 0, they would all weigh the same.
        fk_options.setdefault("reward_min_value", -math.inf)
    if not args.prompt and not args.prompts:
        parser.error("give --prompt TEXT (once or more) or --prompts FILE")
    if not math.isfinite(fk_options.get("lmbda", 0.0)):
        parser.error(f"--fk-lmbda must be a finite number, not {args.fk_lmbda}")
    # Everything that can be checked without the models is, first: a bad argument fails in a second.
    prompts = args.prompt + (read_prompts(args.prompts) if args.prompts else [])
    check_output(args.output, args.overwrite, inputs=[args.pipeline, args.model])
    device = checked_device(args.device)
    steering = import_steering()
    call = {key: getattr(args, key) for key in ("num_inference_steps", "guidance_scale", "height", "width")
            if getattr(args, key) is not None}
    if args.fk_particles and args.num_inference_steps:
        check_schedule(steering, args.num_inference_steps, fk_options)

    scorer = load_reward(args)
    pipe = load_pipeline(args.pipeline, device, args.dtype)
    steps = check_steerable(steering, pipe, call, fk_options if args.fk_particles else None, args.pipeline)
    staging = staging_folder(args.output)
    try:
        records, sampler, seconds = generate_all(steering, pipe, scorer, prompts, args, call, fk_options, staging)
        summary = {
            "kind": KIND,
            "pipeline": args.pipeline,
            "pipeline_class": type(pipe).__name__,
            "sampler": sampler,
            "reward": reward_description(args, scorer),
            "method": "fk" if args.fk_particles else "best-of-n",
            "particles": args.fk_particles or args.best_of,
            "fk": fk_settings(steering, fk_options, steps) if args.fk_particles else None,
            "seed": args.seed,
            "num_inference_steps": steps,
            "pipeline_arguments": call,
            "device": str(pipe.device),
            "dtype": str(pipe.dtype).removeprefix("torch."),
            "prompts": records,
            "timings": seconds,
        }
        from llava_reward.files import publish
        from llava_reward.files import write_json

        write_json(staging / RESULTS_FILE, summary)
        publish(staging, args.output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"llava-reward generate: {len(prompts)} prompt(s) x {summary['particles']} candidates written to "
          f"{args.output} ({RESULTS_FILE}, prompt-*/grid.png)", file=sys.stderr)
    return 0


def read_prompts(path: str) -> list[str]:
    """The non-blank lines of `path`, stripped; `UserInputError` when it cannot be read or holds none."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise UserInputError(f"--prompts {path}: cannot read it ({reason}).") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserInputError(f"--prompts {path}: holds no prompt (one per line).")
    return prompts


def check_output(path: str, overwrite: bool, inputs: list[str]) -> None:
    """Refuse an output that is a file, that holds an input, or that holds files this command did not write."""
    folder = Path(path)
    if os.path.lexists(folder) and not folder.is_dir():
        raise UserInputError(f"--output {path}: is a file, not a folder.")
    for name in inputs:
        source = Path(name)
        if source.exists() and (folder.resolve() == source.resolve() or folder.resolve() in source.resolve().parents):
            raise UserInputError(f"--output {path}: holds the input {name}, which replacing the folder would delete.")
    if not folder.is_dir() or not any(folder.iterdir()) or overwrite or written_by_us(folder):
        return
    raise UserInputError(
        f"--output {path}: holds files `llava-reward generate` did not write: choose another folder, or replace it "
        "with --overwrite."
    )


def written_by_us(folder: Path) -> bool:
    try:
        return json.loads((folder / RESULTS_FILE).read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def staging_folder(path: str) -> Path:
    from llava_reward.files import staging_dir

    try:
        return staging_dir(path)
    except OSError as error:
        raise UserInputError(f"--output {path}: cannot write there ({error.strerror}).") from None


def import_steering():
    try:
        import llava_reward.steering as steering
    except ImportError as error:
        raise UserInputError(f"{error} (the diffusion extra)") from None
    return steering


def check_schedule(steering, steps: int, fk_options: dict) -> list[int]:
    """FK steering's resampling steps, or a `UserInputError` naming the command's options."""
    keywords = ("resampling_t_start", "resampling_t_end", "resample_frequency")
    try:
        return steering.resampling_schedule(steps, *(fk_options.get(keyword) for keyword in keywords))
    except ValueError as error:
        message = str(error)
        for keyword in keywords:
            message = message.replace(keyword, "--fk-" + keyword.replace("_", "-"))
        raise UserInputError(f"{message} (--num-inference-steps {steps})") from None


def load_reward(args: argparse.Namespace):
    from llava_reward.objectives import get_objective

    scorer = load_scorer(args, flag="--reward")
    if not get_objective(scorer.objective).scalar:
        raise UserInputError(
            f"--reward {args.model}: a {scorer.objective!r} model gives preference embeddings, not one reward per "
            "image: steering needs a scalar reward (a bt or ce model)."
        )
    return scorer


def load_pipeline(name: str, device, dtype: str | None):
    """The diffusers pipeline `name` (folder or Hub id) on `device`, announced on stderr; `UserInputError` if none."""
    import torch
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(name, **({"torch_dtype": getattr(torch, dtype)} if dtype else {}))
    except (OSError, ValueError) as error:  # no such folder or repo (offline), not a pipeline, an invalid id
        raise UserInputError(f"--pipeline {name}: cannot load a diffusers pipeline: {first_line(error)}") from None
    pipe.set_progress_bar_config(disable=True)  # the command reports progress per prompt
    if device is not None:
        pipe.to(device)
    print(f"llava-reward generate: pipeline {name}: {type(pipe).__name__} with {type(pipe.scheduler).__name__}, on "
          f"{pipe.device}", file=sys.stderr)
    return pipe


def check_steerable(steering, pipe, call: dict, fk_options: dict | None, name: str) -> int:
    """Refuse, before generating, a pipeline steering cannot drive (and, for FK steering, a deterministic sampler or
    a window outside its schedule); returns the number of denoising steps."""
    from llava_reward.steering.arguments import MANAGED_CALL_ARGUMENTS
    from llava_reward.steering.hooks import check_pipeline
    from llava_reward.steering.hooks import num_inference_steps
    from llava_reward.steering.hooks import stochastic_sampler

    try:
        check_pipeline(pipe, call, MANAGED_CALL_ARGUMENTS)
        steps = num_inference_steps(pipe, call)
        if fk_options is not None:
            stochastic_sampler(pipe, call)
    except (TypeError, ValueError) as error:
        raise UserInputError(f"--pipeline {name}: {first_line(error)}") from None
    if fk_options is not None:
        check_schedule(steering, steps, fk_options)
    return steps


def generate_all(steering, pipe, scorer, prompts, args, call, fk_options, folder: Path):
    """Each prompt's candidates into `folder`; returns the per-prompt records, the sampler and the total timings."""
    from llava_reward.progress import PLAIN
    from llava_reward.progress import iterate

    progress = progress_option(args)
    records, totals, sampler = [], {"generate_s": 0.0, "reward_s": 0.0, "decode_s": 0.0}, None
    for index in iterate(range(len(prompts)), total=len(prompts), desc="generate", unit="prompt",
                         progress=False if progress == PLAIN else progress):
        seed = args.seed + index
        if args.fk_particles:
            out = steering.fk_steering(pipe, prompts[index], scorer, num_particles=args.fk_particles, seed=seed,
                                       **fk_options, **call)
        else:
            out = steering.best_of_n(pipe, prompts[index], scorer, n=args.best_of, seed=seed, **call)
        records.append(write_prompt(out, index, seed, folder))
        sampler = out.sampler
        for key in totals:
            totals[key] += out.timings["total_s" if key == "generate_s" else key]
        if progress == PLAIN:
            chosen = records[-1]["chosen"]
            print(f"generate: prompt {index + 1}/{len(prompts)}: chosen candidate {chosen}, reward "
                  f"{records[-1]['rewards'][chosen]:.4g} ({out.timings['total_s']:.1f} s)", file=sys.stderr,
                  flush=True)
    return records, sampler, totals


def write_prompt(out, index: int, seed: int, folder: Path) -> dict:
    """One prompt's candidates and grid as PNG files under `folder`, and its record for the results file."""
    subfolder = folder / f"prompt-{index:03d}"
    subfolder.mkdir()
    images = []
    for candidate, image in enumerate(out.to_pil()[0]):
        image.save(subfolder / f"candidate-{candidate}.png")
        images.append(f"{subfolder.name}/candidate-{candidate}.png")
    out.grid(0).save(subfolder / "grid.png")
    return {
        "index": index,
        "prompt": out.prompts[0],
        "seed": seed,
        "chosen": int(out.best[0]),
        "rewards": out.rewards[0].tolist(),
        "images": images,
        "grid": f"{subfolder.name}/grid.png",
        "history": [
            {
                "step": record.step,
                "timestep": record.timestep,
                "rewards": record.rewards[0].tolist(),
                "weights": record.log_weights[0].exp().tolist(),
                "ess": record.ess[0].item(),
                "resampled": bool(record.resampled[0]),
                "parents": record.indices[0].tolist(),
            }
            for record in out.history
        ],
        "timings": {key: out.timings[key] for key in ("total_s", "reward_s", "decode_s", "reward_calls")},
    }


def reward_description(args: argparse.Namespace, scorer) -> dict:
    config = scorer.model.config
    return {"model": args.model, "subfolder": args.subfolder, "perspective": config.perspective,
            "objective": config.objective, "base_model": config.base_model}


def fk_settings(steering, fk_options: dict, steps: int) -> dict:
    """FK steering's settings as they ran: the options given and fk_steering's defaults for the others."""
    import inspect

    parameters = inspect.signature(steering.fk_steering).parameters
    defaults = {name: parameter.default for name, parameter in parameters.items() if name in FK_OPTIONS.values()}
    settings = {**defaults, **fk_options}
    settings["reward_min_value"] = str(settings["reward_min_value"])  # -inf is not JSON
    keywords = ("resampling_t_start", "resampling_t_end", "resample_frequency")
    settings["resampling_steps"] = steering.resampling_schedule(steps, *(fk_options.get(key) for key in keywords))
    return settings
