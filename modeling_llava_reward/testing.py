"""Tiny random VLMs with working processors, built offline in milliseconds, for tests, examples and benchmarks.

Every supported native family gets a model of the real architecture (two decoder layers, width 32) and the real
processor class of that family, with an in-memory byte-level tokenizer and the PIL image processor (no
torchvision, no Hub).

Example:
    >>> from llava_reward.testing import tiny_vlm, tiny_images
    >>> vlm, processor = tiny_vlm("qwen2_5_vl")
    >>> batch = processor(text=[processor.image_placeholder + "a cat"], images=tiny_images(1), return_tensors="pt")
    >>> sorted(key for key in batch if key != "pixel_values")
    ['attention_mask', 'image_grid_thw', 'input_ids', 'mm_token_type_ids']
"""

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from transformers import AutoModel
from transformers import PreTrainedModel
from transformers import PreTrainedTokenizerFast
from transformers import ProcessorMixin

from . import processing_llava_reward
from .families import get_family
from .processing_llava_reward import without_video


TEXT_SIZES = dict(
    vocab_size=320,  # 256 bytes + special tokens, rounded up
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
)
VISION_WIDTH = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)



def chatml_template(image_placeholder: str) -> str:
    """A ChatML chat template that writes `image_placeholder` for image parts (each family has its own)."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image_placeholder + "{% else %}"
        "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def byte_level_tokenizer(special_tokens: list[str], **named_tokens) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per UTF-8 byte, no merges) with the given special tokens, built in memory.

    `named_tokens` sets attributes such as `eos_token="<|im_end|>"` or `image_token="<image>"`.
    """
    # sorted: `alphabet()` returns the 256 byte symbols in a different order on every call.
    byte_vocab = {token: index for index, token in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    standard = {key: value for key, value in named_tokens.items() if key in ("eos_token", "pad_token", "bos_token")}
    extra = {key: value for key, value in named_tokens.items() if key not in standard}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, extra_special_tokens=extra or None, **standard)
    # Every tiny tokenizer speaks ChatML, whose end-of-turn token becomes the reward token.
    chat_tokens = [token for token in ("<|im_start|>", "<|im_end|>") if token not in special_tokens]
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens + chat_tokens})
    return tokenizer


