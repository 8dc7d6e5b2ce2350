"""Packed rows attended sample by sample (`itersft.packed_attention`) learn exactly what each sample alone does.

The default `batching="auto"` packs a causal micro-batch into one row; on CPU, sdpa and eager models then
attend each sample's slice of the row on its own. These tests compare `step()`'s loss and gradients with
a hand-written reference (`tests/compat/gradient_reference.py`: each sample run alone on a copy of the
model, no padding, summed token loss over the window's label tokens), for sdpa and eager attention, with
and without activation checkpointing (where the row must fall back to transformers' block-diagonal mask,
since the forward runs again in backward outside the switch). Where per-sample attention cannot hold
(flash or flex kernels, `torch.compile`, accelerators, seq2seq) `applies` says no and the masked row,
or padding, is used; models with learned absolute positions (GPT-2) are never packed.

Model: the session's toy Llama (hidden 32, 2 layers, vocab 260) from `conftest.py`; a one-layer GPT-2
built from its config for learned positions.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from itersft import IterativeSFTConfig, IterativeSFTTrainer, packed_attention
from itersft.data.collate import collate
from itersft.data.example import Example
from itersft.trainer.loss import SummedLoss, label_positions
from itersft.trainer.model_facts import inspect_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat"))
from gradient_reference import (  # noqa: E402
    UpdateRecorder,
    assert_same_gradients,
    causal_label_count,
    causal_loss_sum,
    expected_update,
)

LENGTHS = (3, 19, 5, 11, 2, 17)


def _samples(vocab: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random ids of `LENGTHS`; samples 1 and 3 start with a masked prompt (-100 labels) of 8 and 4 tokens."""
    generator = torch.Generator().manual_seed(5)
    ids = [torch.randint(4, vocab, (n,), generator=generator) for n in LENGTHS]
    prompts = {1: 8, 3: 4}
    return ids, [torch.where(torch.arange(len(x)) < prompts.get(i, 0), -100, x) for i, x in enumerate(ids)]


def _config(tmp_path, **overrides) -> IterativeSFTConfig:
    settings = {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 2} | overrides
    return IterativeSFTConfig(output_dir=str(tmp_path), report_to="none", save_strategy="no", max_grad_norm=0.0,
                              learning_rate=1e-2, seed=11, **settings)


def _spy_on_the_switch(monkeypatch) -> list[int]:
    """Counts the packed forwards that `SummedLoss` switches to per-sample attention."""
    switched, real = [], packed_attention.attending_per_sample
    monkeypatch.setattr(packed_attention, "attending_per_sample", lambda model: switched.append(1) or real(model))
    return switched


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_default_packed_step_matches_each_sample_alone(causal_dir, tokenizer, tmp_path, monkeypatch, attention,
                                                       checkpointing):
    """One update over two packed micro-batches of three samples: loss and every gradient equal the
    per-sample reference. Without checkpointing the default (`auto`) packs and attends per sample; with
    it, `auto` would weigh packing against padding, so `packed` forces the row, attended under the mask."""
    assert IterativeSFTConfig.batching == "auto"  # the default is the one tested here
    switched = _spy_on_the_switch(monkeypatch)
    model = AutoModelForCausalLM.from_pretrained(causal_dir, attn_implementation=attention)
    recorder = UpdateRecorder()
    settings = {"activation_checkpointing": True, "batching": "packed"} if checkpointing else {}
    trainer = IterativeSFTTrainer(model, _config(tmp_path, **settings), tokenizer=tokenizer, callbacks=[recorder])
    ids, labels = _samples(len(tokenizer))

    stats = trainer.step(input_ids=ids, labels=labels)

    assert stats["updates"] == 1 and stats["padded_tokens"] == stats["real_tokens"] == sum(LENGTHS)  # packed
    assert len(switched) == (0 if checkpointing else 2)
    assert all(layer.gradient_checkpointing is checkpointing for layer in model.model.layers)
    assert model.config._attn_implementation == attention  # the switch is undone
    loss, grads = expected_update(model, recorder.params[0],
                                  [lambda m, x=x, y=y: causal_loss_sum(m, x, y) for x, y in zip(ids, labels)],
                                  causal_label_count(labels))
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


