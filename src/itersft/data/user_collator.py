"""Micro-batches built by the user's `data_collator`: what it is handed, and what it must return.

TRL's `IterativeSFTTrainer` handed its collator one dict per sample holding the caller's own 1-D tensors;
`step()` does the same for every micro-batch when the user gives a collator
(`DataCollatorForLanguageModeling`, `DataCollatorForSeq2Seq`, `DataCollatorWithPadding`, a completion-only
collator, or a plain function, also one built on tensor operations: `size`, `torch.stack`, a padding helper):

* each feature dict holds 1-D `torch.long` tensors on the CPU: `input_ids` and `attention_mask`, plus
  `labels` when the samples carry labels of their own (`samples_carry_labels`). Where `step()` was given
  tensors, they are the caller's very tensor objects when those are `torch.long` on the CPU and were not
  truncated; otherwise (another dtype or device, a truncated sample, a mask filled in with ones, labels
  under attention mask 0 set to -100) tensors equal to what `step()` trains on. Plain causal
  `input_ids` and `texts` carry no labels, as a dataset of texts has none: collators that make labels
  (language modelling, completion-only) then make them, and those that pad every key would fail on
  ragged `labels`;
* in `evaluate()` and `predict()` the collator gets the same (`TensorFeatures` converts the dataset's
  rows for transformers' loops);
* the returned batch is checked (`check_batch`) and every problem raised at once, naming the collator
  and what it returned: nothing it returns is silently replaced by the trainer's own batch;
* a causal batch without `labels`, for samples that carried none, learns every attended token: the
  rule of `step()` without labels (so a real EOS that is also the pad token is learned).

Deliberately not required: one row per sample, or an `attention_mask` (a flattening collator returns
one row with `position_ids` and no mask, which is how the model recognises packed samples).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from itersft.data.example import IGNORE_INDEX, Example

# What a feature dict holds, each as a 1-D `torch.long` tensor.
_TOKEN_KEYS = frozenset({"input_ids", "attention_mask", "labels"})


def collator_name(collator: Callable) -> str:
    """How errors name the collator: a function's name, or an instance's class."""
    return getattr(collator, "__qualname__", None) or type(collator).__qualname__


def check_collator(collator: Callable | None, batching: str) -> Callable | None:
    """The `data_collator` given to the trainer, if it can build `step()`'s micro-batches with `batching`."""
    if collator is not None and not callable(collator):
        raise TypeError(f"`data_collator` must be callable (a list of feature dicts -> a dict of tensors), got "
                        f"{type(collator).__name__}.")
    if collator is not None and batching == "packed":
        raise ValueError(f"`batching`='packed' cannot apply to `data_collator`={collator_name(collator)}: the "
                         "collator lays out each micro-batch. Use batching='auto' (the default, which "
                         "never packs a collator's batch) or 'sorted', or drop the collator to let the trainer pack.")
    return collator


def samples_carry_labels(form: str, lists: dict[str, list | None], is_encoder_decoder: bool) -> bool:
    """Whether the samples of one `step()` input have labels of their own, to hand to the collator.

    False only for a causal model given `input_ids` without `labels`, or `texts` without `texts_labels`:
    their labels would just repeat the ids. Seq2seq targets, given labels, prompt/completion pairs and
    chat messages (prompt or user turns masked) always carry labels.
    """
    if is_encoder_decoder:
        return True
    return not ((form == "tokens" and lists.get("labels") is None)
                or (form == "texts" and lists.get("texts_labels") is None))


def features(examples: list[Example], with_labels: bool) -> list[dict[str, torch.Tensor]]:
    """One feature dict per sample, each value the sample's own 1-D `torch.long` tensor (no copy)."""
    rows = []
    for example in examples:
        row = {"input_ids": example.input_ids, "attention_mask": example.attention_mask}
        if with_labels:
            row["labels"] = example.labels
        rows.append(row)
    return rows


class TensorFeatures:
    """The user's collator as transformers' evaluation and prediction loops call it (`evaluate()`,
    `predict()`): a dataset row's `input_ids`, `attention_mask` and `labels` become 1-D `torch.long`
    tensors first, so the collator gets there what it gets in `step()`."""

    def __init__(self, collator: Callable):
        self.collator = collator

    def __call__(self, rows: list[dict]) -> Any:
        return self.collator([{key: torch.as_tensor(value, dtype=torch.long) if key in _TOKEN_KEYS else value
                               for key, value in row.items()} for row in rows])


