"""Item 2 - the published design vs ours: the same weights, the same preference pairs, the same rewards.

`published` reproduces how the published implementation (github sjz5202/LLaVA-Reward) computes the rewards of a
batch of (chosen, rejected) pairs; see `published_rewards` for each of its costs. `ours` is one
`LlavaRewardModel` forward over the chosen and rejected rows together. Both read the same `LlavaForConditionalGeneration`
weights (the reward model wraps the generator's own base model) and the same SkipCA/value-head weights, so the
rewards must agree: the report gives the largest difference. Inputs are processed beforehand (left padding, as the
published code used), so the timings compare the forwards only. At the first image size the published design is
also timed with its costs removed one at a time (`BREAKDOWN`): the before/after of each of our optimisations.
Target: published / ours >= 1.3, and a lower peak memory.

    python benchmarks/bench_published_design.py            # tiny model and the default backbone
    python benchmarks/bench_published_design.py --quick    # smoke run
"""

import functools

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


def published_rewards(generator, reward_model, inputs, *, vocab_logits=True, all_hidden_states=True) -> torch.Tensor:
    """Rewards computed the published way (one forward; the published code runs it for chosen, then rejected).

    1. The full VLM with its LM head: full-vocabulary logits at every position, thrown away (`vocab_logits`).
    2. `output_hidden_states=True`: every layer's hidden states kept, only the last one read (`all_hidden_states`).
    3. A second vision-tower pass (`get_image_features`) for SkipCA's keys and values.
    4. SkipCA with a query at every position (no mask over visual tokens), of which only the last is read.
    The flags switch 1 and 2 off, for the step-by-step breakdown; the rewards are the same either way.
    """
    forward = generator if vocab_logits else generator.model  # 1
    outputs = forward(**inputs, output_hidden_states=all_hidden_states, use_cache=False)  # 2
    # (B, T, H), the final normed state
    hidden_states = outputs.hidden_states[-1] if all_hidden_states else outputs.last_hidden_state
    config = generator.config
    image_features = generator.model.get_image_features(  # 3
        pixel_values=inputs["pixel_values"],
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    ).pooler_output
    visual_states = torch.stack(list(image_features))  # (B, V, H): one image per row, all the same size
    head = reward_model.skip_cross_attention
    query, key, value = head.q_proj(hidden_states), head.k_proj(visual_states), head.v_proj(visual_states)
    attention = torch.softmax(query @ key.transpose(1, 2) / query.shape[-1] ** 0.5, dim=-1)  # 4: (B, T, V)
    refined = head.norm(hidden_states + attention @ value)  # (B, T, H)
    return reward_model.value_head(refined[:, -1]).squeeze(-1)  # left padding: the last position is the reward token


# The published design with its costs removed one at a time, cumulatively (items 1, 2, then 5: chosen and rejected
# in one batch); what is left between the last step and `ours` is the second vision pass and the every-query SkipCA.
BREAKDOWN = {
    "- vocab logits": dict(vocab_logits=False),
    "- vocab logits - all hidden states": dict(vocab_logits=False, all_hidden_states=False),
    "- vocab logits - all hidden states - separate forwards": dict(
        vocab_logits=False, all_hidden_states=False, pairs_in_one_batch=True
    ),
}


def main():
    args = parse_args(__doc__.splitlines()[0], dict(pairs=2), pairs=4, image_sizes=(112,))
    report = Report("published_design", __doc__.splitlines()[0], args)
    prompts, chosen, rejected = preference_pairs(args.pairs, args.input_px)
    for backbone in load_backbones(args, report):
        model = backbone.reward_model()
        processor = backbone.reward_processor()
        processor.tokenizer.padding_side = "left"  # as the published code; our model reads either side
        image_sizes = [backbone.image_size] if backbone.name == "tiny" else args.image_sizes
        for image_size in image_sizes:
            backbone.set_image_size(image_size)
            chosen_inputs, rejected_inputs = processor(prompts, chosen), processor(prompts, rejected)
            pair_inputs = processor(prompts + prompts, chosen + rejected)  # one batch: chosen rows, then rejected

            @torch.inference_mode()
            def published(pairs_in_one_batch=False, **flags):
                if pairs_in_one_batch:
                    return published_rewards(backbone.generator, model, pair_inputs, **flags).split(args.pairs)
                return tuple(published_rewards(backbone.generator, model, rows, **flags)
                             for rows in (chosen_inputs, rejected_inputs))

            @torch.inference_mode()
            def run_ours():
                return model(**pair_inputs).rewards.split(args.pairs)

            alternatives = {"published": published, "ours": run_ours}
            if image_size == image_sizes[0]:  # the step-by-step breakdown, at the first image size only (time)
                alternatives.update({
                    name: functools.partial(published, **flags) for name, flags in BREAKDOWN.items()
                })
            ours = run_ours()
            difference = max(
                (theirs - our).abs().max().item()
                for function in alternatives.values() for theirs, our in zip(function(), ours)
            )
            results = measure(alternatives, args)
            row = report.add(
                model=backbone.name,
                image_px=image_size,
                pairs=args.pairs,
                tokens=pair_inputs["input_ids"].shape[1],
                results=results,
                speedup=ratio(results["published"], results["ours"]),
                max_reward_difference=difference,
            )
            print(row["model"], image_size, {k: round(v["median_s"], 4) for k, v in results.items()}, flush=True)
    report.write(
        {
            **shown(model="model", image_px="image px", pairs="pairs", tokens="tokens"),
            "published s": lambda row: seconds(row["results"]["published"]),
            "ours s": lambda row: seconds(row["results"]["ours"]),
            "speed-up (target >= 1.3)": lambda row: row["speedup"],
            "published, step by step (s)": lambda row: ", ".join(
                f"{name}: {row['results'][name]['median_s']:.3g}" for name in BREAKDOWN if name in row["results"]
            ) or "-",
            "peak MB published / ours": lambda row: " / ".join(
                megabytes(row["results"][name]) for name in ("published", "ours")
            ),
            "max reward diff": lambda row: f"{row['max_reward_difference']:.1e}",
        }
    )


if __name__ == "__main__":
    main()
