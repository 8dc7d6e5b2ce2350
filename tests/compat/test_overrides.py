"""Subclasses that override `compute_loss` or `training_step` train on what the override returns.

The contract (transformers 5 signatures and conventions):

* `compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None)` is called for every
  micro-batch of `step()`. `inputs` holds model inputs only (`input_ids`, `attention_mask`, `labels`,
  and whatever else a collator returned), as tensors on the device; `num_items_in_batch` is the
  label-token count of the whole accumulation window (over all ranks), so a loss that divides its
  token sum by it is the window's token mean however the samples are split. The trainer's own
  `compute_loss` returns exactly that (summed cross-entropy / `num_items_in_batch`), with the model's
  outputs when `return_outputs=True`.
* `loss_is_scaled_for_ga = False` on the subclass says its loss is a per-micro-batch mean: the trainer
  divides it by the number of micro-batches of the window, as transformers does.
* `training_step(model, inputs, num_items_in_batch=None)` is called for every micro-batch; it does
  its own backward and returns the detached loss. The trainer adds no backward of its own.

Every test compares the update's gradient with a hand-written reference of the overridden loss.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from itersft import IterativeSFTConfig, IterativeSFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gradient_reference import (  # noqa: E402
    IGNORE_INDEX,
    UpdateRecorder,
    assert_same_gradients,
    causal_label_count,
    causal_loss_sum,
    expected_update,
    seq2seq_loss_sum,
)

# What a subclass may find in `inputs`: model inputs, never the trainer's private bookkeeping.
MODEL_INPUTS = {"input_ids", "attention_mask", "labels", "position_ids", "decoder_input_ids", "decoder_attention_mask"}
TEXTS = ["12+34=46", "7*8=56 and 6*7=42", "no digits here", "1", "99-9=90"]


def config(tmp_path, **overrides) -> IterativeSFTConfig:
    values = dict(output_dir=str(tmp_path), report_to="none", learning_rate=1e-2, max_grad_norm=0.0,
                  per_device_train_batch_size=2, gradient_accumulation_steps=2, shuffle_samples=False)
    values.update(overrides)
    return IterativeSFTConfig(**values)


def text_ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])


def digit_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer(str(d), add_special_tokens=False)["input_ids"][0] for d in range(10)])


def digit_weights(labels: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """3 for a digit label, 1 otherwise: the per-token weighting the override applies."""
    return torch.where(torch.isin(labels, digits.to(labels.device)), 3.0, 1.0)


# ---- compute_loss -------------------------------------------------------------------------------


class DigitWeightedLoss(IterativeSFTTrainer):
    """Digits weigh 3 times as much: weighted token losses summed, divided by `num_items_in_batch`."""

    digits: torch.Tensor
    seen: list

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append((set(inputs), tuple(inputs["input_ids"].shape), tuple(inputs["labels"].shape),
                          int(num_items_in_batch), return_outputs))
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        targets = inputs["labels"][:, 1:]
        losses = F.cross_entropy(outputs.logits[:, :-1].float().transpose(1, 2), targets,
                                 ignore_index=IGNORE_INDEX, reduction="none")
        loss = (losses * digit_weights(targets, self.digits)).sum() / num_items_in_batch
        return (loss, outputs) if return_outputs else loss


def test_compute_loss_override_weighted_and_token_normalised(causal_model, tokenizer, tmp_path):
    """Five texts, batch 2, accumulation 2, in order: windows of samples 0-3 and 4. Each call gets its
    window's label-token count; each update's gradient is the weighted loss's reference."""
    recorder = UpdateRecorder()
    trainer = DigitWeightedLoss(causal_model, config(tmp_path), tokenizer=tokenizer, callbacks=[recorder])
    trainer.digits, trainer.seen = digit_ids(tokenizer), []

    stats = trainer.step(texts=TEXTS)

    ids = [text_ids(tokenizer, t) for t in TEXTS]
    windows = [ids[:4], ids[4:]]
    counts = [causal_label_count(w) for w in windows]
    assert stats["updates"] == 2 and len(trainer.seen) == 3
    assert [num_items for _, _, _, num_items, _ in trainer.seen] == [counts[0], counts[0], counts[1]]
    for keys, ids_shape, labels_shape, _, return_outputs in trainer.seen:
        assert {"input_ids", "attention_mask", "labels"} <= keys <= MODEL_INPUTS, keys
        assert ids_shape == labels_shape and return_outputs is False
    weighted_sum = 0.0
    for update, window in enumerate(windows):
        losses = [lambda m, i=i: causal_loss_sum(m, i, i, digit_weights(i, trainer.digits)) for i in window]
        loss, grads = expected_update(causal_model, recorder.params[update], losses, counts[update])
        assert_same_gradients(recorder.grads[update], grads)
        weighted_sum += loss * counts[update]
    assert stats["loss"] == pytest.approx(weighted_sum / sum(counts), rel=1e-5)


