"""ReplayBuffer eviction, seeded draws, checkpoint round-trip; exact counts of labelled-data mixing."""

from __future__ import annotations

import json

import pytest

from itersft.loop.buffer import ReplayBuffer, mix_with_labelled
from itersft.sampling.samples import Sample


def sample(i, kind="gen"):
    return Sample(
        prompt=f"p{i}",
        completion=f"{kind}{i}",
        prompt_index=i,
        sample_index=0,
        score=float(i),
        completion_ids=[i, i + 1],
        meta={"answer": str(i)},
    )


def names(samples):
    return [x.completion for x in samples]


def test_fifo_eviction_keeps_the_newest():
    buf = ReplayBuffer(capacity=3)
    buf.add([sample(0), sample(1)])
    buf.add([sample(2), sample(3)])
    assert names(buf) == ["gen1", "gen2", "gen3"]
    buf.add([sample(4), sample(5), sample(6), sample(7)])  # one add larger than capacity
    assert names(buf) == ["gen5", "gen6", "gen7"] and len(buf) == 3


def test_unbounded_buffer():
    buf = ReplayBuffer(capacity=None)
    buf.add(sample(i) for i in range(50))
    assert len(buf) == 50


def test_add_stores_copies():
    buf = ReplayBuffer(capacity=None)
    x = sample(0)
    buf.add([x])
    x.score = -1.0
    x.meta["answer"] = "changed"
    stored = next(iter(buf))
    assert stored.score == 0.0 and stored.meta["answer"] == "0"


def test_draw_is_seeded_without_replacement():
    def filled(seed):
        buf = ReplayBuffer(capacity=None, seed=seed)
        buf.add(sample(i) for i in range(100))
        return buf

    first = names(filled(0).draw(10, round_index=3))
    assert first == names(filled(0).draw(10, round_index=3))  # rerun: same draw
    assert len(set(first)) == 10
    assert first == sorted(first, key=lambda n: int(n[3:]))  # buffer order
    assert first != names(filled(0).draw(10, round_index=4))
    assert first != names(filled(1).draw(10, round_index=3))
    assert sorted(names(filled(0).draw(1000, round_index=0))) == sorted(f"gen{i}" for i in range(100))
    assert filled(0).draw(0, round_index=0) == []


def test_state_round_trip_through_json():
    buf = ReplayBuffer(capacity=5, seed=7)
    buf.add(sample(i) for i in range(8))
    state = json.loads(json.dumps(buf.state_dict()))
    restored = ReplayBuffer(capacity=5, seed=7)
    restored.load_state_dict(state)
    assert list(restored) == list(buf)
    assert restored.draw(3, round_index=2) == buf.draw(3, round_index=2)
    restored.add([sample(9)])  # eviction continues from the restored order
    assert names(restored) == ["gen4", "gen5", "gen6", "gen7", "gen9"]


def test_state_with_other_settings_is_refused():
    state = ReplayBuffer(capacity=5, seed=7).state_dict()
    with pytest.raises(ValueError, match="`seed`"):
        ReplayBuffer(capacity=5, seed=8).load_state_dict(state)
    with pytest.raises(ValueError, match="`capacity`"):
        ReplayBuffer(capacity=None, seed=7).load_state_dict(state)


@pytest.mark.parametrize("capacity", [0, -1, 2.5, True])
def test_capacity_validation(capacity):
    with pytest.raises(ValueError, match="`capacity`"):
        ReplayBuffer(capacity=capacity)


@pytest.mark.parametrize(
    ("n_generated", "ratio", "n_labelled"),
    [
        (6, 0.25, 2),
        (10, 0.5, 10),
        (9, 0.1, 1),
        (3, 0.75, 9),
        (10, 0.0, 0),
        (0, 0.5, 0),
        (5, 0.2, 1),
        (7, 0.2, 2),
    ],
)
def test_mix_exact_counts(n_generated, ratio, n_labelled):
    generated = [sample(i) for i in range(n_generated)]
    labelled = [sample(i, kind="gold") for i in range(20)]
    mixed = mix_with_labelled(generated, labelled, ratio, seed=0, round_index=0)
    assert mixed[:n_generated] == generated
    gold = mixed[n_generated:]
    assert len(gold) == n_labelled and all(x.completion.startswith("gold") for x in gold)
    assert len(set(names(gold))) == n_labelled  # without replacement while enough exist
    if mixed:  # the nearest whole count: off by at most half a sample
        assert abs(len(gold) - ratio * len(mixed)) <= 0.5


def test_mix_repeats_only_when_labelled_run_out():
    generated = [sample(i) for i in range(9)]
    labelled = [sample(i, kind="gold") for i in range(2)]
    gold = mix_with_labelled(generated, labelled, 0.25, seed=0, round_index=0)[9:]  # 3 needed, 2 exist
    assert sorted(names(gold)) in (["gold0", "gold0", "gold1"], ["gold0", "gold1", "gold1"])


def test_mix_is_deterministic_per_round():
    generated = [sample(i) for i in range(30)]
    labelled = [sample(i, kind="gold") for i in range(100)]

    def draw(seed, round_index):
        return names(mix_with_labelled(generated, labelled, 0.5, seed=seed, round_index=round_index))

    assert draw(0, 1) == draw(0, 1)
    assert draw(0, 1) != draw(0, 2)
    assert draw(0, 1) != draw(1, 1)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "0.5"])
def test_mix_ratio_validation(ratio):
    with pytest.raises(ValueError, match="`labelled_ratio`"):
        mix_with_labelled([sample(0)], [sample(1)], ratio, seed=0, round_index=0)


def test_mix_without_labelled_data_raises_when_some_are_needed():
    with pytest.raises(ValueError, match="`labelled` is empty"):
        mix_with_labelled([sample(0)], [], 0.5, seed=0, round_index=0)
