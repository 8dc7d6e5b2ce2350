"""DPO preference pairs from one prompt's scored samples: best against worst, never a tie.

The iterative-DPO recipe (RLHFlow; OpenRLHF's `iter_dpo`) draws k samples per prompt and pairs the
best with the worst by reward. Here, for each prompt group (one prompt's samples in one round, after
`rows.select`), the samples are ranked by score (ties in drawing order) and paired from the outside
in: best with worst, then second best with second worst, up to `pairs_per_prompt` pairs, each sample
in one pair at most. Pairing stops at the first pair whose scores differ by less than `min_margin`,
and a pair whose scores are equal is never made, whatever the margin: a tie says neither completion
is preferred, and a pair of two equally good answers would teach the model to move away from one of
them. A group yields no pair for one of three reasons, counted in the summary: `fewer_than_two`
usable samples (finished unless `include_unfinished`, and scored), `all_tied` (every distinct
completion scored the same, so also a group whose samples are all one completion), `below_margin`
(scores differ, by less than `min_margin`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from itersft.export.rows import Selection, completion_value, prompt_value
from itersft.loop.scored_samples import ScoredSample


@dataclass
class Pairing:
    """The rows made and why the groups without a pair have none."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    groups: int = 0
    groups_with_pairs: int = 0
    without_pair: Counter = field(default_factory=Counter)

    @property
    def mean_margin(self) -> float | None:
        """The mean of chosen_score - rejected_score over the pairs, None without pairs."""
        if not self.rows:
            return None
        return sum(row["chosen_score"] - row["rejected_score"] for row in self.rows) / len(self.rows)


def preference_pairs(selection: Selection, pairs_per_prompt: int = 1, min_margin: float = 0.0) -> Pairing:
    """Preference rows `{prompt, chosen, rejected, chosen_score, rejected_score}` (see the module docstring).

    Every sample must be scored (`rows.select(scored_only=True)`)."""
    pairing = Pairing()
    for key, group in selection.groups.items():
        pairing.groups += 1
        ranked = sorted(group, key=lambda s: (-s.score, s.sample_index))
        made = 0
        for rank in range(min(pairs_per_prompt, len(ranked) // 2)):
            chosen, rejected = ranked[rank], ranked[-1 - rank]
            margin = chosen.score - rejected.score
            if margin <= 0 or margin < min_margin:
                break
            pairing.rows.append({"prompt": prompt_value(chosen), "chosen": completion_value(chosen),
                                 "rejected": completion_value(rejected), "chosen_score": chosen.score,
                                 "rejected_score": rejected.score})
            made += 1
        if made:
            pairing.groups_with_pairs += 1
        else:
            pairing.without_pair[_why_no_pair(ranked, selection.usable[key])] += 1
    return pairing


def _why_no_pair(ranked: list[ScoredSample], usable: int) -> str:
    """`ranked`: the group's distinct completions; `usable`: its samples before duplicates were left out."""
    if usable < 2:
        return "fewer_than_two"
    if ranked[0].score == ranked[-1].score:  # also a group whose samples are all one completion
        return "all_tied"
    return "below_margin"