class ZLoss(IterativeSFTTrainer):
    """The trainer's own loss plus a z-loss on the logits: `super().compute_loss(..., return_outputs=True)`."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        counted = inputs["labels"][:, 1:] != IGNORE_INDEX
        z = (outputs.logits[:, :-1].float().logsumexp(-1).pow(2) * counted).sum() / num_items_in_batch
        total = loss + 1e-2 * z
        return (total, outputs) if return_outputs else total


def test_compute_loss_override_calling_super_with_return_outputs(causal_model, tokenizer, tmp_path):
    """`super().compute_loss(return_outputs=True)` gives the window-normalised cross-entropy and the model's
    outputs (full logits), and the sum with the override's extra term is what is optimised."""
    recorder = UpdateRecorder()
    trainer = ZLoss(causal_model, config(tmp_path), tokenizer=tokenizer, callbacks=[recorder])
    texts = TEXTS[:4]

    stats = trainer.step(texts=texts)

    ids = [text_ids(tokenizer, t) for t in texts]

    def z_loss_sum(model, sample):
        logits = model(input_ids=sample[None]).logits[0, :-1].float()
        lse = logits.logsumexp(-1)
        return causal_loss_sum(model, sample, sample) + 1e-2 * lse.pow(2).sum()

    loss, grads = expected_update(causal_model, recorder.params[0], [lambda m, i=i: z_loss_sum(m, i) for i in ids],
                                  causal_label_count(ids))
    assert stats["updates"] == 1
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


class MicroBatchMeanLoss(IterativeSFTTrainer):
    """The model's own loss (mean over the micro-batch's tokens), declared as not scaled for accumulation."""

    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_compute_loss_override_not_scaled_for_accumulation_is_divided_by_micro_batches(kind, request, tokenizer,
                                                                                       tmp_path):
    """`loss_is_scaled_for_ga = False`: the trainer divides each micro-batch's mean by the window's number of
    micro-batches (2, then 1 for the short last window), as transformers' `training_step` does; `inputs`
    goes to `model(**inputs)` as is."""
    model = request.getfixturevalue("causal_model" if kind == "causal" else "seq2seq_model")
    recorder = UpdateRecorder()
    trainer = MicroBatchMeanLoss(model, config(tmp_path, batching="padded"), tokenizer=tokenizer,
                                 callbacks=[recorder])
    if kind == "causal":
        samples = [(i, i) for i in (text_ids(tokenizer, t) for t in TEXTS)]
        trainer.step(texts=TEXTS)

        def sample_sum(m, sample):
            return causal_loss_sum(m, sample[0], sample[1])

        def count(sample):
            return causal_label_count([sample[1]])
    else:
        sources = [torch.tensor([10 + k] * (2 + k)) for k in range(5)]
        targets = [torch.tensor([40 + k] * (5 - k)) for k in range(5)]
        samples = list(zip(sources, targets))
        trainer.step(input_ids=sources, labels=targets)

        def sample_sum(m, sample):
            return seq2seq_loss_sum(m, sample[0], sample[1])

        def count(sample):
            return len(sample[1])

    windows = [[samples[0:2], samples[2:4]], [samples[4:5]]]  # micro-batches of 2, windows of 2 micro-batches
    assert trainer.state.global_step == 2
    for update, window in enumerate(windows):
        losses = []
        for batch in window:
            # each sample's share: its micro-batch's mean, divided by the window's number of micro-batches
            divisor = sum(count(s) for s in batch) * len(window)
            losses += [lambda m, s=s, d=divisor: sample_sum(m, s) / d for s in batch]
        _, grads = expected_update(model, recorder.params[update], losses, 1)
        assert_same_gradients(recorder.grads[update], grads)


# ---- training_step ------------------------------------------------------------------------------


