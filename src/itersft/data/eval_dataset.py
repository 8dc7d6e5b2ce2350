"""Tokenise an evaluation dataset given as text, the same way `step()` tokenises its input."""

from __future__ import annotations

from collections.abc import Callable

from datasets import Dataset

from itersft.data.encode import ExampleEncoder
from itersft.data.example import Example
from itersft.data.user_collator import samples_carry_labels
from itersft.data.validate import InputError, validate_step_input

# The columns of each text form, in order of precedence, a column it may add, and step()'s names for them.
_FORMS = (("prompt", "completion"), ("messages",), ("text",))
_OPTIONAL = {"text": ("text_label",)}
_STEP_NAMES = {"prompt": "prompts", "completion": "completions", "messages": "messages", "text": "texts",
               "text_label": "texts_labels"}


def tokenize_eval_dataset(dataset, encoder: ExampleEncoder, truncate: Callable[[list[Example]], list[Example]]):
    """Return `dataset` with `input_ids`/`attention_mask`/`labels` columns (no `labels` for causal texts).

    Already-tokenised datasets (an `input_ids` column) pass through. Text columns are checked and
    tokenised exactly as `step()`'s arguments of the same meaning: `prompt` + `completion`, `messages`,
    or `text` (+ `text_label` as seq2seq targets).
    `truncate` applies the trainer's truncation. A dict of datasets is handled entry by entry.
    """
    if isinstance(dataset, dict):
        return {name: tokenize_eval_dataset(part, encoder, truncate) for name, part in dataset.items()}
    columns = set(getattr(dataset, "column_names", None) or [])
    if not columns or "input_ids" in columns:
        return dataset
    form = next((names for names in _FORMS if set(names) <= columns), None)
    if form is None:
        raise ValueError(
            f"`eval_dataset` has columns {sorted(columns)}; expected `input_ids`, `text`, "
            "`prompt` + `completion`, or `messages`."
        )
    given = {_STEP_NAMES[column]: list(dataset[column]) for column in form + _OPTIONAL.get(form[0], ())
             if column in columns}
    try:
        form_name, lists = validate_step_input(given, encoder.is_encoder_decoder, vocab_size=0)
    except InputError as error:
        raise InputError(f"`eval_dataset` (columns map to step()'s arguments: {_STEP_NAMES}): {error}") from None
    examples = truncate(encoder.encode_input(form_name, lists))
    carries_labels = samples_carry_labels(form_name, lists, encoder.is_encoder_decoder)
    table = {"input_ids": [e.input_ids.tolist() for e in examples],
             "attention_mask": [e.attention_mask.tolist() for e in examples]}
    # Causal texts carry no labels of their own (every token is learned), as in `step()`: a user's
    # collator that makes labels gets rows without them, as from any dataset of texts.
    if carries_labels:
        table["labels"] = [e.labels.tolist() for e in examples]
    return Dataset.from_dict(table)
