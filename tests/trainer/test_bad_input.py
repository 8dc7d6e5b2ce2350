"""Bad input raises one clear error naming the argument; unusable samples and updates are skipped."""

from __future__ import annotations

import pytest
import torch

from itersft import IterativeSFTConfig, IterativeSFTTrainer


@pytest.fixture
def trainer(tmp_path, causal_model, tokenizer):
    config = IterativeSFTConfig(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2)
    return IterativeSFTTrainer(causal_model, config, tokenizer=tokenizer)


def _weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


IDS = torch.tensor([5, 6, 7])

BAD_INPUTS = [
    ({}, TypeError, "no samples"),
    ({"input_ids": [IDS], "texts": ["a"]}, ValueError, "different input forms"),
    ({"input_ids": [IDS, IDS], "labels": [IDS]}, ValueError, "`input_ids` has 2, `labels` has 1"),
    ({"texts": []}, ValueError, "`texts` is empty"),
    ({"input_ids": []}, ValueError, "`input_ids` is empty"),
    ({"input_ids": [[5, 6, 7]]}, TypeError, r"`input_ids\[0\]` must be a 1-D torch.LongTensor, got list"),
    ({"input_ids": [torch.ones(2, 3, dtype=torch.long)]}, ValueError, r"`input_ids\[0\]` must be 1-D.*\(2, 3\)"),
    ({"input_ids": IDS}, ValueError, "`input_ids` must be a list"),
    ({"input_ids": [torch.tensor([1.0, 2.0])]}, TypeError, r"`input_ids\[0\]` must hold integer ids, got .*float32"),
    ({"input_ids": [torch.tensor([5, 100_000])]}, ValueError, r"`input_ids\[0\]` holds id 100000, outside"),
    ({"input_ids": [torch.tensor([5, -3])]}, ValueError, r"holds id -3, outside"),
    ({"texts": ["fine", 3]}, TypeError, r"`texts\[1\]` must be a str, got int"),
    ({"texts": "just one string"}, ValueError, "`texts` must be a list"),
    ({"input_ids": [IDS], "labels": [torch.tensor([5, 6])]}, ValueError, r"`labels\[0\]` has 2 entries but `input_ids"),
    ({"prompts": ["a"]}, ValueError, "`prompts` and `completions` go together"),
    ({"prompts": ["a", "b"], "completions": ["c"]}, ValueError, "`prompts` has 2, `completions` has 1"),
    ({"messages": [[{"role": "user", "content": "hi"}]]}, ValueError, "no assistant turn"),
    ({"messages": [["not a dict"]]}, ValueError, "list of"),
]


@pytest.mark.parametrize("given,error,message", BAD_INPUTS)
def test_bad_input_raises_a_clear_error_and_leaves_weights(trainer, causal_model, given, error, message):
    before = _weights(causal_model)
    with pytest.raises(error, match=message):
        trainer.step(**given)
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[n], p) for n, p in causal_model.named_parameters())


def test_every_problem_is_reported_at_once(trainer):
    with pytest.raises(ValueError) as raised:
        trainer.step(input_ids=[[1, 2], torch.tensor([1.0]), torch.ones(2, 2, dtype=torch.long)])
    message = str(raised.value)
    assert "`input_ids[0]`" in message and "`input_ids[1]`" in message and "`input_ids[2]`" in message


def test_all_masked_samples_are_skipped_and_counted(trainer, causal_model, caplog):
    labels = [torch.full((3,), -100), torch.tensor([-100, 6, 7])]
    stats = trainer.step(input_ids=[IDS, IDS], labels=labels)
    assert stats["samples"] == 1 and stats["skipped_samples"] == 1 and stats["trained_tokens"] == 2
    assert "skipped 1 of 2 samples" in caplog.text


def test_only_masked_samples_leave_weights_untouched(trainer, causal_model):
    before = _weights(causal_model)
    stats = trainer.step(input_ids=[IDS], labels=[torch.tensor([5, -100, -100])])  # only position 0: never a target
    assert stats["updates"] == 0 and stats["skipped_samples"] == 1 and stats["global_step"] == 0
    assert all(torch.equal(before[n], p) for n, p in causal_model.named_parameters())


def test_non_finite_loss_skips_the_update(trainer, causal_model, caplog):
    """A NaN in the forward pass (here: a poisoned weight's effect faked by a hook) must not reach the weights."""
    before = _weights(causal_model)
    handle = causal_model.get_output_embeddings().register_forward_hook(lambda m, i, out: out * float("nan"))
    stats = trainer.step(input_ids=[IDS, IDS])
    handle.remove()
    assert stats["skipped_updates"] == 1 and stats["updates"] == 0 and trainer.state.global_step == 0
    assert all(torch.equal(before[n], p) for n, p in causal_model.named_parameters())
    assert all(p.grad is None for p in causal_model.parameters())
    assert "non-finite" in caplog.text
    assert trainer.step(input_ids=[IDS, IDS])["updates"] == 1  # and training goes on


def test_non_finite_gradient_skips_the_update(trainer, causal_model):
    before = _weights(causal_model)
    weight = causal_model.get_input_embeddings().weight
    handle = weight.register_hook(lambda grad: grad * float("inf"))
    stats = trainer.step(input_ids=[IDS])
    handle.remove()
    assert stats["skipped_updates"] == 1 and stats["updates"] == 0
    assert all(torch.equal(before[n], p) for n, p in causal_model.named_parameters())
    assert all(torch.isfinite(p).all() for p in causal_model.parameters())


def test_datasets_column_is_accepted(trainer):
    from datasets import Dataset

    column = Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9]]}).with_format("torch")["input_ids"]
    assert trainer.step(input_ids=column)["samples"] == 2
    assert trainer.step(input_ids=(IDS, IDS))["samples"] == 2


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_narrow_integer_ids_with_valid_values_train_like_long_ones(tmp_path, causal_model, tokenizer, dtype):
    """The vocabulary check used to overflow narrow dtypes and reject valid ids."""
    import copy

    twin = copy.deepcopy(causal_model)
    config = IterativeSFTConfig(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2)
    narrow = IterativeSFTTrainer(causal_model, config, tokenizer=tokenizer).step(input_ids=[IDS.to(dtype)])
    wide = IterativeSFTTrainer(twin, config, tokenizer=tokenizer).step(input_ids=[IDS])
    assert narrow["loss"] == wide["loss"] and narrow["updates"] == 1


def test_an_empty_seq2seq_source_is_named(tmp_path, seq2seq_model, tokenizer):
    config = IterativeSFTConfig(output_dir=str(tmp_path), report_to="none")
    trainer = IterativeSFTTrainer(seq2seq_model, config, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"`texts\[1\]` \(the encoder's source\) tokenizes to no tokens"):
        trainer.step(texts=["fine", ""], texts_labels=["a", "b"])


def test_a_sample_longer_than_learned_positions_is_cut_with_a_warning(tmp_path, tokenizer, caplog):
    """GPT-2 learns one embedding per position: past `n_positions` it used to fail with an IndexError."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=32, n_layer=1, n_head=2))
    config = IterativeSFTConfig(output_dir=str(tmp_path), report_to="none")
    trainer = IterativeSFTTrainer(model, config, tokenizer=tokenizer)
    assert trainer.facts.max_positions == 16
    stats = trainer.step(texts=["a" * 40, "short"])
    assert stats["updates"] == 1 and stats["real_tokens"] == 16 + 6
    assert "1 sample(s) are longer than the model's 16 positions" in caplog.text
