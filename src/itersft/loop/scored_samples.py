"""`samples/round-NNNN.jsonl`: every sample a round drew, with its score and whether it was kept.

`accepted/` holds only what a round trained on; this file holds the whole round, so what comes after
a run (preference pairs for DPO, good/bad labels for KTO, an analysis of what the filter dropped)
can be built from it (`itersft.export`). One JSON object per line, keys sorted, one line per drawn
sample, unfinished ones included, in the order the round gathered them:

    round          the round that drew it
    prompt_index   the prompt's position in the loop's prompt list (links back to its metadata)
    sample_index   which of the prompt's k samples
    prompt         the prompt as given: a string, or chat messages
    messages       the conversation the model answered (system prompt included) when the prompt went
                   through the chat template, else null (raw text)
    completion     the completion's text (for chat: the assistant turn's content)
    finished       whether it ended before `max_new_tokens`
    score          the scorer's value, null when it could not score the sample
    rewards        each reward function's value when the score combines several, else null
    kept           whether the round trained on it (then it is also in `accepted/`)

The per-prompt metadata and the token ids are left out: the first is in the prompts the run was given
(`prompt_index`), the second is the completion's text tokenized again.

JSON lines rather than Parquet: `prompt` holds strings in one run and conversations in another, which
one Parquet column type cannot, and the file reads like `accepted/` (`head`, `jq`, `datasets`' json
loader) with no dependency added. The file is written whole and renamed into place, before the round's
checkpoint: see `itersft.loop.run_dir` for what a kill between the two leaves.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from itersft.sampling.samples import Sample


@dataclass(frozen=True)
class ScoredSample:
    """One line of a samples file (the fields are described in the module docstring)."""

    round: int
    prompt_index: int
    sample_index: int
    prompt: str | list[dict[str, Any]]
    messages: list[dict[str, Any]] | None
    completion: str
    finished: bool
    score: float | None
    rewards: dict[str, float | None] | None
    kept: bool

    @property
    def group(self) -> tuple[int, int]:
        """(round, prompt_index): the k samples one round drew for one prompt."""
        return self.round, self.prompt_index


def scored_lines(round_index: int, drawn: Iterable[Sample], kept: Iterable[Sample]) -> str:
    """The samples file's text for a round that drew `drawn` and trained on `kept` (a subset)."""
    trained = {(s.prompt_index, s.sample_index) for s in kept}
    lines = []
    for s in drawn:
        row = ScoredSample(round=round_index, prompt_index=s.prompt_index, sample_index=s.sample_index,
                           prompt=s.prompt, messages=s.messages, completion=s.completion, finished=s.finished,
                           score=s.score, rewards=s.rewards, kept=(s.prompt_index, s.sample_index) in trained)
        lines.append(json.dumps(asdict(row), sort_keys=True) + "\n")
    return "".join(lines)


def read_scored(path: str | Path) -> list[ScoredSample]:
    """Every sample in a samples file; a line that is not one raises a ValueError naming the file and line."""
    path = Path(path)
    names = set(ScoredSample.__dataclass_fields__)
    samples = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or row.keys() != names:
                    found = sorted(row) if isinstance(row, dict) else type(row).__name__
                    raise ValueError(f"expected the keys {sorted(names)}, found {found}")
            except ValueError as exc:
                raise ValueError(f"{path}, line {number}, is not a scored sample ({exc}): the file was changed "
                                 "by hand or by another program; restore it or leave its round out.") from None
            samples.append(ScoredSample(**row))
    return samples
