"""GPU check: the paper's settings measured on one accelerator (scoring latency, a training step, bf16 vs fp32).

Prepared to run in under 8 minutes on one 80-140 GB GPU with no network:

    python benchmarks/gpu_check.py                 # Qwen2.5-VL-7B-sized reward model, 1024 px images
    python benchmarks/gpu_check.py --tiny          # the same checks on tiny models (the test suite's smoke run)

1. Scoring: a randomly initialised reward model of the paper's size (Qwen2.5-VL-7B architecture from its config
   alone, `llava_reward.trainers.memory.backbone_config`, bf16) on 1024 px images (1369 visual tokens, as the
   published code's Qwen preprocessing makes them): latency per evaluation and images/s at batch 1 / 8 / 32, with
   SDPA and with flash attention when `flash_attn` is installed, beside the paper's 0.35 s per evaluation (A6000 /
   A100).
   Weights do not change the cost, so random ones time the real computation; LoRA is merged for scoring.
2. Training: one Bradley-Terry step (chosen + rejected in one batch of 2 x 8 rows; LoRA r128 + projector + SkipCA +
   value head; AdamW; bf16 autocast as the Trainer's `bf16`), with and without activation checkpointing, at 1024 px
   and 448 px: time and peak memory, beside `llava_reward.trainers.memory`'s estimate for the same step. A run out
   of memory is recorded as such.
3. Precision: rewards of one model in fp32 and in bf16 on the same images (the embedded default model,
   `llava_reward.load("default")`, when this installation ships it, else the default backbone with a seeded head):
   differences, correlation, and agreement of the pairwise preferences and rankings.
4. Paths: the 2-GPU paths (FSDP2, ZeRO-3 across processes) are skipped with a message; a one-process DeepSpeed
   ZeRO-3 run of the tiny recipe (train, checkpoint, resume, load the gathered bundle) runs when `deepspeed` is
   importable and the device is CUDA.

Writes `gpu_check[_tiny].json` (every number, the machine, the versions) and `gpu_check[_tiny].md` (the tables) to
`--results-dir`. Device-agnostic: `--device` (default: `torch.accelerator.current_accelerator()`, else CPU).
"""

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import REPO_DIR
from common import RESULTS_DIR
from common import default_backbone
from common import int_tuple
from common import machine_info
from common import markdown_table
from common import peak_memory
from common import preference_pairs
from common import summarize
from common import versions


PAPER_SECONDS_PER_EVALUATION = 0.35  # LLaVA-Reward on A6000 / A100 (paper, Table on inference cost)
# What the published code's Qwen preprocessing (qwen_vl_utils defaults) makes of an image: 28 px units, at most
# 16384 x 28 x 28 pixels.
QWEN_IMAGE_PROCESSOR = dict(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                            max_pixels=16384 * 28 * 28)


