"""The final answer of a free-text completion, and whether it hedges: one rule for `numeric` and `math`.

**The final answer** is the content of the completion's last `\\boxed{...}`; without one, what follows
its last `####` (GSM8K's marker) on that line, when a number does; else its last number. Only the
final answer counts, so a self-correction ("\\boxed{5} no wait \\boxed{4}", "5. No, it is 4.") is
scored on the answer it ends on: writing several answers earns nothing unless the last is right,
and the last is the one the completion commits to.

**A hedge is never right.** The final answer hedges when it offers alternatives instead of one value:
it holds several different values joined as a list, a choice or a range (`\\boxed{4, 5}`,
`\\boxed{4 \\text{ or } 5}`, `#### 4-5`, `\\pm 2`), or it is joined to a different value just before
it in the same way ("It is 4 or 5.", "between 4 and 5", "10-12", "\\boxed{4} or \\boxed{5}",
"$4$ or $5$"). The joins that make alternatives: a comma, a semicolon, "or", "and", "to", "through",
"and/or", a hyphen or dash, `\\pm`, `\\lor`, `\\vee`, each possibly followed by "maybe", "perhaps" or
"possibly" (LaTeX wrappers such as `$`, braces and `\\text{}` are looked through). Values joined by
anything else are a calculation or prose, not alternatives: "3 x 7 = 21", "5-3=2", "3 apples and 4
pears" (a word between), "5. No, it is 4.". The same value twice ("21, 21") is not a hedge.
`math` applies the rule when the reference is one value; a reference that is several values (a set,
a tuple, an interval) is compared as a whole by math-verify.

Numbers are read as `extract_number` reads them (thousands separators, decimals, a minus sign not
glued to a preceding word); fractions, percentages and scientific notation are not numbers here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A number: optional minus (only when not glued to a preceding word or number, so "5-3" is 5 and 3),
# digits with optional thousands separators ("1,234,567"), optional decimals; or a bare ".5".
NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<!\d)\.\d+)")
_BOXED = "\\boxed{"
_MARKER = "####"
_JOIN = re.compile(r"\s*(?:[,;]|,?\s*(?:or|and|to|through|and/or|-|\u2013|\u2014|~|\\pm|\\mp|\\lor|\\vee|\u00b1))"
                   r"(?:\s+(?:maybe|perhaps|possibly))?\s*", re.IGNORECASE)
_PLUS_MINUS = re.compile(r"(?:\\pm|\\mp|\u00b1)\s*$")
_WRAPPERS = re.compile(r"\\(?:boxed|text|mathrm|textbf|mbox)\s*\{|[{}$]|\\[()\[\]]|\\[,;:! ]|\\q?quad")
_CLAUSE_BREAK = re.compile(r"[.;,!?:]\s|\n")


@dataclass(frozen=True)
class FinalAnswer:
    """The final answer of a completion (see the module docstring).

    Attributes:
        text: the answer as math-verify should read it: the last box (`\\boxed{...}`), the marker's
            line, or the final clause (from the last sentence or clause break before the number).
        number: the answer's number (the box's last, the first after the marker, or the last), or None.
        hedged: whether it offers alternatives (never right against a single-valued reference).
    """

    text: str
    number: float | None
    hedged: bool


def final_answer(completion: str) -> FinalAnswer | None:
    """The final answer of `completion`, or None when it has neither a box nor a number."""
    box = _last_box(completion)
    if box is not None:
        start, end = box
        inside = list(NUMBER.finditer(completion, start, end))
        number = _value(inside[-1]) if inside else None
        return FinalAnswer(_BOXED + completion[start:end] + "}", number, _hedged(completion, start, end))
    marker = completion.rfind(_MARKER)
    if marker != -1:
        start = marker + len(_MARKER)
        end = completion.find("\n", start)
        end = len(completion) if end == -1 else end
        first = NUMBER.search(completion, start, end)
        if first is not None:
            return FinalAnswer(completion[start:end].strip(), _value(first), _hedged(completion, start, end))
    numbers = list(NUMBER.finditer(completion))
    if not numbers:
        return None
    last = numbers[-1]
    breaks = [b.end() for b in _CLAUSE_BREAK.finditer(completion, 0, last.start())]
    clause = completion[breaks[-1] if breaks else 0:]
    return FinalAnswer(clause.strip(), _value(last), _hedged(completion, last.start(), last.end()))


def _last_box(text: str) -> tuple[int, int] | None:
    """Where the content of the last `\\boxed{...}` starts and ends (an unclosed box runs to the end)."""
    opening = text.rfind(_BOXED)
    if opening == -1:
        return None
    start, depth = opening + len(_BOXED), 1
    for position in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return start, position
    return start, len(text)


def _hedged(text: str, start: int, end: int) -> bool:
    """Whether the answer in `text[start:end]` offers alternatives (see the module docstring)."""
    numbers = list(NUMBER.finditer(text, 0, end))
    inside = [n for n in numbers if n.start() >= start]
    if not inside:
        return False
    before = [n for n in numbers if n.end() <= start][-1:]
    lead = _WRAPPERS.sub(" ", text[before[0].end() if before else 0:inside[0].start()])
    if _PLUS_MINUS.search(lead):
        return True
    chain = before + inside
    return any(_JOIN.fullmatch(_WRAPPERS.sub(" ", text[a.end():b.start()])) and _value(a) != _value(b)
               for a, b in zip(chain, chain[1:]))


def _value(match: re.Match[str]) -> float:
    return float(match.group().replace(",", ""))
