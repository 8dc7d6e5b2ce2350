"""The filters the demos' controls are built from: a seeded random pick that ignores scores, and a
recorder that drops unfinished samples before the loop's own filter."""

from __future__ import annotations

from itersft.demo.controls import RandomPick, RecordFinished
from itersft.filters import BestOfK
from itersft.sampling.samples import Sample


def _samples(finished: list[bool], scores: list[float]) -> list[Sample]:
    return [Sample("q", f"c{i}", prompt_index=0, sample_index=i, finished=f, score=s)
            for i, (f, s) in enumerate(zip(finished, scores))]


def test_random_pick_takes_each_rounds_count_of_finished_samples_whatever_their_scores():
    samples = _samples([True, False, True, True, True, False], [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    pick = RandomPick([2, 10, 0], seed=3)
    first, second, third = pick(samples), pick(samples), pick(samples)
    assert len(first) == 2 and all(s.finished for s in first)
    assert [s.completion for s in second] == ["c0", "c2", "c3", "c4"]  # only 4 finished: all of them, in order
    assert third == []
    again = RandomPick([2, 10, 0], seed=3)(samples)
    assert again == first
    assert any(RandomPick([2], seed=s)(samples) != first for s in range(10))  # the seed matters


def test_record_finished_keeps_every_round_and_drops_unfinished_before_the_inner_filter():
    # A correct but cut-off sample comes first: BestOfK(1) alone would take it and leave the prompt with nothing.
    samples = _samples([False, True, True], [1.0, 1.0, 0.0])
    record = RecordFinished(BestOfK(1))
    assert [s.completion for s in record(samples)] == ["c1"]
    assert [s.completion for s in BestOfK(1)(samples)] == ["c0"]
    record(samples[2:])
    assert [[s.completion for s in kept] for kept in record.rounds] == [["c1", "c2"], ["c2"]]
    assert repr(record) == "RecordFinished(BestOfK(n=1, min_score=None))"
