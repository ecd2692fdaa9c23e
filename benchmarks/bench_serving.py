"""Issue 17 - the reward service and Ray Data scoring against the offline scorer, on the same model and images.

Three measurements in one run, on one reward model saved to a folder (as the server and the Ray actors load it) and
the same PNG-encoded images (real MJ-Bench photos at `--input-px`, decoded by every path, so decoding is counted
alike):

1. offline: `LlavaRewardScorer.score` in this process, images/s at each `--batch-sizes` (the reference is the best);
2. server: `serve_reward` on a local Ray (1 replica, `--max-batch-size`, `--batch-wait-ms`), called over HTTP on
   loopback by 1, 4 and 16 concurrent clients sending single-image requests (the RL pattern): requests/s, p50 and
   p99 latency, and the mean batch the replica formed; its ratios are to the offline scorer timed again right
   before each client count (batch 1 and the best batch), since a shared machine's speed drifts;
3. Ray Data: `score_dataset` over a folder of the images with `--ray-workers` actors, wall time from the call to the
   last shard written (actor start-up and model loading included), against the local scorer on the same files.

The default backbone runs at `--image-size` px (112, as in bench_throughput) and reads the default model's layer.
Clients, proxy, replica and actors share this machine's cores with each other: on a 2-core machine the server's
HTTP, JSON and base64 work competes with the model for the same CPU.

    python benchmarks/bench_serving.py               # tiny model and the default backbone
    python benchmarks/bench_serving.py --quick       # smoke run: tiny model
"""

import base64
import io
import json
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from common import Report
from common import load_backbones
from common import parse_args
from common import scoring_inputs
from common import shown
from common import summarize
from common import time_alternatives


