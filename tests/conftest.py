"""Shared fixtures: toy models and a byte-level tokenizer built offline (see `itersft.toy`).

Each fixture saves what it builds with `save_pretrained` and loads it back with `from_pretrained`, so
the tests exercise the loading path real users take with hub ids and local checkpoints.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from itersft.toy import save_toy


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