# Sizes of the paper-size run and of the `--tiny` smoke run (options given on the command line win).
PAPER = dict(image_px=1024, small_image_px=448, batch_sizes=(1, 8, 32), train_pairs=8, precision_pairs=32, repeats=3)
TINY = dict(image_px=64, small_image_px=32, batch_sizes=(1, 2), train_pairs=2, precision_pairs=4, repeats=2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes: the CPU smoke run")
    parser.add_argument("--device", default=None, help="torch device (default: the current accelerator, else cpu)")
    parser.add_argument("--image-px", type=int, help="side of the images (paper size: 1024, as the paper's data)")
    parser.add_argument("--small-image-px", type=int, help="second image size of the training step (448)")
    parser.add_argument("--batch-sizes", type=int_tuple, help="scoring batch sizes (1,8,32)")
    parser.add_argument("--train-pairs", type=int, help="pairs per training step (the paper's 8)")
    parser.add_argument("--precision-pairs", type=int, help="image pairs of the precision check (32)")
    parser.add_argument("--repeats", type=int, help="timed calls (3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--layers", type=int, help="keep this many decoder layers (a dry run on a small machine)")
    parser.add_argument("--skip-zero3", action="store_true", help="do not run the DeepSpeed ZeRO-3 smoke run")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    for key, value in (TINY if args.tiny else PAPER).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ---- device helpers (no CUDA-only calls) ---------------------------------------------------------------------------


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accelerator or torch.device("cpu")


def synchronize(device: torch.device):
    if device.type != "cpu":
        torch.accelerator.synchronize()


def timed(function, device, *, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        function()
    runs = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        runs.append(time.perf_counter() - start)
    return summarize(runs)


def peak_mb(function, device) -> float | None:
    """MiB above the memory in use before `function()`, at its peak (accelerator allocator; CPU: resident set)."""
    if device.type == "cpu":
        return peak_memory(function)
    free_memory(device)
    torch.accelerator.reset_peak_memory_stats()
    before = torch.accelerator.memory_allocated()
    function()
    synchronize(device)
    return (torch.accelerator.max_memory_allocated() - before) / 2**20


def free_memory(device: torch.device):
    gc.collect()
    if device.type != "cpu":
        torch.accelerator.empty_cache()


def allocated_gib(device: torch.device) -> float | None:
    return torch.accelerator.memory_allocated() / 2**30 if device.type != "cpu" else None


# ---- models ------------------------------------------------------------------------------------------------------


def reward_model_and_processor(args, device: torch.device, dtype: torch.dtype):
    """The paper-size (or tiny) Qwen2.5-VL reward model, randomly initialised on `device`, and its processor."""
    from transformers import AutoModel
    from transformers import Qwen2VLImageProcessorPil

    from llava_reward import LlavaRewardModel
    from llava_reward import LlavaRewardProcessor
    from llava_reward.testing import tiny_vlm
    from llava_reward.trainers.memory import backbone_config

    torch.manual_seed(0)
    tiny, processor = tiny_vlm("qwen2_5_vl")  # its byte-level tokenizer serves any size (ids < 320)
    if args.tiny:
        vlm = tiny.to(device=device, dtype=dtype)
        name = "tiny Qwen2.5-VL (random, 2 layers, width 32)"
    else:
        config = backbone_config("qwen2_5_vl_7b")
        if args.layers:
            config.text_config.num_hidden_layers = args.layers
        for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            setattr(config, key, getattr(tiny.config, key))
        with torch.device(device):
            vlm = AutoModel.from_config(config, dtype=dtype, attn_implementation="sdpa")
        processor.image_processor = Qwen2VLImageProcessorPil(**QWEN_IMAGE_PROCESSOR)
        name = "Qwen2.5-VL-7B architecture (random weights" + (f", {args.layers} layers only)" if args.layers else ")")
    model = LlavaRewardModel.from_vlm(vlm, objective="bt").eval()
    return model, LlavaRewardProcessor.from_vlm_processor(processor), name


def on_device(batch, device, dtype):
    return {
        key: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        for key, value in batch.items()
    }


def attention_implementations() -> list[str]:
    from transformers.utils import is_flash_attn_2_available

    return ["sdpa"] + (["flash_attention_2"] if is_flash_attn_2_available() else [])


# ---- 1. scoring -----------------------------------------------------------------------------------------------------


def check_scoring(args, device, model, processor, notes) -> list[dict]:
    prompts, images, _ = preference_pairs(max(args.batch_sizes), args.image_px)
    rows = []
    implementations = attention_implementations() if device.type == "cuda" else ["sdpa"]
    if "flash_attention_2" not in implementations:
        notes.append("flash attention: not measured (flash_attn is not installed or the device is not CUDA)")
    for implementation in implementations:
        model.set_attn_implementation(implementation)
        for batch_size in args.batch_sizes:
            start = time.perf_counter()
            batch = processor(prompts[:batch_size], images[:batch_size])
            preprocessing = time.perf_counter() - start
            inputs = on_device(batch, device, model.dtype)
            visual_tokens = int((inputs["input_ids"] == model.vlm.config.image_token_id).sum()) // batch_size
            with torch.inference_mode():
                result = timed(lambda: model(**inputs), device, warmup=args.warmup, repeats=args.repeats)
                peak = peak_mb(lambda: model(**inputs), device)
            forward = result["median_s"]
            rows.append(dict(
                attention=implementation, batch=batch_size, image_px=args.image_px, visual_tokens=visual_tokens,
                sequence_tokens=inputs["input_ids"].shape[1], forward=result, preprocessing_s=preprocessing,
                seconds_per_evaluation=(forward + preprocessing) / batch_size, images_per_s=batch_size / forward,
                over_paper=(forward + preprocessing) / batch_size / PAPER_SECONDS_PER_EVALUATION, peak_mb=peak,
            ))
            print(f"scoring {implementation} batch {batch_size}: {forward:.4f} s forward", flush=True)
    model.set_attn_implementation("sdpa")
    return rows


# ---- 2. training --------------------------------------------------------------------------------------------------


def check_training(args, device, model, processor) -> list[dict]:
    from llava_reward.objectives import get_objective
    from llava_reward.trainers.memory import count_parameters
    from llava_reward.trainers.memory import estimate_memory
    from llava_reward.trainers.trainer import LlavaRewardTrainingConfig
    from llava_reward.trainers.trainer import prepare_for_training

    lora_r = 8 if args.tiny else 128
    with tempfile.TemporaryDirectory() as output_dir:
        config = LlavaRewardTrainingConfig(
            output_dir=output_dir, lora_r=lora_r, lora_alpha=2 * lora_r, use_cpu=device.type == "cpu", report_to=[]
        )
    bt = get_objective("bt")
    torch.manual_seed(0)
    peft_model = prepare_for_training(model, config)
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-7)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=model.dtype == torch.bfloat16)
    counts = None if args.tiny else count_parameters(model.config.vlm_config, lora_r=lora_r)
    rows = []
    for image_px in (args.image_px, args.small_image_px):
        prompts, chosen, rejected = preference_pairs(args.train_pairs, image_px)
        inputs = on_device(processor(prompts + prompts, chosen + rejected), device, model.dtype)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                rewards = peft_model(**inputs).rewards
            chosen_rewards, rejected_rewards = rewards.float().chunk(2)
            bt.pair_loss(chosen_rewards, rejected_rewards, 0.1).backward()
            optimizer.step()

        for checkpointing in (True, False):
            if checkpointing:
                peft_model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                peft_model.activation_checkpointing_disable()
            row = dict(
                image_px=image_px, pairs=args.train_pairs, checkpointing=checkpointing, lora_r=lora_r,
                sequence_tokens=inputs["input_ids"].shape[1], trainable_parameters=sum(p.numel() for p in trainable),
                resident_gib=allocated_gib(device),
            )
            if not args.tiny:
                estimate = estimate_memory(
                    model.config.vlm_config, name="qwen2_5_vl_7b", pairs_per_gpu=args.train_pairs, image_px=image_px,
                    activation_checkpointing=checkpointing, lora_r=lora_r, counts=counts,
                )
                row["estimated_step_gib"] = estimate.activations + estimate.gradients
                row["estimated_total_gib"] = estimate.total
            try:
                row["result"] = timed(step, device, warmup=args.warmup, repeats=max(2, args.repeats - 1))
                row["peak_mb"] = peak_mb(step, device)
                row["status"] = "ok"
            except torch.OutOfMemoryError as error:
                row.update(status="out of memory", message=str(error).splitlines()[0][:300])
            optimizer.zero_grad(set_to_none=True)
            free_memory(device)
            print(f"training {image_px} px, checkpointing {checkpointing}: {row['status']}", flush=True)
            rows.append(row)
    peft_model.activation_checkpointing_disable()
    return rows