class TemperedStep(IterativeSFTTrainer):
    """A `training_step` with its own loss (cross-entropy of logits / 2) and its own backward."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        loss = F.cross_entropy((logits[:, :-1].float() / 2.0).transpose(1, 2), inputs["labels"][:, 1:],
                               ignore_index=IGNORE_INDEX, reduction="sum") / num_items_in_batch
        self.accelerator.backward(loss)
        return loss.detach()


def test_training_step_override_with_its_own_backward(causal_model, tokenizer, tmp_path):
    """Only the override's backward reaches the gradient (the trainer adds none), and its returned loss
    is the one reported."""
    recorder = UpdateRecorder()
    trainer = TemperedStep(causal_model, config(tmp_path), tokenizer=tokenizer, callbacks=[recorder])
    texts = TEXTS[:4]

    stats = trainer.step(texts=texts)

    ids = [text_ids(tokenizer, t) for t in texts]
    losses = [lambda m, i=i: causal_loss_sum(m, i, i, temperature=2.0) for i in ids]
    loss, grads = expected_update(causal_model, recorder.params[0], losses, causal_label_count(ids))
    assert stats["updates"] == 1
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


class ObservedStep(IterativeSFTTrainer):
    """A `training_step` that calls `super()` and records what it got: the common logging override."""

    observed: list

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.observed.append((inputs["input_ids"].shape[0], int(num_items_in_batch), loss.item()))
        return loss


def test_training_step_override_calling_super(causal_model, tokenizer, tmp_path):
    """`super().training_step` does the forward and backward of the token-mean loss and returns the
    micro-batch's share of it; called once per micro-batch with the window's label-token count."""
    recorder = UpdateRecorder()
    trainer = ObservedStep(causal_model, config(tmp_path), tokenizer=tokenizer, callbacks=[recorder])
    trainer.observed = []
    texts = TEXTS[:4]

    stats = trainer.step(texts=texts)

    ids = [text_ids(tokenizer, t) for t in texts]
    count = causal_label_count(ids)
    loss, grads = expected_update(causal_model, recorder.params[0], [lambda m, i=i: causal_loss_sum(m, i, i)
                                                                     for i in ids], count)
    assert [(rows, items) for rows, items, _ in trainer.observed] == [(2, count), (2, count)]
    assert sum(share for _, _, share in trainer.observed) == pytest.approx(loss, rel=1e-5)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


# ---- where overrides come from, and what they are handed ------------------------------------------


def test_compute_loss_set_on_the_instance_after_construction(causal_model, tokenizer, tmp_path):
    """`trainer.compute_loss = ...` after the trainer is built is honoured too (looked up every call)."""
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer, callbacks=[recorder])
    calls = []

    def tempered(model, inputs, return_outputs=False, num_items_in_batch=None):
        calls.append(int(num_items_in_batch))
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        return F.cross_entropy((logits[:, :-1].float() / 2.0).transpose(1, 2), inputs["labels"][:, 1:],
                               ignore_index=IGNORE_INDEX, reduction="sum") / num_items_in_batch

    trainer.compute_loss = tempered
    texts = TEXTS[:4]
    trainer.step(texts=texts)

    ids = [text_ids(tokenizer, t) for t in texts]
    count = causal_label_count(ids)
    _, grads = expected_update(causal_model, recorder.params[0],
                               [lambda m, i=i: causal_loss_sum(m, i, i, temperature=2.0) for i in ids], count)
    assert calls == [count, count]
    assert_same_gradients(recorder.grads[0], grads)


class ShapeRecorder(IterativeSFTTrainer):
    """The trainer's own loss; records the shapes and keys each call is handed."""

    seen: list

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append({k: tuple(v.shape) for k, v in inputs.items()})
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.mark.parametrize("batching", ["auto", "packed"])
def test_an_override_gets_packed_rows_only_when_asked(batching, causal_model, tokenizer, tmp_path):
    """`batching="auto"` never packs for an override (it expects padded rows); `"packed"` hands it one row
    per micro-batch with `position_ids` and no mask. The gradient is the same either way."""
    recorder = UpdateRecorder()
    trainer = ShapeRecorder(causal_model, config(tmp_path, batching=batching), tokenizer=tokenizer,
                            callbacks=[recorder])
    trainer.seen = []
    texts = ["a b", "the cat sat on the mat and more", "x", "four words in here"]

    trainer.step(texts=texts)

    ids = [text_ids(tokenizer, t) for t in texts]
    assert len(trainer.seen) == 2  # one call per micro-batch
    if batching == "packed":
        assert all(set(s) == {"input_ids", "position_ids", "labels"} and s["input_ids"][0] == 1 for s in trainer.seen)
    else:
        assert all(set(s) == {"input_ids", "attention_mask", "labels"} and s["input_ids"][0] == 2 for s in trainer.seen)
    _, grads = expected_update(causal_model, recorder.params[0],
                               [lambda m, i=i: causal_loss_sum(m, i, i) for i in ids], causal_label_count(ids))
    assert_same_gradients(recorder.grads[0], grads)


def test_a_window_whose_collated_labels_are_all_masked_is_skipped(causal_model, tokenizer, tmp_path, caplog):
    """A collator that masks every label of a window: that update is skipped (no division by zero, no
    weight change), the next window trains."""
    def mask_short_samples(features):
        width = max(f["input_ids"].size(0) for f in features)
        ids = torch.stack([F.pad(f["input_ids"], (0, width - f["input_ids"].size(0))) for f in features])
        mask = torch.stack([F.pad(f["attention_mask"], (0, width - f["attention_mask"].size(0))) for f in features])
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        labels[mask.sum(1) < 5] = IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, gradient_accumulation_steps=1), tokenizer=tokenizer,
                                  data_collator=mask_short_samples)
    stats = trainer.step(texts=["a", "b", "long enough", "also long enough"])
    assert (stats["updates"], stats["skipped_updates"], trainer.state.global_step) == (1, 1, 1)
    assert "no label token" in caplog.text
