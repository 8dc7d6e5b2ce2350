"""The `math` scorer: is the completion's final answer mathematically equal to the reference?

The completion's final answer is read by the rule `numeric` follows too (`final_answer`): its last
`\\boxed{...}`, else what follows its `####` marker, else its final clause (from the last sentence
or clause break before its last number); a self-correction counts the answer it ends on, and a hedge
(several values offered for one: "4 or 5", `\\boxed{4, 5}`, `\\pm 2`) scores 0.0 unless the
reference is itself several values (a set, a tuple, an interval). Equivalence is decided by the
`math-verify` package (Hugging Face): it parses that answer (a `$...$` expression, a plain number or
expression) and the reference into sympy, and compares them numerically and symbolically, so `\\frac{1}{2}`,
`0.5` and `\\boxed{\\dfrac12}` agree, as do `x+1` and `$1+x$`, `10\\%` and `0.1`, `\\{1,2\\}` and
`\\{2,1\\}`. A reference may be written with or without `$...$`; a GSM8K solution ending `#### 72` is
reduced to `72`. When math-verify can parse no answer from the completion or from the reference, the
final answers' numbers are compared instead (relative tolerance 1e-6).
Scores: 1.0 equal, 0.0 not equal, None when the completion holds no answer at all (unscorable, kept
apart from wrong answers, as with `numeric`).

Timeouts: math-verify bounds its own parsing and comparisons with `signal.alarm`, which only works on
a main thread. Inside a scoring pool worker (the default way scorers run), its timeouts are turned
off and the pool's hard per-sample timeout applies instead, so a pathological expression is killed,
scores 0.0 and is counted in `samples_timed_out`, rather than being reported as a wrong answer.
Called directly on a main thread (or `in_process`), math-verify's own 5-second limits stay on (a
comparison that runs out is a wrong answer); called off a main thread outside a worker, there is no
timeout at all (math-verify then logs a warning saying so).

math-verify is imported on first use (it pulls in sympy, about a second); `math_answer.warm_up()`
imports it ahead of time, which the scoring pool does in the parent so forked workers inherit it
(and math-verify's one-time "timeout is disabled" warning is logged once, by the parent).
Not here: units, or comparing free-text answers.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from itersft.scoring.final_answer import final_answer
from itersft.scoring.pool import in_scoring_worker

logger = logging.getLogger(__name__)

_GSM8K_MARKER = "####"
_math_verify: Any = None
_warmed_up = False


def _load() -> Any:
    """The math_verify module, imported once."""
    global _math_verify
    if _math_verify is None:  # imported on first use: it pulls in sympy and an ANTLR parser
        import math_verify

        _math_verify = math_verify
    return _math_verify


def _warm_up() -> None:
    """Import math-verify, and let it give its "timeout is disabled" warning once, here.

    math-verify warns once per process when its timeouts are off, as they are in scoring workers;
    workers forked after this inherit "already warned", so the log has the warning once, not once
    per worker per round.
    """
    global _warmed_up
    if _warmed_up:
        return
    module = _load()
    module.verify(module.parse("1", parsing_timeout=None), module.parse("1", parsing_timeout=None),
                  timeout_seconds=None)
    _warmed_up = True
    logger.info("math: math-verify's own (signal-based) timeouts are off in scoring workers; the scoring pool's "
                "per-sample timeout applies instead")


def _timeout_seconds() -> int | None:
    """math-verify's own limit: off in a pool worker (the pool's applies) and off a main thread."""
    if in_scoring_worker() or threading.current_thread() is not threading.main_thread():
        return None
    return 5


def _parse(text: str, timeout: int | None) -> list:
    return _load().parse(text, parsing_timeout=timeout)


def _parse_reference(reference: Any, timeout: int | None) -> tuple[list, str]:
    """The parsed reference and the text it came from (after `####`, if any)."""
    text = str(reference).strip()
    marker = text.rfind(_GSM8K_MARKER)
    if marker != -1:
        text = text[marker + len(_GSM8K_MARKER):].strip()
    # A reference is the answer alone: bare LaTeX such as 2\pi needs `$...$`, or math-verify reads only
    # the "2"; plain text (1,234 or 72) parses best as it is.
    bare_latex = "\\" in text and "$" not in text
    parsed = _parse(f"${text}$" if bare_latex else text, timeout)
    if not parsed and "$" not in text and not bare_latex:
        parsed = _parse(f"${text}$", timeout)
    return parsed, text


def _several_values(parsed: list) -> bool:
    """Whether a parsed reference is several values (a set, a tuple, an interval), not one."""
    from sympy import Tuple
    from sympy.sets.sets import Set

    return bool(parsed) and isinstance(parsed[0], Set | Tuple | list | tuple | set)


def equivalent(completion: str, reference: Any) -> float | None:
    """1.0 if `completion`'s final answer equals `reference`, 0.0 if not, None if it has no answer."""
    timeout = _timeout_seconds()
    gold, gold_text = _parse_reference(reference, timeout)
    final = final_answer(completion)
    if final is not None and final.hedged and not _several_values(gold):
        return 0.0  # alternatives offered for one value: never right, whichever is
    predicted = _parse(final.text if final is not None else completion, timeout)
    if gold and predicted:
        return 1.0 if _load().verify(gold, predicted, timeout_seconds=timeout) else 0.0
    reference_answer = final_answer(gold_text)
    expected = reference_answer.number if reference_answer is not None else None
    got = final.number if final is not None else None
    if got is None and not predicted:
        return None
    if expected is None:
        raise ValueError(f"`answer` {reference!r} is neither an expression math-verify can parse nor a number")
    if got is None:
        return 0.0
    return 1.0 if math.isclose(got, expected, rel_tol=1e-6, abs_tol=0.0) else 0.0


def math_answer(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], **_: Any) -> list:
    """The `math` scorer: `equivalent(completion, answer)` for each completion (see the module docstring)."""
    if len(answer) != len(completions):
        raise ValueError(f"`answer` has {len(answer)} entries but there are {len(completions)} completions")
    return [equivalent(c, a) for c, a in zip(completions, answer, strict=True)]


def _check_meta(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every row needs an `answer`: a number or a non-empty string (parsed only when scoring)."""
    problems = []
    for i, row in enumerate(rows):
        value = row.get("answer")
        if isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value).strip():
            problems.append(f"row {i}: `answer` must be a number or a non-empty string, got {value!r}")
    return problems


math_answer.__name__ = "math"
math_answer.warm_up = _warm_up
math_answer.check_meta = _check_meta
