"""Truncation along the sequence axis (never the batch axis, the bug TRL 0.23 shipped)."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from itersft.data.example import Example

logger = logging.getLogger(__name__)


def truncate_sequence(sequence: torch.Tensor, max_length: int | None, mode: str) -> torch.Tensor:
    """Keep the first (`keep_start`) or last (`keep_end`) `max_length` entries of a 1-D tensor."""
    if max_length is None or sequence.shape[-1] <= max_length:
        return sequence
    return sequence[..., :max_length] if mode == "keep_start" else sequence[..., -max_length:]


def truncate_example(example: Example, max_length: int | None, mode: str, is_encoder_decoder: bool) -> Example:
    """Truncate every tensor of an example consistently.

    Causal: ids, mask and labels are cut together. Seq2seq: the source (ids and mask) and the target
    (labels) are each cut to `max_length`.
    """
    if max_length is None:
        return example
    labels = truncate_sequence(example.labels, max_length, mode) if is_encoder_decoder else None
    return replace(
        example,
        input_ids=truncate_sequence(example.input_ids, max_length, mode),
        attention_mask=truncate_sequence(example.attention_mask, max_length, mode),
        labels=labels if labels is not None else truncate_sequence(example.labels, max_length, mode),
    )


def truncate_examples(examples: list[Example], max_length: int | None, mode: str, max_positions: int | None,
                      is_encoder_decoder: bool) -> list[Example]:
    """Every example cut to `max_length`, or, when that is unset, to the `max_positions` the model has
    (`ModelFacts.max_positions`), with a warning: a longer sample would not fit the model."""
    if max_length is None and max_positions is not None:
        max_length = max_positions
        over = sum(max(e.size()) > max_length for e in examples)
        if over:
            logger.warning("%d sample(s) are longer than the model's %d positions: cut to %d tokens (%s). "
                           "Set `max_length` to choose the length yourself.", over, max_length, max_length, mode)
    return [truncate_example(e, max_length, mode, is_encoder_decoder) for e in examples]
