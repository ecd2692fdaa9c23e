"""A real text-to-image testbed on a CPU: scikit-learn's 1797 handwritten digits (8x8, real scans).

* `load_splits`: four disjoint, class-stratified splits of the digits: `generator` (trains the diffusion model),
  `reward` (the alignment reward's pairs), `judge` (the independent classifier) and `test` (held out from all).
* The generator: a standard diffusers `StableDiffusionPipeline` (a small AutoencoderKL, UNet2DConditionModel and
  CLIP text encoder with a local tokenizer, DDIM scheduler) trained from scratch on prompts "a handwritten digit 7"
  and 32x32 RGB images (the 8x8 scans upsampled, dark ink on white); saved with `save_pretrained`.
* The judge: a small CNN trained on its own split, the independent measure of "is this image the digit asked for".
* `write_alignment_pairs`: published-format pairs JSON + PNGs ("a handwritten digit k": an image of k is preferred
  to an image of another digit) for `llava-reward train`.

Everything trained is cached under `digits_home()` (`$LLAVA_REWARD_HOME/digits`, `LLAVA_REWARD_HOME` defaulting to
`~/.cache/llava-reward`), each part keyed by its settings, so a rerun loads it in seconds.

Example:
    >>> splits = load_splits()
    >>> {name: len(split.labels) for name, split in splits.items()}
    {'generator': 719, 'reward': 359, 'judge': 360, 'test': 359}
"""

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers import DDIMScheduler
from diffusers import DDPMScheduler
from diffusers import StableDiffusionPipeline
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextConfig
from transformers import CLIPTextModel
from transformers import CLIPTokenizer

from llava_reward.default_backbone import llava_reward_home
from llava_reward.steering.testing import CHARACTERS


PROMPT = "a handwritten digit {}"
SPLIT_FRACTIONS = {"generator": 0.4, "reward": 0.2, "judge": 0.2, "test": 0.2}


def digits_home(path=None) -> Path:
    """Where the digits testbed caches what it trains: `path`, else `$LLAVA_REWARD_HOME/digits`."""
    return Path(path).expanduser() if path else llava_reward_home() / "digits"


def prompt_for(digit: int) -> str:
    return PROMPT.format(int(digit))


# --- Data ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Split:
    digits: torch.Tensor  # (n, 8, 8) ink in [0, 1]
    labels: torch.Tensor  # (n,) int64

    def pixels(self, size: int = 32) -> torch.Tensor:
        return to_pixels(self.digits, size)


