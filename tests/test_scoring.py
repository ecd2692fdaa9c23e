"""LlavaRewardScorer: score / compare / preference_matrix / rank / reward_fn on tiny real models."""

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward import LlavaRewardScorer
from llava_reward.image_inputs import InputError
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm
from llava_reward.testing import write_bad_image_files


PROMPTS = ["a red cat", "two dogs", "", "a lighthouse at dusk", "a bowl of soup"]
SIZES = [(32, 32), (24, 40), (40, 24), (32, 48), (16, 16)]


def make_scorer(family="llava", **config_fields) -> LlavaRewardScorer:
    vlm, vlm_processor = tiny_vlm(family)
    torch.manual_seed(0)
    model = LlavaRewardModel.from_vlm(vlm, **config_fields)
    return LlavaRewardScorer(model, LlavaRewardProcessor.from_vlm_processor(vlm_processor))


def gpm_logit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The GPM score written out: the block skew-symmetric product, one 2x2 block per pair of dimensions."""
    return sum(a[2 * k] * b[2 * k + 1] - a[2 * k + 1] * b[2 * k] for k in range(a.shape[-1] // 2))


@pytest.fixture(scope="module")
def images():
    return tiny_images(5, SIZES, seed=3)


@pytest.fixture(scope="module")
def bt_scorer():
    return make_scorer("llava", tau=0.5)


# ----------------------------------------------------------------------------- score


@pytest.mark.parametrize(
    "family, config_fields",
    [("llava", {}), ("qwen2_5_vl", {}), ("qwen2_5_vl", {"objective": "gpm", "reward_dim": 4}), ("llava_next", {})],
)
def test_score_equals_the_model_on_the_processor_output(family, config_fields, images):
    scorer = make_scorer(family, **config_fields)
    with torch.no_grad():
        expected = scorer.model(**scorer.processor(PROMPTS, images)).rewards
    scores = scorer.score(PROMPTS, images, batch_size=2)  # three batches, the last one short
    assert scores.shape == expected.shape == ((5,) if "reward_dim" not in config_fields else (5, 4))
    assert scores.dtype == torch.float32 and scores.device.type == "cpu"
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_scores_come_back_in_input_order(bt_scorer, images):
    scores = bt_scorer.score(PROMPTS, images, batch_size=2)
    assert scores.unique().numel() == 5  # distinct, so an order mix-up cannot go unnoticed
    order = [3, 0, 4, 2, 1]
    permuted = bt_scorer.score([PROMPTS[i] for i in order], [images[i] for i in order], batch_size=3)
    torch.testing.assert_close(permuted, scores[order], atol=1e-5, rtol=0)


def test_one_prompt_for_all_images(bt_scorer, images):
    torch.testing.assert_close(bt_scorer.score("a red cat", images), bt_scorer.score(["a red cat"] * 5, images))


def test_a_single_image_of_any_type_gives_one_score(bt_scorer, images):
    image = images[1]
    expected = bt_scorer.score("a cat", [image])
    array = np.array(image)  # writable, as torch.from_numpy wants
    chw = torch.from_numpy(array).permute(2, 0, 1)
    for single in (image, array, chw, chw / 255):
        scores = bt_scorer.score("a cat", single)
        assert scores.shape == (1,), type(single)  # a CHW tensor is one image, not three channels
        torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_the_scorer_runs_in_eval_mode_without_gradients():
    vlm, vlm_processor = tiny_vlm("llava")
    model = LlavaRewardModel.from_vlm(vlm).train()
    scorer = LlavaRewardScorer(model, LlavaRewardProcessor.from_vlm_processor(vlm_processor))
    assert not scorer.model.training
    with torch.enable_grad():
        scores = scorer.score("a cat", tiny_images(2))
    assert not scores.requires_grad


def test_dtype_casts_the_model_and_its_inputs(images):
    base = make_scorer("qwen2_5_vl")
    reference = base.score(PROMPTS, images)
    scorer = LlavaRewardScorer(base.model, base.processor, dtype="bfloat16")
    assert scorer.model.dtype == torch.bfloat16
    scores = scorer.score(PROMPTS, images)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, reference, atol=0.05, rtol=0.05)


def test_from_pretrained_with_subfolder_and_dtype(tmp_path, bt_scorer, images):
    bt_scorer.model.save_pretrained(tmp_path / "alignment")
    bt_scorer.processor.save_pretrained(tmp_path / "alignment")
    loaded = LlavaRewardScorer.from_pretrained(tmp_path, subfolder="alignment", device="cpu")
    torch.testing.assert_close(loaded.score(PROMPTS, images), bt_scorer.score(PROMPTS, images), atol=1e-6, rtol=0)
    assert LlavaRewardScorer.from_pretrained(tmp_path / "alignment", dtype="bfloat16").model.dtype == torch.bfloat16


def test_progress_bar_on_request_only(bt_scorer, images, capsys):
    bt_scorer.score(PROMPTS, images, batch_size=1, progress=True)
    assert "scoring" in capsys.readouterr().err
    bt_scorer.score(PROMPTS, images, batch_size=1)  # default: only on a terminal, and pytest's stderr is not one
    bt_scorer.score(PROMPTS, images, batch_size=1, progress=False)
    assert "scoring" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- compare, matrix, rank


def test_compare_is_the_bt_formula_on_scores(bt_scorer, images):
    rewards = bt_scorer.score("a red cat", images[:2])
    expected = torch.sigmoid((rewards[0] - rewards[1]) / 0.5).item()  # tau = 0.5 from the model's config
    assert bt_scorer.compare("a red cat", images[0], images[1]) == pytest.approx(expected, abs=1e-6)
    assert bt_scorer.compare("a red cat", images[1], images[0]) == pytest.approx(1 - expected, abs=1e-6)


@pytest.mark.parametrize("reward_dim", [2, 4])
def test_compare_is_the_gpm_formula_on_embeddings(reward_dim, images):
    scorer = make_scorer("qwen2_5_vl", objective="gpm", reward_dim=reward_dim, tau=0.2)
    embeddings = scorer.score("a red cat", images[:2])
    assert embeddings.shape == (2, reward_dim)
    expected = torch.sigmoid(gpm_logit(embeddings[0], embeddings[1]) / 0.2).item()
    assert scorer.compare("a red cat", images[0], images[1]) == pytest.approx(expected, abs=1e-5)


def test_compare_refuses_a_ce_model(images):
    with pytest.raises(ValueError, match="'ce' model scores each image on its own"):
        make_scorer("llava", objective="ce").compare("a cat", images[0], images[1])


@pytest.mark.parametrize("objective", ["bt", "gpm"])
def test_preference_matrix_entries_are_pairwise_comparisons(objective, images):
    scorer = make_scorer("llava", objective=objective, **({"reward_dim": 2} if objective == "gpm" else {}))
    matrix = scorer.preference_matrix("a red cat", images)
    assert matrix.shape == (5, 5)
    torch.testing.assert_close(matrix.diagonal(), torch.full((5,), 0.5))
    torch.testing.assert_close(matrix + matrix.T, torch.ones(5, 5), atol=1e-6, rtol=0)
    for i, j in [(0, 1), (3, 2), (4, 0)]:
        assert matrix[i, j].item() == pytest.approx(scorer.compare("a red cat", images[i], images[j]), abs=1e-5)


def test_bt_rank_sorts_by_reward(bt_scorer, images):
    order, scores = bt_scorer.rank("a red cat", images)
    rewards = bt_scorer.score("a red cat", images)
    torch.testing.assert_close(scores, rewards)
    assert order.tolist() == sorted(range(5), key=lambda i: -rewards[i].item())


def test_gpm_rank_is_by_copeland_wins(images):
    scorer = make_scorer("llava", objective="gpm", reward_dim=4)
    order, _ = scorer.rank("a red cat", images)
    p = {(i, j): scorer.compare("a red cat", images[i], images[j]) for i in range(5) for j in range(5) if i != j}
    copeland = {i: sum((p[i, j] > 0.5) - (p[i, j] < 0.5) for j in range(5) if j != i) for i in range(5)}
    summed = {i: sum(p[i, j] for j in range(5) if j != i) for i in range(5)}
    assert order.tolist() == sorted(range(5), key=lambda i: (-copeland[i], -summed[i]))
    assert copeland[order[0].item()] == max(copeland.values())


# ----------------------------------------------------------------------------- reward_fn


def test_reward_fn_takes_pil_lists_and_nchw_tensors(bt_scorer):
    pil_images = tiny_images(3, seed=5)
    nchw = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in pil_images]) / 255.0
    prompts = ["a cat", "a dog", "a fox"]
    from_pil, info = bt_scorer.reward_fn(pil_images, prompts, metadata=[{}, {}, {}])
    from_tensor, _ = bt_scorer.reward_fn(nchw, prompts)
    assert from_pil.shape == (3,) and not from_pil.requires_grad
    torch.testing.assert_close(from_tensor, from_pil, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_pil, bt_scorer.score(prompts, pil_images))
    assert info == {"objective": "bt", "perspective": bt_scorer.model.config.perspective}


def test_reward_fn_follows_the_model_dtype():
    scorer = make_scorer("llava")
    scorer = LlavaRewardScorer(scorer.model, scorer.processor, dtype=torch.bfloat16)
    scores, _ = scorer.reward_fn(torch.rand(2, 3, 32, 32), "a cat")  # float32 pixels into a bfloat16 model
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_reward_fn_refuses_gpm_embeddings():
    with pytest.raises(ValueError, match="'gpm' model outputs preference embeddings"):
        make_scorer("llava", objective="gpm", reward_dim=2).reward_fn(tiny_images(2), "a cat")


# ----------------------------------------------------------------------------- bad input


def count_forwards(scorer) -> list:
    calls = []
    scorer.model.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_errors_name_the_input_index_across_batches(tmp_path):
    scorer = make_scorer("llava")
    images = tiny_images(10)
    missing = write_bad_image_files(tmp_path)["missing"]
    with pytest.raises(InputError, match=rf"^image 9 \({missing}\): file not found"):
        scorer.score("a cat", images[:9] + [missing], batch_size=4)
    bad_tensor = torch.rand(10, 3, 32, 32)
    bad_tensor[5, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"^image 5 \(tensor\): contains NaN"):
        scorer.reward_fn(bad_tensor, "a cat", batch_size=4)
    with pytest.raises(InputError, match=r"^image 6 \(tensor\): float values must lie in \[0, 1\]"):
        scorer.score("a cat", list(torch.rand(6, 3, 8, 8)) + [torch.rand(3, 8, 8) * 2 - 1])


def test_bad_prompts_are_refused_before_any_forward():
    scorer = make_scorer("qwen2_5_vl")
    forwards = count_forwards(scorer)
    prompts = ["a cat"] * 7 + ["a <|image_pad|> cat", "a dog"]
    with pytest.raises(InputError, match=r"^prompt 7: contains the tokenizer's special token '<\|image_pad\|>'"):
        scorer.score(prompts, tiny_images(9), batch_size=2)
    with pytest.raises(InputError, match=r"^Got 2 prompts and 3 images"):
        scorer.score(["a", "b"], tiny_images(3))
    assert forwards == []


def test_an_image_the_family_cannot_process_is_located(images):
    scorer = make_scorer("qwen2_5_vl")
    batch = list(images[:5]) + [Image.new("RGB", (1, 300))] + list(images[:2])
    with pytest.raises(InputError, match=r"^in the batch of inputs 4 to 7: image 1 \(1x300 pixels\)"):
        scorer.score("a cat", batch, batch_size=4)


def test_decompression_bombs_are_refused(tmp_path, bt_scorer):
    bomb = write_bad_image_files(tmp_path)["decompression_bomb"]
    with pytest.raises(InputError, match=r"image 1 .*decompression bomb"):
        bt_scorer.score("a cat", [tiny_images(1)[0], bomb])


def test_a_100k_character_prompt_is_truncated_with_a_warning(bt_scorer, images, caplog):
    long_prompt = "a cat on a mat " * 6_700  # 100 500 characters
    processor = bt_scorer.processor
    with caplog.at_level(logging.WARNING):
        scores = bt_scorer.score(["a dog", long_prompt], images[:2], batch_size=1)
    assert caplog.text.count("truncated to max_prompt_tokens=256") == 1
    assert "prompt 1 has 100500 tokens" in caplog.text  # the index in the caller's list, not in its batch
    cut = processor.tokenizer.decode(processor.tokenizer(long_prompt, add_special_tokens=False)["input_ids"][:256])
    torch.testing.assert_close(scores[1], bt_scorer.score(cut, images[1])[0], atol=1e-6, rtol=0)


def test_an_empty_prompt_is_scored(bt_scorer, images):
    empty, described = bt_scorer.score(["", "a red cat"], [images[0], images[0]])
    assert torch.isfinite(empty) and empty != described


def test_the_documented_api_tour_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "docs" / "scoring.md").read_text()
    tour = re.search(r"## API tour\n\n```python\n(.*?)```", text, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(tour, "docs/scoring.md", "exec"), {})
    assert (tmp_path / "my-reward" / "model.safetensors").is_file()
