"""Metrics against hand-computed values: distinct-n, pass@k, score summaries, per-round metrics."""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations
from math import comb

import pytest

from itersft.filters import Threshold
from itersft.loop.metrics import distinct_n, pass_at_k, round_sample_metrics, score_summary
from itersft.sampling.samples import Sample


def test_distinct_n_words_by_hand():
    texts = ["the cat sat", "the cat ran"]
    # unigrams: the cat sat the cat ran -> 4 distinct / 6
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 distinct / 4; none span the two texts
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["a b", "c"], 2) == 1.0  # the only bigram is (a b): no (b c) across texts


def test_distinct_n_chars_and_empty():
    assert distinct_n(["aab"], 1, unit="char") == pytest.approx(2 / 3)
    assert distinct_n(["aab"], 2, unit="char") == 1.0  # aa, ab
    assert distinct_n(["aab"], 1) == 1.0  # one word
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["one"], 2) == 0.0


@pytest.mark.parametrize(("n", "unit"), [(0, "word"), (1.0, "word"), (1, "token")])
def test_distinct_n_validation(n, unit):
    with pytest.raises(ValueError):
        distinct_n(["a b"], n, unit=unit)


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - comb(3, 2) / comb(5, 2))
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 is the fraction correct
    assert pass_at_k(5, 4, 2) == 1.0  # only one wrong sample: any two include a correct one
    assert pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)


def test_pass_at_k_equals_brute_force_over_all_k_subsets():
    """For every n <= 8, c <= n, k <= n: the share of k-subsets of n samples (c correct) holding a correct one."""
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(combinations(range(n), k))  # samples 0 .. c-1 are the correct ones
                expected = Fraction(sum(any(i < c for i in subset) for subset in subsets), len(subsets))
                assert pass_at_k(n, c, k) == pytest.approx(float(expected), abs=1e-12), (n, c, k)


def test_pass_at_k_is_not_the_naive_estimate():
    """One correct of four at k = 4: every draw holds it (1.0); 1 - (1 - c/n)^k would say 0.68."""
    assert pass_at_k(4, 1, 4) == 1.0
    assert 1 - (1 - 1 / 4) ** 4 == pytest.approx(0.68, abs=0.01)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (5.0, 2, 1)])
def test_pass_at_k_validation(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_score_summary():
    assert score_summary([1.0, None, 3.0, 2.0]) == {"mean": 2.0, "min": 1.0, "max": 3.0, "count": 3}
    assert score_summary([None, None]) == {"mean": None, "min": None, "max": None, "count": 0}


def make(prompt_index, sample_index, score, completion, finished=True):
    return Sample(
        prompt="same",
        completion=completion,
        prompt_index=prompt_index,
        sample_index=sample_index,
        score=score,
        finished=finished,
    )


def test_round_sample_metrics_by_hand():
    drawn = [
        make(0, 0, 1.0, "a b"),
        make(0, 1, 0.0, "a c"),
        make(0, 2, None, "x"),
        make(1, 0, 1.0, "a b"),
        make(1, 1, 1.0, "d e"),
        make(1, 2, 0.5, "f g h", finished=False),  # cut off: the filter never sees it
    ]
    kept = Threshold(1.0)([s for s in drawn if s.finished])  # "a b", "a b", "d e"
    m = round_sample_metrics(drawn, kept, pass_score=1.0)
    assert m["samples_drawn"] == 6 and m["samples_scored"] == 5 and m["samples_unscorable"] == 1
    assert m["samples_unfinished"] == 1
    assert m["samples_kept"] == 3 and m["acceptance_rate"] == 0.5
    assert (m["kept_reward_mean"], m["kept_reward_min"], m["kept_reward_max"]) == (1.0, 1.0, 1.0)
    assert m["rejected_reward_mean"] == pytest.approx(0.25)  # 0.0 and 0.5; the unscored one ignored
    assert (m["rejected_reward_min"], m["rejected_reward_max"]) == (0.0, 0.5)
    assert m["distinct_1"] == pytest.approx(4 / 6)  # a b a b d e
    assert m["distinct_2"] == pytest.approx(2 / 3)  # (a b) (a b) (d e)
    # prompt 0: 1 of 3 correct (unscored counts as wrong); prompt 1: 2 of 3 correct; k = 3
    assert m["samples_per_prompt"] == 3
    assert m["pass@1"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert m["pass@k"] == 1.0


def test_round_sample_metrics_uneven_groups_use_smallest_k():
    drawn = [
        make(0, 0, 0.0, "a"),
        make(0, 1, 1.0, "b"),
        make(0, 2, 0.0, "c"),
        make(1, 0, 0.0, "d"),
        make(1, 1, 0.0, "e"),
    ]
    m = round_sample_metrics(drawn, [], pass_score=1.0)
    assert m["samples_per_prompt"] == 2
    assert m["pass@k"] == pytest.approx((pass_at_k(3, 1, 2) + 0.0) / 2)
    assert m["kept_reward_mean"] is None and m["distinct_1"] == 0.0 and m["acceptance_rate"] == 0.0


def test_round_sample_metrics_empty_and_strangers():
    m = round_sample_metrics([], [])
    assert m["acceptance_rate"] is None and m["pass@1"] is None and m["samples_drawn"] == 0
    drawn = [make(0, 0, 1.0, "a")]
    with pytest.raises(ValueError, match="`kept`"):
        round_sample_metrics(drawn, [make(0, 0, 1.0, "a")])  # an equal copy is not the drawn object
