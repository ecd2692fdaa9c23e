"""LlavaRewardTrainer: loss values, learning a separable task, what is trained, saving, resuming, metrics."""

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardScorer
from llava_reward.bundle import unwrap
from llava_reward.objectives import get_objective
from llava_reward.testing import save_tiny_vlm
from llava_reward.trainers import LlavaRewardTrainer
from llava_reward.trainers import LlavaRewardTrainingConfig
from llava_reward.trainers.data import load_preference_data
from llava_reward.trainers.synthetic import write_colour_task


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


pytestmark = pytest.mark.usefixtures("one_intraop_thread")

# ---- losses against hand-computed numbers --------------------------------------------------------------------


def test_bt_loss_with_temperature_and_margin():
    chosen, rejected = torch.tensor([1.0, 0.2]), torch.tensor([0.5, 0.4])
    # s = [0.5, -0.2]; s / 0.1 = [5, -2]; -log sigmoid(5) = 0.0067153485, -log sigmoid(-2) = 2.1269280110
    assert get_objective("bt").pair_loss(chosen, rejected, tau=0.1).item() == pytest.approx((0.0067153485 + 2.1269280110) / 2)
    # margins [0.1, 0]: (s - m) / 0.1 = [4, -2]; -log sigmoid(4) = 0.0181499279
    margin = torch.tensor([0.1, 0.0])
    loss = get_objective("bt").pair_loss(chosen, rejected, tau=0.1, margin=margin)
    assert loss.item() == pytest.approx((0.0181499279 + 2.1269280110) / 2)


def test_gpm_loss_for_two_and_four_dimensions():
    # D = 2: s = c0 r1 - c1 r0 = 1 * (-1) - 2 * 3 = -7; -log sigmoid(-7) = 7.0009114664
    loss = get_objective("gpm").pair_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]), tau=1.0)
    assert loss.item() == pytest.approx(7.0009114664)
    # D = 4: blocks -7 and 0.5 * 2 - 0 * 0 = 1, so s = -6; tau 2: -log sigmoid(-3) = 3.0485873516
    chosen, rejected = torch.tensor([[1.0, 2.0, 0.5, 0.0]]), torch.tensor([[3.0, -1.0, 0.0, 2.0]])
    assert get_objective("gpm").pair_loss(chosen, rejected, tau=2.0).item() == pytest.approx(3.0485873516)
    # antisymmetric: swapping the pair flips s
    assert get_objective("gpm").pair_loss(rejected, chosen, tau=2.0).item() == pytest.approx(softplus(-3.0))


def test_cross_entropy_on_pairs_and_on_labelled_images():
    # BCE(2, 1) = log(1 + e^-2) = 0.1269280110; BCE(-1, 0) = log(1 + e^-1) = 0.3132616875
    loss = get_objective("ce").pair_loss(torch.tensor([2.0]), torch.tensor([-1.0]), tau=0.1)
    assert loss.item() == pytest.approx(0.1269280110 + 0.3132616875)
    # BCE(0, 1) = log 2 = 0.6931471806; BCE(3, 0) = log(1 + e^3) = 3.0485873516
    assert get_objective("ce").labelled_loss(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 0.0])).item() == pytest.approx(
        (0.6931471806 + 3.0485873516) / 2
    )


# ---- configuration ---------------------------------------------------------------------------------------------


def test_config_defaults_are_cpu_safe_and_the_papers():
    args = LlavaRewardTrainingConfig(output_dir="out", use_cpu=True)
    assert (args.tuning, args.lora_r, args.lora_alpha, args.lora_dropout) == ("lora", 128, 256, 0.05)
    assert args.learning_rate == 2e-4 and args.margin_scale == 0.0
    assert args.bf16 is False and args.activation_checkpointing is False
    assert args.objective is None and args.tau is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(tuning="qlora"), r"`tuning` must be one of \('lora', 'head', 'full'\)"),
        (dict(objective="dpo"), r"`objective` must be one of"),
        (dict(tau=0), r"`tau` must be > 0"),
        (dict(objective="gpm", margin_scale=1.0), r"`margin_scale` applies to the 'bt' loss only"),
        (dict(lora_r=0), r"LoRA needs lora_r > 0"),
        (dict(max_length=512), r"`max_length` is a text-tokenizer setting"),
    ],
)
def test_config_rejects_invalid_values(fields, message):
    with pytest.raises(ValueError, match=message):
        LlavaRewardTrainingConfig(output_dir="out", use_cpu=True, **fields)


