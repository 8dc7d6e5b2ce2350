"""Order samples and cut them into micro-batches and accumulation windows."""

from __future__ import annotations

import torch


def shuffled(items: list, seed: int, salt: int) -> list:
    """A permutation of `items` that depends only on (`seed`, `salt`), so reruns and resumes match."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + salt) % (2**63))
    return [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]


def accumulation_windows(items: list, batch_size: int, accumulation_steps: int) -> list[list[list]]:
    """Micro-batches of `batch_size`, grouped `accumulation_steps` to a window (one optimizer update).

    The last micro-batch and the last window may be short: a `step()` call always ends on an update,
    so no gradient is left pending for the next call.
    """
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    return [batches[i : i + accumulation_steps] for i in range(0, len(batches), accumulation_steps)]
