"""Order samples and cut them into micro-batches and accumulation windows."""

from __future__ import annotations

import torch

from itersft.data.example import Example
from itersft.data.packing import can_pack, packing_pays


def shuffled(items: list, seed: int, salt: int) -> list:
    """A permutation of `items` that depends only on (`seed`, `salt`), so reruns and resumes match."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + salt) % (2**63))
    return [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]


def count_micro_batches(num_items: int, batch_size: int) -> int:
    """How many micro-batches of `batch_size` the items make (the last may be short)."""
    return -(-num_items // batch_size)


def accumulation_windows(items: list, batch_size: int, accumulation_steps: int,
                         num_micro_batches: int | None = None) -> list[list[list]]:
    """Micro-batches of `batch_size`, grouped `accumulation_steps` to a window (one optimizer update).

    The last micro-batch and the last window may be short: a `step()` call always ends on an update,
    so no gradient is left pending for the next call. `num_micro_batches` pads the list with empty
    micro-batches, so that ranks holding fewer samples run as many micro-batches as the others.
    """
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    batches += [[] for _ in range((num_micro_batches or len(batches)) - len(batches))]
    return [batches[i : i + accumulation_steps] for i in range(0, len(batches), accumulation_steps)]


def by_length(window: list[list], length) -> list[list]:
    """The window's samples sorted longest first and cut again into micro-batches of the same sizes.

    Samples of similar length then share a micro-batch, so little padding is computed. The window
    (one optimizer update) keeps the same samples, and its loss is the mean over all of their label
    tokens, so the update's loss and gradient do not change. The sort is stable: equal lengths keep
    their (shuffled) order.
    """
    items = sorted((item for batch in window for item in batch), key=length, reverse=True)
    batches, start = [], 0
    for batch in window:
        batches.append(items[start : start + len(batch)])
        start += len(batch)
    return batches


def lay_out_window(window: list[list[Example]], batching: str, packs: bool, hidden_size: int,
                   attends_per_sample: bool) -> list[tuple[list[Example], bool]]:
    """The micro-batches of one accumulation window as they run, each with whether it is packed.

    `batching` is the trainer's setting (`IterativeSFTConfig.batching`): every mode but `padded` regroups
    the window's samples by length (`by_length`); `packed` packs every micro-batch that can be, `auto`
    those where `packing.packing_pays`. A micro-batch is packed only for a model that `packs` (see
    `ModelFacts.packs`) and when none of its samples has padding inside it. Empty micro-batches (a rank
    with no samples left) stay empty and unpacked.
    """
    if batching != "padded":
        window = by_length(window, Example.size)
    packable = packs and batching in ("packed", "auto")
    return [(batch, packable and bool(batch) and can_pack(batch)
             and (batching == "packed" or packing_pays([len(e.input_ids) for e in batch], hidden_size,
                                                        attends_per_sample)))
            for batch in window]
