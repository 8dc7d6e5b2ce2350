"""Faults inside `step()` never corrupt training: an update is taken whole or not at all.

Each test injects a fault (an exception on the second micro-batch of a window, an optimizer step that
raises after changing the weights, one that writes NaN, a learning rate set to inf mid-run) and checks
the exact outcome: the weights and optimizer state as before the failed update, no pending gradient,
the skip counted, and the next valid `step()` bit-identical to that of a trainer that never saw the
fault. Model: the toy Llama of `conftest.py` (no dropout), float32, CPU.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from itersft import IterativeSFTConfig, IterativeSFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat"))
from gradient_reference import UpdateRecorder  # noqa: E402

IDS = [torch.tensor([5, 6, 7, 8, 9]), torch.tensor([10, 11, 12]), torch.tensor([13, 14, 15, 16]),
       torch.tensor([17, 18])]


def _trainer(model, tokenizer, tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2,
                  gradient_accumulation_steps=2, learning_rate=1e-2, seed=3)
    values.update(overrides)
    return IterativeSFTTrainer(model, IterativeSFTConfig(**values), tokenizer=tokenizer)


def _snapshot(trainer):
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    state = copy.deepcopy(trainer.optimizer.state_dict())
    return weights, state


def _assert_unchanged(trainer, snapshot):
    weights, state = snapshot
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, weights[name]), name
        assert p.grad is None, f"{name} kept a pending gradient"
    after = trainer.optimizer.state_dict()
    assert after["state"].keys() == state["state"].keys()
    for key, values in state["state"].items():
        for field, value in values.items():
            assert torch.equal(torch.as_tensor(after["state"][key][field]), torch.as_tensor(value)), (key, field)


@pytest.fixture
def pair(causal_model, tokenizer, tmp_path):
    """Two trainers on identical copies of the toy model: one sees the fault, the other does not."""
    faulty = _trainer(causal_model, tokenizer, tmp_path / "faulty")
    clean = _trainer(copy.deepcopy(causal_model), tokenizer, tmp_path / "clean")
    return faulty, clean


def _assert_next_step_identical(faulty, clean):
    """A valid step after the fault gives exactly what it gives on the clean trainer, twice over."""
    for _ in range(2):
        got, expected = faulty.step(input_ids=IDS), clean.step(input_ids=IDS)
        assert got["loss"] == expected["loss"] and got["global_step"] == expected["global_step"]
    for (name, p), q in zip(faulty.model.named_parameters(), clean.model.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("error", [RuntimeError("bad batch"), torch.OutOfMemoryError("out of memory"),
                                   KeyboardInterrupt()])
def test_a_failure_on_the_second_micro_batch_leaves_no_trace(pair, error):
    faulty, clean = pair
    faulty.step(input_ids=IDS)  # one good update first: the fault hits a trainer with optimizer state
    clean.step(input_ids=IDS)
    before, rng_before = _snapshot(faulty), torch.get_rng_state()
    calls = []
    real_loss = faulty.summed_loss

    class FailingLoss:
        """The trainer's own loss, raising on the window's second micro-batch (the first has already put
        gradients down)."""

        def __getattr__(self, name):
            return getattr(real_loss, name)

        def __call__(self, module, batch):
            calls.append(1)
            if len(calls) == 2:
                torch.rand(3)  # consume randomness, as dropout would, before failing
                raise error
            return real_loss(module, batch)

    faulty.summed_loss = FailingLoss()
    with pytest.raises(type(error)):
        faulty.step(input_ids=IDS)
    faulty.summed_loss = real_loss
    assert len(calls) == 2 and faulty.state.global_step == 1
    _assert_unchanged(faulty, before)
    assert torch.equal(torch.get_rng_state(), rng_before)
    _assert_next_step_identical(faulty, clean)


def test_an_optimizer_step_that_raises_after_moving_the_weights_is_undone(pair):
    faulty, clean = pair
    faulty.step(input_ids=IDS)
    clean.step(input_ids=IDS)
    before = _snapshot(faulty)
    schedule = faulty.lr_scheduler.state_dict()
    inner = faulty.optimizer.optimizer
    real_step = inner.step

    def step_then_fail(*args, **kwargs):
        real_step(*args, **kwargs)  # weights and Adam moments have moved
        raise torch.OutOfMemoryError("out of memory inside the optimizer step")

    inner.step = step_then_fail
    with pytest.raises(torch.OutOfMemoryError):
        faulty.step(input_ids=IDS)
    inner.step = real_step
    assert faulty.state.global_step == 1 and faulty.lr_scheduler.state_dict() == schedule
    _assert_unchanged(faulty, before)
    _assert_next_step_identical(faulty, clean)


def test_weights_that_come_out_non_finite_are_restored_and_the_update_skipped(pair, caplog):
    faulty, clean = pair
    faulty.step(input_ids=IDS)
    clean.step(input_ids=IDS)
    before = _snapshot(faulty)
    inner = faulty.optimizer.optimizer
    real_step = inner.step

    def poisoning_step(*args, **kwargs):
        real_step(*args, **kwargs)
        with torch.no_grad():
            faulty.model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")

    inner.step = poisoning_step
    with caplog.at_level(logging.WARNING):
        stats = faulty.step(input_ids=IDS)
    inner.step = real_step
    assert stats["updates"] == 0 and stats["skipped_updates"] == 1 and faulty.state.global_step == 1
    assert "model.layers.0.mlp.up_proj.weight" in caplog.text and "non-finite" in caplog.text
    _assert_unchanged(faulty, before)
    _assert_next_step_identical(faulty, clean)


def test_without_the_guard_a_non_finite_weight_raises(causal_model, tokenizer, tmp_path):
    trainer = _trainer(causal_model, tokenizer, tmp_path, guard_updates=False)
    inner = trainer.optimizer.optimizer
    real_step = inner.step

    def poisoning_step(*args, **kwargs):
        real_step(*args, **kwargs)
        with torch.no_grad():
            trainer.model.lm_head.weight[1, 1] = float("inf")

    inner.step = poisoning_step
    with pytest.raises(RuntimeError, match="guard_updates=False"):
        trainer.step(input_ids=IDS)


def test_a_learning_rate_set_to_inf_mid_run_skips_the_update(pair, caplog):
    faulty, clean = pair

    class InfiniteRate(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            faulty.optimizer.param_groups[0]["lr"] = float("inf")

    before = _snapshot(faulty)
    faulty.add_callback(InfiniteRate())
    stats = faulty.step(input_ids=IDS)
    faulty.remove_callback(InfiniteRate)
    assert stats["updates"] == 0 and stats["skipped_updates"] == 1
    assert "non-finite `lr` = inf" in caplog.text
    _assert_unchanged(faulty, before)


@pytest.mark.parametrize("setting", [{"learning_rate": float("inf")}, {"weight_decay": float("inf")},
                                     {"learning_rate": float("nan")}])
def test_a_configuration_that_guarantees_non_finite_weights_is_refused(tmp_path, setting):
    (name,) = setting
    with pytest.raises(ValueError, match=f"`{name}` must be a finite number"):
        IterativeSFTConfig(output_dir=str(tmp_path), **setting)


def test_labels_under_padding_are_neither_trained_nor_counted(causal_model, tokenizer, tmp_path):
    """One sample, 4 real tokens then 4 padding, labels = input_ids: the loss and gradient are those of
    the 4 real tokens alone (the padded positions' labels used to be counted: loss 2.3x too small)."""
    reference = copy.deepcopy(causal_model)
    trainer = _trainer(causal_model, tokenizer, tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=1,
                       max_grad_norm=0.0)
    real = torch.tensor([5, 6, 7, 8])
    padded = torch.cat([real, torch.full((4,), tokenizer.pad_token_id)])
    mask = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    recorder = UpdateRecorder()
    trainer.add_callback(recorder)
    stats = trainer.step(input_ids=[padded], attention_mask=[mask], labels=[padded.clone()])
    logits = reference(input_ids=real[None]).logits[0]
    expected = torch.nn.functional.cross_entropy(logits[:-1], real[1:])
    expected.backward()
    assert stats["trained_tokens"] == 3 and stats["real_tokens"] == 4
    assert stats["loss"] == pytest.approx(expected.item(), rel=1e-5)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(recorder.grads[0][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
