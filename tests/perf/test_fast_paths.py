"""The fast paths of `step()` learn exactly what the plain padded, full-logits path learns.

`batching="sorted"` (regrouping by length inside an accumulation window), `"packed"` (one
padding-free row per micro-batch) and `"auto"` (sorted, each micro-batch packed or padded) must give
the same loss and gradients as `"padded"`, and the loss at label positions only
(`linear_cross_entropy_sum` on the decoder's hidden states) the same as full logits. Tolerance:
float32 throughout, rtol 1e-4 / atol 1e-6 on gradients and rel 1e-5 on losses (the shapes of the
matmuls differ between layouts, so results agree to rounding, not bit for bit).

Models: the session's toy Llama (hidden 32, 2 layers, vocab 260) and toy T5 from `conftest.py`.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, TrainerCallback

from itersft import IterativeSFTConfig, IterativeSFTTrainer, packed_attention
from itersft.data.batching import by_length
from itersft.data.collate import collate
from itersft.data.example import Example
from itersft.data.packing import pack, packing_pays, supports_packing
from itersft.loss import causal_summed_loss, label_positions, linear_cross_entropy_sum, separable_head

LENGTHS = (3, 19, 5, 11, 2, 17)
GRAD = {"rtol": 1e-4, "atol": 1e-6}


class GradientRecorder(TrainerCallback):
    """Copies every parameter's gradient just before each optimizer update."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def _samples(vocab: int):
    generator = torch.Generator().manual_seed(3)
    ids = [torch.randint(4, vocab, (n,), generator=generator) for n in LENGTHS]
    labels = [x.clone() for x in ids]
    labels[1][:8] = -100  # a masked prompt
    labels[3][:4] = -100
    return ids, labels


def _run(model_dir, model_class, tokenizer, tmp_path, batching, batch_size, accumulation, **inputs):
    recorder = GradientRecorder()
    config = IterativeSFTConfig(output_dir=str(tmp_path / batching), report_to="none", max_grad_norm=0.0,
                                learning_rate=1e-2, per_device_train_batch_size=batch_size,
                                gradient_accumulation_steps=accumulation, seed=7, batching=batching)
    trainer = IterativeSFTTrainer(model_class.from_pretrained(model_dir), config, tokenizer=tokenizer,
                                  callbacks=[recorder])
    return trainer.step(**inputs), recorder.grads


def _assert_same(result, reference):
    (stats, grads), (ref_stats, ref_grads) = result, reference
    assert stats["trained_tokens"] == ref_stats["trained_tokens"]
    assert stats["total_tokens"] == ref_stats["total_tokens"]
    assert stats["loss"] == pytest.approx(ref_stats["loss"], rel=1e-5)
    assert len(grads) == len(ref_grads)
    for update, ref_update in zip(grads, ref_grads):
        assert update.keys() == ref_update.keys()
        for name, grad in update.items():
            torch.testing.assert_close(grad, ref_update[name], **GRAD, msg=name)


@pytest.mark.parametrize("batch_size,accumulation", [(6, 1), (2, 3)])
def test_causal_sorted_and_packed_match_padded(causal_dir, tokenizer, tmp_path, batch_size, accumulation):
    ids, labels = _samples(len(tokenizer))
    runs = {mode: _run(causal_dir, AutoModelForCausalLM, tokenizer, tmp_path, mode, batch_size, accumulation,
                       input_ids=ids, labels=labels) for mode in ("padded", "sorted", "packed", "auto")}
    assert runs["packed"][0]["padded_tokens"] == sum(LENGTHS)  # no padding computed at all
    if accumulation > 1:  # several micro-batches per window: regrouping by length pads less
        assert runs["padded"][0]["padded_tokens"] > runs["sorted"][0]["padded_tokens"] > sum(LENGTHS)
    _assert_same(runs["sorted"], runs["padded"])
    _assert_same(runs["packed"], runs["padded"])
    _assert_same(runs["auto"], runs["padded"])


@pytest.mark.parametrize("batch_size,accumulation", [(4, 1), (2, 2)])
def test_seq2seq_sorted_matches_padded(seq2seq_dir, tokenizer, tmp_path, batch_size, accumulation):
    sources = ["a", "translate this long sentence", "bb", "hello there"]
    targets = ["x", "y z", "a much longer target text", "w"]
    runs = {mode: _run(seq2seq_dir, AutoModelForSeq2SeqLM, tokenizer, tmp_path, mode, batch_size, accumulation,
                       prompts=sources, completions=targets) for mode in ("padded", "packed")}
    _assert_same(runs["packed"], runs["padded"])  # seq2seq is never packed: "packed" means sorted here


def test_packed_row_attends_within_each_sample_only(causal_model):
    """transformers reads the position_ids restarts as boundaries: each sample's hidden states in the
    packed row equal those of the sample run alone."""
    ids, labels = _samples(causal_model.config.vocab_size)
    examples = [Example(x, torch.ones_like(x), y) for x, y in zip(ids, labels)]
    row = pack(examples)
    assert row["position_ids"].tolist()[0][:LENGTHS[0] + 2] == [0, 1, 2, 0, 1]
    assert all(row["labels"][0, start] == -100 for start in (0, 3, 22, 27, 38, 40))
    with torch.no_grad():
        # use_cache=False: with a cache, transformers does not look for packed samples
        packed = causal_model.model(input_ids=row["input_ids"], position_ids=row["position_ids"],
                                    use_cache=False).last_hidden_state
        alone = torch.cat([causal_model.model(input_ids=x[None]).last_hidden_state[0] for x in ids])
    torch.testing.assert_close(packed[0], alone, rtol=1e-5, atol=1e-5)