# ---- 3. precision --------------------------------------------------------------------------------------------------


class _Notes:
    def __init__(self, notes: list[str]):
        self.notes = notes

    def note(self, text: str):
        print(f"NOTE: {text}", flush=True)
        self.notes.append(text)


def precision_model(args, notes):
    """(fp32 reward model, its processor, description): the embedded default model if present, else a stand-in."""
    import llava_reward

    if not args.tiny:
        try:
            scorer = llava_reward.load("default", dtype=torch.float32)
            return scorer.model, scorer.processor, "embedded default model (llava_reward.load('default'))"
        except FileNotFoundError as error:
            notes.append(f"precision: {error} Using the default backbone with a seeded random head instead.")
    if args.tiny:
        from llava_reward import LlavaRewardModel
        from llava_reward import LlavaRewardProcessor
        from llava_reward.testing import tiny_vlm

        vlm, processor = tiny_vlm("llava")
        torch.manual_seed(0)
        model = LlavaRewardModel.from_vlm(vlm, objective="bt")
        return model.eval(), LlavaRewardProcessor.from_vlm_processor(processor), "tiny LLaVA (random)"
    backbone = default_backbone(_Notes(notes))
    return backbone.reward_model(objective="bt"), backbone.reward_processor(), backbone.description + ", seeded head"


