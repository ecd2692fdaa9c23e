"""Sharding-aware helpers for LoRA and head-only training under FSDP2 and DeepSpeed ZeRO-3.

Under DDP and ZeRO-2 every process holds whole parameters, and an adapter bundle (LoRA + projector + SkipCA + value
head) is written from them. FSDP2 (`torch.distributed.fsdp.fully_shard`, through accelerate) and ZeRO-3 shard every
parameter across processes, so the bundle's tensors must be gathered first (every process takes part) and written
once, by the main process; loading a bundle into a sharded model (resuming) must scatter them back. These helpers
do both for the three set-ups, so that `LlavaRewardTrainer` has one code path:

* `sharding(accelerator)`: `"fsdp"`, `"zero3"` or `None` (whole parameters).
* `gather_trainable_state_dict(model, accelerator)`: the trainable parameters, whole, on the main process.
* `load_trainable_state_dict(model, state_dict, accelerator)`: whole tensors into (possibly sharded) parameters.
* `enable_fsdp_on_cpu(accelerator, fsdp_plugin_args)`: accelerate 1.15 ignores an FSDP plugin on CPU and silently
  trains with DDP instead; this switches it to FSDP2, which torch runs on CPU with gloo (tests, CPU clusters).
* `set_fsdp_wrap_classes(accelerator, model)`: the layer classes FSDP makes units of, when the configuration names
  none.

FSDP2 shards each parameter on its own (a DTensor per parameter), so LoRA weights (trainable) and the frozen
weights they adapt can share one FSDP unit (a decoder layer): the FSDP1 failure mode of mixed `requires_grad` inside
one flat parameter does not exist. With `TRANSFORMER_BASED_WRAP` accelerate makes one unit per decoder layer and per
vision block (`set_fsdp_wrap_classes`), one for the input embeddings, and a root unit holding the rest (projector,
SkipCA, value head, vision embeddings).

Example:
    >>> import torch
    >>> from accelerate import Accelerator
    >>> from llava_reward.trainers.distributed import gather_trainable_state_dict, sharding
    >>> model = torch.nn.Linear(2, 1)
    >>> accelerator = Accelerator(cpu=True)
    >>> sharding(accelerator) is None
    True
    >>> sorted(gather_trainable_state_dict(model, accelerator))
    ['bias', 'weight']
"""

import logging
import os

import torch


logger = logging.getLogger(__name__)


