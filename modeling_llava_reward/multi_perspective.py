"""Several perspectives on one base VLM: `load_perspectives(repo, ["alignment", "fidelity"])`.

A Hub repo (or local folder) holds one adapter bundle per perspective, in subfolders (`alignment/`, `fidelity/`,
`safety/`, `overall/`), all trained on the same base VLM. Loading them one by one would load the base K times;
`load_perspectives` loads it once, attaches each perspective's LoRA adapter as a named PEFT adapter, keeps each
perspective's reward head (SkipCA + value head) and projector weights, and scores all perspectives on one batch:

* the frozen vision encoder runs once per image for all perspectives (each perspective's projector then maps its
  output, so perspectives that trained their projector still share it; only an adapter with LoRA inside the vision
  encoder, which this package never trains, makes each perspective run it);
* the language model runs once per perspective, with that perspective's adapter active.

The rewards equal those of each perspective loaded on its own with `LlavaRewardScorer.from_pretrained`.

Threads: a `MultiPerspectiveScorer` may be shared, but its calls run one at a time (a lock). One forward switches
the shared base between perspectives (the active LoRA adapter, the projector weights, the vision encoder's recorded
outputs), which concurrent calls cannot share. Threads that must score in parallel each load their own scorer.

Example:
    >>> scorer = load_perspectives("me/llava-reward-qwen", ["alignment", "fidelity"])  # doctest: +SKIP
    >>> scorer.score("a red cat", [image_a, image_b])  # doctest: +SKIP
    {'alignment': tensor([1.52, -0.31]), 'fidelity': tensor([0.88, 0.12])}
"""

import os
import threading
from contextlib import contextmanager
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from .bundle import is_adapter_bundle
from .bundle import model_folder
from .configuration import LlavaRewardConfig
from .modeling_llava_reward import REWARD_HEAD_WEIGHTS
from .modeling_llava_reward import LlavaRewardModel
from .modeling_llava_reward import LlavaRewardOutput
from .modeling_llava_reward import apply_lora
from .modeling_llava_reward import load_base_vlm
from .modeling_llava_reward import lora_folder
from .processing_llava_reward import LlavaRewardProcessor
from .scoring import LlavaRewardScorer


class MultiPerspectiveScorer:
    r"""
    Scores (prompt, image) pairs under several perspectives that share one base VLM.

    Build it with [`load_perspectives`]. `score` returns `{perspective: rewards}`, each as
    `LlavaRewardScorer.score` would return it for that perspective alone.

    Args:
        models (`dict[str, LlavaRewardModel]`): one reward model per perspective, all wrapping the SAME `vlm`
            instance (each with its own SkipCA and value head).
        processor (`LlavaRewardProcessor`): the processor they share.
        projectors (`dict[str, dict[str, torch.Tensor]]`): each perspective's projector weights, by parameter name
            in its model (`vlm.multi_modal_projector.linear_1.weight`, ...).
        lora (`PeftModel`, *optional*): the PEFT model holding one named LoRA adapter per perspective that has one
            (adapter name = perspective); perspectives without an adapter run with adapters disabled.
        progress (`bool`, *optional*): show a progress bar (as in `LlavaRewardScorer`).
    """

    def __init__(
        self,
        models: dict[str, LlavaRewardModel],
        processor: LlavaRewardProcessor,
        *,
        projectors: dict[str, dict[str, torch.Tensor]],
        lora=None,
        progress: bool | None = None,
    ):
        self._all = _AllPerspectives(models, projectors, lora)
        self._scorer = LlavaRewardScorer(self._all, processor, progress=progress)
        self._lock = threading.Lock()  # one call at a time: a forward switches the shared base between perspectives

    @property
    def perspectives(self) -> list[str]:
        return list(self._all.models)

    @property
    def configs(self) -> dict[str, LlavaRewardConfig]:
        """Each perspective's reward config (objective, tau, reward_dim, ...): how to read its rewards."""
        return {name: model.config for name, model in self._all.models.items()}

    @property
    def processor(self) -> LlavaRewardProcessor:
        return self._scorer.processor

    def score(self, prompts, images, *, batch_size: int = 8, progress: bool | None = None) -> dict[str, torch.Tensor]:
        """`{perspective: rewards}` for `prompts[i]` with `images[i]` (one prompt may serve all images).

        Each value is a float32 CPU tensor of shape `(N,)` (BT, CE) or `(N, D)` (GPM), in input order. Calls from
        several threads are served one at a time (see the module docstring).
        """
        with self._lock:
            rewards = self._scorer.score(prompts, images, batch_size=batch_size, progress=progress)  # (N, sum of D)
        widths = [model.config.reward_dim for model in self._all.models.values()]
        return {
            name: part.squeeze(-1) if part.shape[-1] == 1 else part
            for name, part in zip(self.perspectives, rewards.split(widths, dim=-1))
        }


