"""Test helper: a hand-made Hugging Face cache that resolves Hub ids offline.

Example:
    >>> from llava_reward.hub_cards.testing import put_in_hub_cache
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
