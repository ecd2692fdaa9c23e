"""Best-of-N and FK steering on tiny real diffusers pipelines (SD, SDXL, SD3, Flux), through diffusers' own hooks."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from diffusers import DPMSolverMultistepScheduler
from diffusers import EulerDiscreteScheduler
from diffusers import FlowMatchEulerDiscreteScheduler

from llava_reward.steering import FKResampler
from llava_reward.steering import WeightedReward
from llava_reward.steering import as_reward_fn
from llava_reward.steering import best_of_n
from llava_reward.steering import decode_latents
from llava_reward.steering import fk_steering
from llava_reward.steering import particle_generators
from llava_reward.steering import resampling_generators
from llava_reward.steering import resampling_schedule
from llava_reward.steering.hooks import StepCapture
from llava_reward.steering.hooks import reindex_particles
from llava_reward.steering.testing import tiny_flux_pipeline
from llava_reward.steering.testing import tiny_sd3_pipeline
from llava_reward.steering.testing import tiny_sd_pipeline
from llava_reward.steering.testing import tiny_sdxl_pipeline


PROMPTS = ["a cat", "a dog"]
STEPS = 6  # default window for 6 steps: resample at 1, 2, 3, 4 and the last step, 5
PIPELINES = {
    "sd": (tiny_sd_pipeline, dict(guidance_scale=3.0)),  # CFG doubles the batch inside the pipeline
    "sdxl": (tiny_sdxl_pipeline, dict(guidance_scale=3.0)),
    "sd3": (tiny_sd3_pipeline, dict(guidance_scale=3.0)),
    "flux": (tiny_flux_pipeline, dict(height=16, width=16, max_sequence_length=16)),
}


@pytest.fixture(autouse=True)
def one_thread(one_intraop_thread):
    yield


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_pipeline()


def brightness(images, prompts, metadata):
    return images.mean(dim=(1, 2, 3)), {"name": "brightness"}


def scaled_brightness(scale):
    """Brightness x scale: the tiny pipelines' images differ in brightness by ~1e-3, so weights need a large scale."""
    return lambda images, prompts, metadata: (scale * images.mean(dim=(1, 2, 3)), {})


def softmax(values):
    values = np.asarray(values, dtype=np.float64)
    weights = np.exp(values - values.max())
    return weights / weights.sum()


# --- the FK weights and resampling, without a model ---------------------------------------------------------------


def test_diff_weights_are_exp_lmbda_times_reward_gain_and_resampling_draws_from_them():
    resampler = FKResampler(1, 3, potential="diff", lmbda=1.0, generators=[torch.Generator().manual_seed(7)])
    decision = resampler.step(torch.tensor([[0.0, 1.0, 2.0]]), last=False)
    by_hand = np.array([1.0, math.e, math.e**2]) / (1 + math.e + math.e**2)
    np.testing.assert_allclose(decision.log_weights.exp().numpy()[0], by_hand, rtol=1e-12)
    np.testing.assert_allclose(decision.ess.item(), 1 / (by_hand**2).sum(), rtol=1e-12)
    draws = torch.Generator().manual_seed(7)
    expected = torch.multinomial(torch.tensor(by_hand), 3, replacement=True, generator=draws)
    assert decision.indices[0].tolist() == expected.tolist()


