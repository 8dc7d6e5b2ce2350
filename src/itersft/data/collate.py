"""Turn a list of `Example`s into one micro-batch of tensors the model takes: right-padded, or packed."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from itersft.data.example import IGNORE_INDEX, Example
from itersft.data.packing import can_pack, pack


def collate(examples: list[Example], pad_token_id: int, is_encoder_decoder: bool,
            packed: bool = False) -> dict[str, torch.Tensor | tuple[int, ...]]:
    """Pad ids with `pad_token_id`, masks with 0 and labels with -100, all on the right.

    Right padding keeps every causal sequence's positions starting at 0, so position ids need not be
    passed. Labels of padding are -100, whatever the pad token is, so a real EOS equal to the pad
    token still carries loss.

    `packed=True` gives one padding-free row instead (`itersft.data.packing`); whether a micro-batch may
    be packed (causal, no padding inside a sample) is decided by `batching.lay_out_window`.
    """
    if packed:
        assert not is_encoder_decoder and can_pack(examples), "lay_out_window packs causal, unpadded samples only"
        return pack(examples)
    return {
        "input_ids": pad_sequence([e.input_ids for e in examples], batch_first=True, padding_value=pad_token_id),
        "attention_mask": pad_sequence([e.attention_mask for e in examples], batch_first=True, padding_value=0),
        "labels": pad_sequence([e.labels for e in examples], batch_first=True, padding_value=IGNORE_INDEX),
    }


class ExampleCollator:
    """A `data_collator` for `evaluate()`: rows with `input_ids` (and optionally `attention_mask`,
    `labels`) become a padded batch with the same label rules as `step()`."""

    def __init__(self, pad_token_id: int, is_encoder_decoder: bool):
        self.pad_token_id = pad_token_id
        self.is_encoder_decoder = is_encoder_decoder

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return collate(self.examples(rows), self.pad_token_id, self.is_encoder_decoder)

    def examples(self, rows: list[dict]) -> list[Example]:
        """The rows as `Example`s: labels default to the real tokens (causal), padding never carries loss."""
        examples = []
        for row in rows:
            input_ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
            mask = row.get("attention_mask")
            mask = torch.ones_like(input_ids) if mask is None else torch.as_tensor(mask, dtype=torch.long)
            labels = row.get("labels")
            if labels is None and self.is_encoder_decoder:
                raise ValueError("Evaluation rows for a seq2seq model need a `labels` column (the targets).")
            labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
            examples.append(Example(input_ids, mask, labels) if self.is_encoder_decoder
                            else Example.causal(input_ids, mask, labels))
        return examples
