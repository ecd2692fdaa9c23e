"""Shared machinery of the benchmarks: models, inputs, timing, peak memory, tables and JSON reports.

Protocol (every script):
- alternatives are compared in ONE process, on the same weights and the same processed inputs;
- each alternative gets `warmup` untimed calls, then `repeats` timed calls, interleaved round-robin across the
  alternatives (A B C A B C ...) so that drift of a shared, busy machine hits them alike;
- a timing is the median of the repeats with its interquartile range (q1, q3) and every raw run;
- peak memory is measured in a separate, untimed call per alternative (see `peak_memory`).

Models: `tiny` is the tiny random LLaVA of `llava_reward.testing`; `default` is the project's default
backbone (SmolLM2-135M + DINOv2-S LLaVA) when it can be built on this machine, otherwise a random LLaVA of the
same shape (`default-shaped`), which times the same computation; the report says which one ran.
"""

import argparse
import ctypes
import ctypes.util
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import numpy as np
import torch


BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
REPO_DIR = BENCHMARKS_DIR.parent
sys.path.insert(0, str(REPO_DIR))  # run as `python benchmarks/x.py` from a checkout, installed or not

# Real text-to-image pairs (MJ-Bench fidelity, 1024 px): caption, preferred image_0, distorted image_1.
MJBENCH_DIR = REPO_DIR.parent / "shared" / "data" / "mjbench_quality" / "human"
MJBENCH_CAPTIONS = MJBENCH_DIR / "captions_human.json"