class _AllPerspectives(nn.Module):
    """One forward computes every perspective's logits, concatenated: (B, sum of reward_dim)."""

    def __init__(self, models: dict[str, LlavaRewardModel], projectors: dict[str, dict[str, torch.Tensor]], lora):
        super().__init__()
        first = next(iter(models.values()))
        if any(model.vlm is not first.vlm for model in models.values()):
            raise ValueError("Every perspective's model must wrap the same `vlm` instance.")
        self.models = nn.ModuleDict(models)
        self.projectors = projectors
        self.lora = lora
        self.vlm = first.vlm
        self.family = first.family
        # A LoRA adapter inside the vision encoder would make its output depend on the perspective.
        self.shares_vision_encoder = not _lora_in(self.vlm, self.family.vision_modules)

    @property
    def dtype(self) -> torch.dtype:
        return self.vlm.dtype

    @property
    def device(self) -> torch.device:
        return self.vlm.device

    def forward(self, **inputs) -> LlavaRewardOutput:
        logits = []
        sharing = _VisionEncoderCache(self.vlm, self.family.vision_modules) if self.shares_vision_encoder else None
        with sharing or nullcontext():
            for name, model in self.models.items():
                with self._adapter(name):
                    output = torch.func.functional_call(model, self.projectors[name], args=(), kwargs=inputs)
                logits.append(output.logits)
                if sharing is not None:
                    sharing.replay()
        logits = torch.cat(logits, dim=-1)
        return LlavaRewardOutput(rewards=logits, logits=logits)

    @contextmanager
    def _adapter(self, name: str):
        if self.lora is None:
            yield
        elif name in self.lora.peft_config:
            self.lora.set_adapter(name)
            yield
        else:
            with self.lora.disable_adapter():
                yield


class _VisionEncoderCache:
    """Within the context, the vision encoder computes on its first pass only; later passes replay its outputs.

    The modules at `paths` (a `ModuleList` stands for each of its layers) get a wrapped `forward`: the first pass
    records each call's output; after `replay()`, each pass returns the recorded outputs in the same call order
    instead of computing them. What follows the encoder (each perspective's projector) runs on every pass.
    """

    def __init__(self, vlm: nn.Module, paths: tuple[str, ...]):
        self.modules = []
        for path in paths:
            module = vlm.get_submodule(path)
            self.modules += list(module) if isinstance(module, nn.ModuleList) else [module]
        self.outputs: dict[int, list] = {id(module): [] for module in self.modules}
        self.position: dict[int, int] | None = None  # None while recording
        self.own_forward: dict[int, object] = {}  # a forward set on the instance before us (e.g. accelerate's hook)

    def __enter__(self):
        for module in self.modules:
            self.own_forward[id(module)] = module.__dict__.get("forward")
            module.forward = self._cached(module, module.forward)
        return self

    def __exit__(self, *exc):
        for module in self.modules:
            if self.own_forward[id(module)] is None:
                del module.forward  # back to the class's forward
            else:
                module.forward = self.own_forward[id(module)]
        return False

    def replay(self):
        self.position = dict.fromkeys(self.outputs, 0)

    def _cached(self, module: nn.Module, forward):
        key = id(module)

        def cached_forward(*args, **kwargs):
            if self.position is None:
                self.outputs[key].append(forward(*args, **kwargs))
                return self.outputs[key][-1]
            index = self.position[key]
            if index >= len(self.outputs[key]):
                raise RuntimeError(f"{type(module).__name__} was called more often than on the first pass.")
            self.position[key] = index + 1
            return self.outputs[key][index]

        return cached_forward


def _lora_in(vlm: nn.Module, paths: tuple[str, ...]) -> bool:
    return any(
        "lora_A" in name for path in paths for name, _ in vlm.get_submodule(path).named_parameters()
    )


