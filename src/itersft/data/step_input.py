"""`step()`'s raw input, checked and turned into `Example`s.

One input form per call (token tensors, texts, prompt/completion pairs or chat messages); every problem
in it is collected and raised once (`itersft.data.inputs`) before anything is tokenised.
"""

from __future__ import annotations

from typing import Any

from itersft.data import inputs as checks
from itersft.data.encode import SampleEncoder, from_token_ids
from itersft.data.example import Example


def step_examples(given: dict[str, Any], encoder: SampleEncoder, vocab_size: int,
                  allow_empty: bool = False) -> list[Example]:
    """Validate `given` (step()'s keyword arguments, None where not passed) and encode it.

    `vocab_size` bounds token ids; `allow_empty` accepts an empty list (a rank with nothing to train
    on this call still takes part in the others' updates).
    """
    form = checks.detect_form(given)
    problems: list[str] = []
    lists = {name: checks.as_list(name, given[name], problems, allow_empty=allow_empty)
             for name in checks.FORMS[form]}
    checks.check_lengths(lists, problems)
    if form == "tokens" and lists["input_ids"] is not None:
        checks.check_token_tensors("input_ids", lists["input_ids"], vocab_size, problems)
        for name, allow in (("attention_mask", False), ("labels", True)):
            if lists[name] is not None:
                checks.check_token_tensors(name, lists[name], None if name == "attention_mask" else vocab_size,
                                           problems, allow_ignore_index=allow)
                if not encoder.is_encoder_decoder or name == "attention_mask":
                    checks.check_same_shapes(name, lists[name], "input_ids", lists["input_ids"], problems)
    elif form in ("texts", "prompts"):
        for name, values in lists.items():
            if values is not None:
                checks.check_strings(name, values, problems)
        if form == "prompts" and (lists["prompts"] is None) != (lists["completions"] is None):
            problems.append("`prompts` and `completions` go together: give both, one completion per prompt.")
    checks.raise_if(problems)
    if form == "tokens":
        return from_token_ids(lists["input_ids"], lists["attention_mask"], lists["labels"], encoder.is_encoder_decoder)
    if form == "texts":
        return encoder.from_texts(lists["texts"], lists["texts_labels"])
    if form == "prompts":
        return encoder.from_prompts(lists["prompts"], lists["completions"])
    return encoder.from_messages(lists["messages"])
