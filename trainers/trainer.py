"""`LlavaRewardTrainer`: TRL's `RewardTrainer` for images, with LLaVA-Reward's objectives and parameter-efficient setup.

TRL 1.16's `RewardTrainer` is text-only (it tokenizes in `_prepare_dataset`, treats `processing_class` as a
tokenizer, keeps only `chosen_ids`/`rejected_ids`/`margin`, and reads a scalar `outputs.logits`). This subclass keeps
its training loop, logging and activation offloading, and replaces what differs: the set-up (trainable parameters
instead of a tokenizer's pad token), the data (image rows collated by `LlavaRewardProcessor`), the losses (BT with
temperature and margin, GPM, CE), the metrics, and checkpoints (an adapter bundle: LoRA + projector + SkipCA + head).
"""

import contextlib
import functools
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import torch
from transformers import set_seed
from transformers.trainer import TRAINING_ARGS_NAME
from trl import RewardConfig
from trl import RewardTrainer
from trl.models import get_act_offloading_ctx_manager
from trl.trainer.utils import disable_dropout_in_model

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward.bundle import REWARD_HEAD_WEIGHTS
from llava_reward.bundle import reward_bundle_state_dict
from llava_reward.bundle import save_reward_bundle
from llava_reward.bundle import unwrap
from llava_reward.data_formats import IMAGE_FIELDS
from llava_reward.objectives import Objective
from llava_reward.objectives import get_objective
from llava_reward.objectives import names_with
from llava_reward.provenance import fingerprints
from llava_reward.provenance import read_training_data
from llava_reward.provenance import write_training_data

from .data import LABELLED_COLUMNS
from .data import LABELLED_STATE_COLUMNS
from .data import PAIR_COLUMNS
from .data import PAIR_STATE_COLUMNS
from .data import STATE_COLUMNS
from .data import LlavaRewardDataCollator
from .distributed import enable_fsdp_on_cpu
from .distributed import fsdp_requested
from .distributed import gather_trainable_state_dict
from .distributed import load_trainable_state_dict
from .distributed import parameter_numel
from .distributed import set_fsdp_wrap_classes
from .distributed import sharding


logger = logging.getLogger(__name__)

TUNING_MODES = ("lora", "head", "full")
STANDARDIZER_ROWS = 2048  # training rows whose images fit `config.standardize_features`' mean and deviation
# RewardConfig fields that only make sense for a text tokenizer; setting them here would be silently ignored.
_TEXT_ONLY_FIELDS = ("max_length", "eos_token", "pad_token", "chat_template_path")


