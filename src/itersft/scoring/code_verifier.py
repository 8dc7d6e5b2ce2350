"""The `code` scorer: 1.0 when the completion's Python passes the sample's unit tests, else 0.0.

Per sample, the program is the completion's code followed by the sample's tests (meta key `tests`),
run in one module namespace in the sandbox of `code_sandbox` (read there what it isolates). Score
1.0 when every test ran without an exception; 0.0 when a test fails, the code does not compile,
raises, exits early, or runs out of time, CPU, memory or processes.

* **The code**: the first fenced block tagged `python`, `py`, `python3` or untagged (an unclosed
  fence, as when generation stopped, runs to the end); without a fence, the whole completion. The
  module's `__name__` is "solution", so an `if __name__ == "__main__":` demo block does not run
  (stdin is empty).
* **The tests**: Python source, typically `assert` statements (MBPP style), or a list of such
  statements (joined by newlines). Tests that do not parse are bad data: `code.check_meta(rows)`
  (called by `scorers.validate_meta` before any model loads) names every such row.
* **Limits**: `SandboxLimits()` (10 s wall clock, 10 s CPU, 1 GiB, 32 processes, 64 MiB disk);
  `CodeTests(SandboxLimits(...))` for others. Keep the scoring pool's timeout above `wall_seconds`
  plus a second of sandbox start-up, or the pool kills the sample first (it still scores 0.0).

The sandbox needs Linux. `check_meta` also runs an empty program through it once and raises when it
cannot run programs here, so a broken sandbox fails the run up front rather than scoring all 0.0.
Not here: stdin/stdout-judged problems (APPS, Codeforces), partial credit per test, HumanEval-style
completions that continue the prompt's function (the prompt is not prepended).
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from itersft.scoring.code_sandbox import SandboxLimits, describe_isolation, isolation_report, run_python

logger = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*(\S*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The Python code in `completion`: its first python/untagged fenced block, or all of it."""
    for match in _FENCE.finditer(completion):
        if match.group(1).lower() in ("", "python", "py", "python3"):
            return match.group(2)
    return completion


def tests_source(tests: Any) -> str:
    """`tests` (source text or a list of statements) as one source text; TypeError for anything else."""
    if isinstance(tests, str):
        return tests
    if isinstance(tests, list | tuple) and all(isinstance(t, str) for t in tests):
        return "\n".join(tests) + "\n"
    raise TypeError(f"`tests` must be Python source (a string) or a list of statements; got {type(tests).__name__}")


class CodeTests:
    """The `code` scorer (see the module docstring): `(prompts, completions, tests, **_) -> [1.0 | 0.0]`."""

    def __init__(self, limits: SandboxLimits | None = None):
        self.limits = limits or SandboxLimits()
        self.__name__ = "code"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], tests: Sequence[Any],
                 **_: Any) -> list[float]:
        if len(tests) != len(completions):
            raise ValueError(f"`tests` has {len(tests)} entries but there are {len(completions)} completions")
        scores = []
        for completion, sample_tests in zip(completions, tests, strict=True):
            files = [("solution.py", extract_code(completion)), ("tests.py", tests_source(sample_tests))]
            scores.append(1.0 if run_python(files, self.limits).passed else 0.0)
        return scores

    def check_meta(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """Rows whose `tests` are missing or do not parse; then a check that the sandbox runs here."""
        problems = []
        for i, row in enumerate(rows):
            if row.get("tests") is None:
                problems.append(f"row {i}: no `tests` (Python source with asserts, or a list of statements)")
                continue
            try:
                source = tests_source(row["tests"])
                if not source.strip():
                    raise ValueError("`tests` is empty: nothing would be checked")
                ast.parse(source)
            except SyntaxError as exc:
                problems.append(f"row {i}: `tests` do not parse as Python (line {exc.lineno}: {exc.msg})")
            except (TypeError, ValueError) as exc:
                problems.append(f"row {i}: {exc}")
        if not problems:
            _log_isolation()
        return problems

    def __repr__(self) -> str:
        return f"CodeTests({self.limits!r})"


def _log_isolation() -> None:
    """Run the sandbox once (raises if it cannot run programs here) and log what it isolates."""
    missing = {feature: why for feature, why in describe_isolation(isolation_report()).items() if why is not None}
    if missing:
        logger.warning("code sandbox: running WITHOUT %s", "; ".join(f"{f} ({why})" for f, why in missing.items()))
    else:
        logger.info("code sandbox: network, filesystem, process and PID isolation all in effect")


code = CodeTests()
"""The `code` scorer with the default limits."""
