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
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.data.batching import by_length, lay_out_window
from itersft.data.collate import collate
from itersft.data.example import Example
from itersft.data.packing import pack, packing_pays
from itersft.trainer.loss import (
    SummedLoss,
    default_chunk_rows,
    label_positions,
    linear_cross_entropy_sum,
    separable_head,
)
from itersft.trainer.model_facts import inspect_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat"))
from gradient_reference import UpdateRecorder  # noqa: E402

LENGTHS = (3, 19, 5, 11, 2, 17)
GRAD = {"rtol": 1e-4, "atol": 1e-6}


def _samples(vocab: int):
    generator = torch.Generator().manual_seed(3)
    ids = [torch.randint(4, vocab, (n,), generator=generator) for n in LENGTHS]
    labels = [x.clone() for x in ids]
    labels[1][:8] = -100  # a masked prompt
    labels[3][:4] = -100
    return ids, labels


def _run(model_dir, model_class, tokenizer, tmp_path, batching, batch_size, accumulation, shuffle=True, **inputs):
    recorder = UpdateRecorder()
    config = IterativeSFTConfig(output_dir=str(tmp_path / batching), report_to="none", max_grad_norm=0.0,
                                learning_rate=1e-2, per_device_train_batch_size=batch_size,
                                gradient_accumulation_steps=accumulation, seed=7, batching=batching,
                                shuffle_samples=shuffle)
    trainer = IterativeSFTTrainer(model_class.from_pretrained(model_dir), config, tokenizer=tokenizer,
                                  callbacks=[recorder])
    return trainer.step(**inputs), recorder.grads


def _assert_same(result, reference):
    (stats, grads), (ref_stats, ref_grads) = result, reference
    assert stats["trained_tokens"] == ref_stats["trained_tokens"]
    assert stats["real_tokens"] == ref_stats["real_tokens"]
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


@pytest.mark.parametrize("batch_size,accumulation", [(2, 2), (2, 3)])
def test_seq2seq_sorted_matches_padded(seq2seq_dir, tokenizer, tmp_path, batch_size, accumulation):
    """Several micro-batches per window, short and long samples alternating (unshuffled), so regrouping by
    length changes the layout (less padding) and must not change the update. Seq2seq is never packed:
    "packed" means sorted here."""
    sources = ["a", "translate this long sentence", "bb", "hello there, how are you", "c", "a fairly long source"]
    targets = ["x", "a much longer target text", "w", "another long target", "v", "yet another target"]
    runs = {mode: _run(seq2seq_dir, AutoModelForSeq2SeqLM, tokenizer, tmp_path, mode, batch_size, accumulation,
                       shuffle=False, prompts=sources, completions=targets) for mode in ("padded", "sorted", "packed")}
    assert runs["padded"][0]["padded_tokens"] > runs["sorted"][0]["padded_tokens"]  # the layout did change
    assert runs["packed"][0]["padded_tokens"] == runs["sorted"][0]["padded_tokens"]
    _assert_same(runs["sorted"], runs["padded"])
    _assert_same(runs["packed"], runs["padded"])


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
    layout = lay_out_window([[whole, whole], [whole, with_hole]], "packed", True, 32, False)
    assert [packed for _, packed in layout] == [False, True]  # longest first: the sample with a hole leads
    assert "position_ids" in collate(*[batch for batch, packed in layout if packed], 0, False, True)
    # a model that does not pack (seq2seq, unchecked architectures) is always padded
    assert not any(packed for _, packed in lay_out_window([[whole, whole]], "packed", False, 32, False))


def test_packing_pays_for_mixed_lengths_not_for_similar_ones(causal_model):
    facts = inspect_model(causal_model)  # toy model: hidden 32, sdpa
    assert packing_pays([40, 3, 2, 5], facts.hidden_size, facts.flash_attention)
    assert not packing_pays([40, 39, 38, 40], facts.hidden_size, facts.flash_attention)
    causal_model.config._attn_implementation = "flash_attention_2"  # attended per sample: always pays
    facts = inspect_model(causal_model)
    assert facts.flash_attention and packing_pays([40, 39, 38, 40], facts.hidden_size, facts.flash_attention)


def test_packing_estimate_follows_measured_speed_under_the_masked_path():
    # Micro-batches timed on CPU, packed under transformers' block-diagonal mask against padded, on the
    # benchmark's hidden-256 model with and without grouped key/value heads (benchmarks/fit_packing_estimate.py).
    packed_faster = ([287, 274, 87, 160], [458, 404, 231, 36], [159, 118, 16, 142])  # the first: 3 * hidden padded
    padded_faster = ([329, 277, 264, 223], [139, 131, 124, 103], [374, 260, 199, 314])
    assert all(packing_pays(lengths, 256, False) for lengths in packed_faster)
    assert not any(packing_pays(lengths, 256, False) for lengths in padded_faster)


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


def test_a_chunk_of_logits_stays_under_the_allocators_mapping_ceiling():
    # glibc's malloc maps a block of 32 MiB or more fresh from the kernel on every allocation: a chunk that
    # large would be page-faulted in anew for every chunk of every micro-batch.
    for vocab in (260, 8192, 32000, 49152, 151936):
        assert default_chunk_rows(vocab) * vocab * 4 < 32 * 2**20


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
            summed_loss = SummedLoss(model, inspect_model(model), contextlib.nullcontext)
            assert (summed_loss.route(wrapped) == "head") == (route == "direct")
            loss = summed_loss(wrapped, batch)
            loss.backward()
            results[packed, route] = loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    reference_loss, reference_grads = results[False, "wrapped"]  # padded, full logits: the plain path
    for key, (loss, grads) in results.items():
        torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=0, msg=str(key))
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference_grads[name], **GRAD, msg=f"{key} {name}")


def test_separable_head_needs_a_plain_linear_head(causal_model, seq2seq_model):
    from peft import LoraConfig, get_peft_model

    def split(model):
        return separable_head(model, inspect_model(model))

    assert split(causal_model) == (causal_model.model, causal_model.lm_head)
    lora = get_peft_model(copy.deepcopy(causal_model), LoraConfig(r=2, target_modules=["q_proj"]))
    assert split(lora) is not None and inspect_model(lora).packs
    on_head = get_peft_model(copy.deepcopy(causal_model), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    assert split(on_head) is None
    assert split(seq2seq_model) is None and not inspect_model(seq2seq_model).packs


def test_a_hook_on_the_head_or_model_turns_the_shortcut_off(causal_model):
    """A forward hook added after the trainer is built must see every forward: no route may skip it."""
    summed_loss = SummedLoss(causal_model, inspect_model(causal_model), contextlib.nullcontext)
    assert summed_loss.route(causal_model) == "head"
    for module in (causal_model, causal_model.lm_head):
        handle = module.register_forward_hook(lambda *args: None)
        assert summed_loss.route(causal_model) == "logits_to_keep"
        handle.remove()
    assert summed_loss.route(causal_model) == "head"