def tiny_images(count: int, sizes: list[tuple[int, int]] | None = None, seed: int = 0) -> list[Image.Image]:
    """`count` random RGB images (width, height from `sizes`, default 32x32), reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    sizes = sizes or [(32, 32)] * count
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for width, height in sizes]


def _clip_llava(config_class, processor_class, image_processor, image_size: int, eos_token: str, **config_fields):
    """LLaVA-1.5 and LLaVA-NeXT share a CLIP tower (8-px patches) and a Llama decoder."""
    tokenizer = byte_level_tokenizer(["<image>"], eos_token=eos_token, pad_token="<pad>")
    config = config_class(
        text_config=dict(model_type="llama", **TEXT_SIZES),
        vision_config=dict(model_type="clip_vision_model", image_size=image_size, patch_size=8, **VISION_WIDTH),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        **config_fields,
    )
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
    )
    return config, processor, "<image>"


def _llava():
    from transformers import CLIPImageProcessorPil
    from transformers import LlavaConfig
    from transformers import LlavaProcessor

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return _clip_llava(LlavaConfig, LlavaProcessor, image_processor, 32, "<|im_end|>", image_seq_length=16)


def _llava_next():
    from transformers import LlavaNextConfig
    from transformers import LlavaNextImageProcessorPil
    from transformers import LlavaNextProcessor

    pinpoints = [[16, 16], [16, 32], [32, 16], [32, 32]]  # anyres: 1 to 4 tiles of 16 px, so token counts vary
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, image_grid_pinpoints=pinpoints
    )
    return _clip_llava(
        LlavaNextConfig, LlavaNextProcessor, image_processor, 16, "</s>", image_grid_pinpoints=pinpoints
    )


QWEN_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen_tokenizer():
    return byte_level_tokenizer(QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _qwen_token_ids(tokenizer):
    return dict(
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )


# Qwen-VL image processors: 4-px patches merged 2x2, so a 32x32 image gives 16 visual tokens; sizes vary per image.
QWEN_IMAGE_PROCESSOR = dict(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8, max_pixels=48 * 48)
QWEN_TEXT_ROPE = dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2])  # sums to head_dim / 2


def _qwen2_vl():
    from transformers import Qwen2VLConfig
    from transformers import Qwen2VLImageProcessorPil
    from transformers import Qwen2VLProcessor

    tokenizer = _qwen_tokenizer()
    config = Qwen2VLConfig(
        text_config=dict(**TEXT_SIZES, rope_parameters=QWEN_TEXT_ROPE),
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=4, spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        **_qwen_token_ids(tokenizer),
    )
    processor = without_video(Qwen2VLProcessor)(image_processor=Qwen2VLImageProcessorPil(**QWEN_IMAGE_PROCESSOR), tokenizer=tokenizer)
    return config, processor, "<|vision_start|><|image_pad|><|vision_end|>"


def _qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig
    from transformers import Qwen2_5_VLProcessor
    from transformers import Qwen2VLImageProcessorPil

    tokenizer = _qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config=dict(**TEXT_SIZES, rope_parameters=QWEN_TEXT_ROPE),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=4,
            spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1],
        ),
        **_qwen_token_ids(tokenizer),
    )
    processor = without_video(Qwen2_5_VLProcessor)(
        image_processor=Qwen2VLImageProcessorPil(**QWEN_IMAGE_PROCESSOR), tokenizer=tokenizer
    )
    return config, processor, "<|vision_start|><|image_pad|><|vision_end|>"


def _qwen3_vl():
    from transformers import Qwen2VLImageProcessorPil
    from transformers import Qwen3VLConfig
    from transformers import Qwen3VLProcessor

    tokenizer = _qwen_tokenizer()
    text_sizes = dict(TEXT_SIZES, head_dim=8)
    config = Qwen3VLConfig(
        text_config=dict(**text_sizes, rope_parameters=dict(QWEN_TEXT_ROPE, mrope_interleaved=True)),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=4,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0],
        ),
        **_qwen_token_ids(tokenizer),
    )
    processor = without_video(Qwen3VLProcessor)(image_processor=Qwen2VLImageProcessorPil(**QWEN_IMAGE_PROCESSOR), tokenizer=tokenizer)
    return config, processor, "<|vision_start|><|image_pad|><|vision_end|>"


def _idefics3():
    from transformers import Idefics3Config
    from transformers import Idefics3ImageProcessorPil
    from transformers import Idefics3Processor

    special = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    special += [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
    tokenizer = byte_level_tokenizer(special, eos_token="<end_of_utterance>", pad_token="<pad>")
    config = Idefics3Config(
        text_config=dict(model_type="llama", **TEXT_SIZES),
        vision_config=dict(image_size=32, patch_size=8, **VISION_WIDTH),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    # 32 / 8 = 4x4 patches, pixel-shuffled by scale_factor 2: 4 visual tokens per image.
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4)
    return config, processor, "<image>"


def _gemma3():
    from transformers import Gemma3Config
    from transformers import Gemma3ImageProcessorPil
    from transformers import Gemma3Processor

    tokenizer = byte_level_tokenizer(
        ["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"],
        eos_token="<end_of_turn>",
        pad_token="<pad>",
        boi_token="<start_of_image>",
        eoi_token="<end_of_image>",
        image_token="<image_soft_token>",
    )
    config = Gemma3Config(
        text_config=dict(
            **dict(TEXT_SIZES, head_dim=8), sliding_window=64, layer_types=["sliding_attention", "full_attention"]
        ),
        vision_config=dict(model_type="siglip_vision_model", image_size=32, patch_size=8, **VISION_WIDTH),
        mm_tokens_per_image=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4)
    return config, processor, "<start_of_image>"


TINY_FAMILIES: dict[str, Callable] = {
    "llava": _llava,
    "llava_next": _llava_next,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl,
    "qwen3_vl": _qwen3_vl,
    "idefics3": _idefics3,
    "gemma3": _gemma3,
}


def tiny_vlm(family: str, *, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A tiny random VLM base model (`AutoModel`, no LM head) of `family` and a working processor for it.

    The processor carries `image_placeholder`: the text that stands for one image in its input.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"No tiny model for family {family!r}; available: {', '.join(TINY_FAMILIES)}.")
    config, processor, placeholder = TINY_FAMILIES[family]()
    processor.chat_template = chatml_template(placeholder)
    config.get_text_config(decoder=True).vocab_size = len(processor.tokenizer)
    torch.manual_seed(seed)
    vlm = AutoModel.from_config(config).eval()
    _randomise_zero_projector_weights(vlm)
    processor.image_placeholder = placeholder
    return vlm, processor


def save_tiny_vlm(family: str, directory, *, seed: int = 0) -> Path:
    """Save a tiny VLM base and its processor to `directory`, laid out like a base model on the Hub.

    The folder loads with `AutoModel.from_pretrained` and `LlavaRewardProcessor.from_base`, so a reward model can
    record it as its `base_model` (what `llava-reward train` and adapter bundles need).
    """
    vlm, processor = tiny_vlm(family, seed=seed)
    vlm.save_pretrained(directory)
    processor.save_pretrained(directory)
    return Path(directory)


@torch.no_grad()
def _randomise_zero_projector_weights(vlm: PreTrainedModel):
    # Gemma3 initialises its projector matrix to zeros: a random tiny model would then ignore its images.
    for parameter in get_family(vlm.config.model_type).projector_parameters(vlm).values():
        if parameter.ndim == 2 and not parameter.any():
            parameter.normal_(std=0.02)


def write_bad_image_files(folder) -> dict[str, Path]:
    """Files an image loader must refuse, written into `folder` (for tests of loaders, scorers and commands).

    Keys: `missing` (not written), `empty`, `truncated` (half a PNG), `not_an_image` (text), `folder`, and
    `decompression_bomb` (a 60-byte PNG whose header claims 20000x20000 pixels, over Pillow's MAX_IMAGE_PIXELS).
    """
    folder = Path(folder)
    encoded = io.BytesIO()
    tiny_images(1, [(64, 64)])[0].save(encoded, format="PNG")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # width, height, 8-bit RGB
    contents = {
        "empty": b"",
        "truncated": encoded.getvalue()[: len(encoded.getvalue()) // 2],
        "not_an_image": b"a caption, not an image\n",
        "decompression_bomb": b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""),
    }
    paths = {"missing": folder / "missing.png", "folder": folder / "a_folder.png"}
    paths["folder"].mkdir(exist_ok=True)
    for name, content in contents.items():
        paths[name] = folder / f"{name}.png"
        paths[name].write_bytes(content)
    return paths


def save_tiny_perspective(
    base_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    perspective: str,
    lora: bool = True,
    seed: int = 0,
    base_model: str | None = None,
    **config_fields,
) -> Path:
    """An adapter bundle on the tiny base VLM saved at `base_dir`, as if trained: non-zero LoRA B weights (so
    adapters differ), a perturbed projector and a random head, seeded by `seed`.

    `base_model` records another name for the base (e.g. the Hub id it has in a hand-made cache).
    """
    from .bundle import save_reward_bundle
    from .modeling_llava_reward import LlavaRewardModel

    torch.manual_seed(seed)
    model = LlavaRewardModel.from_vlm(str(base_dir), perspective=perspective, **config_fields)
    if base_model is not None:
        model.config.base_model = base_model
    with torch.no_grad():
        for parameter in model.family.projector_parameters(model.vlm).values():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    if lora:
        from peft import LoraConfig
        from peft import get_peft_model

        model = get_peft_model(model, LoraConfig(target_modules=model.family.lora_target_modules, r=4, lora_alpha=8))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(std=0.1)
    return save_reward_bundle(model, out_dir, processing_llava_reward.LlavaRewardProcessor.from_base(str(base_dir)))
