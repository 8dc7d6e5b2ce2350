"""`evaluate()`'s loss: the mean over every label token of the eval set, as `step()` defines its loss.

transformers' `Trainer` averages per-batch mean losses, so its `eval_loss` moves with the eval batch
size and the number of processes. `token_mean_loss` sums token losses and counts tokens instead: the
same number for any batch size and any number of ranks. Predictions and `compute_metrics` still go
through transformers' own evaluation loop (the trainer's `evaluation_loop` override combines both).
"""

from __future__ import annotations

import math

import torch

from itersft.data.example import Example


def token_mean_loss(trainer, dataset) -> float:
    """Mean token loss over all label tokens of `dataset`'s rows, each row counted once.

    Each rank takes a contiguous share of the rows (accelerate's evaluation loader would repeat rows to
    even out the shares), sums its token losses, and one all-reduce adds sums and counts. Where the
    weights are sharded, ranks with fewer batches run weightless forward passes alongside.
    """
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"evaluate() needs a map-style dataset (a `datasets.Dataset` or a list of rows), got "
                        f"{type(dataset).__name__}.")
    ranks, args = trainer.ranks, trainer.args
    _, indices = ranks.block(list(range(len(dataset))))
    examples = trainer.rows_collator.examples([dataset[i] for i in indices])
    examples.sort(key=lambda e: (len(e.input_ids), len(e.labels)), reverse=True)  # similar lengths pad little
    batch_size = args.per_device_eval_batch_size
    batches: list[list[Example]] = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    if trainer.shards_parameters:
        batches += [[]] * (ranks.max(len(batches), args.device) - len(batches))
    loss_sum = torch.zeros((), dtype=torch.float64, device=args.device)
    trainer.model.eval()
    with torch.no_grad(), trainer.compute_loss_context_manager():
        for batch in batches:
            if batch:
                loss_sum += trainer.summed_loss(trainer.model, trainer.device_batch(batch)).double()
            else:
                trainer.weightless_loss(trainer.model)
    tokens = sum(e.num_loss_tokens(not trainer.is_encoder_decoder) for e in examples)
    total, count = ranks.sum([loss_sum.item(), tokens], args.device)
    return total / count if count else math.nan
