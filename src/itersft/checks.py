"""One way to check settings and arguments: collect every problem, then raise once.

Every configuration object (`IterativeSFTConfig`, `LoopConfig`, `SamplingConfig`, the filters, ...) and
`step()`'s input check use `Problems`, so a user with three mistakes sees all three in one error, each
naming the setting, the bad value and what is expected. The typed checks refuse bools where a number is
expected (`True` is an `int` to Python, but `rounds=True` is a mistake, not 1) and non-finite floats.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

SHOWN = 20
"""Problems listed in one error at most; a data set with thousands of bad rows says how many more."""


class Problems:
    """Problems found in the settings of `owner` (e.g. "LoopConfig"), raised together by `raise_if_any`."""

    def __init__(self, owner: str, error: type[Exception] = ValueError):
        self.owner = owner
        self.error = error
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        """Record one problem; the message names the setting (in backticks), the value and the fix."""
        self.messages.append(message)

    def __bool__(self) -> bool:
        return bool(self.messages)

    def integer(self, name: str, value: Any, minimum: int | None = None, optional: bool = False) -> bool:
        """`value` must be an int (not a bool) >= `minimum`, or None when `optional`. True when it is."""
        if optional and value is None:
            return True
        if is_integer(value) and (minimum is None or value >= minimum):
            return True
        expected = "an int" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if optional else "")
        self.add(f"`{name}` must be {expected}, got {_shown(value)}.")
        return False

    def number(self, name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
               exclusive_minimum: bool = False, exclusive_maximum: bool = False, optional: bool = False) -> bool:
        """`value` must be a finite real number (not a bool) within the bounds, or None when `optional`."""
        if optional and value is None:
            return True
        if is_real(value):
            low_ok = minimum is None or (value > minimum if exclusive_minimum else value >= minimum)
            high_ok = maximum is None or (value < maximum if exclusive_maximum else value <= maximum)
            if low_ok and high_ok:
                return True
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>' if exclusive_minimum else '>='} {minimum}")
        if maximum is not None:
            bounds.append(f"{'<' if exclusive_maximum else '<='} {maximum}")
        expected = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "") + (
            " or None" if optional else "")
        self.add(f"`{name}` must be {expected}, got {_shown(value)}.")
        return False

    def choice(self, name: str, value: Any, choices: Iterable[Any]) -> bool:
        """`value` must be one of `choices`."""
        choices = tuple(choices)
        if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
            ok = False
        else:
            try:
                ok = value in choices
            except TypeError:  # unhashable or incomparable
                ok = False
        if not ok:
            self.add(f"`{name}` must be one of {', '.join(repr(c) for c in choices)}, got {_shown(value)}.")
        return ok

    def boolean(self, name: str, value: Any) -> bool:
        """`value` must be True or False (not 0/1 or a string)."""
        if isinstance(value, bool):
            return True
        self.add(f"`{name}` must be True or False, got {_shown(value)}.")
        return False

    def raise_if_any(self) -> None:
        """Raise one error listing every problem (the first `SHOWN`, and how many more), or return."""
        if self.messages:
            shown = self.messages[:SHOWN]
            if len(self.messages) > SHOWN:
                shown.append(f"... and {len(self.messages) - SHOWN} more")
            raise self.error(f"Invalid {self.owner}:\n- " + "\n- ".join(shown))


def is_integer(value: Any) -> bool:
    """An integral number that is not a bool (numpy integers count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite real number that is not a bool."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _shown(value: Any) -> str:
    """The value as an error message shows it, with its type where the repr alone would mislead."""
    if isinstance(value, bool):
        return f"{value!r} (a bool)"
    if isinstance(value, (numbers.Number, str)):
        return repr(value)
    return f"{value!r} ({type(value).__name__})"
