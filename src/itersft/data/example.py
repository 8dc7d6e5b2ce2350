"""`Example`: one training sample after tokenisation, as every later stage sees it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def loss_targets(labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """The label each position's logits are scored against (-100: no loss), for `labels` of any batch shape.

    The one rule for which positions carry a label, used by every count and every loss: for a causal LM
    the logits at position t predict the token at t + 1, so position t gets label t + 1 and the last
    position none; for seq2seq the decoder's position t gets label t.
    """
    if not causal:
        return labels
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[..., :-1] = labels[..., 1:]
    return targets


def count_label_tokens(labels: torch.Tensor, causal: bool) -> int:
    """Label tokens that carry loss (see `loss_targets`), in a sample's or a collated batch's `labels`."""
    return int((loss_targets(labels, causal) != IGNORE_INDEX).sum())


@dataclass
class Example:
    """One sample, 1-D tensors.

    Causal LM: `input_ids`, `attention_mask` and `labels` have the same length, and `labels` holds the
    token to predict at each position *before* the one-position shift the loss applies (-100 = no loss).
    Build causal examples with `Example.causal`, which applies the one rule for what a label token is.
    Seq2seq: `input_ids`/`attention_mask` are the encoder source and `labels` the decoder target.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def causal(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None) -> Example:
        """A causal example. A label token is a position whose label is not -100 *and* whose attention mask
        is 1: a label under padding (mask 0) is never trained, so it is made -100 here, once, and every later
        stage (collation, the window's token count, the statistics, evaluation) counts the same tokens.
        `labels=None` learns every attended token (a copy of `input_ids`). Given labels with nothing under
        padding are kept as they are, the very tensor (a `data_collator` sees the caller's own)."""
        if labels is None or not bool(attention_mask.all()):
            labels = (input_ids if labels is None else labels).masked_fill(attention_mask == 0, IGNORE_INDEX)
        return cls(input_ids, attention_mask, labels)

    def num_loss_tokens(self, shifted: bool) -> int:
        """Tokens that carry loss (`count_label_tokens`); `shifted`: causal, where the first never does."""
        return count_label_tokens(self.labels, causal=shifted)

    def size(self) -> tuple[int, int]:
        """`(source length, target length)`: the key samples are sorted by so that similar ones share a batch."""
        return len(self.input_ids), len(self.labels)

    def num_real_tokens(self, is_encoder_decoder: bool) -> int:
        """Non-padding tokens processed: the source plus, for seq2seq, the target."""
        real = int(self.attention_mask.sum())
        return real + len(self.labels) if is_encoder_decoder else real