def sharding(accelerator) -> str | None:
    """`"fsdp"` (FSDP, version 1 or 2), `"zero3"` (DeepSpeed ZeRO-3), or `None` when every process holds whole
    parameters (one process, DDP, ZeRO-1/2)."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        return "fsdp"
    plugin = getattr(state, "deepspeed_plugin", None)
    if state.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3:
        return "zero3"
    return None


def gather_trainable_state_dict(model: torch.nn.Module, accelerator) -> dict[str, torch.Tensor]:
    """The trainable parameters of `model`, whole, as CPU tensors named as in `model.named_parameters()`.

    Under FSDP and ZeRO-3 every process must call this (the shards are all-gathered one parameter at a time, only
    the trainable ones); the main process gets the tensors, the others an empty dict. Without sharding every process
    gets them. `model` is the model the trainer trains (a `PeftModel` or `LlavaRewardModel`, sharded in place by
    FSDP2; not a DDP or DeepSpeed engine wrapper).
    """
    kind = sharding(accelerator)
    trainable = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    if kind == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        gathered = get_model_state_dict(model, options=options)  # {} except on rank 0 (cpu_offload)
        return {name: gathered[name] for name in trainable} if accelerator.is_main_process else {}
    if kind == "zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(trainable.values()), modifier_rank=None):
            if not accelerator.is_main_process:
                return {}
            return {name: parameter.detach().to("cpu", copy=True) for name, parameter in trainable.items()}
    return {name: parameter.detach().cpu() for name, parameter in trainable.items()}


def load_trainable_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], accelerator) -> None:
    """Copy whole tensors (named as in `model.named_parameters()`, every process holding them) into `model`'s
    parameters, sharded or not. Every process must call it under FSDP and ZeRO-3.

    Unknown names are an error, and so is a trainable parameter `state_dict` leaves out (a resumed run would train it
    from its initial value), or a tensor of another shape than its parameter (whole shapes compared, sharded or not).
    """
    parameters = dict(model.named_parameters())
    unknown = sorted(state_dict.keys() - parameters.keys())
    missing = sorted(name for name, param in parameters.items() if param.requires_grad and name not in state_dict)
    if unknown or missing:
        raise KeyError(f"The tensors do not match the parameters: unknown {unknown[:5]}, missing {missing[:5]}")
    wrong = [
        f"{name}: {tuple(tensor.shape)} where the parameter is {parameter_shape(parameters[name])}"
        for name, tensor in state_dict.items()
        if tuple(tensor.shape) != parameter_shape(parameters[name])
    ]
    if wrong:
        raise ValueError(f"Tensors of the wrong shape: {'; '.join(wrong[:3])}")
    kind = sharding(accelerator)
    if kind == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        # Each process holds the whole tensors and keeps its own shard of them; strict=False: a part of the model.
        set_model_state_dict(model, state_dict, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    targets = [parameters[name] for name in state_dict]
    if kind == "zero3":
        import deepspeed

        # Gathered whole on every process, written on rank 0, and partitioned again from rank 0's values on exit.
        with deepspeed.zero.GatheredParameters(targets, modifier_rank=0), torch.no_grad():
            for target, (name, tensor) in zip(targets, state_dict.items()):
                target.copy_(tensor.to(target.dtype))
        return
    with torch.no_grad():
        for target, tensor in zip(targets, state_dict.values()):
            target.copy_(tensor.to(target.dtype))


def set_fsdp_wrap_classes(accelerator, model: torch.nn.Module) -> list[str] | None:
    """Name the layer classes FSDP's `TRANSFORMER_BASED_WRAP` makes units of, when the configuration names none.

    accelerate then takes the model's `_no_split_modules`, which for some VLMs names classes the model does not hold
    (LLaVA's lists `CLIPTextEmbeddings`), and raises. Keep the ones present: the decoder layers and vision blocks.
    Returns the names set (`None` when the configuration named them, or wraps another way).
    """
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = accelerator.state.fsdp_plugin
    if plugin.auto_wrap_policy is not transformer_auto_wrap_policy or plugin.transformer_cls_names_to_wrap is not None:
        return None
    present = {type(module).__name__ for module in model.modules()}
    plugin.transformer_cls_names_to_wrap = sorted(set(getattr(model, "_no_split_modules", None) or ()) & present)
    return plugin.transformer_cls_names_to_wrap


def parameter_numel(parameter: torch.nn.Parameter) -> int:
    """The number of elements of the whole parameter (a ZeRO-3 partitioned parameter's `numel()` is 0; an FSDP2
    DTensor's `numel()` is already the whole count)."""
    return getattr(parameter, "ds_numel", None) or parameter.numel()


def parameter_shape(parameter: torch.nn.Parameter) -> tuple[int, ...]:
    """The shape of the whole parameter (ZeRO-3 keeps it in `ds_shape`; an FSDP2 DTensor's `shape` is already the
    whole one)."""
    return tuple(getattr(parameter, "ds_shape", None) or parameter.shape)


def fsdp_requested(args) -> bool:
    """Whether the training arguments (`fsdp`) or `accelerate launch` (an FSDP config file) ask for FSDP."""
    return bool(getattr(args, "fsdp_plugin_args", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def enable_fsdp_on_cpu(accelerator, fsdp_plugin_args: dict | None) -> bool:
    """Make accelerate shard with FSDP2 on CPU (gloo), where it silently falls back to DDP; `True` if it switched.

    accelerate 1.15 (`AcceleratorState.__init__`) honours an FSDP plugin only on accelerator devices (CUDA, XPU,
    NPU, ...): on CPU (`use_cpu=True`, the gloo backend) the plugin is dropped and the model is wrapped in DDP, with no
    warning. torch's FSDP2 itself runs on CPU with gloo, and so does accelerate's FSDP2 preparation
    (`fsdp2_prepare_model`: `fully_shard` per wrapped module); only its gate is device-bound. Setting the state's
    distributed type and plugin after the fact, before anything is prepared, gives the same code path as on GPUs.
    `fsdp_plugin_args` are the training arguments' (`TrainingArguments.fsdp_plugin_args`); without them the plugin
    reads accelerate's environment (`accelerate launch --config_file fsdp.yaml`). FSDP1 is refused on CPU.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType
    from accelerate.utils import FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin(**(fsdp_plugin_args or {}))
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU needs fsdp_version 2 (FSDP2, `fully_shard`); FSDP1 needs an accelerator.")
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    logger.info("FSDP2 on CPU (gloo): accelerate would have fallen back to DDP.")
    return True


__all__ = [
    "enable_fsdp_on_cpu",
    "fsdp_requested",
    "gather_trainable_state_dict",
    "load_trainable_state_dict",
    "parameter_numel",
    "parameter_shape",
    "set_fsdp_wrap_classes",
    "sharding",
]