def load_perspectives(
    repo_or_dir: str | os.PathLike,
    perspectives: list[str],
    *,
    base=None,
    revision: str | None = None,
    dtype=None,
    device_map=None,
    trust_remote_code: bool = False,
    progress: bool | None = None,
) -> MultiPerspectiveScorer:
    r"""
    Load several perspectives (adapter bundles in subfolders of one repo or folder) onto ONE base VLM.

    Args:
        repo_or_dir (`str` or `os.PathLike`): a local folder or a Hub repo id whose subfolders are perspectives.
        perspectives (`list[str]`): the subfolders to load, e.g. `["alignment", "fidelity"]`.
        base (*optional*): the base VLM (a local path, Hub id or loaded model); defaults to the `base_model` (at its
            recorded `base_model_revision`) that every perspective's `config.json` names.
        revision (`str`, *optional*): the revision (branch, tag or commit) of `repo_or_dir` on the Hub.
        dtype, device_map: how to load the base VLM (as for `AutoModel.from_pretrained`).
        trust_remote_code (`bool`, defaults to `False`): needed for non-native base VLMs; never implied.
        progress (`bool`, *optional*): show a progress bar while scoring.

    Every perspective must name the same base and read the same decoder layers (`hidden_layer`, `visual_layer`):
    they share one truncated decoder.

    Example (tiny random perspectives, built on the spot):

    ```python
    >>> import tempfile
    >>> from pathlib import Path
    >>> from llava_reward.testing import save_tiny_perspective
    >>> from llava_reward.testing import save_tiny_vlm, tiny_images
    >>> root = Path(tempfile.mkdtemp())
    >>> base = save_tiny_vlm("llava", root / "base")
    >>> for seed, name in enumerate(["alignment", "fidelity"]):
    ...     _ = save_tiny_perspective(base, root / "repo" / name, perspective=name, seed=seed)
    >>> scorer = load_perspectives(root / "repo", ["alignment", "fidelity"])
    >>> {name: tuple(rewards.shape) for name, rewards in scorer.score("a red cat", tiny_images(2)).items()}
    {'alignment': (2,), 'fidelity': (2,)}

    ```"""
    if isinstance(perspectives, str) or not perspectives:
        raise ValueError(f"`perspectives` must be a non-empty list of subfolder names, got {perspectives!r}.")
    folders = {name: model_folder(repo_or_dir, subfolder=name, revision=revision) for name in perspectives}
    for name, folder in folders.items():
        if not is_adapter_bundle(folder):
            raise ValueError(
                f"{folder} is not an adapter bundle (no reward_head.safetensors): only adapter bundles can share a "
                f"base; load the full model {name!r} with LlavaRewardScorer.from_pretrained."
            )
    configs = {name: LlavaRewardConfig.from_pretrained(folder) for name, folder in folders.items()}
    _check_shareable(configs, base_given=base is not None)
    first = next(iter(folders))
    if not isinstance(base, PreTrainedModel):
        base = load_base_vlm(
            configs[first], folders[first], base, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code
        )
    vlm = base.base_model
    models, projectors = {}, {}
    for name, folder in folders.items():
        models[name] = LlavaRewardModel(configs[name], vlm=vlm)
        models[name].place_head_with_decoder()
        models[name].load_reward_head(folder / REWARD_HEAD_WEIGHTS)  # writes its projector into the shared `vlm`
        models[name].eval()
        projectors[name] = {
            f"vlm.{key}": parameter.detach().clone()
            for key, parameter in models[name].family.projector_parameters(vlm).items()
        }
    # Adapters go in last: building a reward model (`post_init`) would re-initialise LoRA layers already injected.
    lora = None
    for name, folder in folders.items():
        adapter = lora_folder(folder)
        if adapter is not None:
            lora = apply_lora(lora if lora is not None else models[name], adapter, adapter_name=name)
    processor = _shared_processor(folders)
    return MultiPerspectiveScorer(models, processor, projectors=projectors, lora=lora, progress=progress)


def _check_shareable(configs: dict[str, LlavaRewardConfig], *, base_given: bool):
    def differ(describe) -> str | None:
        values = {name: describe(config) for name, config in configs.items()}
        if len(set(values.values())) > 1:
            return ", ".join(f"{name}: {value}" for name, value in values.items())
        return None

    if not base_given and (bases := differ(lambda c: f"{c.base_model}@{c.base_model_revision or 'default'}")):
        raise ValueError(f"The perspectives name different base models ({bases}); pass `base=` to choose one.")
    if architectures := differ(lambda c: c.vlm_config.model_type):
        raise ValueError(f"The perspectives wrap different VLM families ({architectures}): they cannot share a base.")
    if layers := differ(lambda c: f"hidden_layer={c.hidden_layer}, visual_layer={c.visual_layer}"):
        if differ(lambda c: c.num_decoder_layers_used):
            raise ValueError(
                f"The perspectives read different decoder layers ({layers}): they cannot share one base model."
            )


def _shared_processor(folders: dict[str, Path]) -> LlavaRewardProcessor:
    processors = {name: LlavaRewardProcessor.from_pretrained(folder) for name, folder in folders.items()}
    first_name, first = next(iter(processors.items()))
    for name, processor in processors.items():
        if processor.to_dict() != first.to_dict() or processor.tokenizer.get_vocab() != first.tokenizer.get_vocab():
            raise ValueError(
                f"The processors of perspectives {first_name!r} and {name!r} differ ({folders[name]}): perspectives "
                "sharing a base must build the same inputs."
            )
    return first
