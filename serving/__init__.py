"""LLaVA-Reward beyond one process: a reward service (Ray Serve), its client, and offline scoring (Ray Data).

* `serve_reward(model, ...)` / `build_app(options)`: the HTTP service (`POST /score`, `POST /compare`, `GET /healthz`,
  `/readyz`, `/info`) with dynamic batching across concurrent requests, replicas, bounded queues and deadlines
  (`llava-reward serve`).
* `RemoteReward(url)`: its client, an RL `reward_fn(images, prompts, metadata) -> (rewards, info)` with chunking,
  timeouts and bounded retries. It needs neither Ray nor FastAPI.
* `score_dataset(model, source, output_dir, num_workers=K)`: scores a data source or an image folder with Ray Data
  actors, writing resumable shards of the lines `llava-reward score` writes (`llava-reward score --engine ray`).

Ray is imported only by `serve_reward`, `build_app` and `score_dataset` (the `serve` extra:
`pip install llava-reward[serve]`).

Example:
    >>> from llava_reward.serving import RemoteReward
    >>> RemoteReward("http://127.0.0.1:8000").url
    'http://127.0.0.1:8000'
"""

import importlib

from .client import RemoteReward
from .client import RemoteRewardError


_LAZY = {
    "serve_reward": "server",
    "build_app": "server",
    "RewardService": "server",
    "ServeOptions": "options",
    "LoadedScorer": "loading",
    "score_dataset": "offline",
    "read_scores": "offline",
    "read_skipped": "offline",
    "ScoringSummary": "offline",
}

__all__ = [
    "LoadedScorer",
    "RemoteReward",
    "RemoteRewardError",
    "RewardService",
    "ScoringSummary",
    "ServeOptions",
    "build_app",
    "read_scores",
    "read_skipped",
    "score_dataset",
    "serve_reward",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
