"""Loading HumanEval and MBPP from local files into the loop's prompts and the `code` scorer's meta."""

from __future__ import annotations

import gzip
import json
import sys

import pytest

from itersft.scoring.code_verifier import code
from itersft.scoring.scorers import validate_meta
from itersft.tasks.code_benchmarks import human_eval_file, load_code_problems

MBPP_LINES = [
    {"task_id": 2, "text": "Write a function to find the shared elements from the given two lists.",
     "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
     "test_list": ["assert set(similar_elements((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))"],
     "test_setup_code": "", "challenge_test_list": []},
    {"source_file": "sanitized", "task_id": 3, "prompt": "Write a python function to identify non-prime numbers.",
     "code": "def is_not_prime(n):\n    return n < 2 or any(n % i == 0 for i in range(2, int(math.sqrt(n)) + 1))\n",
     "test_imports": ["import math"],
     "test_list": ["assert is_not_prime(10) == True", "assert is_not_prime(7) == False"]},
]


def test_humaneval_loads_from_the_installed_package_as_text_or_chat():
    with gzip.open(human_eval_file(), "rt") as file:
        first = json.loads(file.readline())
    prompts, meta = load_code_problems(human_eval_file())
    assert len(prompts) == len(meta) == 164
    assert prompts[0] == first["prompt"]
    assert meta[0] == {"prompt": first["prompt"], "entry_point": first["entry_point"], "test": first["test"]}
    chat, chat_meta = load_code_problems(human_eval_file(), chat=True, limit=2)
    assert len(chat) == 2 and chat_meta == meta[:2]
    assert chat[0][0]["role"] == "user" and f"```python\n{first['prompt']}```" in chat[0][0]["content"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the code sandbox is Linux-only")
def test_mbpp_loads_both_layouts_and_the_reference_solutions_pass(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in MBPP_LINES))
    prompts, meta = load_code_problems(path)
    assert prompts[0] == (MBPP_LINES[0]["text"] + "\nYour code should pass these tests:\n"
                          + MBPP_LINES[0]["test_list"][0] + "\n")
    assert meta == [{"test_list": MBPP_LINES[0]["test_list"], "test_setup_code": ""},
                    {"test_list": MBPP_LINES[1]["test_list"], "test_imports": ["import math"]}]
    validate_meta(code, meta, len(prompts))
    solutions = [line["code"] for line in MBPP_LINES]
    assert code(prompts, solutions, **{k: [m.get(k) for m in meta] for k in ("test_list", "test_setup_code",
                                                                                "test_imports")}) == [1.0, 1.0]
    # the sanitized solution relies on the test's `import math`: without test_imports it fails
    assert code(prompts[1:], solutions[1:], test_list=[meta[1]["test_list"]]) == [0.0]


def test_lines_of_neither_format_are_named(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(MBPP_LINES[0]) + "\n[1, 2]\n" + json.dumps({"question": "q", "answer": 1}) + "\n")
    with pytest.raises(ValueError) as info:
        load_code_problems(path, chat="yes", limit=0)
    assert "`chat` must be True or False, got 'yes'" in str(info.value)
    assert "`limit` must be an int >= 1 or None, got 0" in str(info.value)
    with pytest.raises(ValueError) as info:
        load_code_problems(path)
    message = str(info.value)
    assert f"{path} line 2: a problem must be a JSON object, got list" in message
    assert f"{path} line 3: neither HumanEval" in message and "its keys are ['answer', 'question']" in message
    assert "line 1" not in message
