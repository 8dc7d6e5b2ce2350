"""Keeping training data across rounds: a replay buffer of accepted samples, and labelled-data mixing.

`ReplayBuffer` holds the samples accepted in earlier rounds, so a round can train on a seeded draw of
them as well as on its own (in the spirit of RFT, Yuan et al. 2023, which gains by pooling more
distinct correct samples). It evicts the oldest first when full, and its state is JSON so it goes
into a checkpoint and a resumed run draws the same samples.

`mix_with_labelled` adds original labelled examples to the generated ones in a fixed ratio: users ask
to keep the original data and filter only the generated data, and ReST-EM (Singh et al. 2023) reports
overfitting after a few iterations on some tasks; gold data in every round is one way to anchor the model.

Every random draw is seeded from (seed, round_index) alone, so a rerun or a resume gets the same data.
Not here: prioritised replay, per-prompt quotas.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import random
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from itersft.checks import Problems
from itersft.sampling.samples import Sample


def _rng(purpose: str, seed: int, round_index: int) -> random.Random:
    """A generator determined by (purpose, seed, round_index), stable across processes and versions."""
    digest = hashlib.sha256(f"{purpose}:{seed}:{round_index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _check_int(name: str, value: object, minimum: int | None = None) -> None:
    problems = Problems("replay buffer argument")
    problems.integer(name, value, minimum=minimum)
    problems.raise_if_any()


def check_labelled_ratio(value: object, problems: Problems) -> None:
    """The share of labelled data in a round's training set must be in [0, 1)."""
    problems.number("labelled_ratio", value, minimum=0, maximum=1, exclusive_maximum=True)


class ReplayBuffer:
    """Accepted samples kept across rounds, oldest evicted first once `capacity` is exceeded.

    `capacity=None` keeps everything. `add` stores copies, and `draw` returns copies, so later changes
    to a sample (e.g. re-scoring) do not alter what the buffer holds. Iterating yields the stored
    samples oldest first.
    """

    def __init__(self, capacity: int | None, seed: int = 0) -> None:
        if capacity is not None:
            _check_int("capacity", capacity, minimum=1)
        _check_int("seed", seed)
        self.capacity = capacity
        self.seed = seed
        self._samples: deque[Sample] = deque()

    def add(self, samples: Iterable[Sample]) -> None:
        """Append copies of `samples`, then evict the oldest until within capacity."""
        new = list(samples)
        bad = [type(s).__name__ for s in new if not isinstance(s, Sample)]
        if bad:
            raise TypeError(f"`samples` must hold Sample objects; got {sorted(set(bad))}")
        self._samples.extend(copy.deepcopy(s) for s in new)
        while self.capacity is not None and len(self._samples) > self.capacity:
            self._samples.popleft()

    def __len__(self) -> int:
        """Number of samples held."""
        return len(self._samples)

    def __iter__(self) -> Iterator[Sample]:
        """The stored samples, oldest first (not copies: do not modify them)."""
        return iter(self._samples)

    def draw(self, n: int, round_index: int) -> list[Sample]:
        """Copies of `min(n, len(self))` samples drawn without replacement, in buffer order.

        The draw depends only on (`seed`, `round_index`) and the buffer's contents, so a rerun or a
        resumed run gets the same samples.
        """
        _check_int("n", n, minimum=0)
        _check_int("round_index", round_index)
        count = min(n, len(self._samples))
        positions = sorted(_rng("replay", self.seed, round_index).sample(range(len(self._samples)), count))
        return [copy.deepcopy(self._samples[i]) for i in positions]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (if the samples' `meta` is): capacity, seed and the samples."""
        return {
            "capacity": self.capacity,
            "seed": self.seed,
            "samples": [dataclasses.asdict(s) for s in self._samples],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the contents with those saved by `state_dict`.

        The saved `capacity` and `seed` must match this buffer's: a resumed run with other settings
        would not draw what the original run drew.
        """
        problems = [
            f"`{key}` is {state.get(key)!r} in the state but {getattr(self, key)!r} in this buffer"
            for key in ("capacity", "seed")
            if state.get(key) != getattr(self, key)
        ]
        if problems:
            raise ValueError(
                "cannot load replay buffer state: " + "; ".join(problems) + ". Build the buffer with the "
                "saved settings to resume."
            )
        samples = [Sample(**copy.deepcopy(d)) for d in state["samples"]]
        if self.capacity is not None and len(samples) > self.capacity:
            raise ValueError(f"state holds {len(samples)} samples, more than `capacity`={self.capacity}")
        self._samples = deque(samples)

    def __repr__(self) -> str:
        return f"ReplayBuffer(capacity={self.capacity!r}, seed={self.seed!r}, len={len(self)})"


def mix_with_labelled(
    generated: list[Sample],
    labelled: list[Sample],
    labelled_ratio: float,
    seed: int,
    round_index: int,
) -> list[Sample]:
    """`generated` followed by labelled examples making up `labelled_ratio` of the result.

    The number of labelled examples is `round(ratio * len(generated) / (1 - ratio))` (halves round
    up), so 6 generated at ratio 0.25 get 2 labelled (2 of 8). No generated samples means no labelled
    ones either. Labelled examples are drawn without replacement; if more are needed than exist, every
    one is repeated as many whole times as fit and the rest drawn without replacement. The draw
    depends only on (`seed`, `round_index`). The returned list holds the given objects, not copies.
    """
    problems = Problems("mix_with_labelled arguments")
    check_labelled_ratio(labelled_ratio, problems)
    problems.integer("seed", seed)
    problems.integer("round_index", round_index)
    problems.raise_if_any()
    count = math.floor(labelled_ratio * len(generated) / (1 - labelled_ratio) + 0.5)
    if count == 0:
        return list(generated)
    if not labelled:
        raise ValueError(
            f"`labelled` is empty but `labelled_ratio`={labelled_ratio!r} asks for {count} labelled examples"
        )
    repeats, remainder = divmod(count, len(labelled))
    rng = _rng("labelled", seed, round_index)
    drawn = list(labelled) * repeats + rng.sample(list(labelled), remainder)
    return list(generated) + drawn
