"""`evaluate()`'s loss: the mean over every label token of the eval set, as `step()` defines its loss.

transformers' `Trainer` averages per-batch mean losses, so its `eval_loss` moves with the eval batch
size and the number of processes. `token_mean_loss` sums token losses and counts tokens instead: the
same number for any batch size and any number of ranks. Predictions and `compute_metrics` still go
through transformers' own evaluation loop (the trainer's `evaluation_loop` override combines both).

The eval set's batches are `MicroBatch`es built as `step()` builds its own (`eval_micro_batches`), so
the user's extension points apply as in `step()`: a `data_collator` builds them (the loss counts the
label tokens the collator keeps, as training does), and a `compute_loss` override computes the loss
(`hooks.override_eval_loss`), called with `num_items_in_batch` = the eval set's label tokens over all
ranks (the whole set is one window), or weighted by each batch's tokens when `loss_is_scaled_for_ga`
is False.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from itersft.data.collate import ExampleCollator
from itersft.data.example import Example
from itersft.distributed import Ranks
from itersft.trainer.context import TrainerLoss
from itersft.trainer.micro_batch import Collation, MicroBatch


def eval_micro_batches(dataset, rows_collator: ExampleCollator, collation: Collation, batch_size: int,
                       ranks: Ranks) -> list[MicroBatch]:
    """This rank's share of `dataset`'s rows as micro-batches of `batch_size`, each row counted once.

    Each rank takes a contiguous share of the rows (accelerate's evaluation loader would repeat rows to
    even out the shares); the rows are sorted by length, so similar lengths pad little. The rows carry
    labels of their own (for a collator) when they have a `labels` column, or the model is seq2seq.
    """
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"evaluate() needs a map-style dataset (a `datasets.Dataset` or a list of rows), got "
                        f"{type(dataset).__name__}.")
    _, indices = ranks.block(list(range(len(dataset))))
    rows = [dataset[i] for i in indices]
    examples = rows_collator.examples(rows)
    examples.sort(key=Example.size, reverse=True)
    collation = replace(collation, carries_labels=collation.seq2seq or (bool(rows) and "labels" in rows[0]))
    return [collation(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]


def token_mean_loss(micro_batches: list[MicroBatch], loss: TrainerLoss, module: nn.Module, ranks: Ranks,
                    lockstep: bool, user_loss: Callable[[MicroBatch, int], torch.Tensor] | None = None) -> float:
    """Mean token loss over every label token of every rank's `micro_batches`, with gradients off.

    Each rank sums its token losses and one all-reduce adds sums and counts. `lockstep` (the weights are
    sharded, so every forward is a collective): ranks with fewer batches run weightless forward passes
    alongside. `user_loss(micro_batch, total)`: a `compute_loss` override's summed loss, handed the whole
    set's label tokens over all ranks before any forward, as `step()` hands a window's.
    """
    counts = [micro_batch.label_tokens for micro_batch in micro_batches]
    if lockstep:
        micro_batches = micro_batches + [MicroBatch()] * (ranks.max(len(micro_batches), loss.device) - len(counts))
    total = int(ranks.sum([sum(counts)], loss.device)[0]) if user_loss is not None else 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=loss.device)
    with torch.no_grad(), loss.context():
        for micro_batch in micro_batches:
            if not micro_batch.examples:
                loss.weightless(module)
            elif user_loss is not None:
                loss_sum += user_loss(micro_batch, total)
            else:
                loss_sum += loss.summed(module, micro_batch.inputs(loss.device)).double()
    summed, tokens = ranks.sum([loss_sum.item(), sum(counts)], loss.device)
    return summed / tokens if tokens else math.nan
