"""Session fixtures: the loop runs of `export_runs`, each built once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_runs import PROMPTS, run_loop  # noqa: E402


@pytest.fixture(scope="session")
def chat_answering_dir(fine_tuned_copy):
    """The causal toy model after 40 updates on the chat turns "q<i>:" -> "x" or "y" (toy chat template)."""
    return fine_tuned_copy("chat-answering", 3e-2, 40, messages=[
        [{"role": "user", "content": p}, {"role": "assistant", "content": ("x", "y")[i % 3 == 0]}]
        for i, p in enumerate(PROMPTS)])


@pytest.fixture(scope="session")
def standard_run(tmp_path_factory, answering_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("standard") / "run"
    run_loop(answering_dir, run_dir)
    return run_dir


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory, chat_answering_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("chat") / "run"
    run_loop(chat_answering_dir, run_dir, chat=True)
    return run_dir
