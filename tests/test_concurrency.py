"""One scorer shared by several threads (an RL trainer's thread pool) gives exactly the sequential results.

Issue 15, case 1: the forward used to register hooks on the shared decoder layers at every call (one thread's hook
captured another thread's hidden states) and the shared fast tokenizer's padding state was changed by concurrent calls
("Unable to create tensor"). Each call now keeps what it captures in its own context, and tokenizer calls hold a lock.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from llava_reward import LlavaRewardModel
from llava_reward import LlavaRewardProcessor
from llava_reward import LlavaRewardScorer
from llava_reward import load_perspectives
from llava_reward.testing import save_tiny_perspective
from llava_reward.testing import save_tiny_vlm
from llava_reward.testing import tiny_images
from llava_reward.testing import tiny_vlm


NUM_THREADS, CALLS_PER_THREAD = 4, 8


def calls(count: int) -> list[tuple[list[str], list]]:
    """Calls of different batch shapes: prompt lengths (padding) and image sizes (visual tokens) differ per call."""
    sizes = [(24 + 8 * (index % 3), 24 + 8 * (index % 2)) for index in range(3 * count)]
    images = tiny_images(3 * count, sizes, seed=1)
    prompts = [f"prompt {index} " + "detail " * (index % 7) for index in range(3 * count)]
    return [(prompts[3 * call : 3 * call + 3], images[3 * call : 3 * call + 3]) for call in range(count)]


def run_concurrently(score, work: list) -> list:
    """`score(*call)` for every call, NUM_THREADS threads at once, all released together by a barrier."""
    barrier = threading.Barrier(NUM_THREADS)

    def worker(thread: int) -> list:
        barrier.wait()
        return [score(*call) for call in work[thread::NUM_THREADS]]

    with ThreadPoolExecutor(NUM_THREADS) as pool:
        per_thread = list(pool.map(worker, range(NUM_THREADS)))
    results = [None] * len(work)
    for thread, thread_results in enumerate(per_thread):
        results[thread::NUM_THREADS] = thread_results
    return results


@pytest.mark.parametrize(
    "family, config_fields",
    [
        ("llava", {}),  # the projector output captured at layer 0; the final state from the output
        ("llava", {"hidden_layer": 1, "visual_layer": 1}),  # both read from a hook on an inner layer
        ("qwen2_5_vl", {"hidden_layer": 1}),  # another processor (image grids, mm_token_type_ids)
    ],
)
def test_threads_sharing_one_scorer_get_the_sequential_rewards_exactly(family, config_fields, one_intraop_thread):
    vlm, vlm_processor = tiny_vlm(family)
    torch.manual_seed(0)
    scorer = LlavaRewardScorer(
        LlavaRewardModel.from_vlm(vlm, **config_fields), LlavaRewardProcessor.from_vlm_processor(vlm_processor)
    )
    work = calls(NUM_THREADS * CALLS_PER_THREAD)
    sequential = [scorer.score(prompts, images) for prompts, images in work]
    assert len({round(rewards[0].item(), 6) for rewards in sequential}) > len(work) // 2  # calls really differ

    concurrent = run_concurrently(scorer.score, work)

    for index, (expected, got) in enumerate(zip(sequential, concurrent)):
        assert torch.equal(expected, got), f"call {index}: {got.tolist()} != {expected.tolist()}"


def test_threads_sharing_one_multi_perspective_scorer_get_the_sequential_rewards(tmp_path, one_intraop_thread):
    base = save_tiny_vlm("llava", tmp_path / "base")
    for seed, name in enumerate(["alignment", "fidelity"]):
        save_tiny_perspective(base, tmp_path / "repo" / name, perspective=name, seed=seed, hidden_layer=1)
    scorer = load_perspectives(tmp_path / "repo", ["alignment", "fidelity"])
    work = calls(NUM_THREADS * 3)
    sequential = [scorer.score(prompts, images) for prompts, images in work]

    concurrent = run_concurrently(scorer.score, work)

    for index, (expected, got) in enumerate(zip(sequential, concurrent)):
        for name in expected:
            assert torch.equal(expected[name], got[name]), f"call {index}, {name}"
