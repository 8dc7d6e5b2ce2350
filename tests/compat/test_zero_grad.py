"""Gradients are cleared through `trainer.optimizer.zero_grad`, as TRL's trainer did.

TRL users (and TRL's own test) replace or wrap `optimizer.zero_grad`; clearing through the model
instead bypasses them. The replacement here zeroes in place (`set_to_none=False`), so a parameter
whose gradient the trainer cleared holds a zero tensor, and one it set to None was cleared elsewhere.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers import TrainerCallback

from itersft import IterativeSFTConfig, IterativeSFTTrainer


def config(tmp_path, **overrides) -> IterativeSFTConfig:
    values = dict(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=1,
                  gradient_accumulation_steps=2)
    values.update(overrides)
    return IterativeSFTConfig(**values)


def test_every_update_clears_through_the_optimizer(causal_model, tokenizer, tmp_path):
    """Five samples, batch 1, accumulation 2: three updates, each followed by a call of the optimizer's
    `zero_grad`; every gradient ends zeroed in place, nothing pending."""
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer)
    calls = []
    inner = partial(trainer.optimizer.zero_grad, set_to_none=False)

    def counting_zero_grad(*args, **kwargs):
        calls.append(trainer.state.global_step)
        return inner()

    trainer.optimizer.zero_grad = counting_zero_grad
    stats = trainer.step(texts=["a", "bb", "ccc", "dddd", "eeeee"])

    assert stats["updates"] == 3
    assert {0, 1, 2} <= set(calls) or {1, 2, 3} <= set(calls)  # once per update, before or after the count moves
    for name, param in causal_model.named_parameters():
        assert param.grad is not None and torch.count_nonzero(param.grad) == 0, name


def test_a_skipped_update_also_clears_through_the_optimizer(causal_model, tokenizer, tmp_path):
    """A non-finite loss skips the update; its gradient is still cleared through the optimizer."""
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, gradient_accumulation_steps=1), tokenizer=tokenizer)
    trainer.optimizer.zero_grad = partial(trainer.optimizer.zero_grad, set_to_none=False)
    before = {n: p.detach().clone() for n, p in causal_model.named_parameters()}
    handle = causal_model.get_output_embeddings().register_forward_hook(lambda m, i, out: out * float("nan"))

    stats = trainer.step(texts=["abc"])

    handle.remove()
    assert stats["skipped_updates"] == 1 and trainer.state.global_step == 0
    for name, param in causal_model.named_parameters():
        assert torch.equal(param, before[name]), name
        assert param.grad is not None and torch.count_nonzero(param.grad) == 0, name


class GradientsAtOptimizerStep(TrainerCallback):
    """Whether every parameter still holds its gradient when `on_optimizer_step` fires."""

    def __init__(self):
        self.seen: list[bool] = []

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.seen.append(all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters()))


def test_gradients_are_cleared_after_on_optimizer_step(causal_model, tokenizer, tmp_path):
    """As in `transformers.Trainer`: step, `on_optimizer_step` (gradients still there), then clear."""
    callback = GradientsAtOptimizerStep()
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer, callbacks=[callback])
    stats = trainer.step(texts=["a b c", "bb", "ccc d", "dddd"])
    assert stats["updates"] == 2 and callback.seen == [True, True]
    assert all(p.grad is None for p in causal_model.parameters())
