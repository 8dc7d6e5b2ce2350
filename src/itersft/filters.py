"""Filters: choose which scored samples become training data this round.

A filter is a callable `list[Sample] -> list[Sample]`. It returns a new list holding a subset of the
same `Sample` objects in their original order and never changes the input list or the samples.
Samples with `score is None` (unscorable) never pass a score-based filter. Groups are always formed by
`prompt_index`, never by prompt text, so two copies of one prompt in a round are separate prompts.

Each filter is one selection rule from the literature:
- `Threshold`: ReST's Improve step (Gulcehre et al. 2023; ReST-EM, Singh et al. 2023) and STaR's
  "keep correct rationales" (Zelikman et al. 2022). `min_score` may be raised between rounds.
- `BestOfK`: best-of-K per prompt, RAFT (Dong et al. 2023) and Llama 2's rejection sampling.
- `TopPercent`: RAFT's global ranking across all prompts.
- `AboveGroupMean`: the samples above their prompt's mean, those with a positive advantage in GRPO
  (Shao et al. 2024); needs no threshold, so it suits rewards on any scale.
- `Dedup`: RFT's distinct reasoning paths (Yuan et al. 2023).
- `DropUniformPrompts`: drop prompts whose samples all pass or all fail, as in DAPO's dynamic
  sampling (Yu et al. 2025); not one of the SFT papers' recipes, but a cheap way to spend training
  on prompts at the edge of the model's ability.
`Compose` chains them, e.g. `Compose(Dedup(), Threshold(1.0), BestOfK(4))`. Every filter has a
`repr` that reads like the code that built it, for the logs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable

from itersft.checks import Problems, is_integer
from itersft.sampling.samples import Sample

Filter = Callable[[list[Sample]], list[Sample]]
"""The filter protocol: `list[Sample] -> list[Sample]`."""


def _check_real(name: str, value: object, *, optional: bool = False) -> None:
    """Raise ValueError naming `name` unless `value` is a finite real number (or None if optional)."""
    problems = Problems("filter argument")
    problems.number(name, value, optional=optional)
    problems.raise_if_any()


def _keep(samples: list[Sample], chosen: Iterable[int]) -> list[Sample]:
    """The samples at positions `chosen`, in their original order."""
    chosen = set(chosen)
    return [s for i, s in enumerate(samples) if i in chosen]


def _by_prompt(samples: list[Sample]) -> dict[int, list[int]]:
    """Positions of the samples of each prompt_index."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        groups[sample.prompt_index].append(i)
    return groups


class Threshold:
    """Keep samples with `score >= min_score`.

    `min_score` is a plain attribute (validated on every assignment) so a loop can raise it between
    rounds, as ReST's Improve steps do.
    """

    def __init__(self, min_score: float) -> None:
        self.min_score = min_score

    @property
    def min_score(self) -> float:
        """The lowest score that passes."""
        return self._min_score

    @min_score.setter
    def min_score(self, value: float) -> None:
        _check_real("min_score", value)
        self._min_score = value

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        """The samples scoring at least `min_score`."""
        return [s for s in samples if s.score is not None and s.score >= self._min_score]

    def __repr__(self) -> str:
        return f"Threshold(min_score={self._min_score!r})"


class BestOfK:
    """Keep the `n` highest-scoring samples of each prompt (best-of-K).

    Ties go to the lower `sample_index` (then the earlier position), so the choice is deterministic.
    With `min_score`, only samples scoring at least that compete, so a prompt may keep fewer than `n`
    or none (Llama 2 keeps the best even if poor; STaR-like use sets `min_score`).
    """

    def __init__(self, n: int = 1, min_score: float | None = None) -> None:
        if not is_integer(n) or n < 1:
            raise ValueError(f"`n` must be an integer >= 1 (samples kept per prompt); got {n!r}")
        _check_real("min_score", min_score, optional=True)
        self.n = n
        self.min_score = min_score

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        """The best `n` eligible samples of every prompt_index, in input order."""
        chosen: list[int] = []
        for positions in _by_prompt(samples).values():
            eligible = [
                i
                for i in positions
                if samples[i].score is not None and (self.min_score is None or samples[i].score >= self.min_score)
            ]
            eligible.sort(key=lambda i: (-samples[i].score, samples[i].sample_index, i))
            chosen.extend(eligible[: self.n])
        return _keep(samples, chosen)

    def __repr__(self) -> str:
        return f"BestOfK(n={self.n!r}, min_score={self.min_score!r})"


