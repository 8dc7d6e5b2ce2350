"""Tiny models and a byte-level tokenizer built offline, for the demo, the tests and the benchmarks.

Nothing here downloads: the tokenizer is a byte-level BPE with no merges built with the `tokenizers`
library (every string round-trips exactly), and the models are built from a config with random
weights. Both are written with `save_pretrained` so callers exercise the same `from_pretrained(path)`
code path that real hub ids and local checkpoints take.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    LlamaConfig,
    PreTrainedTokenizerFast,
    T5Config,
)

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

# A ChatML-style template: each turn is "<|role|>content</s>"; the generation prompt opens an
# assistant turn. Kept minimal so the tests can predict exactly which tokens are assistant tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tokenizer(pad_is_eos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + 4 specials) that needs no training data.

    With `pad_is_eos` the pad token is the EOS token, the configuration that made TRL mask every EOS.
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = list(SPECIAL_TOKENS.values())
    vocab = {token: index for index, token in enumerate(specials + sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    special = dict(SPECIAL_TOKENS)
    if pad_is_eos:
        special["pad_token"] = special["eos_token"]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_causal_lm(tokenizer: PreTrainedTokenizerFast, hidden_size: int = 32, num_layers: int = 2,
                    seed: int = 0, **overrides):
    """A Llama-style decoder with random weights, sized by `hidden_size` and `num_layers`.

    `overrides` replace any `LlamaConfig` value set here (e.g. `num_attention_heads=2`)."""
    config = LlamaConfig(**{
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": max(1, hidden_size // 16),
        "num_key_value_heads": max(1, hidden_size // 16),
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": True,
        **overrides,
    })
    return _seeded(AutoModelForCausalLM.from_config, config, seed)


def build_seq2seq_lm(tokenizer: PreTrainedTokenizerFast, hidden_size: int = 32, num_layers: int = 2,
                     seed: int = 0, **overrides):
    """A T5-style encoder-decoder with random weights."""
    config = T5Config(**{
        "vocab_size": len(tokenizer),
        "d_model": hidden_size,
        "d_kv": 16,
        "d_ff": hidden_size * 2,
        "num_layers": num_layers,
        "num_decoder_layers": num_layers,
        "num_heads": max(1, hidden_size // 16),
        "dropout_rate": 0.0,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
        **overrides,
    })
    return _seeded(AutoModelForSeq2SeqLM.from_config, config, seed)


def save_toy(directory: str | Path, kind: str = "causal", **model_kwargs) -> Path:
    """Build a toy model (`kind` is "causal" or "seq2seq") and its tokenizer, save both to `directory`."""
    builders = {"causal": build_causal_lm, "seq2seq": build_seq2seq_lm}
    if kind not in builders:
        raise ValueError(f"`kind` must be one of {sorted(builders)}, got {kind!r}.")
    directory = Path(directory)
    tokenizer = build_tokenizer()
    builders[kind](tokenizer, **model_kwargs).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _seeded(factory, config, seed: int):
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory(config)
