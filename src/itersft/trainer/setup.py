"""How `IterativeSFTTrainer.__init__` settles what it was given: settings, model, tokenizer, adapters.

Plain functions on the constructor's arguments, kept apart from the trainer so that each reads alone:

* `resolve_settings`: the iterative-SFT settings, from `args` and the constructor's own arguments;
* `load_model` / `load_tokenizer`: a model given by name (hub id, local path, `.gguf` file or short
  name: `itersft.model_sources`) is loaded as a causal or a seq2seq LM according to its config (TRL
  0.23 always loaded a causal LM); a missing tokenizer is loaded from the model's name;
* `wrap_with_peft`, `enable_activation_checkpointing`: applied before the engine wraps the model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    TrainingArguments,
)

from itersft.checks import Problems
from itersft.config import (
    ITERATIVE_DEFAULTS,
    IterativeSFTConfig,
    check_max_length,
    check_training_arguments,
    check_truncation_mode,
    setting,
)
from itersft.model_sources import resolve_model_source


class Default:
    """The default of a constructor argument that `args` may also set.

    It prints as the value it stands for (so `help(IterativeSFTTrainer)` shows `truncation_mode='keep_end'`),
    but it is a distinct object: an argument the caller passed, even with the same value, is told apart
    from one left out, and so is honoured (or reported as a conflict) instead of silently losing to `args`.
    """

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Settings:
    """The iterative-SFT settings a trainer runs with (see `IterativeSFTConfig` for each field)."""

    max_length: int | None
    truncation_mode: str
    optimize_device_cache: bool
    shuffle_samples: bool
    add_eos_token: bool
    batching: str
    guard_updates: bool


def resolve_settings(args: TrainingArguments | None, **given: Any) -> tuple[TrainingArguments, Settings]:
    """The training arguments to use and the settings merged from them and the constructor's `given` ones.

    An argument left at its `Default` (or `max_length=None`) takes the value in `args`. One passed
    explicitly wins over `args`' default value, and is an error when `args` sets a different value: a
    setting given twice, differently, is not silently resolved. `args` is never modified; None gives
    `IterativeSFTConfig()`'s defaults.
    """
    if args is None:
        args = IterativeSFTConfig()
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"`args` must be an IterativeSFTConfig or TrainingArguments, got {type(args).__name__}.")
    check_training_arguments(args)
    problems = Problems("IterativeSFTTrainer arguments")
    values = {f.name: setting(args, f.name) for f in fields(Settings)}
    for name, value in given.items():
        if isinstance(value, Default) or (name == "max_length" and value is None):
            continue
        configured = values[name]
        if configured != ITERATIVE_DEFAULTS[name] and configured != value:
            problems.add(f"`{name}` is {value!r} here but {configured!r} in `args`: set it in one place.")
        values[name] = value
    check_max_length(values["max_length"], problems)
    check_truncation_mode(values["truncation_mode"], problems)
    problems.boolean("optimize_device_cache", values["optimize_device_cache"])
    problems.raise_if_any()
    return args, Settings(**values)


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
        source = resolve_model_source(name, kind="tokenizer")
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


def choose_pad_token_id(tokenizer, model) -> int:
    """The id used to pad batches; its positions never carry loss, so any valid id is correct."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, getattr(model.config, "pad_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def wrap_with_peft(model, peft_config):
    """Wrap the model with adapters from `peft_config`; only the adapters will train."""
    try:
        from peft import PeftModel, get_peft_model
    except ImportError as error:
        raise ImportError("`peft_config` needs the peft package: pip install 'itersft[peft]'.") from error
    if isinstance(model, PeftModel):
        raise ValueError("The model is already a PeftModel and `peft_config` was also given: give one.")
    return get_peft_model(model, peft_config)


def wants_activation_checkpointing(args: TrainingArguments) -> bool:
    """`activation_checkpointing` (transformers 5) or its deprecated alias `gradient_checkpointing`."""
    return bool(getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", False))


def enable_activation_checkpointing(model, args: TrainingArguments) -> None:
    """Apply activation checkpointing (TRL 0.23 accepted `gradient_checkpointing` and never applied it).

    Re-entrant checkpointing is off by default: it needs inputs that require grad, which frozen
    embeddings (PEFT) do not provide.
    """
    kwargs = dict(getattr(args, "activation_checkpointing_kwargs", None)
                  or getattr(args, "gradient_checkpointing_kwargs", None) or {"use_reentrant": False})
    every_n_layers, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None,
                                              every_n_layers=every_n_layers, offload=offload)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