def test_torch_checkpoint_wrappers_keep_the_masked_row(causal_model):
    """FSDP-style `checkpoint_wrapper` around a layer re-runs it in backward too: no per-sample switch."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    causal_model.model.layers[0] = checkpoint_wrapper(causal_model.model.layers[0])
    assert not packed_attention.applies(causal_model)


def test_where_the_row_cannot_be_attended_per_sample_it_is_not(causal_model, seq2seq_model):
    facts = inspect_model(causal_model)
    summed_loss = SummedLoss(causal_model, facts, contextlib.nullcontext)
    assert packed_attention.applies(causal_model) and summed_loss.attends_per_sample(causal_model)
    assert not summed_loss.attends_per_sample(torch.compile(causal_model))  # a compiled graph misses the switch
    assert not packed_attention.applies(seq2seq_model) and not inspect_model(seq2seq_model).packs
    for kernel in ("flex_attention", "flash_attention_2"):  # transformers' kernels handle the packed row
        causal_model.config._attn_implementation = kernel
        assert inspect_model(causal_model).packs and not packed_attention.applies(causal_model)
    assert SummedLoss(causal_model, inspect_model(causal_model), None).attends_per_sample(causal_model)  # flash
    causal_model.config._attn_implementation = "sdpa"
    assert not packed_attention.applies(causal_model.to("meta"))  # accelerators: measured on CPU only


def test_learned_absolute_positions_are_never_packed(tokenizer, tmp_path):
    """GPT-2 reads positions from a learned table and builds no mask from `position_ids`: padded rows."""
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2))
    assert not inspect_model(model).packs and inspect_model(model).max_positions == 64
    trainer = IterativeSFTTrainer(model, _config(tmp_path, per_device_train_batch_size=2, shuffle_samples=False,
                                                 gradient_accumulation_steps=1), tokenizer=tokenizer)
    stats = trainer.step(input_ids=[torch.arange(4, 9), torch.arange(4, 20)])
    assert stats["padded_tokens"] == 2 * 16 and stats["real_tokens"] == 21


def test_packed_forward_goes_through_per_sample_kernels(causal_model, monkeypatch):
    """Every layer runs one causal sdpa call per sample's slice; the loss equals the samples run alone."""
    from transformers.integrations import sdpa_attention

    calls = []  # the query length of every sdpa call `attend_per_sample` makes
    real = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward",
                        lambda module, query, *a, **k: calls.append(query.shape[2]) or real(module, query, *a, **k))
    ids, labels = _samples(causal_model.config.vocab_size)
    examples = [Example(x, torch.ones_like(x), y) for x, y in zip(ids, labels)]
    batch = collate(examples, 0, False, packed=True)
    batch["loss_positions"], batch["loss_targets"] = label_positions(batch["labels"])
    batch["packed_lengths"] = LENGTHS
    loss = SummedLoss(causal_model, inspect_model(causal_model), contextlib.nullcontext)(causal_model, batch)
    assert calls == list(LENGTHS) * causal_model.config.num_hidden_layers
    assert causal_model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        alone = sum(F.cross_entropy(causal_model(input_ids=x[None]).logits[0, :-1], y[1:], reduction="sum")
                    for x, y in zip(ids, labels))
    torch.testing.assert_close(loss.detach(), alone, rtol=1e-5, atol=0)


def test_attending_per_sample_restores_the_setting_after_an_error(causal_model):
    with pytest.raises(RuntimeError, match="packed_lengths"):
        with packed_attention.attending_per_sample(causal_model):
            causal_model.model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=False)  # no packed_lengths given
    assert causal_model.config._attn_implementation == "sdpa"


def test_attend_per_sample_applies_a_sliding_window_longer_samples_exceed():
    """Segments of 7 and 3 tokens, window 4: the 7-token one gets the banded mask, the other plain causal.
    Reference: softmax attention written out, each sample alone."""
    torch.manual_seed(0)
    heads, dim, lengths, window = 2, 8, (7, 3), 4
    query, key, value = (torch.randn(1, heads, sum(lengths), dim) for _ in range(3))
    module = nn.Module()  # no `num_key_value_groups`: one key/value head per query head
    got, _ = packed_attention.attend_per_sample(module, query, key, value, None, packed_lengths=lengths,
                                                sliding_window=window, scaling=dim**-0.5, dropout=0.0)
    expected, start = [], 0
    for length in lengths:
        q, k, v = (t[0, :, start : start + length] for t in (query, key, value))
        distance = torch.arange(length)[:, None] - torch.arange(length)[None, :]
        allowed = (distance >= 0) & (distance < window)
        scores = (q @ k.transpose(-1, -2) * dim**-0.5).masked_fill(~allowed, float("-inf"))
        expected.append((scores.softmax(-1) @ v).transpose(0, 1))  # (length, heads, dim)
        start += length
    torch.testing.assert_close(got[0], torch.cat(expected), rtol=1e-5, atol=1e-6)
