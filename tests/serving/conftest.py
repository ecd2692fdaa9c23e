"""Fixtures of the serving tests: one local Ray cluster and one tiny repo of perspectives for the whole test run."""

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test run (Ray takes seconds to start), in its own temporary folder.

    8 logical CPUs on any machine: the tests' replicas and actors are tiny and reserve one each. Stopped by its own
    handle (`serve.shutdown()`, then `ray.shutdown()` ends the processes this driver started), never by a broad kill.
    """
    import shutil
    import tempfile

    import ray

    # Short on purpose: Ray's socket paths below it must fit in 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    context = ray.init(num_cpus=8, _temp_dir=temp_dir, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield context
    from ray import serve

    serve.shutdown()  # a no-op when no test started Serve
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_reward_repo(tmp_path_factory):
    """A tiny LLaVA base and three perspectives on it (adapter bundles): alignment (BT), fidelity (GPM, D = 2) and
    safety (CE, linear head, no LoRA)."""
    from llava_reward.testing import save_tiny_perspective
    from llava_reward.testing import save_tiny_vlm

    root = tmp_path_factory.mktemp("tiny-reward")
    base = save_tiny_vlm("llava", root / "base")
    fields = {
        "alignment": {"objective": "bt"},
        "fidelity": {"objective": "gpm", "reward_dim": 2},
        "safety": {"objective": "ce", "head": "linear", "lora": False},
    }
    for seed, (name, config) in enumerate(fields.items()):
        save_tiny_perspective(base, root / "repo" / name, perspective=name, seed=seed, **config)
    return root / "repo"
