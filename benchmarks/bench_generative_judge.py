"""Item 3 - a generative judge vs our single forward, on the same backbone weights and the same images.

`judge`: the backbone as a VQA-style judge (the kind of evaluator the paper compares with: VQAScore, LlavaGuard,
EvalAlign): `LlavaForConditionalGeneration.generate` answering an evaluation instruction about the caption, greedy,
exactly 32 new tokens (`min_new_tokens=max_new_tokens=32`) with the KV cache. `ours`: one `LlavaRewardModel`
forward on the reward text. The reward model wraps the generator's own base model, so both run the same weights.
`judge, 1 token` is the same call stopped after its first token (the prefill): (judge - prefill) / 31 is the cost
of one decoding step, which bounds the ratio. `ours, layer k` (default backbone only) is the reward read at the
layer the default model reads (`configuration/recipes/default_fidelity.yaml`): a judge needs every layer to
generate, a reward model needs the layers up to the one it reads. Inputs are processed beforehand: the timings
compare model calls. Target: judge / ours >= 10.

    python benchmarks/bench_generative_judge.py            # tiny model and the default backbone
    python benchmarks/bench_generative_judge.py --quick    # smoke run
"""

import copy

import torch
from common import Report
from common import load_backbones
from common import measure
from common import megabytes
from common import parse_args
from common import ratio
from common import scoring_inputs
from common import seconds
from common import shown


INSTRUCTION = 'Does this image show "{caption}"? Answer yes or no, then explain what matches and what does not.'
NEW_TOKENS = 32


def judge_inputs(processor, captions: list[str], images: list):
    """The generator's inputs: one chat turn (image + instruction) per row, ready for the assistant's answer."""
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION.format(caption=c)}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for c in captions
    ]
    return processor(text=texts, images=[[image] for image in images], return_tensors="pt", padding=True)


def main():
    args = parse_args(__doc__.splitlines()[0], dict(batch_sizes=(1, 2)), batch_sizes=(1, 4), image_size=112)
    report = Report("generative_judge", __doc__.splitlines()[0], args)
    captions, images = scoring_inputs(max(args.batch_sizes), args.input_px)
    for backbone in load_backbones(args, report):
        if backbone.name != "tiny":
            backbone.set_image_size(args.image_size)
        model = backbone.reward_model()
        early_layer = backbone.default_model_layer()
        # A copy: a reward model built with `hidden_layer` drops the later layers of the VLM it is given.
        if early_layer:
            early_model = backbone.reward_model(copy.deepcopy(backbone.vlm), hidden_layer=early_layer)
        processor = backbone.reward_processor()
        backbone.processor.tokenizer.padding_side = "left"  # batched generation needs left padding
        for batch_size in args.batch_sizes:
            reward_inputs = processor(captions[:batch_size], images[:batch_size])
            generation_inputs = judge_inputs(backbone.processor, captions[:batch_size], images[:batch_size])

            def judge(new_tokens: int):
                @torch.inference_mode()
                def run():
                    generated = backbone.generator.generate(
                        **generation_inputs,
                        max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens,
                        do_sample=False,
                        pad_token_id=backbone.processor.tokenizer.pad_token_id,
                    )
                    assert generated.shape[1] == generation_inputs["input_ids"].shape[1] + new_tokens

                return run

            @torch.inference_mode()
            def run_ours():
                model(**reward_inputs)

            alternatives = {"judge": judge(NEW_TOKENS), "judge, 1 token": judge(1), "ours": run_ours}
            if early_layer:
                early = torch.inference_mode()(lambda: early_model(**reward_inputs))
                alternatives[f"ours, layer {early_layer}"] = early
            results = measure(alternatives, args)
            step = (results["judge"]["median_s"] - results["judge, 1 token"]["median_s"]) / (NEW_TOKENS - 1)
            row = report.add(
                model=backbone.name,
                image_px=backbone.image_size,
                batch=batch_size,
                judge_prompt_tokens=generation_inputs["input_ids"].shape[1],
                reward_tokens=reward_inputs["input_ids"].shape[1],
                results=results,
                speedup=ratio(results["judge"], results["ours"]),
                decoding_step_s=step,
                prefill_over_ours=ratio(results["judge, 1 token"], results["ours"]),
                early_layer=early_layer,
                speedup_early=ratio(results["judge"], results[f"ours, layer {early_layer}"]) if early_layer else None,
            )
            print(row["model"], batch_size, {k: round(v["median_s"], 4) for k, v in results.items()}, flush=True)
    report.write(
        {
            **shown(model="model", image_px="image px", batch="batch"),
            "tokens judge / ours": lambda row: f"{row['judge_prompt_tokens']}+{NEW_TOKENS} / {row['reward_tokens']}",
            "judge s": lambda row: seconds(row["results"]["judge"]),
            "ours s": lambda row: seconds(row["results"]["ours"]),
            "judge, 1 token s": lambda row: seconds(row["results"]["judge, 1 token"]),
            "decoding step s": lambda row: row["decoding_step_s"],
            "judge/ours (target >= 10)": lambda row: row["speedup"],
            "ours at the default model's layer: s, judge/ours": early_exit_cell,
            "peak MB judge / ours": lambda row: " / ".join(megabytes(row["results"][n]) for n in ("judge", "ours")),
        }
    )


def early_exit_cell(row: dict) -> str:
    layer = row["early_layer"]
    if layer is None:
        return "n/a (all layers)"
    return f"layer {layer}: {seconds(row['results'][f'ours, layer {layer}'])}, {row['speedup_early']:.3g}"


if __name__ == "__main__":
    main()