def save_reward_model(backbone, folder: Path) -> Path:
    """An adapter bundle (head + projector; no LoRA) on the backbone saved as its base: what `serve` loads.

    On the default backbone it reads the layer `llava-reward demo`'s default model reads (later layers are skipped).
    """
    from llava_reward.bundle import save_reward_bundle

    base = backbone.checkpoint(folder / "base")
    layer = backbone.default_model_layer()
    model = backbone.reward_model(**({"hidden_layer": layer} if layer is not None else {}))
    model.config.base_model = str(base)
    return save_reward_bundle(model, folder / "reward", backbone.reward_processor())


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def post(url: str, payload: bytes) -> float:
    """Seconds until the answer of one POST; raises on an HTTP error."""
    start = time.perf_counter()
    request = urllib.request.Request(url, data=payload, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        json.loads(response.read())
    return time.perf_counter() - start


def load_clients(url: str, payloads: list[bytes], clients: int, per_client: int) -> dict:
    """`clients` threads, each sending `per_client` single-image requests back to back; throughput and latency."""
    latencies, errors = [], []

    def client(worker: int):
        for step in range(per_client):
            try:
                latencies.append(post(url, payloads[(worker * per_client + step) % len(payloads)]))
            except Exception as error:  # reported, never hidden
                errors.append(repr(error))

    threads = [threading.Thread(target=client, args=(worker,)) for worker in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if not latencies:
        raise RuntimeError(f"every request to {url} failed, e.g. {errors[0]}")
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "errors": errors,
        "elapsed_s": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
    }


def replica_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/info", timeout=60) as response:
        return json.loads(response.read())["replica"]


@dataclass
class Served:
    """One backbone's reward model, its offline reference rates, and the files Ray Data scores."""

    name: str
    folder: Path
    scorer: object
    rates: dict
    best: int
    image_dir: Path
    expected: torch.Tensor  # the local scorer's rewards of the files in image_dir


def measure_offline(args, report: Report, backbone, scratch: Path, captions: list, files: list) -> Served:
    """1. The offline scorer in this process (before Ray starts here): images/s per batch size, and on the files."""
    from llava_reward import LlavaRewardScorer

    if backbone.name != "tiny":
        backbone.set_image_size(args.image_size)  # the processor's size: what the model sees
    folder = save_reward_model(backbone, scratch / backbone.name)
    scorer = LlavaRewardScorer.from_pretrained(folder)
    prompts, payload_files = captions[: args.images], files[: args.images]
    offline = time_alternatives(
        {size: (lambda size=size: scorer.score(prompts, payload_files, batch_size=size)) for size in args.batch_sizes},
        warmup=args.warmup, repeats=args.repeats,
    )
    rates = {size: args.images / result["median_s"] for size, result in offline.items()}
    best = max(rates, key=rates.get)
    for size, result in offline.items():
        report.add(model=backbone.name, mode="offline scorer", parallel=f"batch {size}", count=args.images,
                   per_s=rates[size], mean_batch=size, result=result, vs_offline_best=rates[size] / rates[best])
    image_dir = scratch / backbone.name / "images"
    image_dir.mkdir()
    for index, file in enumerate(files[: args.ray_images]):
        (image_dir / f"{index:05d}.png").write_bytes(file)
    paths = sorted(image_dir.iterdir())
    local = time_alternatives({"local": lambda: scorer.score(captions[0], paths, batch_size=best)}, warmup=0,
                              repeats=1)["local"]
    report.add(model=backbone.name, mode="local scorer, files", parallel=f"batch {best}", count=args.ray_images,
               per_s=args.ray_images / local["median_s"], mean_batch=best, result=local)
    expected = scorer.score(captions[0], paths, batch_size=best)
    return Served(backbone.name, folder, scorer, rates, best, image_dir, expected)


def measure_server(args, report: Report, model: Served, prompts: list, files: list):
    """2. The server over HTTP on loopback, 1-image requests from 1, 4, 16 concurrent clients.

    A shared machine drifts: right before each client count, the offline scorer is timed again (batch 1 and the best
    batch, one call each) and the server's ratios are taken against those adjacent numbers.
    """
    from llava_reward.serving import serve_reward

    service = serve_reward(str(model.folder), port=args.port, name=f"bench-{model.name}",
                           threads=args.threads, max_batch_size=args.max_batch_size,
                           batch_wait_ms=args.batch_wait_ms, max_ongoing_requests=4 * args.max_batch_size)
    payloads = [json.dumps({"prompt": prompt, "images": [base64.b64encode(file).decode()]}).encode()
                for prompt, file in zip(prompts, files)]
    load_clients(f"{service.url}/score", payloads, 2, args.warmup * 2)  # warm the proxy and the replica
    for clients in args.clients:
        adjacent = time_alternatives(
            {size: (lambda size=size: model.scorer.score(prompts, files, batch_size=size))
             for size in sorted({1, model.best})},
            warmup=0, repeats=1,
        )
        rates = {size: len(files) / result["median_s"] for size, result in adjacent.items()}
        before = replica_stats(service.url)
        result = load_clients(f"{service.url}/score", payloads, clients, args.requests_per_client)
        after = replica_stats(service.url)
        if result["errors"]:
            report.note(f"{clients} clients: {len(result['errors'])} failed requests, e.g. {result['errors'][0]}")
        report.add(model=model.name, mode="server, 1-image requests", parallel=f"{clients} clients",
                   count=result["requests"], per_s=result["requests_per_s"], p50_ms=result["p50_ms"],
                   p99_ms=result["p99_ms"],
                   mean_batch=(after["images"] - before["images"]) / max(after["batches"] - before["batches"], 1),
                   result=result, adjacent_offline_per_s=rates,
                   vs_offline_best=result["requests_per_s"] / rates[model.best],
                   vs_offline_batch_1=result["requests_per_s"] / rates[1])
    service.stop()


def measure_ray_data(args, report: Report, model: Served, prompt: str, scratch: Path):
    """3. `score_dataset` over the files, against the local scorer's rewards of the same files."""
    from llava_reward.serving import read_scores
    from llava_reward.serving import score_dataset

    for workers in args.ray_workers:
        output = scratch / model.name / f"ray-{workers}"
        summary = score_dataset(str(model.folder), model.image_dir, output, prompt=prompt, num_workers=workers,
                                threads=max(1, args.threads // workers), batch_size=model.best, shard_size=16,
                                progress=False)
        rows = read_scores(output)
        difference = (torch.tensor([row["reward"] for row in rows]) - model.expected).abs().max().item()
        report.add(model=model.name, mode="Ray Data score_dataset", parallel=f"{workers} actors", count=len(rows),
                   per_s=len(rows) / summary.elapsed_s, mean_batch=model.best, result=summarize([summary.elapsed_s]),
                   start_up_s=summary.first_rows_s, max_abs_diff_vs_local=difference)


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        {"images": 8, "batch_sizes": (1, 8), "clients": (1, 4), "requests_per_client": 4, "ray_workers": (1,),
         "ray_images": 8},
        images=32,
        batch_sizes=(1, 4, 16, 32),
        clients=(1, 4, 16),
        requests_per_client=24,
        max_batch_size=16,
        batch_wait_ms=5.0,
        ray_workers=(1, 2),
        ray_images=64,
        image_size=112,
        port=18000,
    )
    import ray

    report = Report("serving", __doc__.splitlines()[0], args)
    captions, images = scoring_inputs(max(args.images, args.ray_images), args.input_px)
    files = [png(image) for image in images]
    scratch = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    try:
        models = [measure_offline(args, report, backbone, scratch, captions, files)
                  for backbone in load_backbones(args, report)]
        ray.init(num_cpus=8, _temp_dir=ray_dir, include_dashboard=False, log_to_driver=False)
        for model in models:
            measure_server(args, report, model, captions[: args.images], files[: args.images])
            measure_ray_data(args, report, model, captions[0], scratch)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    report.write(
        {
            **shown(model="model", mode="mode", parallel="batch / clients / actors", count="images"),
            "images/s (req/s)": lambda row: row["per_s"],
            "p50 ms": lambda row: row.get("p50_ms"),
            "p99 ms": lambda row: row.get("p99_ms"),
            "mean batch": lambda row: row["mean_batch"],
            "x offline best": lambda row: row.get("vs_offline_best"),
            "x offline batch 1": lambda row: row.get("vs_offline_batch_1"),
            "offline images/s then (batch 1 / best)": lambda row: " / ".join(
                f"{rate:.3g}" for rate in row.get("adjacent_offline_per_s", {}).values()) or None,
            "Ray start-up s": lambda row: row.get("start_up_s"),
            "max |diff| vs local": lambda row: row.get("max_abs_diff_vs_local"),
        }
    )


if __name__ == "__main__":
    main()
