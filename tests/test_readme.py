"""Every Python example in README.md and README.zh-CN.md runs as written (in a scratch directory, offline)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = [block for name in ("README.md", "README.zh-CN.md")
          for block in re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(), flags=re.S)]


def test_readme_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / f"example_{index}.py"
    script.write_text(BLOCKS[index])
    runpy.run_path(str(script), run_name="__main__")
