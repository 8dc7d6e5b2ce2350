"""Validation of what the caller hands to `step()`, before any tokenisation or model call.

One input form per call (token tensors, texts, prompt/completion pairs or chat messages). Every problem
found is collected and raised once (`InputError`), naming the argument, the bad value and the fix, so
bad input never surfaces as a traceback from inside torch or as a silently wrong batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from itersft.checks import Problems
from itersft.data.chat import turn_problems
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


def validate_step_input(given: dict[str, Any], is_encoder_decoder: bool, vocab_size: int,
                        allow_empty: bool = False) -> tuple[str, dict[str, list | None]]:
    """Check `given` (step()'s keyword arguments; missing or None where not passed): `(form, per-sample lists)`.

    `vocab_size` bounds token ids; `allow_empty` accepts an empty list (a rank with nothing to train
    on this call still takes part in the others' updates).
    """
    form = detect_form(given)
    problems = Problems("step() input", error=InputError)
    main = FORMS[form][0]
    if given.get(main) is None:
        others = ", ".join(f"`{name}`" for name in FORMS[form][1:] if given.get(name) is not None)
        needs = "`prompts` and `completions` go together: give both, one completion per prompt" if form == "prompts" \
            else f"{others} describe `{main}`, which was not given: pass `{main}` too"
        raise InputError(f"Invalid step() input:\n- {needs}.")
    lists = {name: as_list(name, given.get(name), problems, allow_empty=allow_empty) for name in FORMS[form]}
    check_lengths(lists, problems)
    if form == "tokens" and lists["input_ids"] is not None:
        check_token_tensors("input_ids", lists["input_ids"], vocab_size, problems)
        if lists["attention_mask"] is not None:
            check_token_tensors("attention_mask", lists["attention_mask"], 2, problems)  # 0 or 1 only
            check_same_shapes("attention_mask", lists["attention_mask"], "input_ids", lists["input_ids"], problems)
        if lists["labels"] is not None:
            check_token_tensors("labels", lists["labels"], vocab_size, problems, allow_ignore_index=True)
            if not is_encoder_decoder:
                check_same_shapes("labels", lists["labels"], "input_ids", lists["input_ids"], problems)
    elif form in ("texts", "prompts"):
        for name, values in lists.items():
            if values is not None:
                check_strings(name, values, problems)
        if form == "prompts" and lists["completions"] is None:
            problems.add("`prompts` and `completions` go together: give both, one completion per prompt.")
    elif form == "messages" and lists["messages"] is not None:
        check_conversations(lists["messages"], problems)
    problems.raise_if_any()
    return form, lists


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


def as_list(name: str, value: Any, problems: Problems, allow_empty: bool = False) -> list | None:
    """Accept any sequence (list, tuple, `datasets` column) of samples; reject a bare tensor or str.

    An empty list is an error unless `allow_empty` (a rank of a multi-process run may hold no sample).
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, (Sequence, _column_type())):
        problems.add(
            f"`{name}` must be a list with one entry per sample, got {type(value).__name__}. "
            "Wrap single samples in a list (a 2-D tensor: use `list(tensor)`)."
        )
        return None
    values = list(value)
    if not values and not allow_empty:
        problems.add(f"`{name}` is empty: pass at least one sample.")
    return values


def check_lengths(lists: dict[str, list | None], problems: Problems) -> None:
    """All given per-sample lists must have the same number of entries."""
    sizes = {name: len(values) for name, values in lists.items() if values is not None}
    if len(set(sizes.values())) > 1:
        problems.add(
            "per-sample lists differ in length: " + ", ".join(f"`{n}` has {k}" for n, k in sizes.items())
            + ". Give one entry per sample in each."
        )


def check_token_tensors(name: str, values: list, vocab_size: int | None, problems: Problems,
                        allow_ignore_index: bool = False) -> None:
    """Each entry must be a 1-D integer tensor whose ids lie in `[0, vocab_size)` (or -100 for labels)."""
    for index, value in enumerate(values):
        where = f"`{name}[{index}]`"
        if not isinstance(value, torch.Tensor):
            problems.add(f"{where} must be a 1-D torch.LongTensor, got {type(value).__name__}. "
                         "Convert with `torch.tensor(ids)`.")
        elif value.dim() != 1:
            problems.add(f"{where} must be 1-D (one sample), got shape {tuple(value.shape)}. "
                         "Split a batch into a list of rows.")
        elif value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            problems.add(f"{where} must hold integer ids, got dtype {value.dtype}. Use `.long()`.")
        elif value.numel() == 0:
            problems.add(f"{where} is empty: every sample needs at least one token.")
        elif vocab_size is not None:
            value = value.long()  # a narrow dtype (uint8, int8) would overflow the comparisons below
            allowed = (value >= 0) & (value < vocab_size)
            if allow_ignore_index:
                allowed |= value == IGNORE_INDEX
            if not bool(allowed.all()):
                bad = value[~allowed][0].item()
                if name == "attention_mask":
                    problems.add(f"{where} holds {bad}: an attention mask is 1 (attend) or 0 (padding).")
                else:
                    extra = " or -100" if allow_ignore_index else ""
                    problems.add(f"{where} holds id {bad}, outside the model's vocabulary [0, {vocab_size}){extra}.")


def check_strings(name: str, values: list, problems: Problems) -> None:
    """Each entry must be a str of valid Unicode (a lone surrogate, e.g. from bytes decoded with
    `errors="surrogateescape"`, cannot be tokenised)."""
    for index, value in enumerate(values):
        if not isinstance(value, str):
            problems.add(f"`{name}[{index}]` must be a str, got {type(value).__name__}.")
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            problems.add(f"`{name}[{index}]` is not valid Unicode: {error.reason} at character {error.start} "
                         f"({value[error.start]!r}). Decode the source bytes with errors='replace' or remove it.")


def check_conversations(values: list, problems: Problems) -> None:
    """Each entry must be a chat conversation (`data.chat.turn_problems`) with an assistant turn to learn."""
    for index, conversation in enumerate(values):
        turns = turn_problems(conversation)
        if turns:
            problems.add(f"`messages[{index}]` must be a list of {{'role', 'content'}} dicts: "
                         + "; ".join(turns) + ".")
        elif not any(turn["role"] == "assistant" for turn in conversation):
            problems.add(f"`messages[{index}]` has no assistant turn: nothing would be learned.")
        else:
            check_strings(f"messages[{index}] content", [turn["content"] for turn in conversation], problems)


def check_same_shapes(name: str, values: list, reference_name: str, reference: list, problems: Problems) -> None:
    """`values[i]` must have as many tokens as `reference[i]` (labels and masks align with ids)."""
    for index, (value, ref) in enumerate(zip(values, reference)):
        if isinstance(value, torch.Tensor) and isinstance(ref, torch.Tensor) and value.shape != ref.shape:
            problems.add(
                f"`{name}[{index}]` has {value.numel()} entries but `{reference_name}[{index}]` has "
                f"{ref.numel()}: they must align token for token."
            )


def _column_type() -> type:
    """`datasets` columns are sequences without registering as `collections.abc.Sequence`."""
    try:
        from datasets.arrow_dataset import Column
    except ImportError:  # older datasets: columns are plain lists
        return list
    return Column
