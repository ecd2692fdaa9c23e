"""Tiny random diffusers pipelines (Stable Diffusion, SDXL, SD3, Flux) built offline in a fraction of a second.

The components follow the "dummy components" of diffusers' own fast tests; the tokenizers are built in memory
(character-level CLIP BPE and T5 unigram vocabularies), so nothing is downloaded. The pipelines produce noise, not
pictures: they exist to exercise the steering hooks on the real pipeline classes.

Example:
    >>> from llava_reward.steering.testing import tiny_sd_pipeline
    >>> pipe = tiny_sd_pipeline()
    >>> pipe("a cat", num_inference_steps=2, output_type="pt").images.shape
    torch.Size([1, 3, 16, 16])
"""

import string

import torch
from diffusers import AutoencoderKL
from diffusers import DDIMScheduler
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers import FluxPipeline
from diffusers import FluxTransformer2DModel
from diffusers import SD3Transformer2DModel
from diffusers import StableDiffusion3Pipeline
from diffusers import StableDiffusionPipeline
from diffusers import StableDiffusionXLPipeline
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig
from transformers import CLIPTextModel
from transformers import CLIPTextModelWithProjection
from transformers import CLIPTokenizer
from transformers import T5Config
from transformers import T5EncoderModel
from transformers import T5Tokenizer


CHARACTERS = string.ascii_lowercase + string.digits


def tiny_clip_tokenizer(model_max_length: int = 16) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (no merges), built in memory.

    `model_max_length` must be set: without it the tokenizer pads to an unbounded length and overflows.
    """
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for character in CHARACTERS:  # CLIP's BPE marks a word's last symbol with </w>
        vocab[character] = len(vocab)
        vocab[character + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 16) -> T5Tokenizer:
    """A character-level T5 (unigram) tokenizer, built in memory."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(character, -2.0) for character in CHARACTERS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def tiny_clip_text_model(hidden_size: int, *, projection_dim: int | None = None, seed: int = 0):
    """A two-layer CLIP text encoder for `tiny_clip_tokenizer` (with a projection when `projection_dim` is set)."""
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=len(tiny_clip_tokenizer().get_vocab()),
        max_position_embeddings=16,
        projection_dim=projection_dim or hidden_size,
        hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model_class = CLIPTextModelWithProjection if projection_dim else CLIPTextModel
    return model_class(config).eval()


def tiny_t5_encoder(d_model: int = 32, seed: int = 0) -> T5EncoderModel:
    config = T5Config(
        d_model=d_model, d_ff=2 * d_model, d_kv=8, num_heads=4, num_layers=2, vocab_size=len(tiny_t5_tokenizer()),
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def ddim_scheduler() -> DDIMScheduler:
    """Stable Diffusion's noise schedule with DDIM sampling (what FK steering runs with eta = 1)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_vae(*, block_out_channels=(4, 8), latent_channels: int = 4, seed: int = 0, **config) -> AutoencoderKL:
    torch.manual_seed(seed)
    blocks = len(block_out_channels)
    return AutoencoderKL(
        block_out_channels=list(block_out_channels),
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        latent_channels=latent_channels,
        norm_num_groups=min(block_out_channels),
        **config,
    ).eval()


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny Stable Diffusion pipeline: 16x16 images from 8x8x4 latents, DDIM scheduler."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
        attention_head_dim=2,
    ).eval()
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=tiny_vae(seed=seed),
        text_encoder=tiny_clip_text_model(8, seed=seed),
        tokenizer=tiny_clip_tokenizer(),
        scheduler=ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny SDXL pipeline (two CLIP encoders, text-time conditioning): 16x16 images, DDIM scheduler."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 16,  # six time ids x 8 + the pooled text embedding
        cross_attention_dim=16 + 16,  # the two text encoders' hidden states, concatenated
        norm_num_groups=2,
    ).eval()
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=tiny_vae(seed=seed),
        text_encoder=tiny_clip_text_model(16, seed=seed),
        text_encoder_2=tiny_clip_text_model(16, projection_dim=16, seed=seed + 1),
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(),
        scheduler=ddim_scheduler(),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flow_vae(seed: int = 0) -> AutoencoderKL:
    # Flux and SD3 VAEs have a shift factor (latents = (z - shift) * scale) and no quant convs.
    return tiny_vae(
        block_out_channels=(4,), latent_channels=4, seed=seed, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )


def tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """A tiny Stable Diffusion 3 pipeline (flow matching, MMDiT; no T5, which SD3 allows): 16x16 images."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        vae=flow_vae(seed),
        text_encoder=tiny_clip_text_model(32, projection_dim=32, seed=seed),
        text_encoder_2=tiny_clip_text_model(32, projection_dim=32, seed=seed + 1),
        text_encoder_3=None,
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(),
        tokenizer_3=None,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """A tiny Flux pipeline (flow matching, packed latents, CLIP + T5 text encoders): 16x16 images."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    ).eval()
    pipe = FluxPipeline(
        transformer=transformer,
        vae=flow_vae(seed),
        text_encoder=tiny_clip_text_model(32, seed=seed),
        text_encoder_2=tiny_t5_encoder(32, seed=seed),
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