# ---- training on a tiny model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(save_tiny_vlm("llava", tmp_path_factory.mktemp("base")))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_colour_task(tmp_path_factory.mktemp("task"), train_pairs=64, eval_pairs=16)


def make_trainer(base, task, output_dir, objective="bt", train_kind="pairs", **fields):
    torch.manual_seed(0)
    model = LlavaRewardModel.from_vlm(base, objective=objective, reward_dim=2 if objective == "gpm" else 1)
    settings = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        max_steps=20,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    args = LlavaRewardTrainingConfig(**{**settings, **fields})
    return LlavaRewardTrainer(
        model,
        args,
        train_dataset=load_preference_data(task[f"train_{train_kind}"]),
        eval_dataset=load_preference_data(task["eval_pairs"]),
    )


@pytest.mark.parametrize(("objective", "train_kind"), [("bt", "pairs"), ("gpm", "pairs"), ("ce", "labelled")])
def test_tiny_model_learns_the_colour_task(base, task, tmp_path, objective, train_kind):
    trainer = make_trainer(
        base, task, tmp_path, objective=objective, train_kind=train_kind, per_device_train_batch_size=8
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    # Held-out pairs, never trained on. A random head may already rank one colour first, so the loss must also drop.
    assert after["eval_accuracy"] >= 0.95
    assert after["eval_loss"] < before["eval_loss"] / 5
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"loss", "accuracy", "reward_mean", "reward_std", "learning_rate"} <= set(logged[-1])
    assert ("margin" in logged[-1]) == (train_kind == "pairs")
    assert {"eval_loss", "eval_accuracy", "eval_margin", "eval_reward_mean", "eval_reward_std"} <= set(after)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_lora_trains_adapters_projector_skipca_and_head_only(base, task, tmp_path, activation_checkpointing):
    trainer = make_trainer(base, task, tmp_path, max_steps=3, activation_checkpointing=activation_checkpointing)
    before = snapshot(trainer.model)
    trainer.train()
    changed = {name for name, value in snapshot(trainer.model).items() if not torch.equal(value, before[name])}
    trainable = {name for name, parameter in trainer.model.named_parameters() if parameter.requires_grad}
    assert changed == trainable  # every trainable parameter moved, nothing else did
    groups = ("lora_", "multi_modal_projector", "skip_cross_attention", "value_head")
    assert all(any(group in name for name in changed) for group in groups)
    assert all(any(group in name for group in groups) for name in changed)
    frozen = set(before) - trainable
    assert any("vision_tower" in name for name in frozen) and any("base_layer" in name for name in frozen)


def test_head_and_full_tuning(base, task, tmp_path):
    trainer = make_trainer(base, task, tmp_path / "head", tuning="head", train_projector=False, max_steps=2)
    trainable = {name for name, parameter in trainer.model.named_parameters() if parameter.requires_grad}
    assert trainable and all(name.startswith(("skip_cross_attention.", "value_head.")) for name in trainable)

    trainer = make_trainer(base, task, tmp_path / "full", tuning="full", max_steps=2)
    frozen = {name for name, parameter in trainer.model.named_parameters() if not parameter.requires_grad}
    assert frozen and all(name.startswith("vlm.vision_tower.") for name in frozen)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    assert not torch.equal(
        after["vlm.language_model.layers.0.mlp.up_proj.weight"],
        before["vlm.language_model.layers.0.mlp.up_proj.weight"],
    )
    assert all(torch.equal(after[name], before[name]) for name in frozen)


