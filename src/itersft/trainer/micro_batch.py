"""The unit of work of `step()` and `evaluate()`: a micro-batch, built once on the host, the same on every path.

`plan_windows` turns the samples of one `step()` call into accumulation windows of `MicroBatch`es
before any forward, on the default path and on the collator/override path alike:

* ranks first agree on the number of micro-batches (a rank with fewer samples runs empty ones);
* each window is laid out by `batching.lay_out_window` (regrouped by length, each micro-batch packed or
  padded; `may_pack` says where packing may apply at all);
* each micro-batch is collated by a `Collation`: padded or packed by the trainer, or built by the user's
  `data_collator`. Its label tokens are counted on the labels of the collated batch
  (`count_label_tokens`), so a collator that masks more is counted as it trains; where the batch goes to
  the trainer's own loss, the causal label positions are found here, on the host
  (`loss.with_label_positions`), so the device never has to report a count back;
* the windows' label tokens are summed over ranks in one all-reduce: every rank then divides its summed
  loss by the same count, so every token of every rank weighs the same however the samples are spread.

Collating every micro-batch up front also means that a collator's error surfaces with the weights untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from itersft.data.batching import accumulation_windows, count_micro_batches, lay_out_window
from itersft.data.collate import collate
from itersft.data.example import Example, count_label_tokens
from itersft.data.user_collator import collate_with
from itersft.distributed import Ranks
from itersft.trainer.loss import with_label_positions


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch as it runs.

    Attributes:
        examples: its samples; none when this rank ran out of samples (it then runs a weightless forward,
            so the collectives of the other ranks complete).
        packed: the layout: one padding-free row (`itersft.data.packing`) rather than a row per sample.
        label_tokens: the label tokens that carry loss, on this rank, counted on the collated `labels`.
        batch: the collated host tensors (with whatever else a collator returned); None when empty.
        real_tokens: non-padding tokens of its samples (for seq2seq, source plus target).
        padded_tokens: the tokens the batch computes, padding included.
    """

    examples: list[Example] = field(default_factory=list)
    packed: bool = False
    label_tokens: int = 0
    batch: dict[str, Any] | None = None
    real_tokens: int = 0
    padded_tokens: int = 0

    def inputs(self, device: torch.device) -> dict[str, Any]:
        """The batch with every tensor moved to `device` (asynchronously where the device allows)."""
        return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in self.batch.items()}


@dataclass(frozen=True)
class Window:
    """The micro-batches of one optimizer update, and their label tokens over all ranks (the loss's divisor)."""

    micro_batches: list[MicroBatch]
    label_tokens: int


@dataclass(frozen=True)
class Collation:
    """How a micro-batch's samples become its batch: padded or packed by the trainer, or by a user's collator.

    Attributes:
        pad_token_id: the id the trainer pads `input_ids` with (its labels are padded with -100).
        seq2seq: the model is an encoder-decoder (labels are the decoder's targets, not shifted).
        collator: the user's `data_collator` (`itersft.data.user_collator`), or None.
        carries_labels: the samples have labels of their own to hand to the collator.
        own_loss: the batch goes to the trainer's own loss (not to a `compute_loss`/`training_step`
            override): the causal label positions and, for a packed row, its samples' lengths
            (`packed_lengths`, host ints for `itersft.packed_attention`) are added here.
    """

    pad_token_id: int
    seq2seq: bool
    collator: Callable | None = None
    carries_labels: bool = True
    own_loss: bool = True

    def __call__(self, examples: list[Example], packed: bool = False) -> MicroBatch:
        if not examples:
            return MicroBatch()
        if self.collator is None:
            batch = collate(examples, self.pad_token_id, self.seq2seq, packed)
        else:
            batch = collate_with(self.collator, examples, self.carries_labels, self.seq2seq)
        if self.own_loss:
            batch = with_label_positions(batch, self.seq2seq)
            if packed:
                batch["packed_lengths"] = tuple(len(e.input_ids) for e in examples)
        padded = batch["input_ids"].numel() + (batch["labels"].numel() if self.seq2seq else 0)
        return MicroBatch(examples, packed, count_label_tokens(batch["labels"], causal=not self.seq2seq), batch,
                          sum(e.num_real_tokens(self.seq2seq) for e in examples), padded)


@dataclass(frozen=True)
class Layout:
    """How one call's samples are cut and laid out (see `plan_windows`)."""

    batch_size: int
    accumulation: int
    batching: str
    packs: bool
    hidden_size: int
    attends_per_sample: bool


def may_pack(model_packs: bool, batching: str, collator: Callable | None, overridden: bool) -> bool:
    """Whether micro-batches may be packed at all, for a model that `model_packs` (`ModelFacts.packs`).

    A user's collator is never packed (it lays out the batch itself). An override gets packed rows only for
    `batching="packed"` (`input_ids`, `position_ids` and `labels` of shape `(1, tokens)`), never by
    `auto`'s estimate: code written for padded rows would misread a packed one.
    """
    if collator is not None:
        return False
    return model_packs and (batching == "packed" or not overridden)


def plan_windows(examples: list[Example], layout: Layout, collation: Collation, ranks: Ranks,
                 device: torch.device) -> list[Window]:
    """This rank's accumulation windows of micro-batches, as they will run, each with its label tokens over
    all ranks (two small collectives: the micro-batch count, then every window's label tokens)."""
    num_micro_batches = ranks.max(count_micro_batches(len(examples), layout.batch_size), device)
    windows = [[collation(batch, packed) for batch, packed in lay_out_window(
                    window, layout.batching, layout.packs, layout.hidden_size, layout.attends_per_sample)]
               for window in accumulation_windows(examples, layout.batch_size, layout.accumulation, num_micro_batches)]
    totals = ranks.sum([sum(m.label_tokens for m in window) for window in windows], device)
    return [Window(window, int(tokens)) for window, tokens in zip(windows, totals)]