class TopPercent:
    """Keep the top `percent` % of scored samples across all prompts (RAFT's global ranking).

    The number kept is `ceil(percent / 100 * scored)`, at least one when any sample is scored. Ties at
    the cut go to the earlier sample in the input.
    """

    def __init__(self, percent: float) -> None:
        _check_real("percent", percent)
        if not 0 < percent <= 100:
            raise ValueError(f"`percent` must be in (0, 100] (a percentage, not a fraction); got {percent!r}")
        self.percent = percent

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        """The top-scoring `percent` % of the scored samples, in input order."""
        scored = [i for i, s in enumerate(samples) if s.score is not None]
        if not scored:
            return []
        # round() first so float noise (e.g. 1000 * 16.1 / 100 = 161.00000000000003) does not add one
        count = max(1, math.ceil(round(len(scored) * self.percent / 100, 9)))
        scored.sort(key=lambda i: (-samples[i].score, i))
        return _keep(samples, scored[:count])

    def __repr__(self) -> str:
        return f"TopPercent(percent={self.percent!r})"


class AboveGroupMean:
    """Keep each sample that scores above the mean score of its prompt's scored samples.

    These are the samples GRPO pushes up (a positive advantage: reward minus its group's mean), so the
    rule fits rewards on any scale, such as a weighted sum of reward functions or a reward model's
    logit, where a fixed threshold would need tuning. A prompt whose samples all score the same keeps
    none (nothing to tell apart, as GRPO gives them no advantage); nor does a prompt with one scored
    sample. Unscored samples are left out of the mean and never kept.
    """

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        """The scored samples above their prompt's mean, in input order."""
        chosen: list[int] = []
        for positions in _by_prompt(samples).values():
            scored = [i for i in positions if samples[i].score is not None]
            if len({samples[i].score for i in scored}) > 1:  # a uniform group: its float mean could round below
                mean = math.fsum(samples[i].score for i in scored) / len(scored)
                chosen.extend(i for i in scored if samples[i].score > mean)
        return _keep(samples, chosen)

    def __repr__(self) -> str:
        return "AboveGroupMean()"


class DropUniformPrompts:
    """Drop every sample of a prompt whose scored samples all pass, or all fail, `pass_score`.

    A prompt the model always solves teaches nothing new, and one it never solves yields no correct
    sample; only prompts with both outcomes carry a learning signal (DAPO's dynamic sampling). Meant
    for pass/fail verifiers; a sample passes when `score >= pass_score`. Of the prompts kept, the scored
    samples are returned (passing and failing), so chain a `Threshold` to keep only the passing ones.
    A prompt with no scored sample is dropped; unscored samples are always dropped.
    """

    def __init__(self, pass_score: float = 1.0) -> None:
        _check_real("pass_score", pass_score)
        self.pass_score = pass_score

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        """The scored samples of prompts that have both a passing and a failing sample."""
        chosen: list[int] = []
        for positions in _by_prompt(samples).values():
            scored = [i for i in positions if samples[i].score is not None]
            passed = sum(samples[i].score >= self.pass_score for i in scored)
            if 0 < passed < len(scored):
                chosen.extend(scored)
        return _keep(samples, chosen)

    def __repr__(self) -> str:
        return f"DropUniformPrompts(pass_score={self.pass_score!r})"


class Dedup:
    """Keep the first of identical completions of each prompt (RFT's distinct reasoning paths).

    With `normalize`, completions are compared after stripping and collapsing runs of whitespace, so
    "a  b\\n" and "a b" count as one. Not score-based: unscored samples pass.
    """

    def __init__(self, normalize: bool = True) -> None:
        if not isinstance(normalize, bool):
            raise ValueError(f"`normalize` must be True or False; got {normalize!r}")
        self.normalize = normalize

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        """The samples whose completion was not seen earlier for the same prompt_index."""
        seen: set[tuple[int, str]] = set()
        kept: list[Sample] = []
        for sample in samples:
            text = " ".join(sample.completion.split()) if self.normalize else sample.completion
            key = (sample.prompt_index, text)
            if key not in seen:
                seen.add(key)
                kept.append(sample)
        return kept

    def __repr__(self) -> str:
        return f"Dedup(normalize={self.normalize!r})"


class Compose:
    """Apply `filters` in the order given, each to the previous one's output."""

    def __init__(self, *filters: Filter) -> None:
        if not filters:
            raise ValueError("`filters` is empty: pass at least one filter to Compose")
        problems = [f"position {i}: {f!r}" for i, f in enumerate(filters) if not callable(f)]
        if problems:
            raise ValueError(f"`filters` must be callables `list[Sample] -> list[Sample]`; got {problems}")
        self.filters = filters

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        """The samples that pass every filter in turn."""
        result = list(samples)
        for f in self.filters:
            result = f(result)
            if not isinstance(result, list):
                raise TypeError(f"filter {f!r} returned {type(result).__name__}; filters must return a list")
        return result

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(f) for f in self.filters)})"
