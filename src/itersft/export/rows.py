"""Scored samples to rows of TRL's dataset formats: which samples take part, and how each is written.

**Standard or conversational.** A sample drawn through the chat template (`messages` set) becomes a
conversational row: the prompt is the conversation the model answered (system prompt included) and
each completion is `[{"role": "assistant", "content": text}]`, so TRL's trainers render both with the
tokenizer's template, as the loop did. A sample drawn as raw text (a string prompt with
`chat_template=False`, or `"auto"` on a model that does not look chat-tuned) becomes a standard row of
strings: TRL then tokenizes the prompt and appends EOS to the completion, as the loop trained it. A
conversation prompt is always drawn through the template, so only a string prompt can be either.
TRL reads the kind of a whole dataset from its first row, so an export whose samples are of both
kinds is refused.

**Which samples.** Rows are made per *prompt group*: the samples one round drew for one prompt. Left
out, each counted under the first reason that applies: `not_kept` (SFT exports what the loop kept and
trained on), `unfinished` (cut off at `max_new_tokens`; DPO and KTO take them with
`include_unfinished`), `unscored` (no score to rank or label by; DPO and KTO only), `duplicate` (a
completion whose text an earlier sample of its group already has: it is exported once, with the
first one's score, so a DPO pair never has chosen == rejected and no row is weighed twice by chance).
The same completion drawn in two rounds is two groups' and is kept in both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from itersft.export.run_samples import ExportError
from itersft.loop.scored_samples import ScoredSample

Group = tuple[int, int]
"""(round, prompt_index)."""


@dataclass
class Selection:
    """The samples taking part, by prompt group in round, prompt and sample order, without duplicates (every
    group read is a key, with an empty list when none of its samples takes part)."""

    groups: dict[Group, list[ScoredSample]] = field(default_factory=dict)
    usable: Counter = field(default_factory=Counter)
    """Per group, the samples that took part before duplicates were left out."""
    left_out: Counter = field(default_factory=Counter)
    """Samples left out, by reason (see the module docstring)."""


def select(samples: list[ScoredSample], kept_only: bool, scored_only: bool, include_unfinished: bool) -> Selection:
    """The samples taking part, and how many were left out for each reason (see the module docstring)."""
    selection = Selection()
    texts: dict[Group, set[str]] = {}
    for sample in sorted(samples, key=lambda s: (s.round, s.prompt_index, s.sample_index)):
        seen = texts.setdefault(sample.group, set())
        group = selection.groups.setdefault(sample.group, [])  # every group, if only to say why it gave nothing
        if kept_only and not sample.kept:
            selection.left_out["not_kept"] += 1
            continue
        if not sample.finished and not include_unfinished:
            selection.left_out["unfinished"] += 1
            continue
        if scored_only and sample.score is None:
            selection.left_out["unscored"] += 1
            continue
        selection.usable[sample.group] += 1
        if sample.completion in seen:
            selection.left_out["duplicate"] += 1
            continue
        seen.add(sample.completion)
        group.append(sample)
    return selection


def is_conversational(groups: dict[Group, list[ScoredSample]]) -> bool | None:
    """Whether the samples taking part were drawn through the chat template (None: there are none); an
    `ExportError` when some were and some were not."""
    kinds = Counter(s.messages is not None for group in groups.values() for s in group)
    if len(kinds) == 2:
        raise ExportError(f"the samples to export are of two kinds: {kinds[True]} drawn through the chat template "
                          f"(conversations) and {kinds[False]} as raw text. TRL's trainers read one kind per dataset "
                          "(from its first row); export rounds of one kind (`rounds`), or run prompts of one kind.")
    return next(iter(kinds)) if kinds else None


def prompt_value(sample: ScoredSample) -> str | list[dict[str, Any]]:
    """The row's prompt: the conversation the model answered, or the raw prompt text."""
    return sample.messages if sample.messages is not None else sample.prompt


def completion_value(sample: ScoredSample) -> str | list[dict[str, str]]:
    """The row's completion: the assistant turn, or the raw completion text."""
    if sample.messages is not None:
        return [{"role": "assistant", "content": sample.completion}]
    return sample.completion


def sft_rows(groups: dict[Group, list[ScoredSample]]) -> list[dict[str, Any]]:
    """Prompt-completion rows `{prompt, completion}`, one per sample."""
    return [{"prompt": prompt_value(s), "completion": completion_value(s)} for group in groups.values() for s in group]


def kto_rows(groups: dict[Group, list[ScoredSample]], threshold: float) -> list[dict[str, Any]]:
    """Unpaired preference rows `{prompt, completion, label}`: desirable when the score is at least `threshold`."""
    return [{"prompt": prompt_value(s), "completion": completion_value(s), "label": s.score >= threshold}
            for group in groups.values() for s in group]