@pytest.mark.parametrize("potential", ["max", "add", "diff", "rt"])
def test_two_steps_follow_the_hand_computed_potentials_and_the_final_correction(potential):
    lmbda, floor = 0.7, 0.25
    first = np.array([[0.1, 0.9, 0.4, 0.3], [0.0, -1.0, 1.0, 0.5]])
    second = np.array([[0.8, 0.2, 0.5, 0.1], [0.3, 0.3, 0.9, -0.2]])
    resampler = FKResampler(
        2, 4, potential=potential, lmbda=lmbda, reward_min_value=floor, generators=resampling_generators(3, 2)
    )
    draws = resampling_generators(3, 2)
    carried_first = {"max": np.maximum(first, floor), "add": first + floor}.get(potential, first)
    log_g1 = lmbda * (first - floor) if potential == "diff" else lmbda * carried_first
    decision = resampler.step(torch.tensor(first), last=False)
    parents = []
    for prompt in range(2):
        weights = softmax(log_g1[prompt])
        np.testing.assert_allclose(decision.log_weights[prompt].exp().numpy(), weights, rtol=1e-10)
        parents.append(torch.multinomial(torch.tensor(weights), 4, replacement=True, generator=draws[prompt]).numpy())
        assert decision.indices[prompt].tolist() == parents[prompt].tolist()

    decision = resampler.step(torch.tensor(second), last=True)
    for prompt in range(2):
        previous, log_product = carried_first[prompt][parents[prompt]], log_g1[prompt][parents[prompt]]
        carried = {"max": np.maximum(second[prompt], previous), "add": second[prompt] + previous}.get(
            potential, second[prompt]
        )
        if potential == "diff":
            log_g2 = lmbda * (second[prompt] - previous)
        else:  # the last step divides by the product of the potentials so far
            log_g2 = lmbda * carried - log_product
        weights = softmax(log_g2)
        np.testing.assert_allclose(decision.log_weights[prompt].exp().numpy(), weights, rtol=1e-10)
        expected = torch.multinomial(torch.tensor(weights), 4, replacement=True, generator=draws[prompt])
        assert decision.indices[prompt].tolist() == expected.tolist()


def test_a_dominant_particle_takes_every_slot_of_its_prompt_only():
    resampler = FKResampler(2, 4, potential="rt", lmbda=100.0)
    decision = resampler.step(torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]), last=False)
    assert decision.indices.tolist() == [[2, 2, 2, 2], [0, 0, 0, 0]]


def test_weights_survive_nan_infinite_and_huge_rewards():
    resampler = FKResampler(4, 4, potential="rt", lmbda=10.0, generators=resampling_generators(0, 4))
    nan, inf = float("nan"), float("inf")
    rewards = torch.tensor(
        [[nan, 1.0, nan, 1.0], [nan] * 4, [1e30, inf, 0.0, inf], [3e38, 1e38, -3e38, 0.0]], dtype=torch.float32
    )
    decision = resampler.step(rewards, last=False)
    assert set(decision.indices[0].tolist()) <= {1, 3}  # NaN rewards weigh nothing
    np.testing.assert_allclose(decision.log_weights[1].exp().numpy(), [0.25] * 4)  # all NaN: uniform
    assert set(decision.indices[2].tolist()) <= {1, 3}  # infinite rewards share all the mass
    assert decision.indices[3].tolist() == [0, 0, 0, 0]  # exp(10 * 3e38) does not overflow
    assert torch.isfinite(decision.ess).all()


def test_adaptive_resampling_only_below_half_the_particles():
    resampler = FKResampler(2, 4, potential="diff", lmbda=1.0, adaptive=True)
    decision = resampler.step(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 50.0]]), last=False)
    assert decision.resampled.tolist() == [False, True]
    assert decision.ess[0].item() == pytest.approx(4.0)
    assert decision.indices.tolist() == [[0, 1, 2, 3], [3, 3, 3, 3]]


def test_adaptive_weights_accumulate_until_resampling():
    resampler = FKResampler(1, 2, potential="rt", lmbda=1.0, adaptive=True)
    assert not resampler.step(torch.tensor([[0.0, 0.5]]), last=False).resampled.item()  # ESS 1.9 >= 1
    decision = resampler.step(torch.tensor([[0.0, 0.5]]), last=False)
    np.testing.assert_allclose(decision.log_weights[0].exp().numpy(), softmax([0.0, 1.0]), rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(potential="sum"), "potential must be one of"),
        (dict(lmbda=float("nan")), "lmbda must be a finite number"),
        (dict(potential="diff", reward_min_value=float("-inf")), "only allowed as -inf with the max potential"),
    ],
)
def test_resampler_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FKResampler(1, 2, **kwargs)