def check_precision(args, device, notes) -> list[dict]:
    model, processor, description = precision_model(args, notes)
    prompts, chosen, rejected = preference_pairs(args.precision_pairs, args.image_px)
    batch = processor(prompts + prompts, chosen + rejected)
    rewards = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(device=device, dtype=dtype)
        with torch.inference_mode():
            rewards[dtype] = model(**on_device(batch, device, dtype)).rewards.float().cpu()
    full, half = rewards[torch.float32], rewards[torch.bfloat16]
    difference = (full - half).abs()
    full_pairs, half_pairs = full.chunk(2), half.chunk(2)
    agree = ((full_pairs[0] > full_pairs[1]) == (half_pairs[0] > half_pairs[1])).float().mean().item()
    return [dict(
        model=description, images=len(full), image_px=args.image_px, reward_std_fp32=full.std().item(),
        max_abs_difference=difference.max().item(), mean_abs_difference=difference.mean().item(),
        pearson=torch.corrcoef(torch.stack([full, half]))[0, 1].item(), spearman=_spearman(full, half),
        pair_agreement=agree, same_best_image=bool(full.argmax() == half.argmax()),
    )]


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [values.argsort().argsort().float() for values in (a, b)]
    return torch.corrcoef(torch.stack(ranks))[0, 1].item()


# ---- 4. paths -----------------------------------------------------------------------------------------------------


def check_paths(args, device) -> list[dict]:
    count = torch.accelerator.device_count() if device.type != "cpu" else 0
    rows = [dict(
        path="FSDP2 / ZeRO-3 / DDP across 2 GPUs", status="skipped",
        message=f"needs 2 devices in one process group; this check runs on one ({count} accelerator(s) seen). "
        "On 2 GPUs: torchrun --nproc_per_node 2 -m llava_reward.trainers.train --config tiny "
        "--use_cpu false --fsdp true (tests/test_distributed_training.py runs the same on CPU).",
    )]
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        rows.append(dict(path="DeepSpeed ZeRO-3, 1 process", status="skipped", message="deepspeed is not installed"))
        return rows
    if device.type != "cuda" or args.skip_zero3:
        reason = "--skip-zero3" if args.skip_zero3 else "DeepSpeed needs CUDA"
        rows.append(dict(path="DeepSpeed ZeRO-3, 1 process", status="skipped", message=reason))
        return rows
    rows.append(zero3_smoke())
    return rows


def zero3_smoke() -> dict:
    """The tiny recipe under DeepSpeed ZeRO-3 (one process): train 4 steps, resume to 6, load the gathered bundle."""
    import yaml
    from safetensors.torch import load_file

    from llava_reward import LlavaRewardModel
    from llava_reward import LlavaRewardScorer
    from llava_reward.testing import save_tiny_vlm
    from llava_reward.trainers.synthetic import write_colour_task

    row = dict(path="DeepSpeed ZeRO-3, 1 process")
    with tempfile.TemporaryDirectory() as scratch:
        task = Path(scratch) / "tiny-task"
        write_colour_task(task, train_pairs=16, eval_pairs=4)
        save_tiny_vlm("llava", task / "base")
        # The project's ZeRO-3 config, except that every parameter is partitioned (ZeRO-3 keeps those under 1e5
        # elements whole, i.e. all of a tiny model's): whole tensors in the bundle then prove the gather.
        (task / "zero3.json").write_text(json.dumps({
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
            "bf16": {"enabled": "auto"}, "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
        }))
        config = yaml.safe_load((REPO_DIR / "configuration" / "accelerate" / "deepspeed_zero3.yaml").read_text())
        # With a DeepSpeed config file, accelerate refuses the fields it holds (precision too) in its own config.
        config["deepspeed_config"] = {"deepspeed_config_file": str(task / "zero3.json"), "zero3_init_flag": True}
        del config["mixed_precision"]
        (task / "zero3.yaml").write_text(yaml.safe_dump(config))
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(task / "zero3.yaml"),
            "--num_processes", "1",
            "-m", "llava_reward.trainers.train", "--config", "tiny",
            "--model.base_model", str(task / "base"), "--data.train", str(task / "train_pairs.json"),
            "--data.eval", str(task / "eval_pairs.json"), "--output_dir", str(task / "reward"), "--use_cpu", "false",
            "--eval_strategy", "no", "--save_steps", "2", "--per_device_train_batch_size", "2",
        ]
        for extra in (["--max_steps", "4"], ["--max_steps", "6", "--resume"]):
            done = subprocess.run([*command, *extra], capture_output=True, text=True, timeout=300, cwd=REPO_DIR)
            if done.returncode != 0:
                return row | dict(status="failed", message=f"{' '.join(extra)}: {done.stderr[-1500:]}")
        saved = load_file(task / "reward" / "reward_head.safetensors")
        fresh = LlavaRewardModel.from_vlm(str(task / "base"), objective="bt").reward_head_state_dict()
        # ZeRO-3 leaves empty placeholders in partitioned parameters: whole shapes prove the gather happened.
        shapes_ok = {name: t.shape for name, t in saved.items()} == {name: t.shape for name, t in fresh.items()}
        scores = LlavaRewardScorer.from_pretrained(task / "reward").score(
            "a red square", sorted(str(path) for path in (task / "images").glob("eval_0_*.png"))
        )
        state = json.loads((task / "reward" / "checkpoint-6" / "trainer_state.json").read_text())
        ok = shapes_ok and bool(torch.isfinite(scores).all()) and state["global_step"] == 6
        return row | dict(
            status="passed" if ok else "failed",
            message=f"bundle tensors whole: {shapes_ok}; resumed to step {state['global_step']}; scores "
            f"{[round(s, 4) for s in scores.tolist()]}",
        )