def _bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class LlavaRewardTrainingConfig(RewardConfig):
    r"""
    Configuration of [`LlavaRewardTrainer`]: TRL's `RewardConfig` plus LLaVA-Reward's objective and LoRA settings.

    Parameters:
        objective (`str`, *optional*):
            `"bt"`, `"gpm"` or `"ce"`. Defaults to the model's `config.objective`; a different value is an error (the
            value head's size depends on it).
        tau (`float`, *optional*):
            Temperature of the BT/GPM losses. Defaults to the model's `config.tau`; a different value is written into
            the model's config, so that the saved model's preference probabilities use the temperature it was trained
            with.
        margin_scale (`float`, defaults to `0.0`):
            BT only: the loss is `-log sigmoid((r_c - r_r - margin_scale * margin) / tau)` with the data's per-pair
            `margin` (e.g. a rating gap). 0 ignores margins, as the paper does.
        tuning (`str`, defaults to `"lora"`):
            `"lora"`: LoRA on the language model + the trainable head (the paper); `"head"`: the head only;
            `"full"`: every parameter except the vision tower.
        train_projector (`bool`, defaults to `True`):
            Whether the vision projector belongs to the trainable head (with `"lora"` and `"head"`), as in the paper.
        lora_r (`int`, defaults to `128`), lora_alpha (`int`, defaults to `256`), lora_dropout (`float`, defaults
        to `0.05`): the paper's LoRA settings.
        lora_vision_blocks (`int`, defaults to `0`):
            With `"lora"`: also put LoRA on every linear layer of the vision encoder's last `lora_vision_blocks`
            blocks (those feeding the image features). 0 keeps the vision encoder frozen, as in the paper.
        precompute_features (`bool`, defaults to `False`):
            When only the value head trains (`head="linear"`, `tuning="head"`, `train_projector=False`): run the
            frozen model once per training image (in eval mode) and train the value head on the stored states, not
            the whole model at every step. The same model, many times faster (one forward per image, not one per
            image per epoch).

    Defaults that differ from `RewardConfig`: `learning_rate=2e-4` (the paper's); `bf16` only where the GPU supports it
    (not on CPU, where bf16 matmuls are slow on most processors); activation (gradient) checkpointing off: it
    recomputes every decoder layer in the backward pass (~1/3 more compute) to save activation memory, which
    matters for a 4-8B backbone at batch 8 on one GPU (the paper recipes switch it on) but not for small backbones
    or CPU runs; `ddp_find_unused_parameters=False` (the model computes no layer it does not use, so every
    trainable parameter gets a gradient); `max_length=None` (prompts are truncated by the processor's
    `max_prompt_tokens` instead).

    Example:

    ```python
    >>> from llava_reward.trainers import LlavaRewardTrainingConfig
    >>> args = LlavaRewardTrainingConfig(output_dir="out", objective="gpm", tau=0.1, use_cpu=True)
    >>> args.tuning, args.lora_r, args.lora_alpha, args.bf16
    ('lora', 128, 256, False)
    ```"""

    objective: str | None = field(default=None, metadata={"help": "bt, gpm or ce (defaults to the model's)."})
    tau: float | None = field(default=None, metadata={"help": "BT/GPM temperature (defaults to the model's)."})
    margin_scale: float = field(default=0.0, metadata={"help": "BT: weight of the per-pair `margin` (0: ignored)."})
    tuning: str = field(default="lora", metadata={"help": "lora, head or full."})
    train_projector: bool = field(default=True, metadata={"help": "Train the vision projector with the head."})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_vision_blocks: int = field(
        default=0, metadata={"help": "LoRA on the vision encoder's last N blocks too (0: vision encoder frozen)."}
    )
    precompute_features: bool = field(
        default=False,
        metadata={"help": "Only the value head trains: run the frozen model once per training image, then train on "
                          "the stored states."},
    )

    learning_rate: float = field(default=2e-4, metadata={"help": "The initial learning rate for AdamW."})
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing` (off by default here)."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable parameter of a reward model gets a gradient."}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Unused: prompts are truncated by the processor's `max_prompt_tokens`."}
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = not self.fp16 and not self.use_cpu and _bf16_supported()
        super().__post_init__()
        if self.tuning not in TUNING_MODES:
            raise ValueError(f"`tuning` must be one of {TUNING_MODES}, got {self.tuning!r}.")
        if self.tau is not None and not self.tau > 0:
            raise ValueError(f"`tau` must be > 0, got {self.tau}.")
        if self.margin_scale < 0:
            raise ValueError(f"`margin_scale` must be >= 0, got {self.margin_scale}.")
        if self.objective is not None:
            _check_margin_scale(get_objective(self.objective), self.margin_scale)
        if self.tuning == "lora" and not (self.lora_r > 0 and self.lora_alpha > 0 and 0 <= self.lora_dropout < 1):
            raise ValueError(
                f"LoRA needs lora_r > 0, lora_alpha > 0 and 0 <= lora_dropout < 1, got {self.lora_r}, "
                f"{self.lora_alpha}, {self.lora_dropout}."
            )
        if self.precompute_features and (self.tuning != "head" or self.train_projector):
            raise ValueError(
                f"precompute_features needs tuning='head' and train_projector=False (a frozen model below the value "
                f"head), got tuning={self.tuning!r}, train_projector={self.train_projector}."
            )
        if self.lora_vision_blocks < 0 or (self.lora_vision_blocks and self.tuning != "lora"):
            raise ValueError(
                f"`lora_vision_blocks` must be >= 0, and only applies to tuning='lora'; got {self.lora_vision_blocks} "
                f"with tuning={self.tuning!r}."
            )
        for name in _TEXT_ONLY_FIELDS:
            if getattr(self, name) is not None:
                raise ValueError(f"`{name}` is a text-tokenizer setting that LlavaRewardTrainer does not use.")


def _check_margin_scale(objective: Objective, margin_scale: float) -> None:
    if margin_scale and not objective.uses_margin:
        raise ValueError(
            f"`margin_scale` applies to the {names_with('uses_margin')} loss only, not objective={objective.name!r}."
        )


def prepare_for_training(model: LlavaRewardModel, args: LlavaRewardTrainingConfig) -> torch.nn.Module:
    """Freeze and unfreeze as `args.tuning` says; with LoRA, wrap the model in a `PeftModel`.

    LoRA goes on the language model (the family's `lora_target_modules`) and, with `args.lora_vision_blocks`, on the
    vision encoder's last blocks; the base weights stay frozen; the projector, SkipCA and the value head are trained
    as full parameters (the published code left them out of the optimizer: defect 5).
    """
    if args.disable_dropout:  # before LoRA, so that LoRA's own dropout is kept
        disable_dropout_in_model(model)
    if args.tuning == "full":
        model.requires_grad_(True)
        for path in model.family.vision_modules:
            model.vlm.get_submodule(path).requires_grad_(False)
        return model
    model.requires_grad_(False)
    if args.tuning == "lora":
        from peft import LoraConfig
        from peft import get_peft_model

        targets = model.family.lora_target_modules
        if args.lora_vision_blocks:
            vision = model.family.vision_lora_target_modules(model.vlm, args.lora_vision_blocks)
            targets = f"(?:{targets})|(?:{vision})"
        lora = LoraConfig(
            target_modules=targets,
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
        )
        model = get_peft_model(model, lora)
    for parameter in head_parameters(unwrap(model), projector=args.train_projector):
        parameter.requires_grad_(True)
    return model


def _check_frozen_below_value_head(model: torch.nn.Module) -> None:
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    below = [name for name in trainable if "value_head" not in name.split(".")]
    if below:
        raise ValueError(
            f"precompute_features needs everything below the value head frozen (head='linear', tuning='head', "
            f"train_projector=False), but {below[0]} trains ({len(below)} tensors in all)."
        )


def head_parameters(model: LlavaRewardModel, projector: bool = True) -> list[torch.nn.Parameter]:
    """SkipCA, the value head and (optionally) the vision projector."""
    modules = [module for module in (model.skip_cross_attention, model.value_head) if module is not None]
    parameters = [parameter for module in modules for parameter in module.parameters()]
    return parameters + (list(model.family.projector_parameters(model.vlm).values()) if projector else [])


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (PEFT's LoRA weights included)."""
    parameters = list(model.parameters())
    return sum(parameter_numel(p) for p in parameters if p.requires_grad), sum(parameter_numel(p) for p in parameters)


# The contract of `LlavaRewardTrainer` with TRL's `RewardTrainer` (tests/test_trainer_contract.py fails loudly when a
# TRL release changes any of it). `RewardTrainer.__init__` is skipped: it loads a tokenizer, tokenizes text and sets a
# pad token, none of which applies to images. Its other methods are either inherited as they are, reading the state
# listed here (set at the end of our `__init__`, as RewardTrainer sets it), or overridden because they differ.
REWARD_TRAINER_STATE = ("can_return_loss", "label_names", "maybe_activation_offload_context", "_metrics")
# RewardTrainer state its inherited methods do not read: only its own `compute_loss` (overridden) does.
REWARD_TRAINER_STATE_NOT_NEEDED = ("_total_train_tokens", "_tp_size")
REWARD_TRAINER_INHERITED = ("evaluate", "training_step", "log", "_save_checkpoint")  # `log` extended via super()
REWARD_TRAINER_OVERRIDDEN = ("__init__", "_prepare_dataset", "_set_signature_columns_if_needed", "compute_loss")


class LlavaRewardTrainer(RewardTrainer):
    r"""
    Trains a [`LlavaRewardModel`] on image preference pairs (BT, GPM, CE) or labelled images (CE).

    Args:
        model (`LlavaRewardModel`): the reward model, e.g. `LlavaRewardModel.from_vlm(base_path, objective="bt")`.
            With `args.tuning="lora"` the trainer wraps it in a `PeftModel` (see `prepare_for_training`).
        args (`LlavaRewardTrainingConfig`): the training configuration.
        train_dataset, eval_dataset (`datasets.Dataset`): rows from `trainers.data.load_preference_data` (pairs, or
            labelled images for `objective="ce"`); `eval_dataset` may be a dict of named datasets.
        processing_class (`LlavaRewardProcessor`, *optional*): defaults to the processor of `config.base_model`.
        data_collator, callbacks, optimizers, ...: as for `transformers.Trainer`.

    Logged (train, and with an `eval_` prefix on evaluation): `loss`, `accuracy` (fraction of non-tied pairs ranked
    right; labelled rows: fraction classified right), `margin` (mean preference logit of chosen over rejected),
    `reward_mean`, `reward_std`, `learning_rate`.

    Example:

    ```python
    >>> from llava_reward import LlavaRewardModel
    >>> from llava_reward.trainers import LlavaRewardTrainer, LlavaRewardTrainingConfig
    >>> model = LlavaRewardModel.from_vlm("path/to/base-vlm", objective="bt")  # doctest: +SKIP
    >>> args = LlavaRewardTrainingConfig(output_dir="reward-alignment", lora_r=16, lora_alpha=32)  # doctest: +SKIP
    >>> trainer = LlavaRewardTrainer(model, args, train_dataset=pairs)  # doctest: +SKIP
    >>> trainer.train(); trainer.save_model()  # an adapter bundle LlavaRewardScorer loads  # doctest: +SKIP
    ```"""

    _tag_names = ["trl", "reward-trainer", "llava-reward"]
    _name = "LLaVA-Reward"

    def __init__(
        self,
        model: LlavaRewardModel,
        args: LlavaRewardTrainingConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class: LlavaRewardProcessor | None = None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
    ):
        args = args or LlavaRewardTrainingConfig(output_dir=f"{model.config.perspective}-reward")
        if not isinstance(model, LlavaRewardModel):
            raise TypeError(f"`model` must be a LlavaRewardModel, got {type(model).__name__}.")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required.")
        self.objective, self.tau = _align_objective(model, args)  # the model's config owns both
        if processing_class is None:
            if not model.config.base_model:
                raise ValueError("Pass `processing_class`: the model's config names no `base_model` to load it from.")
            processing_class = LlavaRewardProcessor.from_base(model.config.base_model)
        set_seed(args.seed)  # LoRA's initialisation
        model = prepare_for_training(model, args)
        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                key: self._prepare_dataset(data, processing_class, args, key) for key, data in eval_dataset.items()
            }
        elif eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval")
        # RewardTrainer.__init__ is all about text models and tokenizers: skip to the Trainer below it (see
        # REWARD_TRAINER_STATE above for what is set in its place).
        super(RewardTrainer, self).__init__(
            model=model,
            args=args,
            data_collator=data_collator or LlavaRewardDataCollator(processing_class),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        if self.is_fsdp_enabled:
            if args.tuning != "full" and self.accelerator.state.fsdp_plugin.fsdp_version != 2:
                raise ValueError(f"tuning={args.tuning!r} under FSDP needs fsdp_version 2 (FSDP2), not FSDP1.")
            set_fsdp_wrap_classes(self.accelerator, self.model)
        # REWARD_TRAINER_STATE: what RewardTrainer's inherited methods (training_step, log, evaluate) read.
        self.can_return_loss = True  # evaluation calls compute_loss although there are no labels
        self.label_names = []
        self.maybe_activation_offload_context = (
            get_act_offloading_ctx_manager(model=self.model)
            if args.activation_offloading
            else contextlib.nullcontext()
        )
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.trainable_parameters = count_parameters(self.model)  # (trainable, total)
        # Where the training data came from (a Hub id, a file), recorded in training_data.json; `train` sets it.
        self.data_sources: list[str] = []
        self.initial_training_images: frozenset[str] = frozenset()  # of the model `load_trained_weights` started from
        logger.info("%s tuning: %d of %d parameters trainable.", args.tuning, *self.trainable_parameters)
        if args.precompute_features:
            _check_frozen_below_value_head(self.model)
        self.prepare_frozen_features()

    def prepare_frozen_features(self) -> None:
        """Before training, on the model as it is: fit the feature standardiser (`config.standardize_features`) on
        the reward states of the training images (at most `STANDARDIZER_ROWS` evenly spaced rows, or every row with
        `args.precompute_features`), unless the model's is fitted already (a model trained before keeps its own);
        with `args.precompute_features`, store every training row's states in the dataset (`STATE_COLUMNS`), so
        that the frozen model runs once per image and each step runs the value head alone. Every process reads the
        same rows: distributed training fits the same standardiser everywhere."""
        standardizer = unwrap(self.model).feature_standardizer
        fit = standardizer is not None and not standardizer.fitted
        if not (fit or self.args.precompute_features):
            return
        dataset = self.train_dataset
        step = 1 if self.args.precompute_features else -(-len(dataset) // STANDARDIZER_ROWS)
        rows = list(range(0, len(dataset), step))
        states = self.reward_states(dataset, rows)  # (rows, images per row, H)
        if fit:
            standardizer.fit(states.flatten(0, 1))
            logger.info("Fitted the feature standardiser on the images of %d training rows.", len(rows))
        if self.args.precompute_features:
            columns = PAIR_STATE_COLUMNS if states.shape[1] == 2 else LABELLED_STATE_COLUMNS
            for index, column in enumerate(columns):
                dataset = dataset.add_column(column, states[:, index].tolist())
            self.train_dataset = dataset

    @torch.no_grad()
    def reward_states(self, dataset, rows: list[int]) -> torch.Tensor:
        """(rows, images per row, H): the states the value head reads for the images of `dataset[rows]` ([chosen,
        rejected] for pairs, [image] for labelled rows), float32 on the CPU, the model in eval mode."""
        was_training, batch_size = self.model.training, self.args.per_device_train_batch_size
        images_per_row = 2 if "chosen" in dataset.column_names else 1  # the collator puts all chosen images first
        self.model.eval()
        states = []
        for start in range(0, len(rows), batch_size):
            batch = self.data_collator([dataset[index] for index in rows[start : start + batch_size]])
            inputs = self._prepare_inputs({key: value for key, value in batch.items() if key not in ("margin", "label")})
            read = self.model(**inputs).reward_hidden_states.float().cpu()  # (images per row x batch, H)
            states.append(read.unflatten(0, (images_per_row, -1)))
        self.model.train(was_training)
        return torch.cat(states, dim=1).transpose(0, 1)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # Nothing to tokenize: images are decoded and encoded batch by batch by the collator. Check the layout.
        columns = set(dataset.column_names or [])
        if {"chosen", "rejected", "prompt"} <= columns:
            if args.margin_scale and "margin" not in columns:
                raise ValueError(
                    f"margin_scale={args.margin_scale} but the {dataset_name} data has no `margin` column."
                )
            return dataset
        if {"image", "label", "prompt"} <= columns:
            if not self.objective.learns_from_labels:
                raise ValueError(
                    f"The {dataset_name} data holds labelled images (prompt, image, label), which only objective "
                    f"{names_with('learns_from_labels')} can learn from; this model's objective is {self.objective.name!r} "
                    "(it needs pairs)."
                )
            return dataset
        raise ValueError(
            f"The {dataset_name} data must have columns (prompt, chosen, rejected) or (prompt, image, label); got "
            f"{sorted(columns)}. `trainers.data.load_preference_data` converts the supported formats."
        )

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        # On CPU, accelerate drops an FSDP plugin and trains with DDP without a word: switch it to FSDP2.
        if fsdp_requested(self.args) and enable_fsdp_on_cpu(self.accelerator, self.args.fsdp_plugin_args):
            self.is_fsdp_enabled = True

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(dict.fromkeys(PAIR_COLUMNS + LABELLED_COLUMNS + STATE_COLUMNS))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        margin, labels = inputs.pop("margin", None), inputs.pop("label", None)
        rewards = model(**inputs).rewards  # (N,) or (N, D)
        if labels is not None:
            loss = self.objective.labelled_loss(rewards, labels)
            predictions = rewards
            gathered, labels = self.accelerator.gather_for_metrics((rewards.detach(), labels))
            accuracy = ((gathered > 0).float() == labels).float()
        else:
            chosen, rejected = rewards.chunk(2)  # the collator puts all chosen rows first
            scaled_margin = self.args.margin_scale * margin if self.args.margin_scale and margin is not None else None
            loss = self.objective.pair_loss(chosen, rejected, self.tau, scaled_margin)
            if self.objective.shift_invariant and self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
            predictions = torch.stack([chosen, rejected], dim=1)  # (B, 2) or (B, 2, D)
            logit = self.objective.preference_logit(chosen, rejected).detach()
            logit = self.accelerator.gather_for_metrics(logit)
            self._metrics[mode]["margin"].extend(logit.tolist())
            accuracy = (logit > 0)[logit != 0].float()  # ties (equal rewards) count neither way
        # Per-item values, so that averaging them in `log` gives exact fractions over uneven batches.
        self._metrics[mode]["accuracy"].extend(accuracy.tolist())
        gathered = self.accelerator.gather_for_metrics(predictions.detach().float())
        self._metrics[mode]["rewards"].extend(gathered.flatten().tolist())
        return (loss, {"rewards": predictions}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        rewards = torch.tensor(self._metrics[mode].pop("rewards", []))
        if len(rewards):
            self._metrics[mode]["reward_mean"] = [rewards.mean().item()]
            self._metrics[mode]["reward_std"] = [rewards.std(correction=0).item()]
        for key in [key for key, values in self._metrics[mode].items() if not values]:
            del self._metrics[mode][key]  # e.g. accuracy when every pair was tied
        super().log(logs, start_time)

    # ---- checkpoints: an adapter bundle (LoRA + head), or the full model ----------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.args.tuning == "full" or not sharding(self.accelerator):
            return super().save_model(output_dir, _internal_call)
        # FSDP / ZeRO-3: every process gathers the trainable parameters (the bundle's; never the frozen backbone, which
        # the Trainer's own FSDP and ZeRO-3 paths would gather whole or skip), and `_save` writes them on one.
        self._save(output_dir, state_dict=gather_trainable_state_dict(self.model, self.accelerator))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        if self.args.tuning == "full":
            super()._save(output_dir, state_dict)
        elif self.args.should_save:  # `state_dict`: the trained tensors, whole, where the Trainer gathered them
            save_reward_bundle(self.model, output_dir, self.processing_class, state_dict=state_dict)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self.args.should_save:  # what the model saw, for evaluations to tell held-out numbers from others
            write_training_data(output_dir, self.training_fingerprints, sources=self.data_sources)

    @functools.cached_property
    def training_fingerprints(self) -> set[str]:
        """Fingerprints of the training images (`llava_reward.provenance`), computed once; with
        `load_trained_weights`, those of the model it started from too."""
        columns = [column for column in IMAGE_FIELDS if column in self.train_dataset.column_names]
        rows = self.train_dataset.select_columns(columns)
        return fingerprints(row[column] for row in rows for column in columns) | self.initial_training_images

    def load_trained_weights(self, folder: str | os.PathLike) -> None:
        """Start training from the perspective trained in `folder` (an adapter bundle, e.g. pre-trained on artifact
        pairs): its LoRA, projector, SkipCA and value head. It must have been trained with the same base model, head
        and LoRA settings (every LoRA weight of this model must be in it, and nothing else). Its training images
        count as this model's (`training_data.json`), and its folder is named among the data sources."""
        folder = Path(folder)
        if self.args.tuning == "full" or not (folder / REWARD_HEAD_WEIGHTS).is_file():
            raise ValueError(
                f"init_from {folder}: expected an adapter bundle ({REWARD_HEAD_WEIGHTS}, lora/) to start a "
                f"tuning={self.args.tuning!r} run from."
            )
        try:  # the bundle's whole tensors into the parameters; every trainable one must be there, nothing else
            state_dict = reward_bundle_state_dict(self.model, folder)
            load_trainable_state_dict(self.model, state_dict, self.accelerator)
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"init_from {folder}: its weights do not match this model's (train both with the same base model, "
                f"head and LoRA settings): {error}"
            ) from None
        self.initial_training_images = frozenset(read_training_data(folder) or ())
        self.data_sources.append(f"initialised from {folder}")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        head_file = Path(resume_from_checkpoint) / REWARD_HEAD_WEIGHTS
        if not head_file.is_file():  # a full fine-tuning checkpoint
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        # The bundle's whole tensors (LoRA from lora/, the head) into the parameters, which FSDP may have sharded.
        model = model or self.model
        load_trainable_state_dict(model, reward_bundle_state_dict(model, resume_from_checkpoint), self.accelerator)

    def _load_best_model(self) -> None:
        if self.args.tuning == "full":
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def create_model_card(self, *args, **kwargs):
        # TRL writes its text-reward-model card into every checkpoint; a perspective's card is written by
        # `hub_cards` when it is shared.
        return None


def _align_objective(model: LlavaRewardModel, args: LlavaRewardTrainingConfig) -> tuple[Objective, float]:
    """The one place where the training configuration meets the model's: the model's config owns `objective` and
    `tau`; `args.objective` may only confirm it (the value head's size depends on it) and `args.tau` sets it, so
    that the saved model's preference probabilities use the temperature it was trained with."""
    config = model.config
    if args.objective is not None and args.objective != config.objective:
        raise ValueError(
            f"The training objective is {args.objective!r} but the model was built for {config.objective!r} "
            f"(reward_dim={config.reward_dim}); build it with LlavaRewardModel.from_vlm(..., objective={args.objective!r})."
        )
    objective = get_objective(config.objective)
    _check_margin_scale(objective, args.margin_scale)
    if args.tau is not None:
        config.tau = args.tau
    return objective, config.tau


__all__ = [
    "LlavaRewardTrainer",
    "LlavaRewardTrainingConfig",
    "count_parameters",
    "prepare_for_training",
]
