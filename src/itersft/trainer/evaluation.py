"""`evaluate()`'s loss: the mean over every label token of the eval set, as `step()` defines its loss.

transformers' `Trainer` averages per-batch mean losses, so its `eval_loss` moves with the eval batch
size and the number of processes. `token_mean_loss` sums token losses and counts tokens instead: the
same number for any batch size and any number of ranks. Predictions and `compute_metrics` still go
through transformers' own evaluation loop (the trainer's `evaluation_loop` override combines both).

The user's extension points apply as in `step()`: a `data_collator` builds the eval batches (so the
loss counts the label tokens the collator keeps, as training does), and a `compute_loss` override
computes the loss, called with `num_items_in_batch` = the eval set's label tokens over all ranks (the
whole set is one window), or weighted by each batch's tokens when `loss_is_scaled_for_ga` is False.
"""

from __future__ import annotations

import math

import torch

from itersft.data.collate import collate
from itersft.data.example import Example
from itersft.data.user_collator import collate_with, label_count
from itersft.trainer import hooks
from itersft.trainer.loss import label_positions


def token_mean_loss(trainer, dataset, overridden: bool = False) -> float:
    """Mean token loss over all label tokens of `dataset`'s rows, each row counted once.

    Each rank takes a contiguous share of the rows (accelerate's evaluation loader would repeat rows to
    even out the shares), sums its token losses, and one all-reduce adds sums and counts. Where the
    weights are sharded, ranks with fewer batches run weightless forward passes alongside.
    `overridden`: the trainer's `compute_loss` is a user's.
    """
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"evaluate() needs a map-style dataset (a `datasets.Dataset` or a list of rows), got "
                        f"{type(dataset).__name__}.")
    ranks, args, seq2seq = trainer.ranks, trainer.args, trainer.is_encoder_decoder
    _, indices = ranks.block(list(range(len(dataset))))
    rows = [dataset[i] for i in indices]
    examples = trainer.rows_collator.examples(rows)
    examples.sort(key=Example.size, reverse=True)  # similar lengths pad little
    batch_size = args.per_device_eval_batch_size
    batches: list[list[Example]] = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    if trainer.user_collator is None and not overridden:
        hosts = [collate(batch, trainer.pad_token_id, seq2seq) for batch in batches]
    else:
        carries_labels = seq2seq or (bool(rows) and "labels" in rows[0])
        hosts = [collate_with(trainer.user_collator, batch, carries_labels, seq2seq) if trainer.user_collator
                 else collate(batch, trainer.pad_token_id, seq2seq) for batch in batches]
    counts = [label_count(host, seq2seq) for host in hosts]
    if trainer.shards_parameters:
        hosts += [None] * (ranks.max(len(hosts), args.device) - len(hosts))
    # A user's compute_loss is handed the whole set's count before any forward, as `step()` hands a window's.
    total = int(ranks.sum([sum(counts)], args.device)[0]) if overridden else None
    loss_sum = torch.zeros((), dtype=torch.float64, device=args.device)
    trainer.model.eval()
    with torch.no_grad(), trainer.compute_loss_context_manager():
        for host, count in zip(hosts, counts + [0] * (len(hosts) - len(counts))):
            if host is None:
                trainer.weightless_loss(trainer.model)
            elif overridden:
                loss_sum += _overridden_loss(trainer, host, count, total)
            else:
                if not seq2seq and hooks.takes_fast_route(host, seq2seq):
                    host["loss_positions"], host["loss_targets"] = label_positions(host["labels"])
                loss_sum += hooks.summed_loss(trainer, trainer.model, hooks.to_device(host, args.device)).double()
    loss, tokens = ranks.sum([loss_sum.item(), sum(counts)], args.device)
    return loss / tokens if tokens else math.nan


def _overridden_loss(trainer, host: dict, count: int, total: int) -> torch.Tensor:
    """One batch's summed loss by the user's `compute_loss`, called as `step()` calls it."""
    if count == 0:
        return torch.zeros((), dtype=torch.float64, device=trainer.args.device)
    num_items = torch.tensor(total, device=trainer.args.device)
    loss = trainer.compute_loss(trainer.model, hooks.to_device(host, trainer.args.device), num_items_in_batch=num_items)
    hooks.check_scalar(loss, f"{type(trainer).__qualname__}.compute_loss")
    return loss.double() * (total if hooks.loss_is_scaled(trainer, num_items) else count)