def collate_with(collator: Callable, examples: list[Example], with_labels: bool,
                 is_encoder_decoder: bool) -> dict[str, torch.Tensor]:
    """Call `collator` on the samples' features and return its checked batch, with `labels`.

    An exception inside the collator keeps its type and gains a note saying which collator failed on
    what; a batch that cannot be trained on raises one `ValueError` (see `check_batch`).
    """
    given = features(examples, with_labels)
    try:
        returned = collator(given)
    except Exception as error:
        hint = (" Samples that carry their own labels need a collator that pads `labels` (e.g. "
                "DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100))." if with_labels else "")
        error.add_note(f"in data_collator {collator_name(collator)}, called on {len(given)} samples with keys "
                       f"{sorted(given[0]) if given else []}, each a 1-D torch.long tensor (TRL's contract; "
                       f"`.tolist()` gives the list of ints a collator for a data loader expects).{hint}")
        raise
    return check_batch(returned, collator, with_labels, is_encoder_decoder)


def check_batch(returned: Any, collator: Callable, with_labels: bool,
                is_encoder_decoder: bool) -> dict[str, torch.Tensor]:
    """`returned` as a dict of tensors with `labels`, or one `ValueError` listing every problem.

    Required: a mapping (a `BatchEncoding` is one) with `input_ids`, a 2-D integer tensor. Causal:
    `attention_mask` and `labels`, when present, of `input_ids`' shape. Seq2seq: 2-D `labels` with as
    many rows as `input_ids`.
    """
    name = f"data_collator {collator_name(collator)}"
    if not isinstance(returned, Mapping):
        raise ValueError(f"{name} returned a {type(returned).__name__}; it must return a dict of tensors with "
                         "`input_ids` (and usually `attention_mask` and `labels`).")
    batch = {key: _as_tensor(value) for key, value in returned.items()}
    shown = ", ".join(f"{key} {_shape(value)}" for key, value in batch.items()) or "nothing"
    problems = []
    ids = batch.get("input_ids")
    ids_ok = _integer_tensor(ids, dims=2)
    if ids is None:
        problems.append("no `input_ids`")
    elif not ids_ok:
        problems.append("`input_ids` that is not a 2-D integer tensor")
    mask = batch.get("attention_mask")
    if mask is not None and not isinstance(mask, torch.Tensor):
        problems.append("an `attention_mask` that is not a tensor")
    elif mask is not None and ids_ok and mask.shape != ids.shape:
        problems.append("an `attention_mask` whose shape differs from `input_ids`'")
    labels = batch.get("labels")
    if labels is None and (with_labels or is_encoder_decoder):
        problems.append("no `labels`, although the samples carried labels" if with_labels else
                        "no `labels` (a seq2seq model needs the targets)")
    elif labels is not None and not _integer_tensor(labels):
        problems.append("`labels` that are not an integer tensor")
    elif labels is not None and ids_ok and not is_encoder_decoder and labels.shape != ids.shape:
        problems.append("`labels` whose shape differs from `input_ids`' (a causal LM needs one label per token)")
    elif labels is not None and ids_ok and is_encoder_decoder and (labels.dim() != 2 or len(labels) != len(ids)):
        problems.append("`labels` that are not 2-D with one row per `input_ids` row")
    if problems:
        raise ValueError(f"{name} returned {'; '.join(problems)}. It returned: {shown}. A collator for `step()` "
                         "must return `input_ids` (batch, seq) and `labels` of the same shape (-100 = no loss).")
    if labels is None:
        # `step()`'s rule for causal samples without labels: every attended token is learned.
        batch["labels"] = ids.masked_fill(mask == 0, IGNORE_INDEX) if mask is not None else ids.clone()
    return batch


def _as_tensor(value: Any) -> Any:
    """Lists and arrays of numbers become tensors, as a data loader's default conversion would; anything
    else (strings, say, for an override's own use) is kept as returned."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        return value


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _integer_tensor(value: Any, dims: int | None = None) -> bool:
    return (isinstance(value, torch.Tensor) and not value.is_floating_point() and not value.is_complex()
            and value.dtype != torch.bool and (dims is None or value.dim() == dims))

