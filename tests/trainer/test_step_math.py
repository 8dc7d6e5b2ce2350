"""step() computes the right loss and gradients: checked against a hand-written reference.

The reference runs each sample alone through the same model (no padding, no batching), sums the
cross-entropy of every label token and divides by the total label count of the window. Samples have
very different lengths, so averaging per micro-batch (TRL 0.23) or dropping labels would differ.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.toy import build_causal_lm, build_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat"))
from gradient_reference import UpdateRecorder, causal_label_count, causal_loss_sum, expected_update  # noqa: E402

LENGTHS = (3, 11, 5, 17)


def _config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), report_to="none", max_grad_norm=0.0, learning_rate=1e-2,
                  per_device_train_batch_size=4, gradient_accumulation_steps=1, seed=7)
    values.update(overrides)
    return IterativeSFTConfig(**values)


def _samples(vocab: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=generator) for n in LENGTHS]


def _reference(model, input_ids, labels):
    """Token-mean loss over all samples and its gradients, one sample at a time, no padding
    (`gradient_reference.expected_update`)."""
    losses = [lambda m, ids=ids, lab=lab: causal_loss_sum(m, ids, lab) for ids, lab in zip(input_ids, labels)]
    return expected_update(model, None, losses, causal_label_count(labels))


@pytest.mark.parametrize("batch_size,accumulation", [(4, 1), (1, 4), (2, 2), (3, 2)])
def test_window_loss_and_gradients_match_reference(tmp_path, causal_model, tokenizer, batch_size, accumulation):
    input_ids = _samples(len(tokenizer))
    labels = [ids.clone() for ids in input_ids]
    labels[1][:6] = -100  # a masked prompt, honoured exactly
    expected_loss, expected_grads = _reference(causal_model, input_ids, labels)

    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, _config(tmp_path, per_device_train_batch_size=batch_size,
                                                        gradient_accumulation_steps=accumulation),
                                  tokenizer=tokenizer, callbacks=[recorder])
    stats = trainer.step(input_ids=input_ids, labels=labels)

    assert stats["updates"] == 1 and trainer.state.global_step == 1
    assert stats["trained_tokens"] == sum(int((lab[1:] != -100).sum()) for lab in labels)
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5)
    (grads,) = recorder.grads
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_partial_last_window_still_updates(tmp_path, causal_model, tokenizer):
    """5 micro-batches with accumulation 2: three updates, the last on one micro-batch; nothing pending."""
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, _config(tmp_path, per_device_train_batch_size=1,
                                                        gradient_accumulation_steps=2),
                                  tokenizer=tokenizer, callbacks=[recorder])
    stats = trainer.step(input_ids=_samples(len(tokenizer)) + [torch.tensor([5, 6, 7])])
    assert stats["updates"] == 3 and trainer.state.global_step == 3
    assert all(p.grad is None for p in causal_model.parameters())


def test_real_eos_is_learned_when_pad_is_eos(tmp_path):
    """With pad == eos, padding is found by the attention mask, so a real EOS still carries loss."""
    tokenizer = build_tokenizer(pad_is_eos=True)
    model = build_causal_lm(tokenizer)
    eos = tokenizer.eos_token_id
    input_ids = [torch.tensor([10, 11, eos]), torch.tensor([12, 13, 14, 15, eos])]
    expected_loss, _ = _reference(model, input_ids, [ids.clone() for ids in input_ids])
    trainer = IterativeSFTTrainer(model, _config(tmp_path), tokenizer=tokenizer)
    stats = trainer.step(input_ids=input_ids)
    assert stats["trained_tokens"] == 2 + 4  # every EOS counted, padding of the short row not
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_padding_in_attention_mask_is_not_learned(tmp_path, causal_model, tokenizer):
    ids = torch.tensor([10, 11, 12, 0, 0])
    mask = torch.tensor([1, 1, 1, 0, 0])
    trainer = IterativeSFTTrainer(causal_model, _config(tmp_path), tokenizer=tokenizer)
    assert trainer.step(input_ids=[ids], attention_mask=[mask])["trained_tokens"] == 2


def test_prompts_completions_mask_the_prompt(tmp_path, causal_model, tokenizer):
    prompt, completion = "12+34=", "46"
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor(prompt_ids + completion_ids)
    labels = torch.tensor([-100] * len(prompt_ids) + completion_ids)
    expected_loss, _ = _reference(causal_model, [ids], [labels])
    trainer = IterativeSFTTrainer(causal_model, _config(tmp_path), tokenizer=tokenizer)
    stats = trainer.step(prompts=[prompt], completions=[completion])
    assert stats["trained_tokens"] == len(completion_ids)
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_messages_train_assistant_turns_only(tmp_path, causal_model, tokenizer):
    conversation = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    labels = torch.full_like(ids, -100)
    eos = tokenizer.eos_token_id
    # Each assistant turn is "<content></s>" right after "<|assistant|>": find both by position.
    for content in ("4", "6"):
        turn = tokenizer("<|assistant|>" + content, add_special_tokens=False)["input_ids"]
        for start in range(len(ids) - len(turn)):
            if ids[start : start + len(turn)].tolist() == turn and ids[start + len(turn)] == eos:
                first = start + len(turn) - 1
                labels[first : start + len(turn) + 1] = ids[first : start + len(turn) + 1]
    assert int((labels != -100).sum()) == 4
    expected_loss, _ = _reference(causal_model, [ids], [labels])
    trainer = IterativeSFTTrainer(causal_model, _config(tmp_path), tokenizer=tokenizer)
    stats = trainer.step(messages=[conversation])
    assert stats["trained_tokens"] == 4
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_texts_learn_every_token_plus_eos(tmp_path, causal_model, tokenizer):
    text = "hello"
    ids = torch.tensor(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])
    expected_loss, _ = _reference(causal_model, [ids], [ids.clone()])
    trainer = IterativeSFTTrainer(causal_model, _config(tmp_path), tokenizer=tokenizer)
    stats = trainer.step(texts=[text])
    assert stats["trained_tokens"] == len(ids) - 1
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5)


@pytest.mark.parametrize("mode,kept", [("keep_end", slice(-4, None)), ("keep_start", slice(0, 4))])
def test_max_length_truncates_the_sequence_axis(tmp_path, causal_model, tokenizer, mode, kept):
    """Every sample keeps its row; each is cut to max_length tokens from the chosen end."""
    input_ids = _samples(len(tokenizer))
    expected_loss, _ = _reference(causal_model, [ids[kept] for ids in input_ids], [ids[kept] for ids in input_ids])
    trainer = IterativeSFTTrainer(causal_model, _config(tmp_path, max_length=4, truncation_mode=mode),
                                  tokenizer=tokenizer)
    stats = trainer.step(input_ids=input_ids)
    assert stats["samples"] == len(input_ids)
    assert stats["real_tokens"] == 4 * len(input_ids) - 1  # the 3-token sample stays whole
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_texts_labels_are_the_causal_targets(tmp_path, causal_model, tokenizer):
    """The model learns `texts_labels` token for token (TRL 0.23 tokenised the labels from `texts`)."""
    before = copy.deepcopy(causal_model)
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, _config(tmp_path), tokenizer=tokenizer, callbacks=[recorder])
    with pytest.raises(ValueError, match="prompts"):
        trainer.step(texts=["abcdef"], texts_labels=["ab"])
    stats = trainer.step(texts=["abcdef"], texts_labels=["abcdeg"])
    ids, targets = (torch.tensor(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])
                    for text in ("abcdef", "abcdeg"))
    expected_loss, expected_grads = _reference(before, [ids], [targets])
    copied_loss, _ = _reference(before, [ids], [ids])  # what learning `texts` itself would give
    assert stats["updates"] == 1 and stats["trained_tokens"] == len(ids) - 1
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5) and stats["loss"] != pytest.approx(copied_loss)
    for name, grad in recorder.grads[0].items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_seq2seq_truncates_source_and_target(tmp_path, seq2seq_model, tokenizer):
    trainer = IterativeSFTTrainer(seq2seq_model, _config(tmp_path, max_length=3), tokenizer=tokenizer)
    stats = trainer.step(texts=["abcdefgh"], texts_labels=["ijklmnop"])
    assert stats["trained_tokens"] == 3 and stats["real_tokens"] == 6


def test_seq2seq_loss_matches_model_loss(tmp_path, seq2seq_model, tokenizer):
    source = torch.tensor([10, 11, 12, 13])
    target = torch.tensor([20, 21, 22, tokenizer.eos_token_id])
    with torch.no_grad():
        expected = seq2seq_model(input_ids=source[None], labels=target[None]).loss.item()
    trainer = IterativeSFTTrainer(seq2seq_model, _config(tmp_path), tokenizer=tokenizer)
    stats = trainer.step(input_ids=[source], labels=[target])
    assert stats["trained_tokens"] == 4
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)


def test_shuffle_is_reproducible_and_can_be_disabled(tmp_path, causal_dir, tokenizer, monkeypatch):
    """Samples are shuffled from (seed, global_step): the same order on a rerun, given order when off."""
    from transformers import AutoModelForCausalLM

    import itersft.trainer.micro_batch as micro_batch_module  # where every micro-batch is collated

    real_collate = micro_batch_module.collate

    def micro_batch_lengths(shuffle, seed=7):
        seen = []

        def recording_collate(examples, *args):
            seen.append(tuple(len(e.input_ids) for e in examples))
            return real_collate(examples, *args)

        monkeypatch.setattr(micro_batch_module, "collate", recording_collate)
        model = AutoModelForCausalLM.from_pretrained(causal_dir)
        trainer = IterativeSFTTrainer(model, _config(tmp_path, per_device_train_batch_size=1, seed=seed,
                                                     shuffle_samples=shuffle), tokenizer=tokenizer)
        trainer.step(input_ids=_samples(len(tokenizer)) * 2)
        return seen

    assert micro_batch_lengths(False) == [(n,) for n in LENGTHS * 2]
    assert micro_batch_lengths(True) == micro_batch_lengths(True)
    assert micro_batch_lengths(True) != micro_batch_lengths(False)
    assert micro_batch_lengths(True, seed=1) != micro_batch_lengths(True, seed=2)


def test_gradient_clipping_caps_the_update_and_reports_the_preclip_norm(tmp_path, causal_model, tokenizer):
    """With SGD at lr 1 the update is minus the (clipped) gradient, so its norm must equal max_grad_norm."""
    input_ids = _samples(len(tokenizer))
    _, expected_grads = _reference(causal_model, input_ids, [ids.clone() for ids in input_ids])
    preclip = torch.linalg.vector_norm(torch.stack([g.norm() for g in expected_grads.values()])).item()
    assert preclip > 0.5
    before = {n: p.detach().clone() for n, p in causal_model.named_parameters()}
    optimizer = torch.optim.SGD(causal_model.parameters(), lr=1.0)
    trainer = IterativeSFTTrainer(causal_model, _config(tmp_path, max_grad_norm=0.5), tokenizer=tokenizer,
                                  optimizers=(optimizer, None))
    stats = trainer.step(input_ids=input_ids)
    delta = torch.linalg.vector_norm(torch.stack([(p.detach() - before[n]).norm()
                                                  for n, p in causal_model.named_parameters()])).item()
    assert delta == pytest.approx(0.5, rel=1e-4)
    assert stats["grad_norm"] == pytest.approx(preclip, rel=1e-4)


def test_save_model_writes_a_loadable_model(tmp_path, causal_model, tokenizer):
    from transformers import AutoModelForCausalLM

    trainer = IterativeSFTTrainer(causal_model, _config(tmp_path), tokenizer=tokenizer)
    trainer.step(texts=["abc"])
    trainer.save_model(str(tmp_path / "saved"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    for name, tensor in causal_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
