"""Item 7 - throughput scaling: images per second of `LlavaRewardScorer.score` vs batch size and threads.

Each configuration scores the same `--images` decoded 1024 px images end to end (preprocessing included) with
`batch_size=b`, under `torch.set_num_threads(t)`; all configurations are interleaved round-robin. The report gives
images/s (from the median time) and each configuration's gain over the batch size below it, which shows where
batching stops paying.

    python benchmarks/bench_throughput.py            # tiny model and the default backbone
    python benchmarks/bench_throughput.py --quick    # smoke run
"""

import torch
from common import Report
from common import load_backbones
from common import parse_args
from common import scoring_inputs
from common import seconds
from common import shown
from common import time_alternatives


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        dict(images=4, batch_sizes=(1, 4), thread_counts=(1,)),
        images=8,
        batch_sizes=(1, 2, 4, 8),
        thread_counts=(1, 2),
        image_size=112,
    )
    report = Report("throughput", __doc__.splitlines()[0], args)
    captions, images = scoring_inputs(args.images, args.input_px)
    default_threads = torch.get_num_threads()
    for backbone in load_backbones(args, report):
        from llava_reward import LlavaRewardScorer

        if backbone.name != "tiny":
            backbone.set_image_size(args.image_size)
        scorer = LlavaRewardScorer(backbone.reward_model(), backbone.reward_processor())

        def configuration(threads, batch_size):
            def run():
                torch.set_num_threads(threads)
                scorer.score(captions, images, batch_size=batch_size)

            return run

        alternatives = {(t, b): configuration(t, b) for t in args.thread_counts for b in args.batch_sizes}
        # One call warms everything up (weights paged in, kernels chosen): each call then runs many batches.
        scorer.score(captions, images, batch_size=max(args.batch_sizes))
        results = time_alternatives(alternatives, warmup=0, repeats=args.repeats)
        torch.set_num_threads(default_threads)
        for threads in args.thread_counts:
            previous = None
            for batch_size in args.batch_sizes:
                result = results[(threads, batch_size)]
                throughput = args.images / result["median_s"]
                report.add(
                    model=backbone.name,
                    image_px=backbone.image_size,
                    threads=threads,
                    batch=batch_size,
                    images=args.images,
                    result=result,
                    images_per_s=throughput,
                    gain_over_previous_batch=None if previous is None else throughput / previous,
                    gain_over_one_thread=throughput
                    * results[(args.thread_counts[0], batch_size)]["median_s"]
                    / args.images,
                )
                previous = throughput
        print(backbone.name, {f"t{t}b{b}": round(r["median_s"], 3) for (t, b), r in results.items()}, flush=True)
    report.write(
        {
            **shown(model="model", image_px="image px", threads="threads", batch="batch"),
            f"time for {args.images} images s": lambda row: seconds(row["result"]),
            "images/s": lambda row: row["images_per_s"],
            "x previous batch": lambda row: row["gain_over_previous_batch"],
            f"x {args.thread_counts[0]} thread(s)": lambda row: row["gain_over_one_thread"],
        }
    )


if __name__ == "__main__":
    main()