def test_standardised_features_are_fitted_on_the_training_images_and_kept(base, task, tmp_path):
    torch.manual_seed(0)
    fields = dict(head="linear", pooling="image", hidden_layer=0, standardize_features=True)
    model = LlavaRewardModel.from_vlm(base, **fields)
    settings = dict(use_cpu=True, max_steps=3, per_device_train_batch_size=4, tuning="head", train_projector=False,
                    learning_rate=1e-2, save_strategy="no", report_to="none", disable_tqdm=True)
    rows = load_preference_data(task["train_pairs"])
    trainer = LlavaRewardTrainer(model, LlavaRewardTrainingConfig(str(tmp_path / "a"), **settings), train_dataset=rows)
    prompts, chosen, rejected = (list(rows[column]) for column in ("prompt", "chosen", "rejected"))
    with torch.no_grad():  # every training image, as the untrained model reads it
        states = model.eval()(**trainer.processing_class(prompts * 2, chosen + rejected))
    states = states.reward_hidden_states
    standardizer = model.feature_standardizer
    torch.testing.assert_close(standardizer.mean, states.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(standardizer.scale, states.std(0, correction=0) + 1e-6, atol=1e-6, rtol=1e-5)
    fitted = {name: buffer.clone() for name, buffer in standardizer.named_buffers()}
    head_before = model.value_head.weight.clone()
    trainer.train()
    trainer.save_model()
    assert not torch.equal(model.value_head.weight, head_before)  # trained; the standardiser is fitted, not trained
    assert all(torch.equal(buffer, fitted[name]) for name, buffer in standardizer.named_buffers())
    saved = load_file(tmp_path / "a" / "reward_head.safetensors")
    assert torch.equal(saved["feature_standardizer.mean"], fitted["mean"])

    # Trained further on other data, a trained model keeps the standardiser it was trained with.
    reloaded = LlavaRewardModel.from_pretrained(tmp_path / "a")
    LlavaRewardTrainer(reloaded, LlavaRewardTrainingConfig(str(tmp_path / "b"), **settings),
                       train_dataset=rows.select(range(4)), processing_class=trainer.processing_class)
    assert torch.equal(reloaded.feature_standardizer.scale, fitted["scale"])
    images, prompts = chosen[:4], prompts[:4]
    scores = LlavaRewardScorer.from_pretrained(tmp_path / "a").score(prompts, images)
    with torch.no_grad():
        expected = model.eval()(**trainer.processing_class(prompts, images)).rewards
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("train_kind", ["pairs", "labelled"])
def test_precomputed_features_train_the_same_value_head_without_rerunning_the_model(base, task, tmp_path, train_kind):
    fields = dict(head="linear", pooling="image", hidden_layer=1, standardize_features=True)
    settings = dict(use_cpu=True, max_steps=4, per_device_train_batch_size=4, tuning="head", train_projector=False,
                    learning_rate=1e-2, save_strategy="no", report_to="none", disable_tqdm=True, seed=0)
    objective = "ce" if train_kind == "labelled" else "bt"
    rows = load_preference_data(task[f"train_{train_kind}"])
    heads, vision_calls = {}, {}
    for precompute in (False, True):
        torch.manual_seed(0)
        model = LlavaRewardModel.from_vlm(base, objective=objective, **fields)
        args = LlavaRewardTrainingConfig(str(tmp_path / str(precompute)), precompute_features=precompute, **settings)
        trainer = LlavaRewardTrainer(model, args, train_dataset=rows)
        calls = []
        model.vlm.vision_tower.register_forward_hook(lambda *args: calls.append(1))
        trainer.train()
        heads[precompute], vision_calls[precompute] = model.value_head.weight.detach().clone(), len(calls)
    torch.testing.assert_close(heads[True], heads[False], atol=1e-5, rtol=1e-4)
    assert vision_calls == {False: 4, True: 0}  # the stored states stand in for the images at every step
    # The image columns stay beside the stored states: training_data.json fingerprints the images trained on.
    columns = {"pairs": {"chosen", "rejected", "chosen_states", "rejected_states"}, "labelled": {"image", "image_states"}}
    assert columns[train_kind] <= set(trainer.train_dataset.column_names)


def test_precomputed_features_refuse_a_model_that_trains_below_the_value_head(base, task, tmp_path):
    with pytest.raises(ValueError, match=r"precompute_features needs tuning='head' and train_projector=False"):
        LlavaRewardTrainingConfig(str(tmp_path), precompute_features=True, tuning="lora")
    model = LlavaRewardModel.from_vlm(base)  # SkipCA trains with the value head
    args = LlavaRewardTrainingConfig(str(tmp_path), precompute_features=True, tuning="head", train_projector=False,
                                     use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match=r"everything below the value head frozen.*skip_cross_attention"):
        LlavaRewardTrainer(model, args, train_dataset=load_preference_data(task["train_pairs"]))


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_saved_model_scores_the_same_through_the_scorer(base, task, tmp_path, tuning):
    trainer = make_trainer(base, task, tmp_path, tuning=tuning, max_steps=2)
    trainer.train()
    trainer.save_model()
    rows = load_preference_data(task["eval_pairs"])[:4]
    images, prompts = rows["chosen"] + rows["rejected"], rows["prompt"] * 2
    model = unwrap(trainer.model).eval()
    with torch.no_grad():
        expected = model(**trainer.processing_class(prompts, images)).rewards
    scores = LlavaRewardScorer.from_pretrained(tmp_path).score(prompts, images)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)
    assert (tmp_path / ("reward_head.safetensors" if tuning == "lora" else "model.safetensors")).is_file()


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_after_an_interrupted_run_reaches_the_same_step_and_weights(base, task, tmp_path):
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3, logging_steps=1, eval_strategy="no")
    uninterrupted = make_trainer(base, task, tmp_path / "full-run", **settings)
    uninterrupted.train()

    interrupted = make_trainer(base, task, tmp_path / "run", **settings)
    interrupted.add_callback(StopAt(4))  # killed after step 4: the last checkpoint is step 3
    interrupted.train()
    assert (
        interrupted.state.global_step == 4
        and (tmp_path / "run" / "checkpoint-3" / "reward_head.safetensors").is_file()
    )

    resumed = make_trainer(base, task, tmp_path / "run", **settings)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == uninterrupted.state.global_step == 6
    expected = snapshot(uninterrupted.model)
    for name, value in snapshot(resumed.model).items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_eval_metrics_count_ties_out_of_accuracy(base, task, tmp_path):
    trainer = make_trainer(base, task, tmp_path, max_steps=1)
    pairs = load_preference_data(task["eval_pairs"]).select(range(6))
    # Two pairs compare an image with itself: equal rewards, a tie that counts neither way.
    tied = pairs.map(lambda row, index: {"rejected": row["chosen"]} if index < 2 else {}, with_indices=True)
    metrics = trainer.evaluate(tied)
    model, rows = unwrap(trainer.model).eval(), tied[:]
    with torch.no_grad():
        chosen = model(**trainer.processing_class(rows["prompt"], rows["chosen"])).rewards
        rejected = model(**trainer.processing_class(rows["prompt"], rows["rejected"])).rewards
    logit = chosen - rejected
    assert metrics["eval_accuracy"] == pytest.approx((logit[2:] > 0).float().mean().item())
    assert metrics["eval_margin"] == pytest.approx(logit.mean().item(), abs=1e-6)
    rewards = torch.cat([chosen, rejected])
    assert metrics["eval_reward_mean"] == pytest.approx(rewards.mean().item(), abs=1e-6)
    assert metrics["eval_reward_std"] == pytest.approx(rewards.std(correction=0).item(), abs=1e-6)


def test_trainer_rejects_mismatched_objectives_and_data(base, task, tmp_path):
    args = LlavaRewardTrainingConfig(output_dir=str(tmp_path), use_cpu=True, objective="gpm")
    with pytest.raises(ValueError, match="training objective is 'gpm' but the model was built for 'bt'"):
        LlavaRewardTrainer(
            LlavaRewardModel.from_vlm(base), args, train_dataset=load_preference_data(task["train_pairs"])
        )
    with pytest.raises(ValueError, match="only objective 'ce' can learn from"):
        make_trainer(base, task, tmp_path, objective="bt", train_kind="labelled")
    with pytest.raises(ValueError, match="margin_scale=1.0 but the train data has no `margin` column"):
        make_trainer(base, task, tmp_path, margin_scale=1.0)


def test_tau_is_written_into_the_saved_config(base, task, tmp_path):
    trainer = make_trainer(base, task, tmp_path, tau=0.5, max_steps=1)
    assert unwrap(trainer.model).config.tau == 0.5 and trainer.tau == 0.5
