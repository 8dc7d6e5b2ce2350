"""Filters: selection semantics, grouping by prompt_index (not text), ties, unscored samples, order."""

from __future__ import annotations

import copy

import pytest

from itersft.filters import AboveGroupMean, BestOfK, Compose, Dedup, DropUniformPrompts, Threshold, TopPercent
from itersft.sampling.samples import Sample


def s(prompt_index, sample_index, score, completion=None, prompt="same prompt"):
    """A sample; every prompt has the same text so only prompt_index can separate groups."""
    text = completion if completion is not None else f"c{prompt_index}.{sample_index}"
    return Sample(prompt=prompt, completion=text, prompt_index=prompt_index, sample_index=sample_index, score=score)


def ids(samples):
    return [(x.prompt_index, x.sample_index) for x in samples]


@pytest.fixture
def batch():
    return [
        s(0, 0, 0.2),
        s(0, 1, 0.9),
        s(0, 2, None),
        s(0, 3, 0.9),
        s(1, 0, 0.5),
        s(1, 1, None),
        s(1, 2, 0.1),
        s(2, 0, None),
        s(2, 1, None),
    ]


ALL_FILTERS = [Threshold(0.0), BestOfK(2), TopPercent(50), DropUniformPrompts(0.5), Dedup(), Compose(Dedup()),
               AboveGroupMean()]


@pytest.mark.parametrize("f", ALL_FILTERS, ids=repr)
def test_filters_do_not_mutate_input(f, batch):
    before = copy.deepcopy(batch)
    original_ids = [id(x) for x in batch]
    out = f(batch)
    assert batch == before and [id(x) for x in batch] == original_ids
    assert out is not batch
    positions = [original_ids.index(id(x)) for x in out]
    assert positions == sorted(positions)  # a subset, in the original order


def test_threshold(batch):
    assert ids(Threshold(0.5)(batch)) == [(0, 1), (0, 3), (1, 0)]
    assert ids(Threshold(-1e9)(batch)) == [(0, 0), (0, 1), (0, 3), (1, 0), (1, 2)]  # never unscored


def test_threshold_can_rise_between_rounds(batch):
    f = Threshold(0.1)
    assert len(f(batch)) == 5
    f.min_score = 0.9
    assert ids(f(batch)) == [(0, 1), (0, 3)]
    assert repr(f) == "Threshold(min_score=0.9)"
    with pytest.raises(ValueError, match="`min_score`.*'high'"):
        f.min_score = "high"


def test_best_of_k_ties_go_to_lower_sample_index():
    # sample 3 is listed before sample 1 and ties with it: sample 1 must still win
    group = [s(0, 3, 0.9), s(0, 0, 0.2), s(0, 1, 0.9), s(0, 2, 0.5)]
    assert ids(BestOfK(1)(group)) == [(0, 1)]
    assert ids(BestOfK(2)(group)) == [(0, 3), (0, 1)]  # both tied best, in input order
    assert ids(BestOfK(3)(group)) == [(0, 3), (0, 1), (0, 2)]


def test_best_of_k_groups_by_prompt_index_not_text(batch):
    # prompts 0, 1 and 2 share one text; each must still get its own best
    assert ids(BestOfK(1)(batch)) == [(0, 1), (1, 0)]


def test_best_of_k_never_keeps_unscored_and_respects_min_score(batch):
    assert ids(BestOfK(10)(batch)) == [(0, 0), (0, 1), (0, 3), (1, 0), (1, 2)]
    assert ids(BestOfK(1, min_score=0.6)(batch)) == [(0, 1)]


def test_top_percent_global_ranking(batch):
    # five scored: 0.9, 0.9, 0.5, 0.2, 0.1 -> top 40% = 2, top 50% = ceil(2.5) = 3
    assert ids(TopPercent(40)(batch)) == [(0, 1), (0, 3)]
    assert ids(TopPercent(50)(batch)) == [(0, 1), (0, 3), (1, 0)]
    assert ids(TopPercent(1)(batch)) == [(0, 1)]  # at least one, ties to the earlier sample
    assert ids(TopPercent(100)(batch)) == [(0, 0), (0, 1), (0, 3), (1, 0), (1, 2)]
    assert TopPercent(10)([s(0, 0, None)]) == []


def test_top_percent_exact_count_without_float_noise():
    many = [s(0, i, float(i)) for i in range(1000)]
    assert len(TopPercent(16.1)(many)) == 161  # 1000 * 16.1 / 100 == 161.00000000000003 in floats


