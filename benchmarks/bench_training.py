"""Item 6 - training: one Bradley-Terry step vs the bare backbone; LoRA vs head-only vs full; checkpointing on/off.

A step is what `LlavaRewardTrainer` does per batch: zero the gradients, one forward over the chosen and rejected
rows together (the collator's layout: chosen first), `Objective.pair_loss` (BT, tau from the config), backward, AdamW
step. Parameters are frozen and unfrozen by the trainer's own `prepare_for_training` (`tuning` = `lora`: LoRA on
the language model + projector, SkipCA, value head; `head`: projector, SkipCA, value head; `full`: all but the
vision tower), LoRA with the trainer's defaults (the paper's r=128, alpha=256). `bare (lora)` is the least any
LoRA step can cost: the backbone's forward, a stand-in loss (the final hidden state at the last position), the
same backward through the same LoRA-wrapped weights and the same AdamW step over its trainable parameters.
Checkpointing is transformers' (non-reentrant) activation checkpointing of the decoder layers.
Peak memory is measured above the resident state after warm-up, which already holds the weights, the inputs
and AdamW's moments (reported apart: `optimizer state MB` = trainable parameters x 8 bytes in float32).

    python benchmarks/bench_training.py            # tiny model and the default backbone
    python benchmarks/bench_training.py --quick    # smoke run
"""

import copy
import tempfile

import torch
from common import Report
from common import load_backbones
from common import measure
from common import megabytes
from common import parse_args
from common import preference_pairs
from common import ratio
from common import seconds
from common import shown


def training_step(model, trainable, loss_of, inputs, checkpointing: bool):
    """A zero-argument step: zero_grad, forward + `loss_of(outputs)`, backward, AdamW step."""
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)
    model.train()

    def step():
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
        optimizer.zero_grad(set_to_none=True)
        loss_of(model(**inputs)).backward()
        optimizer.step()

    return step


def main():
    args = parse_args(__doc__.splitlines()[0], dict(pairs=1), pairs=2, image_size=112)
    report = Report("training", __doc__.splitlines()[0], args)
    from llava_reward.objectives import get_objective
    from llava_reward.trainers.trainer import LlavaRewardTrainingConfig
    from llava_reward.trainers.trainer import prepare_for_training

    prompts, chosen, rejected = preference_pairs(args.pairs, args.input_px)
    for backbone in load_backbones(args, report):
        if backbone.name != "tiny":
            backbone.set_image_size(args.image_size)
        processor = backbone.reward_processor()
        inputs = dict(processor(prompts + prompts, chosen + rejected))
        steps, trainable_counts = {}, {}
        for tuning in ("lora", "head", "full"):
            model = backbone.reward_model(copy.deepcopy(backbone.vlm))
            with tempfile.TemporaryDirectory() as output_dir:
                config = LlavaRewardTrainingConfig(output_dir=output_dir, tuning=tuning, use_cpu=True, report_to=[])
            torch.manual_seed(0)
            model = prepare_for_training(model, config)
            trainable = [p for p in model.parameters() if p.requires_grad]
            trainable_counts[tuning] = sum(p.numel() for p in trainable)
            tau = model.config.tau

            def bt_loss(outputs, tau=tau):
                chosen_rewards, rejected_rewards = outputs.rewards.chunk(2)
                return get_objective("bt").pair_loss(chosen_rewards, rejected_rewards, tau)

            for checkpointing in (False, True):
                name = f"{tuning}{' + checkpointing' if checkpointing else ''}"
                steps[name] = training_step(model, trainable, bt_loss, inputs, checkpointing)
            if tuning == "lora":
                vlm = model.get_base_model().vlm  # the same LoRA-wrapped weights, without the reward head
                bare_trainable = [p for p in vlm.parameters() if p.requires_grad]
                trainable_counts["bare (lora)"] = sum(p.numel() for p in bare_trainable)
                steps["bare (lora)"] = training_step(
                    vlm, bare_trainable, lambda outputs: outputs.last_hidden_state[:, -1].sum(), inputs, False
                )
        results = measure(steps, args)
        for name, result in results.items():
            tuning = name.split(" ")[0] if not name.startswith("bare") else "bare (lora)"
            report.add(
                model=backbone.name,
                image_px=backbone.image_size,
                pairs=args.pairs,
                step=name,
                trainable_parameters=trainable_counts[tuning],
                optimizer_state_mb=trainable_counts[tuning] * 8 / 2**20,
                result=result,
                over_bare=ratio(result, results["bare (lora)"]),
                over_lora=ratio(result, results["lora"]),
            )
        print(backbone.name, {k: round(v["median_s"], 4) for k, v in results.items()}, flush=True)
    report.write(
        {
            **shown(model="model", image_px="image px", pairs="pairs", step="step"),
            "trainable (M)": lambda row: row["trainable_parameters"] / 1e6,
            "time s": lambda row: seconds(row["result"]),
            "x bare (lora)": lambda row: row["over_bare"],
            "x lora": lambda row: row["over_lora"],
            "peak MB": lambda row: megabytes(row["result"]),
            "optimizer state MB": lambda row: row["optimizer_state_mb"],
        }
    )


if __name__ == "__main__":
    main()
