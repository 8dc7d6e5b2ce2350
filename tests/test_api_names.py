"""Every itersft API a message or a docstring names exists: a pointer like "use
`itersft.loop.ExpertIteration`" in an error must import, or the user who follows it meets an
AttributeError. The names are read from the string literals of src/ (errors, warnings, docstrings)
and from the READMEs, so a pointer that a rename breaks fails here.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bitersft(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?")


def named_in(text: str) -> set[str]:
    """The dotted itersft names in `text`, with a `module:attribute` form kept whole."""
    return set(NAME.findall(text))


def _string_literals(path: Path) -> list[str]:
    return [node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def _named_names() -> dict[str, str]:
    """name -> the first file that names it."""
    names: dict[str, str] = {}
    for path in sorted((ROOT / "src").rglob("*.py")):
        for text in _string_literals(path):
            for name in named_in(text):
                names.setdefault(name, str(path.relative_to(ROOT)))
    for readme in ("README.md", "README.zh-CN.md"):
        for name in named_in((ROOT / readme).read_text()):
            names.setdefault(name, readme)
    return names


NAMES = _named_names()


def resolve(name: str):
    """The object `name` refers to: the longest importable module prefix, then attributes."""
    dotted, _, attribute = name.partition(":")
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        candidate = ".".join(parts[:cut])
        try:
            found = importlib.import_module(candidate)
        except ModuleNotFoundError as error:
            if error.name != candidate:
                raise  # the module exists but something it imports does not
            continue
        for part in [*parts[cut:], *([attribute] if attribute else [])]:
            found = getattr(found, part)
        return found
    raise ModuleNotFoundError(name)


def test_names_are_found_in_messages_and_docstrings():
    assert named_in("use `itersft.loop.ExpertIteration`.") == {"itersft.loop.ExpertIteration"}
    assert named_in("scorer 'itersft.demo.calculation_check:checked_calculation' ...") == {
        "itersft.demo.calculation_check:checked_calculation"}
    assert named_in("`itersft run` and itersft.") == set()
    assert len(NAMES) > 30  # the source names many: the scan works


@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_named_api_exists(name):
    try:
        resolve(name)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"{NAMES[name]} names {name}, which does not exist: {error}")
