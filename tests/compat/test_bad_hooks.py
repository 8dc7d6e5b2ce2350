"""A user's collator or override that returns something unusable gets one clear error, never a fallback.

Each error names the collator or the override and what it returned; it comes before any optimizer
update, so the weights and `global_step` are untouched. Packing cannot apply to a user's collator
(the collator lays out the batch), so asking for both is refused when the trainer is built.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from itersft import IterativeSFTConfig, IterativeSFTTrainer

TEXTS = ["hello there", "a longer sample of text", "xyz", "four"]


def config(tmp_path, **overrides) -> IterativeSFTConfig:
    values = dict(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2)
    values.update(overrides)
    return IterativeSFTConfig(**values)


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def padded(features, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The features' 1-D tensors right-padded into `(ids, mask)`."""
    width = max(f["input_ids"].size(0) for f in features)
    ids = torch.stack([F.pad(f["input_ids"], (0, width - f["input_ids"].size(0)), value=pad_token_id)
                       for f in features])
    mask = torch.stack([F.pad(f["attention_mask"], (0, width - f["attention_mask"].size(0))) for f in features])
    return ids, mask


def assert_refused(trainer, model, message_parts: list[str], **step_inputs) -> None:
    before = weights(model)
    with pytest.raises(ValueError) as raised:
        trainer.step(**step_inputs)
    for part in message_parts:
        assert part in str(raised.value), f"{part!r} not in: {raised.value}"
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_collator_returning_no_input_ids(causal_model, tokenizer, tmp_path):
    def collate_with_renamed_keys(features):
        ids, mask = padded(features, tokenizer.pad_token_id)
        return {"tokens": ids, "mask": mask, "labels": ids}

    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer,
                                  data_collator=collate_with_renamed_keys)
    assert_refused(trainer, causal_model, ["collate_with_renamed_keys", "input_ids", "tokens"], texts=TEXTS)


@pytest.mark.parametrize("shape", ["one_longer", "one_per_row"])
def test_collator_returning_labels_of_the_wrong_shape(shape, causal_model, tokenizer, tmp_path):
    class MisalignedCollator:
        def __call__(self, features):
            ids, mask = padded(features, tokenizer.pad_token_id)
            labels = F.pad(ids, (0, 1), value=-100) if shape == "one_longer" else ids[:, 0]
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer,
                                  data_collator=MisalignedCollator())
    assert_refused(trainer, causal_model, ["MisalignedCollator", "labels"], texts=TEXTS)


class PerTokenLoss(IterativeSFTTrainer):
    """Forgets to reduce: returns one loss per token."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), inputs["labels"][:, 1:], reduction="none")


def test_compute_loss_returning_a_non_scalar(causal_model, tokenizer, tmp_path):
    trainer = PerTokenLoss(causal_model, config(tmp_path), tokenizer=tokenizer)
    assert_refused(trainer, causal_model, ["PerTokenLoss", "compute_loss", "scalar"], texts=TEXTS)


def test_packing_with_a_collator_is_refused(causal_model, tokenizer, tmp_path):
    def collate(features):
        ids, mask = padded(features, tokenizer.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask}

    with pytest.raises(ValueError) as raised:
        IterativeSFTTrainer(causal_model, config(tmp_path, batching="packed"), tokenizer=tokenizer,
                            data_collator=collate)
    assert "batching" in str(raised.value) and "data_collator" in str(raised.value)


def test_collator_that_raises_is_named_in_the_error(causal_model, tokenizer, tmp_path):
    """The collator's own exception comes through with its type, plus a note naming the collator and
    what it was handed."""
    def collate_strictly(features):
        raise KeyError("needs a `prompt` key")

    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer, data_collator=collate_strictly)
    before = weights(causal_model)
    with pytest.raises(KeyError) as raised:
        trainer.step(prompts=["a", "b"], completions=["c", "d"])
    notes = " ".join(getattr(raised.value, "__notes__", []))
    assert "collate_strictly" in notes and "labels" in notes and "DataCollatorForSeq2Seq" in notes
    assert all(torch.equal(before[n], p) for n, p in causal_model.named_parameters())


def test_collator_returning_a_list_is_refused(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer,
                                  data_collator=lambda features: [f["input_ids"] for f in features])
    assert_refused(trainer, causal_model, ["<lambda>", "list", "dict of tensors"], texts=TEXTS)


class DetachedLoss(IterativeSFTTrainer):
    """Returns a loss cut from the graph: nothing could be trained."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch).detach()


def test_compute_loss_returning_a_detached_loss(causal_model, tokenizer, tmp_path):
    trainer = DetachedLoss(causal_model, config(tmp_path), tokenizer=tokenizer)
    assert_refused(trainer, causal_model, ["DetachedLoss.compute_loss", "require grad"], texts=TEXTS)


class StepReturningAFloat(IterativeSFTTrainer):
    """Returns `loss.item()` instead of the tensor."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        return super().training_step(model, inputs, num_items_in_batch).item()


def test_training_step_returning_a_float(causal_model, tokenizer, tmp_path):
    trainer = StepReturningAFloat(causal_model, config(tmp_path), tokenizer=tokenizer)
    with pytest.raises(ValueError) as raised:
        trainer.step(texts=TEXTS)
    assert "StepReturningAFloat.training_step" in str(raised.value) and "float" in str(raised.value)
    assert trainer.state.global_step == 0


def test_average_tokens_across_devices_false_is_refused(tmp_path):
    """itersft always averages over the label tokens of all ranks; per-rank means are refused, not ignored."""
    with pytest.raises(ValueError) as raised:
        config(tmp_path, average_tokens_across_devices=False)
    assert "average_tokens_across_devices" in str(raised.value) and "False" in str(raised.value)


@pytest.mark.parametrize("setting", [{"label_smoothing_factor": 0.1}, {"neftune_noise_alpha": 5.0}])
def test_transformers_loss_settings_step_does_not_apply_are_refused(setting, tmp_path):
    """Settings that transformers' `compute_loss`/`train()` apply and `step()` does not: refused, never ignored."""
    with pytest.raises(ValueError) as raised:
        config(tmp_path, **setting)
    assert next(iter(setting)) in str(raised.value)
