import os

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
