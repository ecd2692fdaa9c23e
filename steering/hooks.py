"""How steering reaches into a diffusers pipeline, through the hooks diffusers offers and nothing else.

* `callback_on_step_end` (every pipeline): after each scheduler step it sees `latents` and the per-sample tensors
  listed in `pipe._callback_tensor_inputs`, and may replace them; FK steering reindexes them there.
* `StepCapture`, a thin wrapper on `pipe.scheduler.step` for the duration of a call: it records the x0 prediction
  the callback never sees (`pred_original_sample` of DDIM / DDPM / Euler outputs; `sample - sigma * v` for flow
  matching) and hands seeded generators to schedulers the pipeline calls without one.
* `decode_latents`: the pipeline's own VAE and image processor turn latents into NCHW images in [0, 1].

No pipeline's denoising loop is copied: any pipeline class with these hooks can be steered.
"""

import functools
import inspect
from contextlib import contextmanager

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers import DDPMScheduler
from diffusers import EulerAncestralDiscreteScheduler
from diffusers import FlowMatchEulerDiscreteScheduler


# Schedulers whose step draws fresh noise with no per-sample state carried between steps, so that a resampled copy
# of a particle evolves independently of its siblings. Multistep solvers (DPM-Solver, UniPC, PNDM) keep a history
# of past model outputs per sample, which resampling would scramble; deterministic ones keep copies identical.
ALWAYS_STOCHASTIC = (DDPMScheduler, EulerAncestralDiscreteScheduler)
SUPPORTED_SCHEDULERS = (
    "DDIMScheduler (eta > 0), DDPMScheduler, EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler"
)


def particle_generators(seed: int, num_prompts: int, num_particles: int) -> list[torch.Generator]:
    """One CPU generator per (prompt, particle), prompt-major, seeded from `(seed, prompt index, particle index)`.

    Particle k of prompt p starts from the same noise whatever N is, so best-of-2's candidates are the first two of
    best-of-4's, and a plain pipeline call with `particle_generators(seed, P, 1)` draws each prompt's first particle.
    """
    return [
        torch.Generator().manual_seed(int(np.random.SeedSequence([seed, prompt, particle]).generate_state(1)[0]))
        for prompt in range(num_prompts)
        for particle in range(num_particles)
    ]


def resampling_generators(seed: int, num_prompts: int) -> list[torch.Generator]:
    """One CPU generator per prompt for its multinomial resampling draws, seeded from `(seed, prompt index)`."""
    return [
        torch.Generator().manual_seed(int(np.random.SeedSequence([seed, prompt]).generate_state(1)[0]))
        for prompt in range(num_prompts)
    ]


def check_pipeline(pipe, call_kwargs: dict, managed: tuple[str, ...]):
    """Refuse pipelines without the hooks steering uses, and call arguments that steering sets itself."""
    name = type(pipe).__name__
    parameters = inspect.signature(pipe.__call__).parameters
    missing = [hook for hook in ("callback_on_step_end", "num_images_per_prompt") if hook not in parameters]
    if missing or "latents" not in getattr(pipe, "_callback_tensor_inputs", ()):
        raise TypeError(
            f"{name} cannot be steered: its __call__ lacks {missing or ['latents in _callback_tensor_inputs']} "
            "(steering needs callback_on_step_end with the latents, and num_images_per_prompt)."
        )
    if getattr(pipe, "vae", None) is None or getattr(pipe, "image_processor", None) is None:
        raise TypeError(f"{name} cannot be steered: it has no `vae` and `image_processor` to decode latents with.")
    clashing = sorted(key for key in call_kwargs if key in managed)
    if clashing:
        raise ValueError(f"Steering sets {clashing} itself: do not pass them (use `seed` for the randomness).")
    # Named parameters only: Stable Diffusion's **kwargs takes deprecated arguments and silently ignores the rest.
    named = {name for name, parameter in parameters.items() if parameter.kind is not parameter.VAR_KEYWORD}
    unknown = sorted(key for key in call_kwargs if key not in named)
    if unknown:
        raise TypeError(f"{name}.__call__ takes no argument(s) {unknown}.")


def num_inference_steps(pipe, call_kwargs: dict) -> int:
    """The number of denoising steps the call will run: its `num_inference_steps` or the pipeline's default."""
    if call_kwargs.get("num_inference_steps") is not None:
        return int(call_kwargs["num_inference_steps"])
    default = inspect.signature(pipe.__call__).parameters["num_inference_steps"].default
    if not isinstance(default, int):
        raise ValueError(f"Pass num_inference_steps: {type(pipe).__name__} has no default for it.")
    return default


