"""Validation of what the caller hands to `step()`, before any tokenisation or model call.

Every problem found is collected and raised once, naming the argument, the bad value and the fix, so
bad input never surfaces as a traceback from inside torch or as a silently wrong batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from itersft.data.example import IGNORE_INDEX

FORMS = {
    "tokens": ("input_ids", "attention_mask", "labels"),
    "texts": ("texts", "texts_labels"),
    "prompts": ("prompts", "completions"),
    "messages": ("messages",),
}


class InputError(ValueError, TypeError):
    """Raised for bad `step()` input; the message lists every problem found.

    It is both a `ValueError` and a `TypeError`, so callers catching either (wrong values, wrong
    types) catch it.
    """


def detect_form(given: dict[str, Any]) -> str:
    """Which input form the caller used: exactly one of `FORMS` may be given."""
    used = sorted({form for form, names in FORMS.items() for name in names if given.get(name) is not None})
    if not used:
        raise InputError(
            "step() got no samples: pass `input_ids` (list of 1-D tensors), `texts` (list of str), "
            "`prompts` + `completions`, or `messages`."
        )
    if len(used) > 1:
        names = sorted(name for form in used for name in FORMS[form] if given.get(name) is not None)
        raise InputError(
            f"step() got {', '.join(f'`{n}`' for n in names)}: these belong to different input forms "
            f"({', '.join(used)}). Pass one form per call."
        )
    return used[0]


def as_list(name: str, value: Any, problems: list[str], allow_empty: bool = False) -> list | None:
    """Accept any sequence (list, tuple, `datasets` column) of samples; reject a bare tensor or str.

    An empty list is an error unless `allow_empty` (a rank of a multi-process run may hold no sample).
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, (Sequence, _Column())):
        problems.append(
            f"`{name}` must be a list with one entry per sample, got {type(value).__name__}. "
            "Wrap single samples in a list (a 2-D tensor: use `list(tensor)`)."
        )
        return None
    values = list(value)
    if not values and not allow_empty:
        problems.append(f"`{name}` is empty: pass at least one sample.")
    return values


def check_lengths(lists: dict[str, list | None], problems: list[str]) -> None:
    """All given per-sample lists must have the same number of entries."""
    sizes = {name: len(values) for name, values in lists.items() if values is not None}
    if len(set(sizes.values())) > 1:
        problems.append(
            "per-sample lists differ in length: " + ", ".join(f"`{n}` has {k}" for n, k in sizes.items())
            + ". Give one entry per sample in each."
        )


def check_token_tensors(name: str, values: list, vocab_size: int | None, problems: list[str],
                        allow_ignore_index: bool = False) -> None:
    """Each entry must be a 1-D integer tensor whose ids lie in `[0, vocab_size)` (or -100 for labels)."""
    for index, value in enumerate(values):
        where = f"`{name}[{index}]`"
        if not isinstance(value, torch.Tensor):
            problems.append(f"{where} must be a 1-D torch.LongTensor, got {type(value).__name__}. "
                            "Convert with `torch.tensor(ids)`.")
        elif value.dim() != 1:
            problems.append(f"{where} must be 1-D (one sample), got shape {tuple(value.shape)}. "
                            "Split a batch into a list of rows.")
        elif value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            problems.append(f"{where} must hold integer ids, got dtype {value.dtype}. Use `.long()`.")
        elif value.numel() == 0:
            problems.append(f"{where} is empty: every sample needs at least one token.")
        elif vocab_size is not None:
            allowed = (value >= 0) & (value < vocab_size)
            if allow_ignore_index:
                allowed |= value == IGNORE_INDEX
            if not bool(allowed.all()):
                bad = value[~allowed][0].item()
                extra = " or -100" if allow_ignore_index else ""
                problems.append(f"{where} holds id {bad}, outside the model's vocabulary [0, {vocab_size}){extra}.")


def check_strings(name: str, values: list, problems: list[str]) -> None:
    """Each entry must be a str."""
    for index, value in enumerate(values):
        if not isinstance(value, str):
            problems.append(f"`{name}[{index}]` must be a str, got {type(value).__name__}.")


def check_same_shapes(name: str, values: list, reference_name: str, reference: list, problems: list[str]) -> None:
    """`values[i]` must have as many tokens as `reference[i]` (labels and masks align with ids)."""
    for index, (value, ref) in enumerate(zip(values, reference)):
        if isinstance(value, torch.Tensor) and isinstance(ref, torch.Tensor) and value.shape != ref.shape:
            problems.append(
                f"`{name}[{index}]` has {value.numel()} entries but `{reference_name}[{index}]` has "
                f"{ref.numel()}: they must align token for token."
            )


def raise_if(problems: list[str]) -> None:
    """Raise one `InputError` listing every problem, or return."""
    if problems:
        raise InputError("Invalid step() input:\n- " + "\n- ".join(problems))


def _Column():  # noqa: N802 - returns a type for isinstance
    """`datasets` columns are sequences without registering as `collections.abc.Sequence`."""
    try:
        from datasets.arrow_dataset import Column
    except ImportError:  # older datasets: columns are plain lists
        return list
    return Column
