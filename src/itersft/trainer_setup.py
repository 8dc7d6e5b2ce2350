"""How `IterativeSFTTrainer.__init__` settles its inputs: the settings, the pad id, adapters, checkpointing.

Plain functions on the constructor's arguments, kept apart from the trainer so that each reads alone.
"""

from __future__ import annotations

from transformers import TrainingArguments

from itersft.config import TRUNCATION_MODES, IterativeSFTConfig


def resolve_settings(args, max_length, truncation_mode, optimize_device_cache) -> tuple[TrainingArguments, dict]:
    """The config to use and the iterative-SFT settings merged from it and the constructor.

    A plain `TrainingArguments` gets `IterativeSFTConfig`'s defaults for the fields it lacks. A setting
    given differently in the constructor and in `args` is an error, not a silent choice. `args` is
    not modified.
    """
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"`truncation_mode` must be one of {TRUNCATION_MODES}, got {truncation_mode!r}.")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"`max_length` must be a positive int or None, got {max_length!r}.")
    if args is None:
        args = IterativeSFTConfig()
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"`args` must be an IterativeSFTConfig or TrainingArguments, got {type(args).__name__}.")
    problems = []
    configured = getattr(args, "max_length", None)
    if max_length is not None and configured is not None and max_length != configured:
        problems.append(f"`max_length` is {max_length} here but {configured} in `args`")
    configured_mode = getattr(args, "truncation_mode", "keep_end")
    if truncation_mode != "keep_end" and configured_mode != "keep_end" and truncation_mode != configured_mode:
        problems.append(f"`truncation_mode` is {truncation_mode!r} here but {configured_mode!r} in `args`")
    if problems:
        raise ValueError("Conflicting settings: " + "; ".join(problems) + ". Set each in one place.")
    return args, {
        "max_length": max_length if max_length is not None else configured,
        "truncation_mode": truncation_mode if truncation_mode != "keep_end" else configured_mode,
        "optimize_device_cache": optimize_device_cache or getattr(args, "optimize_device_cache", False),
        "shuffle_samples": getattr(args, "shuffle_samples", True),
        "add_eos_token": getattr(args, "add_eos_token", True),
        "batching": getattr(args, "batching", "auto"),
    }


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
