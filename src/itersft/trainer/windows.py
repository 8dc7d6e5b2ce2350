"""How the samples of one `step()` call become accumulation windows of micro-batches, as they will run.

Ranks first agree on the number of micro-batches (a rank with fewer samples runs empty ones), then
each window's label tokens are counted on this rank and summed over ranks in one all-reduce: every rank
then divides its summed loss by the same global count, so every token of every rank weighs the same
however the samples are spread.

Without a user's collator or overrides, micro-batches are laid out by `batching.lay_out_window` and
collated one at a time as they run. With them (`trainer.hooks`), every micro-batch of the call is
collated here, on the host, before any forward: a collator's error surfaces with the weights untouched,
and the window's label tokens are counted on the labels the collator returned.
"""

from __future__ import annotations

from itersft.data.batching import accumulation_windows, count_micro_batches, lay_out_window
from itersft.data.collate import collate
from itersft.data.example import Example
from itersft.data.user_collator import collate_with, label_count
from itersft.trainer.hooks import takes_fast_route
from itersft.trainer.loss import label_positions


def plan_windows(trainer, examples: list[Example], carries_labels: bool, overridden: bool) -> list[tuple[list, int]]:
    """This rank's accumulation windows, each `(micro-batches, label tokens over all ranks)`.

    A micro-batch is `(examples, packed)` on the default path, `(examples, host batch)` with a collator or
    an override (None for an empty micro-batch). `carries_labels`: the samples have labels of their own
    (`user_collator.samples_carry_labels`); `overridden`: `compute_loss` or `training_step` is.
    """
    args, facts = trainer.args, trainer.facts
    num_micro_batches = trainer.ranks.max(count_micro_batches(len(examples), args.per_device_train_batch_size),
                                          args.device)
    windows = accumulation_windows(examples, args.per_device_train_batch_size, args.gradient_accumulation_steps,
                                   num_micro_batches)
    if trainer.user_collator is not None or overridden:
        laid_out, local = collated_windows(trainer, windows, carries_labels, fast=not overridden)
    else:
        local = [sum(e.num_loss_tokens(not trainer.is_encoder_decoder) for batch in window for e in batch)
                 for window in windows]
        per_sample = trainer.summed_loss.attends_per_sample(trainer.model_wrapped)
        laid_out = [lay_out_window(window, trainer.settings.batching, facts.packs, facts.hidden_size, per_sample)
                    for window in windows]
    return list(zip(laid_out, (int(tokens) for tokens in trainer.ranks.sum(local, args.device))))


def collated_windows(trainer, windows: list[list[list[Example]]], carries_labels: bool,
                     fast: bool) -> tuple[list[list[tuple[list[Example], dict | None]]], list[int]]:
    """Every micro-batch collated on the host, and each window's local label-token count, counted on the
    collated labels.

    Micro-batches are laid out by `batching` as on the default path, except that a user's collator is
    never packed (it lays out the batch itself) and an override gets packed rows only for
    `batching="packed"` (`input_ids`, `position_ids` and `labels` of shape `(1, tokens)`), never by
    `auto`'s estimate: code written for padded rows would misread a packed one. `fast`: the batch goes to
    the trainer's own loss (no override), so causal label positions are found here, on the host, as the
    default path finds them.
    """
    facts, batching, seq2seq = trainer.facts, trainer.settings.batching, trainer.is_encoder_decoder
    collator = trainer.user_collator
    packs = facts.packs and collator is None and batching == "packed"
    laid_out, counts = [], []
    for window in windows:
        batches, tokens = [], 0
        for examples, packed in lay_out_window(window, batching, packs, facts.hidden_size, facts.flash_attention):
            if not examples:
                batches.append((examples, None))
                continue
            if collator is None:
                host = collate(examples, trainer.pad_token_id, seq2seq, packed)
            else:
                host = collate_with(collator, examples, carries_labels, seq2seq)
            tokens += label_count(host, seq2seq)
            if fast and not seq2seq and takes_fast_route(host, seq2seq):
                host["loss_positions"], host["loss_targets"] = label_positions(host["labels"])
            batches.append((examples, host))
        laid_out.append(batches)
        counts.append(tokens)
    return laid_out, counts
