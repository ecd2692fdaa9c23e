"""A reward model loaded from its path, as the server's replicas and the offline scoring actors hold it.

Each Ray replica or actor loads the model itself (`llava_reward.load`) from a path or Hub id it is given as a string:
weights are read from safetensors on that worker, never pickled through Ray's object store.

`LoadedScorer.score` packs every perspective's outputs side by side in one `(N, W)` tensor, so that it can stand
wherever a scorer is expected (`llava_reward.scoring.score_rows` retries a refused batch row by row); `split` turns
rows of it back into `{perspective: rewards}`.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from llava_reward.testing import save_tiny_perspective, save_tiny_vlm, tiny_images
    >>> root = Path(tempfile.mkdtemp())
    >>> model = save_tiny_perspective(save_tiny_vlm("llava", root / "base"), root / "fidelity", perspective="fidelity")
    >>> reward = LoadedScorer.load(str(model))
    >>> {name: tuple(values.shape) for name, values in reward.split(reward.score("a red cat", tiny_images(2))).items()}
    {'fidelity': (2,)}
"""

import importlib.metadata
from dataclasses import dataclass

import torch

import llava_reward
from llava_reward.configuration import LlavaRewardConfig
from llava_reward.objectives import get_objective


def package_version() -> str | None:
    try:
        return importlib.metadata.version("llava-reward")
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class LoadedScorer:
    r"""
    A `LlavaRewardScorer` (one perspective) or a `MultiPerspectiveScorer` (several, on one base).

    Not thread-safe (the scorer's forward is not): callers run one `score` at a time per instance.

    Args:
        scorer: the loaded scorer.
        model_id (`str`): the path or Hub id it was loaded from (reported by the server's `/info`).
        multi (`bool`): whether it is a multi-perspective scorer (answers are then `{perspective: [...]}`).
    """

    scorer: object
    model_id: str
    multi: bool

    @classmethod
    def load(
        cls,
        model: str,
        *,
        perspectives: list[str] | None = None,
        subfolder: str | None = None,
        base_model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
    ) -> "LoadedScorer":
        """Load `model` (a folder, Hub id or `"default"`): one perspective (`subfolder`), or the `perspectives`
        subfolders on one base VLM."""
        if perspectives and subfolder:
            raise ValueError("Give either `subfolder` (one perspective) or `perspectives` (several), not both.")
        scorer = llava_reward.load(
            model,
            perspective=list(perspectives) if perspectives else subfolder,
            device=device,
            dtype=dtype,
            base_model=base_model,
            progress=False,
            trust_remote_code=trust_remote_code,
        )
        return cls(scorer, f"{model}/{subfolder}" if subfolder else model, multi=bool(perspectives))

    @property
    def configs(self) -> dict[str, LlavaRewardConfig]:
        """Each perspective's config, in output order (one entry for a single-perspective model)."""
        if self.multi:
            return self.scorer.configs
        config = self.scorer.model.config
        return {config.perspective: config}

    @property
    def perspectives(self) -> list[str]:
        return list(self.configs)

    def score(self, prompts, images, *, batch_size: int = 8, progress=False) -> torch.Tensor:
        """`(N, W)` float32: every perspective's outputs side by side (W = the sum of their `reward_dim`)."""
        rewards = self.scorer.score(prompts, images, batch_size=batch_size, progress=progress)
        parts = rewards.values() if self.multi else [rewards]
        return torch.cat([part.reshape(part.shape[0], -1) for part in parts], dim=-1)

    def split(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{perspective: (n,) or (n, D)}` from `(n, W)` rows of `score`."""
        widths = [config.reward_dim for config in self.configs.values()]
        return {
            name: part.squeeze(-1) if part.shape[-1] == 1 else part
            for name, part in zip(self.configs, packed.split(widths, dim=-1))
        }

    def pairwise(self) -> dict[str, LlavaRewardConfig]:
        """The perspectives whose objective defines P(a preferred over b) (a CE model judges each image alone)."""
        return {name: config for name, config in self.configs.items() if get_objective(config.objective).pairwise}

    def preference(self, first: dict, second: dict) -> dict[str, torch.Tensor]:
        """`{perspective: P(first preferred over second)}` for the pairwise perspectives, with each one's tau."""
        return {
            name: get_objective(config.objective).preference_probability(first[name], second[name], config.tau)
            for name, config in self.pairwise().items()
        }

    def describe(self) -> dict:
        """What the server's `/info` reports: the model, each perspective's objective, tau and reward size."""
        return {
            "model": self.model_id,
            "multi_perspective": self.multi,
            "perspectives": {
                name: {"objective": config.objective, "tau": float(config.tau), "reward_dim": config.reward_dim}
                for name, config in self.configs.items()
            },
            "package_version": package_version(),
        }
