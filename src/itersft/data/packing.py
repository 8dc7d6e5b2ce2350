"""Padding-free packing: the causal samples of one micro-batch as a single row, no padding token.

The row is the samples' tokens end to end, with `position_ids` restarting at 0 for each sample and
no `attention_mask`. transformers (5.x, `masking_utils.find_packed_sequence_indices`) reads the
restarts as sample boundaries and builds a block-diagonal causal mask, so no token attends across
samples and every sample sees the positions it would alone: the forward is the padded one's, without
the padding. It only looks for them when there is no cache, so the model must be called with
`use_cache=False` (the trainer always does). The first label of each sample is set to -100 so
that, after the loss's one-position shift, the last token of a sample is not asked to predict the
first token of the next; that label never carried loss anyway (nothing precedes it). On CPU the
trainer has sdpa and eager models attend each sample's slice of the row on its own instead
(`itersft.packed_attention`): the same attention without the work the mask throws away.

Samples whose attention mask has zeros (padding the caller left inside) are not packed: dropping
those tokens would renumber positions, so such micro-batches stay padded. Which models may be packed is
a fact of the model (`itersft.trainer.model_facts`); which micro-batches are, `batching.lay_out_window`.
"""

from __future__ import annotations

import torch

from itersft.data.example import IGNORE_INDEX, Example


def can_pack(examples: list[Example]) -> bool:
    """True when every sample attends to all its tokens (no padding inside a sample)."""
    return all(bool(e.attention_mask.all()) for e in examples)


def pack(examples: list[Example]) -> dict[str, torch.Tensor]:
    """`input_ids`, `position_ids` and `labels`, each `(1, total_tokens)`, for causal samples."""
    labels = []
    for example in examples:
        own = example.labels.clone()
        own[0] = IGNORE_INDEX
        labels.append(own)
    return {
        "input_ids": torch.cat([e.input_ids for e in examples])[None],
        "position_ids": torch.cat([torch.arange(len(e.input_ids)) for e in examples])[None],
        "labels": torch.cat(labels)[None],
    }


# Per token of a packed or padded row, what its projections and MLP cost, in units of what attending to one
# more token of context costs, per unit of hidden size (see `packing_pays`).
TOKEN_COST_PER_WIDTH = 6


def packing_pays(lengths: list[int], hidden_size: int, attends_per_sample: bool) -> bool:
    """Whether one packed row of samples of these `lengths` should cost less than right-padding them.

    Where the row is attended sample by sample (`attends_per_sample`: flash-attention kernels, or sdpa
    and eager on CPU through `itersft.packed_attention`) packing always pays: it computes no padding
    and attends no more. Otherwise (sdpa and eager on an accelerator or under activation checkpointing)
    the row is attended as a whole under a block-diagonal mask, every pair of its tokens computed, at a
    cost growing with (tokens in the row)^2. Per layer and token, forward and backward: the projections
    and MLP cost about 3 x 15 * hidden^2 multiply-adds (12-19 hidden^2 a forward for common shapes, with
    or without grouped key/value heads), attention 7 * hidden * (context) (the scores, the weighted
    values, and in backward the recomputed scores and three more products). So packing `n` tokens is
    cheaper than `b` rows of `m` when n * (c + n) < b * m * (c + m), with c = `TOKEN_COST_PER_WIDTH` *
    hidden (45/7, rounded down). Fitted to time on CPU (`benchmarks/fit_packing_estimate.py`, two runs):
    5.9-6.2 * hidden with grouped key/value heads, 6.3-7.6 * hidden without. The earlier 3 * hidden chose
    padding for 3-4 of 14 random micro-batches that packed faster; this one misses 1-2, each within 4%.
    """
    if attends_per_sample:
        return True
    token_cost = TOKEN_COST_PER_WIDTH * hidden_size
    tokens, longest = sum(lengths), max(lengths)
    return tokens * (token_cost + tokens) < len(lengths) * longest * (token_cost + longest)
