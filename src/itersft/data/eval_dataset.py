"""Tokenise an evaluation dataset given as text, the same way `step()` tokenises its input."""

from __future__ import annotations

from collections.abc import Callable

from datasets import Dataset

from itersft.data.encode import ExampleEncoder
from itersft.data.example import Example


def tokenize_eval_dataset(dataset, encoder: ExampleEncoder, truncate: Callable[[list[Example]], list[Example]]):
    """Return `dataset` with `input_ids`/`attention_mask`/`labels` columns (no `labels` for causal texts).

    Already-tokenised datasets (an `input_ids` column) pass through. Text columns are recognised as in
    `step()`: `prompt` + `completion`, `messages`, or `text` (+ `text_label` as seq2seq targets).
    `truncate` applies the trainer's truncation. A dict of datasets is handled entry by entry.
    """
    if isinstance(dataset, dict):
        return {name: tokenize_eval_dataset(part, encoder, truncate) for name, part in dataset.items()}
    columns = set(getattr(dataset, "column_names", None) or [])
    if not columns or "input_ids" in columns:
        return dataset
    carries_labels = True
    if {"prompt", "completion"} <= columns:
        examples = encoder.from_prompts(list(dataset["prompt"]), list(dataset["completion"]))
    elif "messages" in columns:
        examples = encoder.from_messages(list(dataset["messages"]))
    elif "text" in columns:
        labels = list(dataset["text_label"]) if "text_label" in columns else None
        examples = encoder.from_texts(list(dataset["text"]), labels)
        carries_labels = labels is not None or encoder.is_encoder_decoder
    else:
        raise ValueError(
            f"`eval_dataset` has columns {sorted(columns)}; expected `input_ids`, `text`, "
            "`prompt` + `completion`, or `messages`."
        )
    examples = truncate(examples)
    table = {"input_ids": [e.input_ids.tolist() for e in examples],
             "attention_mask": [e.attention_mask.tolist() for e in examples]}
    # Causal texts carry no labels of their own (every token is learned), as in `step()`: a user's
    # collator that makes labels gets rows without them, as from any dataset of texts.
    if carries_labels:
        table["labels"] = [e.labels.tolist() for e in examples]
    return Dataset.from_dict(table)
