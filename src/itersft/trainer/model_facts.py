"""What the trainer needs to know about its model, decided once when the trainer is built.

`step()` takes fast paths only where they are provably the same computation as the plain one, and
whether they are depends on fixed properties of the model: its architecture, its attention kernel, its
adapters, its head. `ModelFacts` holds them, so no micro-batch re-inspects the model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

# `model_type`s checked in the transformers 5 source for two properties:
# * `...ForCausalLM.forward` is exactly `logits = lm_head(model(...).last_hidden_state)`: no logit
#   scaling or soft-capping (which e.g. gemma2, granite and cohere apply), so the loss may be computed
#   from the decoder's hidden states at the label positions only (`loss.causal_summed_loss`);
# * the decoder builds its attention mask with `masking_utils.create_causal_mask` (or the sliding-window
#   variant) from `position_ids`, so a packed row of several samples keeps them apart (`data/packing`).
CHECKED_DECODER_TYPES = frozenset({
    "gemma", "llama", "mistral", "olmo", "olmo2", "phi", "phi3", "qwen2", "qwen3", "smollm3", "stablelm",
    "starcoder2",
})
# Attention implementations that read packed-sequence boundaries from `position_ids` (the mask functions
# above, or flash-attention's variable-length path).
PACKABLE_ATTENTION = frozenset({"eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"})


@dataclass(frozen=True)
class ModelFacts:
    """Fixed properties of a (possibly PEFT-wrapped) model, read once by `inspect_model`.

    Attributes:
        is_encoder_decoder: seq2seq (encoder source, decoder target) rather than causal.
        base: the transformers model under any PEFT wrapper (for its config and helper methods).
        adapters: the model is a `PeftModel`: only its adapters train, and checkpoints hold them alone.
        vocab_size: rows of the input embedding: every token id must be below it.
        hidden_size: the model width (for packing's cost estimate); 0 when the config has none.
        packs: a causal decoder whose attention reads sample boundaries from `position_ids`, without a
            prompt-learning adapter (which prepends virtual tokens): packed rows are exact.
        flash_attention: attention runs a flash-attention kernel (a packed row then costs no more than
            the samples apart).
        checked_head: the architecture's forward is `lm_head(decoder(...))` and nothing else; whether the
            head is a plain `nn.Linear` is checked by `loss.separable_head` after the engine wraps it.
        takes_logits_to_keep: the forward can return logits at chosen positions only.
        max_positions: the longest sequence the model can read, where it learned one embedding per
            position (GPT-2, OPT, BART): a longer one would index past the table. None where positions
            are relative or rotary (Llama, Qwen, T5), which have no hard limit.
    """

    is_encoder_decoder: bool
    base: nn.Module
    adapters: bool
    vocab_size: int
    hidden_size: int
    packs: bool
    flash_attention: bool
    checked_head: bool
    takes_logits_to_keep: bool
    max_positions: int | None


def inspect_model(model: nn.Module) -> ModelFacts:
    """Read the facts of `model`, a `PreTrainedModel` or a `PeftModel` wrapping one."""
    peft_config = getattr(model, "active_peft_config", None)
    prompt_learning = bool(getattr(peft_config, "is_prompt_learning", False))
    base = model.get_base_model() if peft_config is not None else model
    config = base.config
    is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    model_type = getattr(config, "model_type", None)
    attention = str(getattr(config, "_attn_implementation", "") or "")
    cls = type(base)
    return ModelFacts(
        is_encoder_decoder=is_encoder_decoder,
        base=base,
        adapters=peft_config is not None,
        vocab_size=model.get_input_embeddings().num_embeddings,
        hidden_size=int(getattr(config, "hidden_size", 0) or 0),
        packs=(not is_encoder_decoder and not prompt_learning and model_type in CHECKED_DECODER_TYPES
               and attention in PACKABLE_ATTENTION),
        flash_attention=attention.startswith("flash"),
        checked_head=(not prompt_learning and model_type in CHECKED_DECODER_TYPES
                      and cls.__module__.startswith("transformers.models.") and cls.__name__.endswith("ForCausalLM")),
        takes_logits_to_keep=not prompt_learning and _forward_takes(cls, "logits_to_keep"),
        max_positions=_learned_positions(base),
    )


# Module names transformers gives learned absolute position embeddings (GPT-2 and GPT-Neo `wpe`, OPT and
# BART `embed_positions`, BERT-style `position_embeddings`).
_POSITION_EMBEDDINGS = ("wpe", "embed_positions", "position_embeddings")


def _learned_positions(model: nn.Module) -> int | None:
    """The configured position limit when the model holds a learned position table, else None."""
    learned = any(isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in _POSITION_EMBEDDINGS
                  for name, module in model.named_modules())
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(limit) if learned and limit else None


def _forward_takes(cls: type, name: str) -> bool:
    try:
        return name in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False
