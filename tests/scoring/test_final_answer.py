"""One rule for `numeric` and `math`: a hedge is never right; a self-correction counts its final answer.

The issue's own examples first ("It is 4 or 5." and `\\boxed{4, 5}` against 5, "\\boxed{5} no wait
\\boxed{4}" against 4), then the calculations the real-model demo's answers write, which restate
operands before the result and must not read as hedges.
"""

from __future__ import annotations

import pytest

from itersft.scoring.final_answer import final_answer
from itersft.scoring.math_verifier import equivalent
from itersft.scoring.scorers import numeric

HEDGES = ["It is 4 or 5.", "\\boxed{4, 5}", "\\boxed{4 \\text{ or } 5}", "#### 4 or 5", "between 4 and 5",
          "It is 4-5.", "from 4 to 5", "\\boxed{4} or \\boxed{5}", "$4$ or $5$", "Either 4, or maybe 5.",
          "4; 5", "\\boxed{\\pm 4}", "x = \u00b15", "4 \u2013 5"]


def both(completion: str, reference) -> tuple[float | None, float | None]:
    """(numeric, math) scores of one completion."""
    return numeric(["q"], [completion], [reference])[0], equivalent(completion, str(reference))


@pytest.mark.parametrize("completion", HEDGES)
def test_a_hedge_is_never_right(completion):
    values = (4, 5) if "\\pm" not in completion and "\u00b1" not in completion else (4, -4, 5, -5)
    for value in values:
        assert both(completion, value) == (0.0, 0.0), value
    assert final_answer(completion).hedged


@pytest.mark.parametrize(("completion", "first", "final"), [
    ("\\boxed{5} no wait \\boxed{4}", 5, 4),
    ("5. No wait, it is 4.", 5, 4),
    ("The answer is 5. Actually, it is 4.", 5, 4),
    ("The answer is 4, no wait 5", 4, 5),
    ("#### 5 is wrong\n#### 4", 5, 4),
])
def test_a_self_correction_counts_its_final_answer(completion, first, final):
    assert both(completion, final) == (1.0, 1.0)
    assert both(completion, first) == (0.0, 0.0)


@pytest.mark.parametrize(("completion", "answer"), [
    ("3 x 7 = 21", 21), ("Mia has 3 x 7 = 21 coins.", 21), ("So 3 × 7 = 21, and she has 21 coins.", 21),
    ("There are 8 \u2212 3 = 5 left.", 5), ("Tom has 9 - 4 = 5 stickers.", 5), ("5-3=2", 2), ("2 + 6 = 8", 8),
    ("3 apples and 4 pears", 4), ("21, 21", 21), ("The answer is 1,234.", 1234), ("first 3 then 7", 7),
    ("It is 4. Or rather, it is 4.", 4),
])
def test_a_calculation_or_prose_before_the_answer_is_not_a_hedge(completion, answer):
    assert both(completion, answer) == (1.0, 1.0)
    assert not final_answer(completion).hedged


def test_math_compares_several_values_when_the_reference_is_several():
    assert equivalent("\\boxed{4, 5}", "\\{4, 5\\}") == 1.0
    assert equivalent("\\boxed{4, 6}", "\\{4, 5\\}") == 0.0
    assert equivalent("\\boxed{[1,2]}", "[1,2]") == 1.0


def test_the_final_answer_parts():
    boxed = final_answer("first \\boxed{3}, then \\boxed{\\frac{1}{2}} done")
    assert (boxed.text, boxed.number, boxed.hedged) == ("\\boxed{\\frac{1}{2}}", 2.0, False)
    marked = final_answer("48/2 = 24\n#### 72 clips\nthat is all, 9")
    assert (marked.text, marked.number, marked.hedged) == ("72 clips", 72.0, False)
    plain = final_answer("The answer is 4, no wait 1/3")
    assert (plain.text, plain.number) == ("no wait 1/3", 3.0)
    assert final_answer("no numbers here") is None