# ---- report ---------------------------------------------------------------------------------------------------------


def tables(report: dict) -> str:
    def seconds(result):
        return f"{result['median_s']:.4g} [{result['q1_s']:.4g}, {result['q3_s']:.4g}]"

    scoring = markdown_table(report["scoring"], {
        "attention": lambda r: r["attention"], "batch": lambda r: r["batch"], "image px": lambda r: r["image_px"],
        "visual tokens": lambda r: r["visual_tokens"], "forward s": lambda r: seconds(r["forward"]),
        "preprocessing s": lambda r: r["preprocessing_s"], "s / evaluation": lambda r: r["seconds_per_evaluation"],
        "x paper 0.35 s": lambda r: r["over_paper"], "images / s": lambda r: r["images_per_s"],
        "peak MB": lambda r: r["peak_mb"],
    })
    training = markdown_table(report["training"], {
        "image px": lambda r: r["image_px"], "pairs": lambda r: r["pairs"],
        "checkpointing": lambda r: r["checkpointing"],
        "tokens / row": lambda r: r["sequence_tokens"], "status": lambda r: r["status"],
        "step s": lambda r: seconds(r["result"]) if "result" in r else "",
        "peak GiB above weights": lambda r: r["peak_mb"] / 1024 if r.get("peak_mb") is not None else None,
        "estimated GiB (llava_reward.trainers.memory)": lambda r: r.get("estimated_step_gib"),
    })
    precision = markdown_table(report["precision"], {
        key.replace("_", " "): (lambda r, key=key: r[key]) for key in report["precision"][0]
    })
    paths = markdown_table(report["paths"], {"path": lambda r: r["path"], "status": lambda r: r["status"],
                                             "message": lambda r: r["message"]})
    header = f"GPU check on {report['device']} ({report['machine'].get('gpu', report['machine']['cpu'])})"
    notes = "".join(f"\n- {note}" for note in report["notes"])
    return (f"## {header}\n\n### 1. Scoring ({report['models']['scoring']})\n\n{scoring}\n\n### 2. Training step\n\n"
            f"{training}\n\n### 3. fp32 vs bf16\n\n{precision}\n\n### 4. Paths\n\n{paths}\n"
            + (f"\nNotes:{notes}\n" if notes else ""))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 16))
    device = pick_device(args.device)
    dtype = torch.float32 if device.type == "cpu" and args.tiny else torch.bfloat16
    started, notes = time.time(), []
    print(f"gpu check on {device} ({'tiny' if args.tiny else 'paper size'})", flush=True)
    model, processor, name = reward_model_and_processor(args, device, dtype)
    report = dict(
        benchmark="gpu_check", description=__doc__.split("\n\n")[0],
        command=" ".join([Path(sys.executable).name, *sys.argv]), device=str(device), machine=machine_info(),
        versions=versions(), settings={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        models={"scoring": name, "dtype": str(dtype)}, notes=notes,
        paper_seconds_per_evaluation=PAPER_SECONDS_PER_EVALUATION,
    )
    report["scoring"] = check_scoring(args, device, model, processor, notes)
    report["training"] = check_training(args, device, model, processor)
    del model
    free_memory(device)
    report["precision"] = check_precision(args, device, notes)
    report["paths"] = check_paths(args, device)
    report["duration_s"] = round(time.time() - started, 1)
    report["table"] = tables(report)
    print(report["table"], flush=True)
    suffix = "_tiny" if args.tiny else ""
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"gpu_check{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results_dir / f"gpu_check{suffix}.md").write_text(report["table"])
    print(f"wrote {args.results_dir / f'gpu_check{suffix}.json'} in {report['duration_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
