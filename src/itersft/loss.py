"""The training loss: summed token cross-entropy, so the caller can normalise over a whole window."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from itersft.data.example import IGNORE_INDEX


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Sum of cross-entropy over the tokens whose label is not -100, in float32.

    `shift=True` (causal LMs): the logits at position t predict the label at t + 1. Returning the sum
    rather than the mean is what lets `step()` divide by the token count of the whole accumulation
    window, so every token weighs the same however samples are split into micro-batches.
    """
    if shift:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
