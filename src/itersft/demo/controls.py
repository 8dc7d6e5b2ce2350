"""Filters the demos' controls are built from: what the loop would train on without its verifier.

* `RandomPick` replaces the verifier's choice with a seeded random one of as many finished samples,
  so an unfiltered control trains on as many self-generated samples, for as many updates, as the loop.
* `RecordFinished` wraps the loop's own filter: it drops unfinished samples first (the loop never
  trains on them) and keeps every round's finished samples, so a control can later pick from exactly
  the samples the loop chose from.

Both are called once per round, in round order, as `ExpertIteration` calls its filter; neither knows a
resumed run's earlier rounds, so a protocol using them runs its loop whole.
"""

from __future__ import annotations

import random

from itersft.sampling.samples import Sample


class RandomPick:
    """The unfiltered control's "filter": a seeded random pick of finished samples, ignoring their scores.

    Round r keeps `counts[r]` of them (the number the verified loop trained on in round r), so the
    control trains on as many self-generated samples, and makes as many updates, as the loop did.
    """

    def __init__(self, counts: list[int], seed: int):
        self.counts = counts
        self.seed = seed
        self.round = 0

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        finished = [i for i, s in enumerate(samples) if s.finished]
        count = min(self.counts[self.round], len(finished))
        chosen = set(random.Random(self.seed * 1_000 + self.round).sample(finished, count))
        self.round += 1
        return [s for i, s in enumerate(samples) if i in chosen]

    def __repr__(self) -> str:
        return f"RandomPick(counts={self.counts!r}, seed={self.seed!r})"


class RecordFinished:
    """A filter that keeps each round's finished samples in `rounds` and passes them on to `inner`.

    Dropping unfinished samples before `inner` matters for per-prompt caps such as `BestOfK`: a correct
    but cut-off completion would otherwise take a slot and then be dropped by the loop.
    """

    def __init__(self, inner):
        self.inner = inner
        self.rounds: list[list[Sample]] = []

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        finished = [s for s in samples if s.finished]
        self.rounds.append(finished)
        return self.inner(finished)

    def __repr__(self) -> str:
        return f"RecordFinished({self.inner!r})"
