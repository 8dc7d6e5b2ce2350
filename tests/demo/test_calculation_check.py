"""The real-model demo's verifier: the right final number, reached by a true calculation written out."""

from __future__ import annotations

import pytest

from itersft.demo.calculation_check import checked_calculation, holds
from itersft.sampling.samples import Sample
from itersft.scoring.scorers import numeric, resolve_scorer, score_samples


@pytest.mark.parametrize("completion, answer, expected", [
    ("Mia has 3 x 7 = 21 coins.", "21", 1.0),
    ("3*7=21", "21", 1.0),
    ("So 3 × 7 = 21, and she has 21 coins.", "21", 1.0),  # the equation need not be last
    ("There are 8 − 3 = 5 left.", "5", 1.0),  # U+2212 minus
    ("Tom has 9 - 4 = 5 stickers.", "5", 1.0),
    ("21", "21", 0.0),  # the right number, no calculation: a guess
    ("Mia has 21 coins.", "21", 0.0),
    ("3 + 7 = 21", "21", 0.0),  # the right number, a false equation
    ("3 x 7 = 21, so 22 coins.", "21", 0.0),  # a true equation, a wrong final number
    ("3 x 6 = 18 coins.", "21", 0.0),
    ("I cannot tell.", "21", None),  # no number: unscorable, as for `numeric`
])
def test_a_sample_passes_only_with_the_answer_and_a_true_calculation_reaching_it(completion, answer, expected):
    assert checked_calculation(["q"], [completion], [answer]) == [expected]


def test_it_never_passes_what_numeric_rejects():
    completions = ["2 + 2 = 4", "2 + 2 = 5", "4", "x", "2 x 3 = 6 and 6 - 2 = 4"]
    answers = ["4", "4", "5", "4", "4"]
    for checked, number in zip(checked_calculation([""] * 5, completions, answers),
                               numeric([""] * 5, completions, answers), strict=True):
        assert checked == number or (number == 1.0 and checked == 0.0)


def test_operators():
    assert holds(3, "x", 7, 21) and holds(3, "X", 7, 21) and holds(3, "*", 7, 21) and holds(3, "×", 7, 21)
    assert holds(9, "-", 4, 5) and holds(9, "\u2212", 4, 5) and holds(2, "+", 6, 8)
    assert not holds(2, "+", 6, 12) and not holds(9, "-", 4, 13)


def test_the_loop_reaches_it_by_the_import_path_the_demo_gives_and_scores_it_in_worker_processes():
    scorer = resolve_scorer("itersft.demo.calculation_check:checked_calculation")
    samples = [Sample("q", text, 0, i, meta={"answer": "21"}) for i, text in enumerate(["3 x 7 = 21", "21"])]
    report = score_samples(scorer, samples)
    assert [s.score for s in samples] == [1.0, 0.0] and report.failed == 0
