"""What the demos' controls are built from: what the loop would train on without its verifier.

* `RandomPick` replaces the verifier's choice with a seeded random one of as many samples, so an
  unfiltered control trains on as many self-generated samples, for as many updates, as the loop.
* `RecordRounds` wraps the loop's own filter and keeps what the loop gave it each round (the finished
  samples: the loop never shows a filter a cut-off one), so a control can later pick from exactly the
  samples the loop chose from.
* `control_step_calls` turns a control's picks into the `step()` calls the loop would have made with
  them (`ExpertIteration.step_calls`), so the control trains in the loop's order, call for call.

The filters are called once per round, in round order, as `ExpertIteration` calls its filter; neither
knows a resumed run's earlier rounds, so a protocol using them runs its loop whole.
"""

from __future__ import annotations

import random

from itersft.loop.expert_iteration import step_arguments
from itersft.sampling.samples import Sample


class RandomPick:
    """The unfiltered control's "filter": a seeded random pick of the samples, ignoring their scores.

    Round r keeps `counts[r]` of them (the number the verified loop trained on in round r), so the
    control trains on as many self-generated samples, and makes as many updates, as the loop did.
    """

    def __init__(self, counts: list[int], seed: int):
        self.counts = counts
        self.seed = seed
        self.round = 0

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        count = min(self.counts[self.round], len(samples))
        chosen = set(random.Random(self.seed * 1_000 + self.round).sample(range(len(samples)), count))
        self.round += 1
        return [s for i, s in enumerate(samples) if i in chosen]

    def __repr__(self) -> str:
        return f"RandomPick(counts={self.counts!r}, seed={self.seed!r})"


class RecordRounds:
    """A filter that keeps each round's input in `rounds` and passes it on to `inner`."""

    def __init__(self, inner):
        self.inner = inner
        self.rounds: list[list[Sample]] = []

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        self.rounds.append(list(samples))
        return self.inner(samples)

    def __repr__(self) -> str:
        return f"RecordRounds({self.inner!r})"


def control_step_calls(loop, rounds: list[list[Sample]], pick) -> list[dict[str, list]]:
    """`step()` arguments for a control that trains, round by round, on `pick`'s choice from each of
    `rounds` (e.g. `RecordRounds.rounds`), cut and ordered as `loop` (an `ExpertIteration`) cuts a
    round's training set."""
    return [step_arguments(call) for round_index, samples in enumerate(rounds)
            for call in loop.step_calls(round_index, pick(samples))]
