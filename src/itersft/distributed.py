"""This process's place among the training processes, and the few collectives itersft needs.

Everything runs on accelerate's process state (DDP, FSDP, DeepSpeed under torch.distributed); with
one process every method is a no-op, so single-process code pays nothing.
"""

from __future__ import annotations

import os

import torch
from accelerate.utils import gather_object


class Ranks:
    """Rank, world size and collectives of the current run, from an `accelerate.Accelerator`."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.rank = accelerator.process_index
        self.world_size = accelerator.num_processes

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def check_launch(self) -> None:
        """Refuse a run launched as several processes that accelerate set up as one: each would train its own
        copy of the model, unaware of the others."""
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.world_size == 1:
            raise ValueError(
                f"Launched as {launched} processes, but this trainer runs as one: each would train its own copy. "
                "On CPU pass `use_cpu=True` in the config (or launch with `accelerate launch --cpu`)."
            )

    def block(self, items: list) -> tuple[int, list]:
        """This rank's contiguous share of `items` and its offset (shares differ in size by at most one)."""
        size, extra = divmod(len(items), self.world_size)
        start = self.rank * size + min(self.rank, extra)
        stop = start + size + (1 if self.rank < extra else 0)
        return start, items[start:stop]

    def gather(self, items: list) -> list:
        """Every rank's list, concatenated in rank order, on every rank."""
        return list(gather_object(list(items))) if self.is_distributed else list(items)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks of a short list of numbers (one all-reduce)."""
        if not self.is_distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def max(self, value: int, device: torch.device) -> int:
        """The largest `value` over ranks."""
        if not self.is_distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item())
