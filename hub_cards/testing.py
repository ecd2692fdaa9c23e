"""Test helpers: tiny trained-looking perspectives and a hand-made Hugging Face cache that resolves Hub ids offline.

Example:
    >>> from hub_cards.testing import put_in_hub_cache
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     folder = pathlib.Path(tmp, "repo"); folder.mkdir(); _ = (folder / "config.json").write_text("{}")
    ...     sha = put_in_hub_cache(pathlib.Path(tmp, "cache"), "org/name", folder)
    ...     sorted(p.name for p in pathlib.Path(tmp, "cache", "models--org--name").iterdir())
    ['refs', 'snapshots']
"""

import hashlib
import os
import shutil
from pathlib import Path

import torch

from modeling_llava_reward import LlavaRewardModel
from modeling_llava_reward import LlavaRewardProcessor
from modeling_llava_reward.bundle import save_reward_bundle


def save_tiny_perspective(
    base_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    perspective: str,
    lora: bool = True,
    seed: int = 0,
    base_model: str | None = None,
    **config_fields,
) -> Path:
    """An adapter bundle on the tiny base VLM saved at `base_dir`, as if trained: non-zero LoRA B weights (so
    adapters differ), a perturbed projector and a random head, seeded by `seed`.

    `base_model` records another name for the base (e.g. the Hub id it has in a hand-made cache).
    """
    torch.manual_seed(seed)
    model = LlavaRewardModel.from_vlm(str(base_dir), perspective=perspective, **config_fields)
    if base_model is not None:
        model.config.base_model = base_model
    with torch.no_grad():
        for parameter in model.family.projector_parameters(model.vlm).values():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    if lora:
        from peft import LoraConfig
        from peft import get_peft_model

        model = get_peft_model(model, LoraConfig(target_modules=model.family.lora_target_modules, r=4, lora_alpha=8))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(std=0.1)
    return save_reward_bundle(model, out_dir, LlavaRewardProcessor.from_base(str(base_dir)))


def put_in_hub_cache(cache_dir: str | os.PathLike, repo_id: str, folder: str | os.PathLike, *, branch="main") -> str:
    """Copy `folder` into `cache_dir` as the snapshot of model repo `repo_id` at `branch`; return its commit sha.

    With `HF_HUB_CACHE=cache_dir` and `HF_HUB_OFFLINE=1`, `repo_id` then resolves (at `branch` or the sha) without a
    network, as a downloaded repo would.
    """
    files = sorted(path for path in Path(folder).rglob("*") if path.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    commit = digest.hexdigest()
    repo_cache = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo_cache / "snapshots" / commit, dirs_exist_ok=True)
    (repo_cache / "refs").mkdir(parents=True, exist_ok=True)
    (repo_cache / "refs" / branch).write_text(commit)
    return commit
