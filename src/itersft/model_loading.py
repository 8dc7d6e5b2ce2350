"""Resolve what the trainer's constructor was given into a model and a tokenizer.

A model given by name (hub id, local path, `.gguf` file or short name: `itersft.model_sources`) is
loaded as a causal or a seq2seq LM according to its config (TRL 0.23 always loaded a causal LM). A
missing tokenizer is loaded from the model's name.
"""

from __future__ import annotations

from typing import Any

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from itersft.model_sources import resolve_model_source


def is_tokenizer_like(value: Any) -> bool:
    """True for a tokenizer or a processor (the things a trainer accepts as its tokenizer)."""
    return isinstance(value, (PreTrainedTokenizerBase, ProcessorMixin))


def load_model(name: str, init_kwargs: dict[str, Any] | None):
    """Load a model by name (see `itersft.model_sources`) with the Auto class its config calls for."""
    source = resolve_model_source(name, init_kwargs)
    config = AutoConfig.from_pretrained(source.name_or_path, **source.file_kwargs)
    auto_class = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    return auto_class.from_pretrained(source.name_or_path, **source.model_kwargs(init_kwargs))


def load_tokenizer(model, model_name: str | None):
    """Load the tokenizer saved with the model, or explain how to pass one."""
    name = model_name or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        raise ValueError(
            "No tokenizer given and the model has no name to load one from: pass `tokenizer=` "
            "(or `processing_class=`), e.g. `AutoTokenizer.from_pretrained(...)`."
        )
    try:
        source = resolve_model_source(name)
        return AutoTokenizer.from_pretrained(source.name_or_path, **source.file_kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"No tokenizer given, and loading one from {name!r} failed ({error}). Pass `tokenizer=`."
        ) from error


def text_tokenizer(processing_class) -> PreTrainedTokenizerBase:
    """The tokenizer inside a processor, or the tokenizer itself."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(
            f"`tokenizer` must be a transformers tokenizer or a processor holding one, got "
            f"{type(processing_class).__name__}."
        )
    return tokenizer


def is_encoder_decoder(model) -> bool:
    """Whether the (possibly wrapped) model is an encoder-decoder."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "is_encoder_decoder", False))
