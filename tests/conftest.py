"""Shared fixtures: toy models and a byte-level tokenizer built offline (see `itersft.toy`).

Each fixture saves what it builds with `save_pretrained` and loads it back with `from_pretrained`, so
the tests exercise the loading path real users take with hub ids and local checkpoints.

Under `CI=true` (set by `.ci/run`) a skipped test marked with one of `REQUIRED_IN_CI` is a failure:
`make test` installs DeepSpeed, SmolLM2 and reasoning-gym, so a skip there means CI ran without them and would
otherwise pass with those parts untested.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from itersft.toy import save_toy

REQUIRED_IN_CI = ("deepspeed", "smollm2", "reasoning_gym")
"""Markers whose tests must run, not skip, under CI=true."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true, turn the skip of a test marked with one of `REQUIRED_IN_CI` into a failure."""
    outcome = yield
    report = outcome.get_result()
    required = [name for name in REQUIRED_IN_CI if item.get_closest_marker(name) is not None]
    if report.skipped and required and os.environ.get("CI") == "true":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI=true, but tests marked `{required[0]}` must run in CI "
                           f"(`make test` installs what they need). Skip reason: {reason}")


@pytest.fixture(scope="session")
def causal_dir(tmp_path_factory):
    """A saved Llama-style toy model (hidden 32, 2 layers) and its tokenizer."""
    return save_toy(tmp_path_factory.mktemp("causal"), kind="causal")


@pytest.fixture(scope="session")
def seq2seq_dir(tmp_path_factory):
    """A saved T5-style toy model and its tokenizer."""
    return save_toy(tmp_path_factory.mktemp("seq2seq"), kind="seq2seq")


@pytest.fixture
def tokenizer(causal_dir):
    return AutoTokenizer.from_pretrained(causal_dir)


@pytest.fixture
def causal_model(causal_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(causal_dir)


@pytest.fixture
def seq2seq_model(seq2seq_dir):
    return AutoModelForSeq2SeqLM.from_pretrained(seq2seq_dir)


@pytest.fixture(scope="session")
def fine_tuned_copy(tmp_path_factory, causal_dir):
    """A function that trains the causal toy model with `calls` identical `step(**step_inputs)` calls at
    `learning_rate` and saves it with its tokenizer in a fresh folder named after `name`; it returns that
    folder. For fixtures that need a model which already answers something."""
    from itersft import IterativeSFTConfig, IterativeSFTTrainer

    def build(name: str, learning_rate: float, calls: int, **step_inputs) -> Path:
        directory = tmp_path_factory.mktemp(name)
        tokenizer = AutoTokenizer.from_pretrained(causal_dir)
        model = AutoModelForCausalLM.from_pretrained(causal_dir)
        config = IterativeSFTConfig(output_dir=str(directory / "trainer"), report_to="none",
                                    learning_rate=learning_rate, save_strategy="no")
        trainer = IterativeSFTTrainer(model, config, tokenizer)
        for _ in range(calls):
            trainer.step(**step_inputs)
        model.save_pretrained(directory / "model")
        tokenizer.save_pretrained(directory / "model")
        return directory / "model"

    return build


@pytest.fixture(scope="session")
def answering_dir(fine_tuned_copy):
    """The causal toy model after 40 updates on "q<i>:" -> "x" or "y" + EOS (i = 0..11).

    It samples short answers that finish with EOS, some of them right: what a loop needs to have
    something to keep. Used by the loop tests in one and in two processes.
    """
    return fine_tuned_copy("answering", 3e-2, 40, prompts=[f"q{i}:" for i in range(12)],
                           completions=[("x", "y")[i % 3 == 0] for i in range(12)])
