"""How much GPU memory training a LLaVA-Reward perspective needs, per GPU, before launching it.

    python -m llava_reward.trainers.memory                  # the recipes' table (docs/training.md)
    python -m llava_reward.trainers.memory --backbone qwen2_5_vl_72b --setup fsdp --gpus 8 --pairs-per-gpu 1
    python -m llava_reward.trainers.memory --backbone qwen2_5_vl_7b --setup single --no-activation-checkpointing --json

Parameter counts are exact: the reward model (LoRA, projector, SkipCA, value head) is built on the meta device from
the backbone's architecture numbers (no weights, no download) and counted. Bytes per parameter follow the training
set-up (see `estimate_memory`); activations follow a per-token, per-decoder-layer count of what autograd keeps for
the backward pass, an estimate to check against a measured peak (`benchmarks/gpu_check.py` measures one step).

The Qwen2.5-VL configurations are written here from the published architecture numbers (the checkpoints'
`config.json`): 7B: hidden 3584, 28 layers, 28 heads, 4 key-value heads, MLP 18944; 32B: hidden 5120, 64 layers,
40 heads, 8 key-value heads, MLP 27648; 72B: hidden 8192, 80 layers, 64 heads, 8 key-value heads, MLP 29568;
all: vocabulary 152064, a 32-block vision tower of width 1280 (MLP 3420, 16 heads, 14 px patches merged 2 x 2)
whose projector outputs the language model's width.

Example:
    >>> from llava_reward.trainers.memory import backbone_config, estimate_memory
    >>> estimate = estimate_memory(backbone_config("qwen2_5_vl_7b"), setup="single", pairs_per_gpu=8)
    >>> round(estimate.trainable / 1e6, 1), estimate.image_tokens
    (406.1, 1369)
"""

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass


GIB = 2**30
# Published architecture numbers of Qwen2.5-VL's language models (the vision tower is the same for all sizes).
QWEN2_5_VL_TEXT = {
    "qwen2_5_vl_7b": dict(
        hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944
    ),
    "qwen2_5_vl_32b": dict(
        hidden_size=5120, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8, intermediate_size=27648
    ),
    "qwen2_5_vl_72b": dict(
        hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, intermediate_size=29568
    ),
}
QWEN2_5_VL_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
    temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
)
BACKBONES = tuple(QWEN2_5_VL_TEXT)
SETUPS = {
    # name: (what is sharded across the GPUs, accelerate config file)
    "single": ((), None),
    "ddp": ((), "configuration/accelerate/ddp.yaml"),
    "zero2": (("gradients", "optimizer"), "configuration/accelerate/deepspeed_zero2.yaml"),
    "fsdp": (("weights", "gradients", "optimizer"), "configuration/accelerate/fsdp.yaml"),
    "zero3": (("weights", "gradients", "optimizer"), "configuration/accelerate/deepspeed_zero3.yaml"),
}
# What autograd keeps per token and per decoder layer for the backward pass, in 2-byte (bf16) values, for a
# Llama/Qwen decoder layer with LoRA (dropout > 0) on its 7 linear layers and SDPA/flash attention (no T x T scores):
# per hidden unit: the two RMSNorms' inputs and fp32 upcasts (2 x 3), the normed inputs of the projections (2),
# 7 LoRA dropout outputs + their masks (7 x 1.5), query before/after RoPE and attention output (3), o_proj input (1)
# -> 22.5; per key-value unit: key before/after RoPE and value (3); per MLP unit: gate, up, silu(gate), their product
# and its LoRA dropout output + mask (5.5); per LoRA rank unit: the 7 lora_A outputs (7).
ACTIVATION_UNITS = dict(hidden=22.5, key_value=3.0, intermediate=5.5, lora_rank=7.0)


def backbone_config(name: str):
    """The `Qwen2_5_VLConfig` of a published Qwen2.5-VL size (`BACKBONES`), from its architecture numbers."""
    from transformers import Qwen2_5_VLConfig

    if name not in QWEN2_5_VL_TEXT:
        raise ValueError(f"Unknown backbone {name!r}; choose from {', '.join(BACKBONES)}.")
    text = QWEN2_5_VL_TEXT[name]
    return Qwen2_5_VLConfig(
        text_config=dict(
            **text, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
            rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24]),
        ),
        vision_config=dict(**QWEN2_5_VL_VISION, out_hidden_size=text["hidden_size"]),
        tie_word_embeddings=False,
    )


