"""The unit the loop passes between its phases: one sampled completion for one prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One completion drawn for one prompt.

    `prompt_index` is the prompt's position in the round's prompt list (not its text), so duplicate
    prompts stay distinct groups; `sample_index` numbers the k completions of that prompt.
    `score` is filled in by scoring: a float, or None when the scorer could not score the sample.
    `meta` carries per-prompt metadata (e.g. the reference answer) through to the scorer.
    """

    prompt: str
    completion: str
    prompt_index: int
    sample_index: int
    completion_ids: list[int] = field(default_factory=list)
    finished: bool = True
    score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