def load_splits(seed: int = 0) -> dict[str, Split]:
    """The digits in four disjoint splits, stratified by class (`SPLIT_FRACTIONS`), the same for a given seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    members = {name: [] for name in SPLIT_FRACTIONS}
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(data.target == digit))
        bounds = np.round(np.cumsum([0.0, *SPLIT_FRACTIONS.values()]) * len(indices)).astype(int)
        for name, low, high in zip(SPLIT_FRACTIONS, bounds[:-1], bounds[1:]):
            members[name].extend(indices[low:high].tolist())
    return {
        name: Split(torch.tensor(data.images[sorted(rows)] / 16.0, dtype=torch.float32),
                    torch.tensor(data.target[sorted(rows)], dtype=torch.int64))
        for name, rows in members.items()
    }


def to_pixels(digits: torch.Tensor, size: int = 32) -> torch.Tensor:
    """(n, 8, 8) ink in [0, 1] -> (n, 3, size, size) RGB in [0, 1]: dark ink on white, bilinear upsampling."""
    ink = F.interpolate(digits[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    return (1.0 - ink).clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(image)) for image in array]


# --- Caching -------------------------------------------------------------------------------------------------------


def settings_key(settings) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode()).hexdigest()[:12]


def cached(folder: Path, settings, build) -> tuple[Path, bool]:
    """`folder` if it holds what `build(tmp_folder)` makes for `settings`; else build it there, atomically.

    Returns the folder and whether it was built now. A folder built with other settings is kept under its own key:
    `folder` is `<parent>/<name>-<settings key>`.
    """
    target = folder.with_name(f"{folder.name}-{settings_key(settings)}")
    if (target / "settings.json").exists():
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        (staging / "settings.json").write_text(json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
        os.replace(staging, target)  # a concurrent builder that finished first wins; ours is then discarded
    except OSError:
        if not (target / "settings.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, True


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- The generator -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GeneratorSettings:
    image_size: int = 32
    vae_steps: int = 300
    unet_steps: int = 1000
    batch_size: int = 32
    vae_learning_rate: float = 2e-3
    unet_learning_rate: float = 1e-3
    condition_dropout: float = 0.1  # prompts replaced by "" so that classifier-free guidance works
    ema_decay: float = 0.995
    unet_channels: tuple = (32, 64)
    seed: int = 0


def word_tokenizer(words=("a", "handwritten", "digit"), model_max_length: int = 16) -> CLIPTokenizer:
    """A CLIP BPE tokenizer, built in memory, whose vocabulary has `words` as single tokens (and every character).

    One token per word keeps the digit early in the prompt, so that every padding position after it (the CLIP text
    encoder is causal) carries the digit to the UNet's cross-attention: conditioning is then learnt in minutes.
    """
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for character in CHARACTERS:
        vocab[character] = len(vocab)
        vocab[character + "</w>"] = len(vocab)  # a word's last symbol
    merges = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:  # left to right: h+a, ha+n, ..., handwritte+n</w>
            merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_generator(settings: GeneratorSettings) -> StableDiffusionPipeline:
    """An untrained pipeline of the generator's architecture (latents 4 x size/4 x size/4)."""
    seed_everything(settings.seed)
    tokenizer = word_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=64, num_attention_heads=2,
            num_hidden_layers=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16, 32), latent_channels=4, layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, norm_num_groups=8,
        sample_size=settings.image_size, mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        sample_size=settings.image_size // 4, in_channels=4, out_channels=4,
        block_out_channels=tuple(settings.unet_channels), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_vae(vae: AutoencoderKL, pixels: torch.Tensor, settings: GeneratorSettings, log=print) -> float:
    """Reconstruction + a light KL term, then the latent scaling factor (1 / std of the latents) into the config."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_learning_rate)
    targets = pixels * 2 - 1  # the pipeline's image processor works in [-1, 1]
    vae.train()
    for step in range(settings.vae_steps):
        batch = targets[torch.randint(len(targets), (settings.batch_size,))]
        posterior = vae.encode(batch).latent_dist
        loss = F.mse_loss(vae.decode(posterior.sample()).sample, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == settings.vae_steps - 1:
            log(f"  vae step {step}: loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(targets).latent_dist.mean
        reconstruction = F.mse_loss(vae.decode(latents).sample, targets).item()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return reconstruction


def train_unet(pipe: StableDiffusionPipeline, pixels: torch.Tensor, labels: torch.Tensor,
               settings: GeneratorSettings, log=print) -> float:
    """Epsilon-prediction training of the UNet and the text encoder together, with condition dropout and EMA."""
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        posterior = pipe.vae.encode(pixels * 2 - 1).latent_dist
        means, stds = posterior.mean, posterior.std
    prompts = [prompt_for(digit) for digit in range(10)] + [""]  # index 10: the empty prompt
    token_ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                               truncation=True, return_tensors="pt").input_ids
    models = [pipe.unet, pipe.text_encoder]
    parameters = [parameter for model in models for parameter in model.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.unet_learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))
    averages = [parameter.detach().clone() for parameter in parameters]
    scale = pipe.vae.config.scaling_factor
    for model in models:
        model.train()
    running = None
    for step in range(settings.unet_steps):
        rows = torch.randint(len(labels), (settings.batch_size,))
        latents = (means[rows] + stds[rows] * torch.randn_like(means[rows])) * scale
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(rows),))
        conditions = torch.where(torch.rand(len(rows)) < settings.condition_dropout, 10, labels[rows])
        hidden = pipe.text_encoder(token_ids[conditions])[0]
        prediction = pipe.unet(noise_schedule.add_noise(latents, noise, timesteps), timesteps, hidden).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for average, parameter in zip(averages, parameters):
                average.lerp_(parameter, 1 - settings.ema_decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 250 == 0 or step == settings.unet_steps - 1:
            log(f"  unet step {step}: loss (running) {running:.4f}")
    with torch.no_grad():
        for average, parameter in zip(averages, parameters):
            parameter.copy_(average)
    for model in models:
        model.eval()
    return running


def trained_generator(home: Path, settings: GeneratorSettings | None = None, log=print) -> Path:
    """The folder of the trained generator pipeline under `home`, training it first if it is not cached."""
    settings = settings or GeneratorSettings()

    def build(folder: Path):
        start, start_cpu = time.perf_counter(), time.process_time()
        split = load_splits(settings.seed)["generator"]
        pixels = split.pixels(settings.image_size)
        pipe = build_generator(settings)
        log(f"training the generator's VAE on {len(pixels)} digits ({settings.vae_steps} steps)")
        reconstruction = train_vae(pipe.vae, pixels, settings, log)
        log(f"training the generator's UNet and text encoder ({settings.unet_steps} steps)")
        loss = train_unet(pipe, pixels, split.labels, settings, log)
        pipe.save_pretrained(folder, safe_serialization=True)
        metrics = {"vae_reconstruction_mse": reconstruction, "unet_final_loss": loss,
                   "train_seconds": time.perf_counter() - start, "train_cpu_seconds": time.process_time() - start_cpu,
                   "load_average": os.getloadavg(), "train_images": len(pixels),
                   "torch_threads": torch.get_num_threads()}
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    folder, built = cached(home / "generator", settings, build)
    if not built:
        log(f"generator: cached in {folder}")
    return folder


def load_generator(folder: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- The judge -----------------------------------------------------------------------------------------------------


class DigitJudge(nn.Module):
    """A small CNN: (n, 3, H, W) images in [0, 1] (dark ink on white) -> (n, 10) logits."""

    def __init__(self, size: int = 32):
        super().__init__()
        self.size = size
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64 * 4, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ink = 1.0 - images.float().mean(dim=1, keepdim=True)
        ink = F.interpolate(ink, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.classifier(self.features(ink))

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.eval()
        return torch.cat([self(images[i:i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])


@dataclasses.dataclass
class JudgeSettings:
    image_size: int = 32
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 1


def augment(pixels: torch.Tensor) -> torch.Tensor:
    """Random shifts (up to 2 px), contrast and noise: generated digits are not as clean as scans."""
    shifts = torch.randint(-2, 3, (2,)).tolist()
    ink = (1 - pixels).roll(shifts, dims=(2, 3)) * torch.empty(len(pixels), 1, 1, 1).uniform_(0.6, 1.2)
    return (1 - ink + 0.08 * torch.randn_like(pixels)).clamp(0, 1)


def trained_judge(home: Path, settings: JudgeSettings | None = None, log=print) -> tuple[DigitJudge, dict]:
    """The judge (trained on the `judge` split only, cached) and its accuracy on the held-out `test` digits."""
    settings = settings or JudgeSettings()

    def build(folder: Path):
        seed_everything(settings.seed)
        splits = load_splits()
        pixels, labels = splits["judge"].pixels(settings.image_size), splits["judge"].labels
        judge = DigitJudge(settings.image_size)
        optimizer = torch.optim.AdamW(judge.parameters(), lr=settings.learning_rate)
        judge.train()
        for epoch in range(settings.epochs):
            for rows in torch.randperm(len(labels)).split(settings.batch_size):
                loss = F.cross_entropy(judge(augment(pixels[rows])), labels[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        test = splits["test"]
        correct = (judge.classify(test.pixels(settings.image_size)) == test.labels).float()
        save_file(judge.state_dict(), folder / "judge.safetensors")
        metrics = {"test_accuracy": correct.mean().item(), "test_images": len(correct),
                   "train_images": len(labels)}
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log(f"judge: {metrics['test_accuracy']:.3f} accuracy on {len(correct)} held-out real digits")

    folder, _ = cached(home / "judge", settings, build)
    judge = DigitJudge(settings.image_size)
    judge.load_state_dict(load_file(folder / "judge.safetensors"))
    return judge.eval(), json.loads((folder / "metrics.json").read_text())


# --- The alignment reward's data -----------------------------------------------------------------------------------


def write_alignment_pairs(split: Split, folder: Path, name: str, *, rejections: int = 2, image_size: int = 32,
                          seed: int = 0) -> Path:
    """Published-format pairs: the prompt of digit k, an image of k chosen over `rejections` images of other digits.

    Writes `folder/images/<name>_<row>.png` and `folder/<name>_pairs.json`; returns the JSON's path.
    """
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = []
    for row, image in enumerate(to_pil(split.pixels(image_size))):
        path = images / f"{name}_{row}.png"
        image.save(path)
        paths.append(path.relative_to(folder).as_posix())
    labels = split.labels.numpy()
    pairs = []
    for row, digit in enumerate(labels):
        for other in rng.choice(np.flatnonzero(labels != digit), size=rejections, replace=False):
            pairs.append({"prompt": prompt_for(digit), "chosen_path": paths[row], "reject_path": paths[other],
                          "c_rate": 1.0, "r_rate": 0.0, "chosen_digit": int(digit),
                          "reject_digit": int(labels[other])})
    rng.shuffle(pairs)
    path = folder / f"{name}_pairs.json"
    path.write_text(json.dumps(pairs, indent=1) + "\n")
    return path


# --- The alignment reward ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RewardSettings:
    # "tiny-llava": a tiny random LLaVA (`save_tiny_vlm`, 56K parameters; scores hundreds of images a second);
    # "default-backbone-<px>": the project's default backbone (SmolLM2-135M + DINOv2-S) at <px> input, built if
    # missing; or a base VLM folder. See the README for what each learnt.
    base: str = "tiny-llava"
    head: str = "skipca"
    hidden_layer: int | None = None  # None: the last layer
    rejections: int = 2  # pairs per chosen image
    image_size: int = 32
    objective: str = "bt"
    tau: float = 1.0  # at the paper's 0.1 the tiny model's rewards collapse to a constant
    tuning: str = "full"  # a random base has nothing to preserve: every parameter but the vision tower trains
    lora_r: int = 16
    learning_rate: float = 3e-3
    batch_size: int = 16
    max_steps: int = 2000
    seed: int = 0


def reward_base(home: Path, base: str) -> Path:
    """The base VLM folder for `base` (see `RewardSettings.base`)."""
    if Path(base).expanduser().is_dir():
        return Path(base).expanduser().resolve()
    if base.startswith("default-backbone-") and base.removeprefix("default-backbone-").isdigit():
        from llava_reward.default_backbone import build_default_backbone

        return build_default_backbone(image_size=int(base.removeprefix("default-backbone-")))  # reused when built
    if base != "tiny-llava":
        raise ValueError(f"The reward base must be 'default-backbone-<px>', 'tiny-llava' or a folder, not {base!r}.")
    from llava_reward.testing import save_tiny_vlm

    folder = home / "bases" / base
    if not (folder / "config.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{base}-", dir=folder.parent))
        save_tiny_vlm("llava", staging)
        os.replace(staging, folder)
    return folder.resolve()


def recipe(base: Path, train: Path, output_dir: Path, settings: RewardSettings) -> dict:
    """A `llava-reward train` recipe (the three sections of configuration/recipes/*.yaml). The held-out pairs are
    scored after training, not during it."""
    return {
        "model": {"base_model": str(base), "dtype": "float32", "perspective": "alignment", "head": settings.head,
                  **({"hidden_layer": settings.hidden_layer} if settings.hidden_layer is not None else {})},
        "data": {"train": str(train)},
        "training": {
            "output_dir": str(output_dir), "objective": settings.objective, "tau": settings.tau,
            "tuning": settings.tuning,
            **({"lora_r": settings.lora_r, "lora_alpha": 2 * settings.lora_r, "lora_dropout": 0.05}
               if settings.tuning == "lora" else {}),
            "learning_rate": settings.learning_rate, "lr_scheduler_type": "linear",
            "per_device_train_batch_size": settings.batch_size, "max_steps": settings.max_steps,
            "logging_steps": max(1, settings.max_steps // 20), "save_strategy": "no", "use_cpu": True,
            "report_to": "none", "disable_tqdm": True, "seed": settings.seed,
        },
    }


def pair_accuracy(scorer, pairs_json: Path, batch_size: int = 32) -> dict:
    """Held-out accuracy of a reward on published-format pairs: the fraction where r(chosen) > r(rejected)."""
    pairs = json.loads(pairs_json.read_text())
    root = pairs_json.parent
    prompts = [pair["prompt"] for pair in pairs]
    chosen = scorer.score(prompts, [str(root / pair["chosen_path"]) for pair in pairs], batch_size=batch_size)
    rejected = scorer.score(prompts, [str(root / pair["reject_path"]) for pair in pairs], batch_size=batch_size)
    correct = (chosen > rejected).float()
    return {"pair_accuracy": correct.mean().item(), "pairs": len(pairs),
            "interval_95": bootstrap_interval(correct.numpy())}


def children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bootstrap_interval(values: np.ndarray, draws: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the mean of `values`."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(draws, len(values)), replace=True).mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def trained_reward(home: Path, settings: RewardSettings | None = None, log=print) -> Path:
    """The alignment reward trained with `llava-reward train` on the `reward` split's pairs (cached), evaluated on
    pairs of the held-out `test` split; returns its folder (loadable by `LlavaRewardScorer.from_pretrained`)."""
    import subprocess
    import sys

    import yaml

    settings = settings or RewardSettings()
    base = reward_base(home, settings.base)

    def build(folder: Path):
        start, start_cpu = time.perf_counter(), time.process_time()
        splits = load_splits()
        train = write_alignment_pairs(splits["reward"], folder / "data", "train", rejections=settings.rejections,
                                      image_size=settings.image_size, seed=settings.seed)
        evaluation = write_alignment_pairs(splits["test"], folder / "data", "test", rejections=1,
                                           image_size=settings.image_size, seed=settings.seed + 1)
        # Paths relative to the folder (the trainer runs there), so that the recipe still holds once it is moved.
        relative = recipe(base, train.relative_to(folder), Path("model"), settings)
        (folder / "recipe.yaml").write_text(yaml.safe_dump(relative, sort_keys=False))
        log(f"training the alignment reward on {len(json.loads(train.read_text()))} pairs with `llava-reward train`")
        # The trainer runs with this process's torch thread count (tiny models: 1 thread; more only spin).
        environment = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        subprocess.run([sys.executable, "-m", "llava_reward.cli", "train", "--config", "recipe.yaml"], cwd=folder,
                       check=True, env=environment)
        from llava_reward import LlavaRewardScorer

        metrics = pair_accuracy(LlavaRewardScorer.from_pretrained(folder / "model"), evaluation)
        metrics.update(seconds=time.perf_counter() - start, load_average=os.getloadavg(), base=str(base),
                       # the training runs in a subprocess: its CPU time is in RUSAGE_CHILDREN
                       cpu_seconds=time.process_time() - start_cpu + children_cpu_seconds())
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log(f"reward: {metrics['pair_accuracy']:.3f} held-out pair accuracy on {metrics['pairs']} pairs")

    folder, _ = cached(home / "reward", settings, build)
    return folder