def qwen_image_tokens(image_px: int, vision_config, max_pixels: int = 16384 * 28 * 28) -> int:
    """Visual tokens of a square `image_px` image in Qwen2.5-VL: resized to a multiple of patch x merge (28 px)
    within `max_pixels` (the published code's `qwen_vl_utils` defaults), one token per 2 x 2 merged patches."""
    factor = vision_config.patch_size * vision_config.spatial_merge_size
    side = max(factor, round(image_px / factor) * factor)
    if side * side > max_pixels:
        side = math.floor(math.sqrt(max_pixels) / factor) * factor
    return (side // factor) ** 2


@dataclass
class ParameterCounts:
    trainable: int
    frozen: int
    lora: int
    projector: int
    head: int  # SkipCA + value head
    largest_layer: int  # parameters of one decoder layer (the largest FSDP / ZeRO-3 unit gathered at a time)


def count_parameters(vlm_config, *, tuning: str = "lora", lora_r: int = 128, train_projector: bool = True):
    """Exact parameter counts of the reward model on `vlm_config` as `LlavaRewardTrainer` trains it (meta device)."""
    import torch
    from transformers import AutoModel

    from llava_reward import LlavaRewardModel

    from .trainer import LlavaRewardTrainingConfig
    from .trainer import prepare_for_training

    args = LlavaRewardTrainingConfig(
        output_dir="unused", tuning=tuning, lora_r=lora_r, lora_alpha=2 * lora_r, train_projector=train_projector,
        use_cpu=True, report_to="none",
    )
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = LlavaRewardModel.from_vlm(AutoModel.from_config(vlm_config), objective="bt")
        model = prepare_for_training(model, args)
    named = dict(model.named_parameters())
    trainable = {name: p.numel() for name, p in named.items() if p.requires_grad}
    projector = sum(n for name, n in trainable.items() if ".visual.merger." in name or "multi_modal_projector" in name)
    head = sum(n for name, n in trainable.items() if "skip_cross_attention." in name or "value_head." in name)
    lora = sum(n for name, n in trainable.items() if "lora_" in name)
    layer = max(sum(p.numel() for p in layer.parameters()) for layer in _decoder_layers(model))
    return ParameterCounts(
        trainable=sum(trainable.values()), frozen=sum(p.numel() for p in named.values()) - sum(trainable.values()),
        lora=lora, projector=projector, head=head, largest_layer=layer,
    )


def _decoder_layers(model):
    reward_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return reward_model.decoder.layers


@dataclass
class MemoryEstimate:
    """GiB per GPU, by kind; `total` is their sum (allocator fragmentation and CUDA context not included)."""

    backbone: str
    setup: str
    gpus: int
    pairs_per_gpu: int
    image_tokens: int
    sequence_tokens: int
    activation_checkpointing: bool
    trainable: int
    frozen: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    total: float

    def row(self) -> dict:
        return dataclasses.asdict(self)


def estimate_memory(
    vlm_config,
    *,
    name: str = "",
    setup: str = "single",
    gpus: int = 1,
    pairs_per_gpu: int = 8,
    image_px: int = 1024,
    prompt_tokens: int = 32,
    activation_checkpointing: bool = True,
    lora_r: int = 128,
    counts: ParameterCounts | None = None,
) -> MemoryEstimate:
    """Memory per GPU of one training step (chosen + rejected images in one batch of 2 x `pairs_per_gpu`).

    Bytes: frozen weights in bf16 (2 per parameter); trainable ones as fp32 master weights (4), fp32 gradients (4)
    and AdamW's two fp32 moments (8), as under accelerate's FSDP2 mixed precision and for PEFT's LoRA weights.
    `setup` says what is divided by `gpus` (`SETUPS`): nothing (`single`, `ddp`, which also keeps a gradient bucket
    copy: +4 per trainable parameter), gradients and optimizer states (`zero2`), or everything (`fsdp`, `zero3`,
    which gather two decoder layers at a time in bf16: the one running and the one prefetched).
    Activations: `ACTIVATION_UNITS` per token and decoder layer, all layers kept without activation checkpointing;
    with it, each layer's input plus one layer's activations during its recomputation. The frozen vision tower keeps
    nothing for the backward pass (nothing before it is trained); one vision block's working set is added.
    """
    if setup not in SETUPS:
        raise ValueError(f"Unknown setup {setup!r}; choose from {', '.join(SETUPS)}.")
    if setup == "single" and gpus != 1:
        raise ValueError("setup 'single' means one GPU; use ddp, zero2, fsdp or zero3 for more.")
    counts = counts or count_parameters(vlm_config, lora_r=lora_r)
    sharded, _ = SETUPS[setup]
    text, vision = vlm_config.get_text_config(decoder=True), vlm_config.vision_config

    def share(kind: str, size: float) -> float:
        return size / gpus if kind in sharded else size

    weights = share("weights", 2 * counts.frozen + 4 * counts.trainable)
    if "weights" in sharded:
        weights += 2 * 2 * counts.largest_layer
    gradients = share("gradients", 4 * counts.trainable) + (4 * counts.trainable if setup == "ddp" else 0)
    optimizer = share("optimizer", 8 * counts.trainable)

    image_tokens = qwen_image_tokens(image_px, vision)
    rows = 2 * pairs_per_gpu
    tokens = rows * (image_tokens + prompt_tokens)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token_layer = 2 * (
        ACTIVATION_UNITS["hidden"] * text.hidden_size
        + ACTIVATION_UNITS["key_value"] * text.num_key_value_heads * head_dim
        + ACTIVATION_UNITS["intermediate"] * text.intermediate_size
        + ACTIVATION_UNITS["lora_rank"] * lora_r
    )
    if activation_checkpointing:
        language = tokens * (2 * text.hidden_size * text.num_hidden_layers + per_token_layer)
    else:
        language = tokens * per_token_layer * text.num_hidden_layers
    patches = image_tokens * vision.spatial_merge_size**2  # per image, before merging
    vision_block = rows * patches * 2 * (6 * vision.hidden_size + 3 * vision.intermediate_size)
    activations = language + vision_block

    sizes = [weights / GIB, gradients / GIB, optimizer / GIB, activations / GIB]
    return MemoryEstimate(
        backbone=name, setup=setup, gpus=gpus, pairs_per_gpu=pairs_per_gpu, image_tokens=image_tokens,
        sequence_tokens=image_tokens + prompt_tokens, activation_checkpointing=activation_checkpointing,
        trainable=counts.trainable, frozen=counts.frozen, weights=sizes[0], gradients=sizes[1], optimizer=sizes[2],
        activations=sizes[3], total=sum(sizes),
    )


# The set-ups of the recipes: the paper's global batch of 32 pairs (8 x gradient accumulation 4 on one GPU).
RECIPE_SETUPS = (
    ("qwen2_5_vl_7b", "single", 1, 8),
    ("qwen2_5_vl_7b", "ddp", 4, 8),
    ("qwen2_5_vl_7b", "fsdp", 8, 1),
    ("qwen2_5_vl_32b", "single", 1, 8),
    ("qwen2_5_vl_32b", "fsdp", 8, 1),
    ("qwen2_5_vl_32b", "zero3", 8, 1),
    ("qwen2_5_vl_72b", "fsdp", 8, 1),
    ("qwen2_5_vl_72b", "zero3", 8, 1),
    ("qwen2_5_vl_72b", "fsdp", 16, 1),
)


def recipe_table(image_px: int = 1024, prompt_tokens: int = 32, gpu_gib: float = 80.0) -> tuple[str, list[dict]]:
    """The markdown table of `RECIPE_SETUPS` (with and without activation checkpointing) and its rows."""
    counts, rows = {}, []
    for name, setup, gpus, pairs in RECIPE_SETUPS:
        config = backbone_config(name)
        counts.setdefault(name, count_parameters(config))
        for checkpointing in (True, False):
            estimate = estimate_memory(
                config, name=name, setup=setup, gpus=gpus, pairs_per_gpu=pairs, image_px=image_px,
                prompt_tokens=prompt_tokens, activation_checkpointing=checkpointing, counts=counts[name],
            )
            rows.append(estimate.row() | {"fits": estimate.total <= gpu_gib})
    header = (
        "| backbone | set-up | GPUs | pairs / GPU / step | trainable | frozen | weights | grads | optimizer | "
        f"activations (ckpt on / off) | total GiB per GPU (ckpt on / off) | fits {gpu_gib:g} GB |"
    )
    lines = [header, "|" + "---|" * 12]
    for on, off in zip(rows[::2], rows[1::2]):
        fits = "yes" if on["fits"] and off["fits"] else "with ckpt" if on["fits"] else "no"
        lines.append(
            f"| {on['backbone']} | {on['setup']} | {on['gpus']} | {on['pairs_per_gpu']} | "
            f"{on['trainable'] / 1e6:.0f} M | {on['frozen'] / 1e9:.2f} B | {on['weights']:.1f} | "
            f"{on['gradients']:.1f} | {on['optimizer']:.1f} | "
            f"{on['activations']:.1f} / {off['activations']:.1f} | {on['total']:.1f} / {off['total']:.1f} | {fits} |"
        )
    return "\n".join(lines), rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llava_reward.trainers.memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backbone", choices=BACKBONES, help="one estimate instead of the recipes' table")
    parser.add_argument("--setup", choices=tuple(SETUPS), default="single")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--pairs-per-gpu", type=int, default=8, help="per_device_train_batch_size (pairs)")
    parser.add_argument("--image-px", type=int, default=1024, help="side of the (square) input images")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="text tokens per row besides the image")
    parser.add_argument("--lora-r", type=int, default=128)
    parser.add_argument("--no-activation-checkpointing", action="store_true")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU, for the 'fits' column")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    if args.backbone is None:
        table, rows = recipe_table(args.image_px, args.prompt_tokens, args.gpu_gib)
        print(json.dumps(rows, indent=1) if args.json else table)
        return 0
    estimate = estimate_memory(
        backbone_config(args.backbone), name=args.backbone, setup=args.setup, gpus=args.gpus,
        pairs_per_gpu=args.pairs_per_gpu, image_px=args.image_px, prompt_tokens=args.prompt_tokens,
        activation_checkpointing=not args.no_activation_checkpointing, lora_r=args.lora_r,
    )
    if args.json:
        print(json.dumps(estimate.row(), indent=1))
    else:
        print("\n".join(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}"
                        for key, value in estimate.row().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