@pytest.mark.parametrize("percent", [0, -5, 101, 0.0, float("nan"), "10"])
def test_top_percent_validation(percent):
    with pytest.raises(ValueError, match="`percent`"):
        TopPercent(percent)


def test_drop_uniform_prompts():
    batch = [
        s(0, 0, 1.0),
        s(0, 1, 1.0),  # all pass: dropped
        s(1, 0, 0.0),
        s(1, 1, 0.0),
        s(1, 2, None),  # all fail: dropped
        s(2, 0, 1.0),
        s(2, 1, None),
        s(2, 2, 0.0),  # mixed: scored ones kept
        s(3, 0, None),  # nothing scored: dropped
        s(4, 0, 0.0),
        s(4, 1, 1.0),  # same text, different prompt_index: mixed, kept
    ]
    assert ids(DropUniformPrompts()(batch)) == [(2, 0), (2, 2), (4, 0), (4, 1)]
    assert ids(DropUniformPrompts(pass_score=0.5)(batch)) == [(2, 0), (2, 2), (4, 0), (4, 1)]
    assert DropUniformPrompts(pass_score=2.0)(batch) == []  # everything fails


def test_above_group_mean_keeps_what_grpo_would_push_up(batch):
    """Kept: a score above its prompt's mean over scored samples (GRPO's positive advantage), on any scale."""
    assert ids(AboveGroupMean()(batch)) == [(0, 1), (0, 3), (1, 0)]  # means 2/3 and 0.3; unscored left out
    shifted = [s(0, i, score) for i, score in enumerate([-40.0, 10.0, 10.0, 10.0])]
    assert ids(AboveGroupMean()(shifted)) == [(0, 1), (0, 2), (0, 3)]
    assert ids(AboveGroupMean()([s(0, i, float(i)) for i in range(3)])) == [(0, 2)]  # at the mean is not above
    # nothing to tell apart (1.7 five times has a float mean just below 1.7); one scored sample is its own mean
    uniform = [s(0, i, 1.7000000000000002) for i in range(5)] + [s(1, 0, 5.0)]
    assert AboveGroupMean()(uniform) == []


def test_dedup_per_prompt_index_with_normalisation():
    batch = [
        s(0, 0, 1.0, "a  b\n"),
        s(0, 1, 0.0, "a b"),
        s(0, 2, None, "a c"),
        s(1, 0, 1.0, "a b"),  # same text in another group: kept
        s(0, 3, 1.0, " a c "),
    ]
    assert ids(Dedup()(batch)) == [(0, 0), (0, 2), (1, 0)]
    assert ids(Dedup(normalize=False)(batch)) == [(0, 0), (0, 1), (0, 2), (1, 0), (0, 3)]


def test_compose_applies_in_order():
    batch = [s(0, 0, 0.9, "x"), s(0, 1, 0.9, "x"), s(0, 2, 0.5, "y"), s(0, 3, 0.1, "z")]
    # Dedup first removes sample 1, so best-of-2 then picks samples 0 and 2
    assert ids(Compose(Dedup(), BestOfK(2))(batch)) == [(0, 0), (0, 2)]
    # BestOfK first keeps samples 0 and 1; Dedup then drops the copy
    assert ids(Compose(BestOfK(2), Dedup())(batch)) == [(0, 0)]


def test_compose_validation_and_repr():
    assert repr(Compose(Dedup(), Threshold(1.0))) == "Compose(Dedup(normalize=True), Threshold(min_score=1.0))"
    with pytest.raises(ValueError, match="`filters`"):
        Compose()
    with pytest.raises(ValueError, match="position 1"):
        Compose(Dedup(), "threshold")
    with pytest.raises(TypeError, match="must return a list"):
        Compose(lambda samples: tuple(samples))([s(0, 0, 1.0)])


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: BestOfK(0), "`n`"),
        (lambda: BestOfK(1.5), "`n`"),
        (lambda: BestOfK(True), "`n`"),
        (lambda: BestOfK(1, min_score=float("inf")), "`min_score`"),
        (lambda: Threshold(None), "`min_score`"),
        (lambda: DropUniformPrompts("1"), "`pass_score`"),
        (lambda: Dedup(normalize="yes"), "`normalize`"),
    ],
)
def test_validation_names_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_reprs():
    assert repr(BestOfK(4, min_score=0.5)) == "BestOfK(n=4, min_score=0.5)"
    assert repr(TopPercent(10)) == "TopPercent(percent=10)"
    assert repr(DropUniformPrompts()) == "DropUniformPrompts(pass_score=1.0)"
