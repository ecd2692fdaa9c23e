"""Item 4 - early exit: reading the reward from decoder layer L/3, 2L/3 or L (`hidden_layer`).

A reward model built with `hidden_layer=k` drops the decoder layers after k, so it should cost the fixed part
(vision tower, projector, embeddings, head) plus k layers. Each depth gets its own copy of the same backbone
weights and runs the same processed inputs. The report fits time = fixed + k * per_layer by least squares over
the depths and gives each depth's measured time next to that line, its parameter count and peak memory.

    python benchmarks/bench_early_exit.py            # tiny model and the default backbone
    python benchmarks/bench_early_exit.py --quick    # smoke run
"""

import copy

import numpy as np
import torch
from common import Report
from common import load_backbones
from common import measure
from common import megabytes
from common import parse_args
from common import scoring_inputs
from common import seconds
from common import shown


def main():
    args = parse_args(__doc__.splitlines()[0], dict(batch=2), batch=8, image_size=112)
    report = Report("early_exit", __doc__.splitlines()[0], args)
    captions, images = scoring_inputs(args.batch, args.input_px)
    for backbone in load_backbones(args, report):
        if backbone.name != "tiny":
            backbone.set_image_size(args.image_size)
        layers = backbone.num_layers
        depths = sorted({max(1, round(layers / 3)), max(1, round(2 * layers / 3)), layers})
        models = {depth: backbone.reward_model(copy.deepcopy(backbone.vlm), hidden_layer=depth) for depth in depths}
        inputs = backbone.reward_processor()(captions, images)

        def forward(model):
            return torch.inference_mode()(lambda: model(**inputs))

        results = measure({f"k={depth}": forward(model) for depth, model in models.items()}, args)
        medians = [results[f"k={depth}"]["median_s"] for depth in depths]
        per_layer, fixed = np.polyfit(depths, medians, 1)
        for depth, model in models.items():
            result = results[f"k={depth}"]
            report.add(
                model=backbone.name,
                image_px=backbone.image_size,
                batch=args.batch,
                hidden_layer=depth,
                layers_total=layers,
                decoder_layers_kept=len(model.decoder.layers),
                parameters=sum(p.numel() for p in model.parameters()),
                result=result,
                fraction_of_full=result["median_s"] / medians[-1],
                layer_fraction=depth / layers,
                fit_fixed_s=fixed,
                fit_per_layer_s=per_layer,
                fit_predicted_s=fixed + per_layer * depth,
            )
        print(backbone.name, {k: round(v["median_s"], 4) for k, v in results.items()}, flush=True)
        del models
    report.write(
        {
            **shown(model="model", image_px="image px", batch="batch"),
            "hidden_layer k": lambda row: f"{row['hidden_layer']} of {row['layers_total']}",
            "layers kept": lambda row: row["decoder_layers_kept"],
            "params (M)": lambda row: row["parameters"] / 1e6,
            "time s": lambda row: seconds(row["result"]),
            "time / time(L)": lambda row: row["fraction_of_full"],
            "k / L": lambda row: row["layer_fraction"],
            "fit fixed + k x per-layer s": lambda row: f"{row['fit_fixed_s']:.3g} + {row['hidden_layer']} x "
            f"{row['fit_per_layer_s']:.3g} = {row['fit_predicted_s']:.3g}",
            "peak MB": lambda row: megabytes(row["result"]),
        }
    )


if __name__ == "__main__":
    main()
