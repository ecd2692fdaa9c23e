"""The processes of one evaluation: one, or those of an `accelerate launch` / `torchrun` launch.

Launched with N processes, `Evaluation.run` cuts the rows into the batches one process would score, hands batch k
to process k mod N, and gathers each round of N batches on every process; the main process (rank 0) alone appends
them to scores.jsonl, in batch order, and writes metrics.json and the report. The files are the ones a single process
writes, row for row: each batch is scored (and padded) exactly as it would be alone.

What crosses processes is JSON text in uint8 tensors (`all_gather_json`), never pickles (`all_gather_object`
pickles). The process group is `accelerate`'s `PartialState`: gloo on CPU, NCCL on GPUs.

Example:
    >>> from llava_reward.evaluation.processes import Processes
    >>> processes = Processes()  # not launched: one process
    >>> processes.num_processes, processes.is_main, processes.all_gather_json({"rows": [1, 2]})
    (1, True, [{'rows': [1, 2]}])
"""

import json
import os

import torch
import torch.distributed as dist


class Processes:
    """This process's place in the launch (`WORLD_SIZE` > 1 from `accelerate launch` or `torchrun`), or alone."""

    def __init__(self):
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self.state = PartialState()  # joins the process group (gloo on CPU, NCCL on GPUs)

    @property
    def num_processes(self) -> int:
        # torch.distributed's, not the state's: under torchrun on CPU accelerate joins the group yet counts 1.
        return dist.get_world_size() if self.state else 1

    @property
    def index(self) -> int:
        return dist.get_rank() if self.state else 0

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def device(self) -> torch.device:
        """The device this process scores on when none is named: its own GPU under a GPU launch, else the CPU."""
        return self.state.device if self.state else torch.device("cpu")

    def all_gather_json(self, value) -> list:
        """`value` (JSON-serialisable) from every process, in process order, on every process."""
        if self.state is None:
            return [value]
        data = torch.tensor(bytearray(json.dumps(value).encode("utf-8")), dtype=torch.uint8, device=self.device)
        size = torch.tensor([data.numel()], device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.num_processes)]
        dist.all_gather(sizes, size)
        padded = torch.zeros(int(max(sizes).item()), dtype=torch.uint8, device=self.device)
        padded[: data.numel()] = data
        gathered = [torch.empty_like(padded) for _ in range(self.num_processes)]
        dist.all_gather(gathered, padded)
        return [
            json.loads(bytes(part[: int(n.item())].cpu().tolist()).decode("utf-8")) for part, n in zip(gathered, sizes)
        ]

    def main_first(self, step):
        """Run `step()` on the main process, then return its JSON result on every process; an error it raises is
        raised on every process (as an `InputError` with its message on the others), so none waits forever."""
        from llava_reward.image_inputs import InputError

        outcome, error = None, None
        if self.is_main:
            try:
                outcome = {"value": step()}
            except Exception as caught:
                outcome, error = {"error": str(caught)}, caught
        outcome = self.all_gather_json(outcome)[0]
        if error is not None:
            raise error
        if "error" in outcome:
            raise InputError(outcome["error"])
        return outcome["value"]
