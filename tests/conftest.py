import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


# Tests never reach the network: the Hub and evaluate run from local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def one_intraop_thread():
    """Run a test with one torch intra-op thread (for training tiny models).

    Width-32 models gain nothing from intra-op threads, and on a busy 2-core machine two OpenMP threads made each
    training step ~40x slower (spinning at barriers while the other core is taken).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> dict[str, Path]:
    """`llava-reward train --config tiny` outputs (LoRA, and full fine-tuning) written as a user's command writes them,
    in a work folder laid out as the tiny recipe expects (`tiny-task/` with the colour task and a tiny base)."""
    from llava_reward.testing import save_tiny_vlm
    from llava_reward.trainers.synthetic import write_colour_task

    work = tmp_path_factory.mktemp("tiny-trained")
    write_colour_task(work / "tiny-task", train_pairs=8, eval_pairs=4)
    save_tiny_vlm("llava", work / "tiny-task" / "base")
    quick = ["--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--per_device_train_batch_size", "2"]
    outputs = {"work": work}
    for tuning in ("lora", "full"):
        output = work / "tiny-task" / f"reward-{tuning}"
        command = [str(Path(sys.executable).parent / "llava-reward"), "train", "--config", "tiny", "--tuning", tuning,
                   "--output_dir", str(output), *quick]
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[tuning] = output
    return outputs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder laid out as the tiny recipe expects (`python -m llava_reward.trainers.synthetic tiny-task`); one per
    test module, which may train into it."""
    from llava_reward.testing import save_tiny_vlm
    from llava_reward.trainers.synthetic import write_colour_task

    root = tmp_path_factory.mktemp("work")
    write_colour_task(root / "tiny-task", train_pairs=16, eval_pairs=4)
    save_tiny_vlm("llava", root / "tiny-task" / "base")
    return root


@pytest.fixture
def sigint_when():
    """`sigint_when(condition)`: send this process a real SIGINT (what Ctrl-C sends) as soon as `condition()` holds,
    from a watcher thread; for testing a command interrupted midway without paying a process start-up.

    Choose a condition that holds while the command still has work left: the signal must reach the command's
    `main`, which turns it into exit code 130 (a signal after it returned would interrupt pytest itself).
    """
    import signal
    import threading
    import time

    watchers = []
    # Python's Ctrl-C handler, also when pytest was started in the background by a shell without job control
    # (`cmd &`), which starts it with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def start(condition, timeout: float = 300):
        stop = threading.Event()

        def watch():
            deadline = time.monotonic() + timeout
            while not stop.is_set() and time.monotonic() < deadline:
                if condition():
                    os.kill(os.getpid(), signal.SIGINT)
                    return
                time.sleep(0.05)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        watchers.append((stop, thread))

    yield start
    for stop, thread in watchers:
        stop.set()
        thread.join()
    signal.signal(signal.SIGINT, previous)