def test_resampling_schedule_window_frequency_and_last_step():
    assert resampling_schedule(100, None, None, None) == [20, 40, 60, 80, 99]  # the reference's SDXL setting
    assert resampling_schedule(10, 2, 6, 2) == [2, 4, 6, 9]
    assert resampling_schedule(10, 9, 9, 1) == [9]
    for args, message in [
        ((10, 0, 10, 1), r"resampling_t_end=10 is outside the schedule's steps 0..9"),
        ((10, -1, 5, 1), r"resampling_t_start=-1 is outside"),
        ((10, 6, 5, 1), "is after"),
        ((10, 0, 5, 0), "resample_frequency must be an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            resampling_schedule(*args)


# --- hooks --------------------------------------------------------------------------------------------------------


def test_reindexing_takes_rows_of_both_cfg_halves_alike():
    flat_index = torch.tensor([2, 2, 0])
    tensors = {
        "latents": torch.arange(3.0)[:, None],  # (B, ...)
        "prompt_embeds": torch.arange(6.0)[:, None],  # (2B, ...) = [unconditional; conditional]
        "text_ids": torch.arange(5.0),  # not per sample
    }
    out = reindex_particles(tensors, flat_index, 3)
    assert out["latents"].flatten().tolist() == [2, 2, 0]
    assert out["prompt_embeds"].flatten().tolist() == [2, 2, 0, 5, 5, 3]
    assert "text_ids" not in out


def test_step_capture_records_x0_and_returns_what_the_caller_asked_for():
    ddim = DDIMScheduler()
    ddim.set_timesteps(4)
    sample, model_output = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    expected = ddim.step(model_output, ddim.timesteps[0], sample).pred_original_sample
    with StepCapture(ddim) as capture:
        out = ddim.step(model_output, ddim.timesteps[0], sample, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(capture.x0, expected)
    assert "step" not in ddim.__dict__  # the class's step is back

    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(4)
    with StepCapture(flow) as capture:
        for index in range(2):
            sample, velocity = torch.randn(2, 16, 4), torch.randn(2, 16, 4)
            flow.step(velocity, flow.timesteps[index], sample)
            torch.testing.assert_close(capture.x0, sample - flow.sigmas[index] * velocity)


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
def test_decode_latents_matches_the_pipelines_own_decode(name):
    build, kwargs = PIPELINES[name]
    pipe = build()
    common = dict(num_inference_steps=2, **kwargs)
    latents = pipe("a cat", generator=torch.Generator().manual_seed(0), output_type="latent", **common).images
    images = pipe("a cat", generator=torch.Generator().manual_seed(0), output_type="pt", **common).images
    decoded = decode_latents(pipe, latents, kwargs.get("height"), kwargs.get("width"))
    torch.testing.assert_close(decoded, images, atol=1e-5, rtol=1e-5)


# --- FK steering on pipelines -------------------------------------------------------------------------------------


def test_history_follows_hand_computed_weights_end_to_end(sd):
    lmbda, seed = 2000.0, 4
    out = fk_steering(sd, PROMPTS, brightness, num_particles=4, potential="diff", lmbda=lmbda,
                      num_inference_steps=STEPS, seed=seed, guidance_scale=3.0)
    assert [record.step for record in out.history] == [1, 2, 3, 4, 5]
    draws = resampling_generators(seed, len(PROMPTS))
    previous = np.zeros((2, 4))
    for record in out.history:
        rewards = record.rewards.double().numpy()
        for prompt in range(2):
            weights = softmax(lmbda * (rewards[prompt] - previous[prompt]))
            np.testing.assert_allclose(record.log_weights[prompt].exp().numpy(), weights, rtol=1e-4, atol=1e-6)
            parents = torch.multinomial(torch.tensor(weights), 4, replacement=True, generator=draws[prompt])
            assert record.indices[prompt].tolist() == parents.tolist()
            previous[prompt] = rewards[prompt][parents.numpy()]
    assert any(record.indices.unique().numel() < 4 for record in out.history)  # resampling really happened


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_diff_with_lmbda_near_zero_is_plain_sampling(name):
    build, kwargs = PIPELINES[name]
    pipe = build()
    out = fk_steering(pipe, PROMPTS, brightness, num_particles=3, potential="diff", lmbda=1e-9,
                      adaptive_resampling=True, num_inference_steps=STEPS, seed=1, **kwargs)
    assert not any(record.resampled.any() for record in out.history)
    plain = pipe(PROMPTS, num_images_per_prompt=3, generator=particle_generators(1, 2, 3), eta=1.0,
                 num_inference_steps=STEPS, output_type="pt", **kwargs).images
    torch.testing.assert_close(out.images.reshape(plain.shape), plain, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
def test_same_seed_same_images_other_seed_other_images(name):
    build, kwargs = PIPELINES[name]
    pipe = build()
    run = lambda seed: fk_steering(pipe, PROMPTS, scaled_brightness(1e3), num_particles=3, num_inference_steps=4,
                                   seed=seed, **kwargs)
    first, again, other = run(0), run(0), run(1)
    torch.testing.assert_close(first.images, again.images, atol=0, rtol=0)
    assert [r.indices.tolist() for r in first.history] == [r.indices.tolist() for r in again.history]
    assert not torch.allclose(first.images, other.images)


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
def test_a_dominant_particle_fills_its_prompt_and_final_rewards_are_the_returned_images(name):
    build, kwargs = PIPELINES[name]
    pipe = build()
    out = fk_steering(pipe, PROMPTS, scaled_brightness(1e6), num_particles=4, potential="rt", lmbda=10.0,
                      num_inference_steps=4, resampling_t_start=3, resampling_t_end=3, **kwargs)
    torch.testing.assert_close(out.rewards, brightness(out.images.flatten(0, 1), None, None)[0].view(2, 4) * 1e6,
                               atol=1e-3, rtol=1e-5)
    assert [record.step for record in out.history] == [3]
    for prompt in range(2):  # the last step gave all the weight to the brightest final sample of each prompt
        assert out.history[-1].indices[prompt].unique().numel() == 1
        for particle in range(4):
            torch.testing.assert_close(out.images[prompt, particle], out.best_images[prompt], atol=1e-5, rtol=1e-5)
    assert out.best_rewards.tolist() == out.history[-1].rewards.max(dim=1).values.tolist()


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_resampled_particles_keep_their_conditioning_in_both_cfg_halves(name):
    build, kwargs = PIPELINES[name]
    pipe = build()
    seen = []
    pipe.unet.register_forward_pre_hook(
        lambda module, args, kw: seen.append((args[0].clone(), kw["encoder_hidden_states"].clone(),
                                              {k: v.clone() for k, v in (kw.get("added_cond_kwargs") or {}).items()})),
        with_kwargs=True,
    )
    pick = [1, 6]  # the flat slot that wins in each prompt (particle 1 of prompt 0, particle 2 of prompt 1)

    def slot_reward(images, prompts, metadata):
        return torch.tensor([1e4 if slot in pick else 0.0 for slot in range(len(images))]), {}

    fk_steering(pipe, PROMPTS, slot_reward, num_particles=4, potential="rt", lmbda=1.0, num_inference_steps=4,
                resampling_t_start=0, resampling_t_end=0, **kwargs)
    (_, conditioning_before, added_before), (sample_after, conditioning_after, added_after) = seen[0], seen[1]
    batch = 8
    for half in (0, batch):  # [unconditional; conditional] rows: every particle of a prompt is now its winner
        for prompt, winner in enumerate(pick):
            for particle in range(4):
                torch.testing.assert_close(sample_after[half + 4 * prompt + particle], sample_after[half + winner])
    torch.testing.assert_close(conditioning_after, conditioning_before)  # halves and prompts stayed in place
    for key in added_before:
        torch.testing.assert_close(added_after[key], added_before[key])


def test_reward_calls_and_decodes_happen_only_at_the_scheduled_steps(sd):
    unet_calls, decoder_calls, reward_at = [], [], []
    sd.unet.register_forward_hook(lambda *_: unet_calls.append(1))
    sd.vae.decoder.register_forward_hook(lambda *_: decoder_calls.append(1))

    def counting_reward(images, prompts, metadata):
        reward_at.append(len(unet_calls))
        return brightness(images, prompts, metadata)

    out = fk_steering(sd, PROMPTS, counting_reward, num_particles=2, num_inference_steps=10, resampling_t_start=2,
                      resampling_t_end=6, resample_frequency=2)
    assert [record.step for record in out.history] == [2, 4, 6, 9]
    assert reward_at == [3, 5, 7, 10]  # right after the UNet pass of steps 2, 4, 6 and 9
    assert len(decoder_calls) == 4 + 1  # one decode per reward call, and the pipeline's own final decode
    assert out.timings["reward_calls"] == 4 and out.timings["rewarded_images"] == 4 * 4


def test_prompts_never_mix_a_prompt_alone_gives_the_same_particles(sd):
    kwargs = dict(num_particles=3, potential="max", lmbda=1.0, num_inference_steps=STEPS, guidance_scale=3.0)
    both = fk_steering(sd, ["a cat", "a dog"], scaled_brightness(1e3), **kwargs)
    alone = fk_steering(sd, ["a cat"], scaled_brightness(1e3), **kwargs)
    assert [r.indices[0].tolist() for r in both.history] == [r.indices[0].tolist() for r in alone.history]
    torch.testing.assert_close(both.images[0], alone.images[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["sd", "flux"])
def test_stochastic_sampling_lets_copies_of_one_particle_diverge(name):
    build, kwargs = PIPELINES[name]
    pipe = build()
    calls = []

    def first_call_decides(images, prompts, metadata):  # all weight on particle 0 once, then no preference
        calls.append(1)
        return torch.tensor([1e4 if (len(calls) == 1 and slot % 4 == 0) else 0.0 for slot in range(len(images))]), {}

    out = fk_steering(pipe, PROMPTS, first_call_decides, num_particles=4, potential="rt", lmbda=1.0,
                      adaptive_resampling=True, num_inference_steps=STEPS, **kwargs)
    assert out.history[0].indices.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert not out.history[-1].resampled.any()
    for prompt in range(2):  # four copies of particle 0, each with its own sampler noise afterwards
        flat = out.images[prompt].flatten(1)
        assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 1e-4


def test_flow_matching_runs_a_stochastic_copy_and_leaves_the_pipelines_scheduler(sd):
    pipe = tiny_flux_pipeline()
    own = pipe.scheduler
    out = fk_steering(pipe, "a cat", brightness, num_particles=2, num_inference_steps=3, height=16, width=16,
                      max_sequence_length=16)
    assert out.sampler == "FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)"
    assert pipe.scheduler is own and not own.config.stochastic_sampling and "step" not in own.__dict__


def test_the_scheduler_is_restored_when_the_reward_fails(sd):
    def failing(images, prompts, metadata):
        raise RuntimeError("reward server down")

    with pytest.raises(RuntimeError, match="reward server down"):
        fk_steering(sd, PROMPTS, failing, num_particles=2, num_inference_steps=3)
    assert "step" not in sd.scheduler.__dict__


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(num_particles=0), ValueError, "num_particles must be an integer >= 1, not 0"),
        (dict(num_particles=2.5), ValueError, "num_particles must be an integer >= 1"),
        (dict(resampling_t_start=0, resampling_t_end=6), ValueError, r"resampling_t_end=6 is outside .* 0..5"),
        (dict(resampling_t_start=4, resampling_t_end=2), ValueError, "is after"),
        (dict(resample_frequency=0), ValueError, "resample_frequency must be an integer >= 1"),
        (dict(potential="best"), ValueError, "potential must be one of max, add, diff, rt"),
        (dict(eta=0.0), ValueError, "DDIM with eta=0.0 is deterministic"),
        (dict(metadata=[{}, {}, {}]), ValueError, r"one dict per prompt \(2\), not 3"),
        (dict(prompt_embeds=torch.zeros(3, 16, 8)), ValueError, "prompt_embeds has 3 rows for 2 prompts"),
        (dict(generator=torch.Generator()), ValueError, r"Steering sets \['generator'\] itself"),
        (dict(strength=0.5), TypeError, r"takes no argument\(s\) \['strength'\]"),
    ],
)
def test_bad_arguments_get_clear_errors(sd, kwargs, error, message):
    with pytest.raises(error, match=message):
        fk_steering(sd, PROMPTS, brightness, num_inference_steps=STEPS, **kwargs)


def test_bad_prompts_get_clear_errors(sd):
    with pytest.raises(ValueError, match="non-empty list of strings"):
        fk_steering(sd, [], brightness)
    with pytest.raises(ValueError, match=r"prompts\[1\] is a int"):
        best_of_n(sd, ["a cat", 3], brightness)


@pytest.mark.parametrize("scheduler_class", [EulerDiscreteScheduler, DPMSolverMultistepScheduler])
def test_deterministic_or_multistep_schedulers_are_refused(scheduler_class):
    pipe = tiny_sd_pipeline()
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match=f"FK steering cannot make {scheduler_class.__name__} stochastic"):
        fk_steering(pipe, PROMPTS, brightness, num_inference_steps=STEPS)


def test_a_reward_with_the_wrong_shape_is_refused(sd):
    with pytest.raises(ValueError, match=r"rewards of shape \(4, 2\) for 4 images"):
        fk_steering(sd, PROMPTS, lambda images, prompts, metadata: torch.zeros(len(images), 2), num_particles=2,
                    num_inference_steps=3)


# --- best-of-N ----------------------------------------------------------------------------------------------------


def test_best_of_n_scores_all_candidates_once_and_keeps_the_best(sd):
    calls = []

    def recording(images, prompts, metadata):
        calls.append((images.shape, list(prompts), list(metadata)))
        return brightness(images, prompts, metadata)

    out = best_of_n(sd, PROMPTS, recording, n=3, metadata=[{"id": 0}, {"id": 1}], num_inference_steps=3)
    assert calls == [((6, 3, 16, 16), ["a cat"] * 3 + ["a dog"] * 3, [{"id": 0}] * 3 + [{"id": 1}] * 3)]
    assert out.best.tolist() == out.rewards.argmax(dim=1).tolist()
    torch.testing.assert_close(out.rewards, brightness(out.images.flatten(0, 1), None, None)[0].view(2, 3))
    torch.testing.assert_close(out.best_images, out.images[[0, 1], out.best])
    assert len(out.to_pil()) == 2 and out.to_pil()[1][2].size == (16, 16)


def test_best_of_n_candidates_are_nested_across_n(sd):
    two = best_of_n(sd, PROMPTS, brightness, n=2, num_inference_steps=3)
    four = best_of_n(sd, PROMPTS, brightness, n=4, num_inference_steps=3)
    torch.testing.assert_close(four.images[:, :2], two.images, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_best_of_n_on_flow_pipelines(name):
    build, kwargs = PIPELINES[name]
    out = best_of_n(build(), PROMPTS, brightness, n=2, num_inference_steps=2, **kwargs)
    assert out.images.shape == (2, 2, 3, 16, 16) and torch.isfinite(out.rewards).all()


# --- reward models as rewards -------------------------------------------------------------------------------------


def test_a_llava_reward_scorer_steers_and_its_rewards_are_the_final_images_scores(sd):
    from llava_reward import LlavaRewardModel
    from llava_reward import LlavaRewardProcessor
    from llava_reward import LlavaRewardScorer
    from llava_reward.testing import tiny_vlm

    vlm, vlm_processor = tiny_vlm("llava")
    scorer = LlavaRewardScorer(LlavaRewardModel.from_vlm(vlm), LlavaRewardProcessor.from_vlm_processor(vlm_processor))
    out = fk_steering(sd, PROMPTS, scorer, num_particles=2, lmbda=1.0, num_inference_steps=4)
    assert len(out.history) == 3 and all(torch.isfinite(record.rewards).all() for record in out.history)
    again = scorer.score([p for p in PROMPTS for _ in range(2)], out.images.flatten(0, 1))
    torch.testing.assert_close(out.rewards.flatten(), again, atol=1e-4, rtol=1e-4)
    assert out.history[0].info["objective"] == "bt"


def test_weighted_perspectives_are_the_weighted_sum_of_each_perspective(tmp_path, sd):
    from llava_reward.multi_perspective import load_perspectives
    from llava_reward.testing import save_tiny_perspective
    from llava_reward.testing import save_tiny_vlm

    base = save_tiny_vlm("llava", tmp_path / "base")
    for seed, name in enumerate(["alignment", "fidelity"]):
        save_tiny_perspective(base, tmp_path / "repo" / name, perspective=name, seed=seed)
    scorer = load_perspectives(tmp_path / "repo", ["alignment", "fidelity"])
    reward = WeightedReward(scorer, {"alignment": 1.0, "fidelity": -0.5})
    out = best_of_n(sd, PROMPTS, reward, n=2, num_inference_steps=2)
    each = scorer.score([p for p in PROMPTS for _ in range(2)], out.images.flatten(0, 1))
    torch.testing.assert_close(out.rewards.flatten(), each["alignment"] - 0.5 * each["fidelity"])
    with pytest.raises(ValueError, match=r"Unknown perspectives in the weights: \['safety'\]"):
        WeightedReward(scorer, {"safety": 1.0})
    with pytest.raises(TypeError, match="wrap it as WeightedReward"):
        as_reward_fn(scorer)