# Shape of the default backbone (SmolLM2-135M language model, DINOv2 ViT-S/14 vision tower), for the random stand-in.
DEFAULT_SHAPED_TEXT = dict(
    model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
    tie_word_embeddings=True, pad_token_id=0,
)
DEFAULT_SHAPED_VISION = dict(
    model_type="dinov2", hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
    image_size=518, layer_norm_eps=1e-6,
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --- Command line and report ------------------------------------------------------------------------------------


def parse_args(description: str, quick: dict | None = None, **defaults) -> argparse.Namespace:
    """The options every benchmark takes, plus script-specific ones (`defaults`: name=value, typed by the value).

    `--quick` (the smoke run) means the tiny model only, one warm-up, two repeats, 64 px input images, and the
    script's `quick` values as defaults; options given explicitly still win.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny model, smallest settings: a smoke run")
    parser.add_argument("--models", default="tiny,default", help="comma-separated: tiny, default")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per alternative")
    # 3 timed calls (median and quartiles of 3) keep `make bench` under 15 minutes on 2 cores; raise for tighter
    # spreads.
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per alternative")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--input-px", type=int, default=1024, help="side of the input images (resized if needed)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON report goes")
    for name, value in defaults.items():
        # A tuple default is a list of integers, given comma-separated on the command line (`--batch-sizes 1,4,16`).
        value_type = int_tuple if isinstance(value, tuple) else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=value_type, default=value)
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(models="tiny", warmup=1, repeats=2, input_px=64, **(quick or {}))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def int_tuple(text: str) -> tuple[int, ...]:
    """`"1,4,16"` -> `(1, 4, 16)`: the type of list options."""
    return tuple(int(item) for item in text.split(","))


@dataclass
class Report:
    """Rows of one benchmark, printed as a markdown table and written as JSON with the context to read them."""

    name: str
    description: str
    args: argparse.Namespace
    rows: list[dict] = field(default_factory=list)
    models: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    started_cpu: float = field(default_factory=time.process_time)
    load_at_start: list[float] = field(default_factory=lambda: _load_average())

    def add(self, **row):
        self.rows.append(row)
        return row

    def note(self, text: str):
        print(f"NOTE: {text}", flush=True)
        self.notes.append(text)

    def write(self, columns: dict[str, Callable[[dict], object]]) -> Path:
        """Print the table (`columns`: header -> cell of a row) and write the JSON report; returns its path."""
        table = markdown_table(self.rows, columns)
        print(table, flush=True)
        path = self.args.results_dir / f"{self.name}{'_quick' if self.args.quick else ''}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(self.args).items()}
        report = {
            "benchmark": self.name,
            "description": self.description,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - self.started, 1),
            # CPU seconds of this process (all its threads): with --threads 1, about the wall time on an idle machine.
            "cpu_s": round(time.process_time() - self.started_cpu, 1),
            # 1-minute load average at the start and the end: other processes competing for the cores.
            "load_average": [self.load_at_start, _load_average()],
            "machine": machine_info(),
            "versions": versions(),
            "settings": settings,
            "timing": "median of `repeats` timed calls after `warmup` untimed ones, alternatives interleaved; "
            "q1/q3 = interquartile range",
            "memory": MEMORY_METHOD,
            "models": self.models,
            "notes": self.notes,
            "results": self.rows,
            "table": table,  # as printed: benchmarks/RESULTS.md quotes it
        }
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}", flush=True)
        return path


def markdown_table(rows: list[dict], columns: dict[str, Callable[[dict], object]]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(column(row)) for column in columns.values()) + " |" for row in rows]
    return "\n".join(lines)


def shown(**headers: str) -> dict[str, Callable[[dict], object]]:
    """Columns showing row values as they are: `shown(image_px="image px")` shows `row["image_px"]` as "image px"."""
    return {header: (lambda row, key=key: row[key]) for key, header in headers.items()}


def seconds(result: dict) -> str:
    """A timing as `median [q1, q3]` seconds, three significant digits."""
    return f"{result['median_s']:.3g} [{result['q1_s']:.3g}, {result['q3_s']:.3g}]"


def megabytes(result: dict) -> str:
    peak = result.get("peak_mb")
    return "n/a" if peak is None else f"{peak:.1f}" if peak < 10 else f"{peak:.0f}"


def ratio(numerator: dict, denominator: dict) -> float:
    """Ratio of two medians."""
    return numerator["median_s"] / denominator["median_s"]


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def versions() -> dict:
    import importlib.metadata

    found = {}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "numpy", "pillow", "llava-reward"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


# --- Timing -------------------------------------------------------------------------------------------------------


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_alternatives(alternatives: dict[str, Callable], *, warmup: int, repeats: int) -> dict[str, dict]:
    """Median and IQR (seconds) of each zero-argument callable, runs interleaved round-robin after warm-up."""
    for function in alternatives.values():
        for _ in range(warmup):
            function()
    runs = {name: [] for name in alternatives}
    for _ in range(repeats):
        for name, function in alternatives.items():
            _synchronize()
            start = time.perf_counter()
            function()
            _synchronize()
            runs[name].append(time.perf_counter() - start)
    return {name: summarize(times) for name, times in runs.items()}


def summarize(times: list[float]) -> dict:
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (times[0],) * 3
    return {"median_s": statistics.median(times), "q1_s": q1, "q3_s": q3, "runs_s": [round(t, 6) for t in times]}


# --- Peak memory --------------------------------------------------------------------------------------------------

MEMORY_METHOD = (
    "peak_mb: extra memory at the peak of one untimed call, above what was resident just before it (weights and "
    "inputs excluded). CUDA: torch.cuda.max_memory_allocated minus memory_allocated before the call. Linux CPU: "
    "the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) minus VmRSS before "
    "the call, after gc and malloc_trim(0) return freed heap pages to the OS (PyTorch's CPU allocator does not "
    "cache, so RSS follows live tensors; allocator slack is included). Elsewhere: not measured (null)."
)
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))


def memory_use(function: Callable) -> tuple[object, float | None, float | None]:
    """`function()`'s result, and the MiB above the pre-call level at its peak and after it (see MEMORY_METHOD).

    The sizes are None where they cannot be measured. "After" counts what the result keeps alive (loaded weights).
    """
    gc.collect()
    gc.freeze()  # long-lived objects (modules, weights) leave the collector's view: later collections are quick
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = function()
        torch.cuda.synchronize()
        gc.collect()
        return result, (torch.cuda.max_memory_allocated() - before) / 2**20, (torch.cuda.memory_allocated() - before) / 2**20
    if _LIBC is None or not os.access("/proc/self/clear_refs", os.W_OK):
        return function(), None, None
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    result = function()
    peak = _status_kib("VmHWM")
    gc.collect()
    _LIBC.malloc_trim(0)
    return result, (peak - before) / 1024, (_status_kib("VmRSS") - before) / 1024


def peak_memory(function: Callable) -> float | None:
    """MiB above the pre-call level at the peak of `function()` (see MEMORY_METHOD); None where unmeasurable."""
    return memory_use(function)[1]


def measure(alternatives: dict[str, Callable], args, *, memory: bool = True) -> dict[str, dict]:
    """Timings (see `time_alternatives`) plus `peak_mb` of one more call of each alternative."""
    results = time_alternatives(alternatives, warmup=args.warmup, repeats=args.repeats)
    for name, function in alternatives.items():
        results[name]["peak_mb"] = peak_memory(function) if memory else None
    return results


# --- Models and inputs --------------------------------------------------------------------------------------------


def default_recipe() -> dict:
    """The recipe of `llava-reward demo`'s default model (`configuration/recipes/default_fidelity.yaml`), parsed."""
    import yaml

    from llava_reward.cli.demo_workflow import RECIPE

    return yaml.safe_load(RECIPE.read_text())


@dataclass
class Backbone:
    """A LLaVA checkpoint for benchmarking: the generative model (with LM head) and its processor.

    `generator.model` is the base VLM a reward model wraps, so a reward model built with `reward_model()` and the
    generator share the very same weights.
    """

    name: str
    generator: torch.nn.Module  # LlavaForConditionalGeneration
    processor: object  # the VLM's transformers processor, with `.image_placeholder`
    description: str
    image_size: int
    folder: Path | None = None  # where the checkpoint is saved, if it is

    @property
    def vlm(self):
        return self.generator.model

    @property
    def visual_tokens(self) -> int:
        """Image tokens per image at the current image size (one per patch; the CLS token is dropped)."""
        return (self.image_size // self.vlm.config.vision_config.patch_size) ** 2

    @property
    def num_layers(self) -> int:
        return self.vlm.config.text_config.num_hidden_layers

    def summary(self) -> dict:
        parameters = sum(p.numel() for p in self.generator.parameters())
        return {"description": self.description, "parameters": parameters, "decoder_layers": self.num_layers}

    def set_image_size(self, size: int):
        """Make the processor resize and crop images to `size` px (the vision tower interpolates positions)."""
        image_processor = self.processor.image_processor
        image_processor.size = {"shortest_edge": size}
        image_processor.crop_size = {"height": size, "width": size}
        self.image_size = size

    def checkpoint(self, scratch: Path) -> Path:
        """The folder of this checkpoint and its processor, saved into `scratch` first if it lives in memory only."""
        if self.folder is None:
            self.generator.save_pretrained(scratch)
            self.processor.save_pretrained(scratch)
            self.folder = scratch
        return self.folder

    def reward_processor(self):
        from llava_reward import LlavaRewardProcessor

        return LlavaRewardProcessor.from_vlm_processor(self.processor)

    def default_model_layer(self) -> int | None:
        """The decoder layer `llava-reward demo`'s default model reads (its recipe's `hidden_layer`), if this
        backbone has more layers than that; None otherwise (the tiny model)."""
        layer = default_recipe()["model"]["hidden_layer"]
        return layer if 0 < layer < self.num_layers else None

    def reward_model(self, vlm=None, **config):
        """A reward model on this backbone's base VLM (shared, not copied, unless `vlm` is given), in eval mode."""
        from llava_reward import LlavaRewardModel

        torch.manual_seed(0)  # the same head weights in every script
        return LlavaRewardModel.from_vlm(vlm if vlm is not None else self.vlm, **config).eval()


def load_backbones(args, report: Report) -> list[Backbone]:
    """The backbones named in `--models`, each recorded in the report."""
    builders = {"tiny": tiny_backbone, "default": default_backbone}
    backbones = []
    for name in args.models.split(","):
        if name not in builders:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(builders)}")
        backbone = builders[name](report)
        report.models[backbone.name] = backbone.summary()
        backbones.append(backbone)
    return backbones


def _generator_around(vlm):
    """A LlavaForConditionalGeneration whose base model IS `vlm` (same tensors) and whose LM head is tied to it."""
    from transformers import LlavaForConditionalGeneration

    generator = LlavaForConditionalGeneration(vlm.config)
    generator.model = vlm
    generator.lm_head.weight = vlm.get_input_embeddings().weight
    return generator.eval()


def tiny_backbone(report: Report) -> Backbone:
    from llava_reward.testing import tiny_vlm

    vlm, processor = tiny_vlm("llava")
    return Backbone("tiny", _generator_around(vlm), processor, "tiny random LLaVA (2 layers, width 32, 32 px)", 32)


def default_backbone(report: Report, image_size: int = 224) -> Backbone:
    """The project's default backbone if it can be built here; otherwise a random LLaVA of the same shape."""
    from transformers import AutoProcessor
    from transformers import LlavaForConditionalGeneration

    try:
        from llava_reward.default_backbone import build_default_backbone

        folder = build_default_backbone(image_size=image_size, progress=False)  # reuses one built at that size
    except Exception as error:  # not merged yet, or its optional dependencies are missing: say so, never silently
        report.note(
            f"default backbone unavailable ({type(error).__name__}: {error}); benchmarking a random LLaVA of the "
            "same shape instead (SmolLM2-135M decoder: 30 layers, width 576, vocab 49152; DINOv2 ViT-S/14 "
            "tower: 12 layers, width 384) - the same computation, so the same time and memory."
        )
        return default_shaped_backbone(image_size)
    generator = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    processor.image_placeholder = processor.image_token
    backbone = Backbone("default", generator, processor, f"default backbone ({folder.name})", image_size, folder)
    backbone.set_image_size(image_size)
    return backbone


def default_shaped_backbone(image_size: int = 224) -> Backbone:
    from transformers import CLIPImageProcessorPil
    from transformers import LlavaConfig
    from transformers import LlavaForConditionalGeneration
    from transformers import LlavaProcessor

    from llava_reward.testing import byte_level_tokenizer
    from llava_reward.testing import chatml_template

    tokenizer = byte_level_tokenizer(["<image>"], eos_token="<|im_end|>", pad_token="<pad>")
    config = LlavaConfig(
        text_config=DEFAULT_SHAPED_TEXT,
        vision_config=DEFAULT_SHAPED_VISION,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    generator = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessorPil(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # DINOv2's CLS token, dropped by the "default" strategy
        chat_template=chatml_template("<image>"),
    )
    processor.image_placeholder = "<image>"
    backbone = Backbone(
        "default-shaped", generator, processor, "random LLaVA shaped like the default backbone (157M)", image_size
    )
    backbone.set_image_size(image_size)
    return backbone


def preference_pairs(count: int, size: int = 1024) -> tuple[list[str], list, list]:
    """`count` (caption, preferred image, distorted image) triples of real MJ-Bench data (1024 px photos), if present.

    Images are resized to `size` px when it differs. Without the shared data: random images and a fixed caption
    (same sizes, so the same cost).
    """
    from PIL import Image

    if MJBENCH_CAPTIONS.is_file():
        rows = json.loads(MJBENCH_CAPTIONS.read_text())
        rows = [rows[index % len(rows)] for index in range(count)]
        captions = [row["caption"] for row in rows]
        chosen, rejected = ([_read(MJBENCH_DIR / "examples_human" / row[key], size) for row in rows] for key in ("image_0", "image_1"))
        return captions, chosen, rejected
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(2 * count)]
    return ["A man wearing a gray hoodie and a black hat."] * count, images[:count], images[count:]


def _read(path: Path, size: int):
    from PIL import Image

    image = Image.open(path).convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), Image.Resampling.BICUBIC)


def scoring_inputs(count: int, size: int = 1024) -> tuple[list[str], list]:
    """`count` (caption, image) pairs: the preferred images of `preference_pairs`."""
    captions, images, _ = preference_pairs(count, size)
    return captions, images