def test_samples_with_inner_padding_are_not_packed():
    with_hole = Example(torch.tensor([5, 6, 7]), torch.tensor([1, 0, 1]), torch.tensor([5, -100, 7]))
    whole = Example(torch.tensor([8, 9]), torch.ones(2, dtype=torch.long), torch.tensor([8, 9]))
    assert "position_ids" in collate([whole, whole], 0, False, True)
    assert "attention_mask" in collate([whole, with_hole], 0, False, True)
    assert "attention_mask" in collate([whole, whole], 0, True, True)  # seq2seq: always padded


def test_packing_pays_wherever_the_row_is_attended_per_sample(causal_model):
    # toy model: hidden 32, sdpa, attended per sample (itersft.packed_attention): packing always pays
    assert packed_attention.applies(causal_model)
    assert packing_pays([40, 39, 38, 40], causal_model)
    # activation checkpointing re-runs the forward in backward: the row is attended whole, so the cost model decides
    causal_model.activation_checkpointing_enable({"use_reentrant": False})
    assert not packed_attention.applies(causal_model)
    assert packing_pays([40, 3, 2, 5], causal_model)
    assert not packing_pays([40, 39, 38, 40], causal_model)
    causal_model.config._attn_implementation = "flash_attention_2"  # attended per sample by transformers
    assert packing_pays([40, 39, 38, 40], causal_model)


def test_per_sample_attention_is_for_cpu_models_only(causal_model):
    assert packed_attention.applies(causal_model)
    assert not packed_attention.applies(causal_model.to("meta"))  # any non-CPU device: the masked row stays


def test_by_length_regroups_within_the_window_only():
    window = [[3, 9], [1, 7], [5]]
    assert by_length(window, lambda n: n) == [[9, 7], [5, 3], [1]]


def test_label_positions_are_the_shifted_labels():
    labels = torch.tensor([[-100, 5, 6, -100], [7, -100, 8, 9]])
    positions, targets = label_positions(labels)
    assert positions.tolist() == [0, 1, 5, 6] and targets.tolist() == [5, 6, 8, 9]


@pytest.mark.parametrize("bias", [False, True])
def test_linear_cross_entropy_sum_matches_full_logits(bias):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    head = nn.Linear(16, 50, bias=bias)
    targets = torch.randint(0, 50, (37,))
    expected = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    expected_grads = torch.autograd.grad(expected * 0.3, [hidden, *head.parameters()])
    got = linear_cross_entropy_sum(hidden, head.weight, head.bias, targets, chunk_rows=8)  # five chunks
    got_grads = torch.autograd.grad(got * 0.3, [hidden, *head.parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for value, reference in zip(got_grads, expected_grads):
        torch.testing.assert_close(value, reference, **GRAD)


@pytest.mark.parametrize("lora", [False, True])
def test_label_position_loss_matches_full_logits_and_wrapped_paths(causal_model, lora):
    """The decoder + chunked head path, the `logits_to_keep` path a wrapper (e.g. DDP) takes, and full
    logits give the same loss and gradients, padded and packed, also through a LoRA-wrapped model."""
    if lora:
        from peft import LoraConfig, get_peft_model

        causal_model = get_peft_model(causal_model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                               init_lora_weights=False))
    ids, labels = _samples(causal_model.config.vocab_size)
    examples = [Example(x, torch.ones_like(x), y) for x, y in zip(ids, labels)]

    class Wrapper(nn.Module):  # stands in for DDP: the forward must go through it
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    results = {}
    for packed in (False, True):
        batch = collate(examples, 0, False, packed)
        batch["loss_positions"], batch["loss_targets"] = label_positions(batch["labels"])
        for route in ("direct", "wrapped"):
            model = copy.deepcopy(causal_model)
            wrapped = model if route == "direct" else Wrapper(model)
            assert (separable_head(model, wrapped) is not None) == (route == "direct")
            loss = causal_summed_loss(model, wrapped, batch, contextlib.nullcontext)
            loss.backward()
            results[packed, route] = loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    reference_loss, reference_grads = results[False, "wrapped"]  # padded, full logits: the plain path
    for key, (loss, grads) in results.items():
        torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=0, msg=str(key))
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference_grads[name], **GRAD, msg=f"{key} {name}")


def test_separable_head_needs_a_plain_linear_head(causal_model, seq2seq_model):
    from peft import LoraConfig, get_peft_model

    assert separable_head(causal_model, causal_model) == (causal_model.model, causal_model.lm_head)
    lora = get_peft_model(copy.deepcopy(causal_model), LoraConfig(r=2, target_modules=["q_proj"]))
    assert separable_head(lora, lora) is not None and supports_packing(lora)
    on_head = get_peft_model(copy.deepcopy(causal_model), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    assert separable_head(on_head, on_head) is None
    assert separable_head(seq2seq_model, seq2seq_model) is None and not supports_packing(seq2seq_model)


def test_packed_forward_attends_per_sample_and_restores_the_model(causal_model, monkeypatch):
    """A packed row of an sdpa model goes through `attend_per_sample` (each sample's slice alone, a causal
    kernel) and matches the samples run alone; the model's attention setting is back to sdpa afterwards."""
    from transformers.integrations import sdpa_attention

    calls = []  # the query length of every sdpa call `attend_per_sample` makes
    real = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward",
                        lambda module, query, *a, **k: calls.append(query.shape[2]) or real(module, query, *a, **k))
    ids, labels = _samples(causal_model.config.vocab_size)
    examples = [Example(x, torch.ones_like(x), y) for x, y in zip(ids, labels)]
    batch = collate(examples, 0, False, packed=True)
    assert batch["packed_lengths"] == LENGTHS
    batch["loss_positions"], batch["loss_targets"] = label_positions(batch["labels"])
    loss = causal_summed_loss(causal_model, causal_model, batch, contextlib.nullcontext)
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
