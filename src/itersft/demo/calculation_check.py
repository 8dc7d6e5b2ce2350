"""The real-model demo's verifier: the right number, reached by a calculation the answer writes out.

The demo's system prompt asks for "the calculation and the answer in one line". The built-in `numeric`
scorer reads only the final number, so it also accepts a bare number that happens to be right ("21").
SmolLM2-135M's answers that state a number without a calculation are right far less often than those
that write it out ("3 x 7 = 21"): a lucky guess is not an answer worth training on.
`checked_calculation` keeps a sample only when `numeric` passes it *and* it writes an equation
"a op b = c" (op one of + - x * ×) whose arithmetic holds and whose result is the answer. What it
changed in the demo is measured in benchmarks/RESULTS.md ("Real-model demo: settings tried").

Only the loop's choice of samples uses it. Held-out accuracy is scored by `numeric`, the number alone,
for the base model, the loop and the control alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from itersft.demo.word_problems import apply_operation
from itersft.scoring.scorers import extract_number, numeric

# "3 x 7 = 21", "8 - 3=5", "2+6 = 8"; the minus sign may be U+2212, the times sign x, X, * or ×.
_EQUATION = re.compile(r"(\d+)\s*([-+*xX×\u2212])\s*(\d+)\s*=\s*(\d+)")
_OPERATION_OF = {"+": "addition", "-": "subtraction", "\u2212": "subtraction"}


def holds(a: int, operator: str, b: int, result: int) -> bool:
    """Whether the equation `a operator b = result` is arithmetically true (any other operator: times)."""
    return apply_operation(_OPERATION_OF.get(operator, "multiplication"), a, b) == result


def checked_calculation(prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[Any],
                        **meta: Any) -> list[float | None]:
    """1.0 where `numeric` scores 1.0 and the completion writes a true equation whose result is the answer.

    Else what `numeric` says (0.0, or None when the completion holds no number), or 0.0 when the number
    is right but no such equation is written. A scorer in the loop's sense (see
    `itersft.scoring.scorers`): meta key `answer`, one score per completion.
    """
    scores = numeric(prompts, completions, answer, **meta)
    for index, (score, completion) in enumerate(zip(scores, completions, strict=True)):
        if score == 1.0:  # so the final number is the answer
            final = extract_number(completion)
            shown = any(int(c) == final and holds(int(a), operator, int(b), int(c))
                        for a, operator, b, c in _EQUATION.findall(completion))
            scores[index] = 1.0 if shown else 0.0
    return scores