def stochastic_sampler(pipe, call_kwargs: dict) -> tuple[dict, object, str]:
    """Make the call's sampling stochastic, or refuse the scheduler.

    FK steering duplicates particles; with a deterministic sampler the copies stay identical to the end and
    resampling only loses diversity. Returns the call's arguments (with `eta` for DDIM), the scheduler to run
    (a copy with `stochastic_sampling=True` for flow matching, else the pipeline's own) and its description.
    """
    scheduler = pipe.scheduler
    name = type(scheduler).__name__
    if isinstance(scheduler, DDIMScheduler):
        eta = call_kwargs.get("eta", 1.0)
        if "eta" not in inspect.signature(pipe.__call__).parameters:
            raise ValueError(f"{type(pipe).__name__} passes no `eta` to its DDIMScheduler, which then runs "
                             f"deterministically; use one of: {SUPPORTED_SCHEDULERS}.")
        if not eta > 0:
            raise ValueError(
                f"DDIM with eta={eta} is deterministic: resampled copies of a particle would stay identical. "
                "FK steering needs eta > 0 (eta=1, the default here, is DDPM-like ancestral sampling)."
            )
        return {**call_kwargs, "eta": eta}, scheduler, f"{name}(eta={eta})"
    if isinstance(scheduler, ALWAYS_STOCHASTIC):
        return call_kwargs, scheduler, name
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        if not scheduler.config.stochastic_sampling:
            # x_{t-1} = (1 - s') x0 + s' noise: the flow-matching sampler that re-noises the x0 prediction.
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, stochastic_sampling=True)
        return call_kwargs, scheduler, f"{name}(stochastic_sampling=True)"
    raise ValueError(
        f"FK steering cannot make {name} stochastic (it is deterministic or keeps a per-sample history that "
        f"resampling would scramble). Supported: {SUPPORTED_SCHEDULERS}; e.g. "
        "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)."
    )


@contextmanager
def scheduler_swapped(pipe, scheduler):
    """Run the pipeline with `scheduler` within the context, then put its own back."""
    own = pipe.scheduler
    if scheduler is own:
        yield
        return
    pipe.scheduler = scheduler
    try:
        yield
    finally:
        pipe.scheduler = own


class StepCapture:
    r"""
    Within the context, wraps `scheduler.step` to record each step's x0 prediction in `self.x0`.

    The wrapped step returns exactly what the pipeline asked for (output object or tuple). Where the pipeline calls
    a step that takes a `generator` without one (Flux and SD3 call `step(noise_pred, t, latents)`), the wrapper
    passes `generator` so that stochastic sampling is reproducible.

    Args:
        scheduler: the scheduler the pipeline runs.
        generator (`torch.Generator` or list of them, *optional*): for steps called without one.
    """

    def __init__(self, scheduler, generator=None):
        self.scheduler = scheduler
        self.generator = generator
        self.x0: torch.Tensor | None = None
        self.takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        self.own_step = None

    def __enter__(self):
        self.own_step = self.scheduler.__dict__.get("step")  # a step already set on the instance, if any
        step = self.scheduler.step

        # wraps: pipelines read the step's signature to decide whether to pass `eta` and `generator`.
        @functools.wraps(step)
        def captured_step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
            if self.takes_generator and kwargs.get("generator") is None and self.generator is not None:
                kwargs["generator"] = self.generator
            output = step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            self.x0 = self._x0(output, model_output, sample)
            return output if return_dict else output.to_tuple()

        self.scheduler.step = captured_step
        return self

    def __exit__(self, *exc):
        if self.own_step is None:
            del self.scheduler.step  # back to the class's step
        else:
            self.scheduler.step = self.own_step
        return False

    def _x0(self, output, model_output, sample) -> torch.Tensor | None:
        x0 = getattr(output, "pred_original_sample", None)
        if x0 is None and isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            # The step just advanced step_index past the sigma it used: x0 = x_t - sigma_t * v.
            sigma = self.scheduler.sigmas[self.scheduler.step_index - 1]
            x0 = sample.float() - sigma.to(sample.device) * model_output.float()
        return x0


def decode_latents(
    pipe, latents: torch.Tensor, height: int | None = None, width: int | None = None, *, differentiable: bool = False
) -> torch.Tensor:
    """Latents as the pipeline holds them -> `(B, 3, H, W)` float images in [0, 1], with its VAE and image processor.

    Undoes what the pipeline does before its own decode: unpacking of packed (Flux-style, 3-D) latents, then the
    VAE's latent normalisation (`latents_mean`/`latents_std` where the config has them, else the scaling and shift
    factors). Runs without gradients unless `differentiable=True` (reward fine-tuning decodes in the graph).
    """
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        return decoded(pipe, latents, height, width)


def decoded(pipe, latents: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
    vae = pipe.vae
    if latents.ndim == 3:  # packed 2x2 patches (B, tokens, 4 C)
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (latents.ndim - 2)
        mean = torch.tensor(mean).view(shape).to(latents)
        std = torch.tensor(std).view(shape).to(latents)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(images, output_type="pt").float()


def reindex_particles(tensors: dict, flat_index: torch.Tensor, batch_size: int) -> dict:
    """Each per-sample tensor of a callback's `tensors`, its rows taken at `flat_index` (shape `(batch_size,)`).

    Classifier-free guidance concatenates [unconditional; conditional] rows inside the pipeline (2 x batch_size rows,
    sample j and j + batch_size being the same particle): both halves are reindexed alike. Tensors of any other
    leading size are not per-sample and are left alone.
    """
    reindexed = {}
    for name, value in tensors.items():
        if not torch.is_tensor(value) or value.ndim == 0:
            continue
        index = flat_index.to(value.device)
        if value.shape[0] == batch_size:
            reindexed[name] = value[index]
        elif value.shape[0] == 2 * batch_size:
            reindexed[name] = value[torch.cat([index, index + batch_size])]
    return reindexed
