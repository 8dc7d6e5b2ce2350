"""One optimizer update of `step()`: forward and backward over an accumulation window, then step or skip.

The loss of the update is the mean over every label token of the window, on every rank: each
micro-batch's *summed* token loss is scaled by world size / (the window's label tokens over all ranks)
before backward, because data parallelism averages gradients over ranks. The result is the gradient of
the mean over every token of the window, however the samples are split into micro-batches and ranks.

An update is taken whole or not at all:

* a non-finite loss or gradient, or a non-finite learning rate or weight decay in the optimizer's
  parameter groups (a callback or scheduler may set one), skips the update before it is applied;
* weights that come out non-finite are put back as they were (`guard.UpdateGuard`) and the update is
  skipped; each skip is counted in `skipped_updates` and logged with its cause;
* whatever raises inside the update (an out-of-memory error, a KeyboardInterrupt, a bad batch), the
  pending gradients are dropped, the weights, optimizer and LR schedule are put back if the step had
  begun, and torch's random state is rewound, so the next update is the one that would have come.
  Under DeepSpeed the engine's own accumulated gradients and counters are outside this guarantee.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from itersft.data.example import Example
from itersft.trainer.stats import StepStats

logger = logging.getLogger(__name__)

# Optimizer hyperparameters that turn every weight non-finite when they are.
_CHECKED_HYPERPARAMETERS = ("lr", "weight_decay", "eps")


def run_update(trainer, window: list[tuple[list[Example], Any]], window_tokens: int, stats: StepStats,
               micro_step: Callable | None = None) -> None:
    """Forward/backward every micro-batch of `window`, then one update.

    A micro-batch is `(examples, how)`: `how` is whether it is packed for `default_micro_step`, or the
    collated batch for the hooks' micro-steps (`trainer.hooks`). `window_tokens` counts the window's label
    tokens over all ranks; a window with none (a collator masked every label) is skipped before any
    forward, on every rank alike. Callback hooks fire as in `Trainer.train`: `on_step_begin`,
    `on_substep_end` after each micro-batch but the last, `on_pre_optimizer_step`, `on_optimizer_step`,
    `on_step_end`; gradients are cleared after `on_optimizer_step`, so a callback there still sees them.
    """
    if window_tokens == 0:
        stats.skipped_updates += 1
        logger.warning("step(): skipped an optimizer update: its samples hold no label token (-100 everywhere "
                       "after the data collator), on any rank.")
        return
    random_state = _random_state()
    try:
        loss_sum, grad_norm = _accumulate(trainer, window, window_tokens, stats, micro_step or default_micro_step)
        _step(trainer, loss_sum, grad_norm, window_tokens, stats)
    except BaseException:
        trainer.engine.clear_gradients(trainer.optimizer)
        _set_random_state(random_state)
        raise


def _accumulate(trainer, window, window_tokens: int, stats: StepStats, micro_step: Callable) -> tuple[float, float]:
    """Forward and backward over the window's micro-batches; returns (summed loss over ranks, grad norm)."""
    args, engine = trainer.args, trainer.engine
    model = trainer.model_wrapped
    # transformers' name for the window's micro-batch count, read by code ported from its `training_step`.
    trainer.current_gradient_accumulation_steps = len(window)
    trainer.control = trainer.callback_handler.on_step_begin(args, trainer.state, trainer.control)
    loss_sum = torch.zeros((), device=args.device)
    for index, (examples, how) in enumerate(window):
        last = index == len(window) - 1
        with engine.accumulating(model, last):
            if examples:
                loss_sum += micro_step(trainer, model, examples, how, window_tokens, stats)
            else:  # this rank ran out of samples: take part in the gradient sync, weightless
                engine.backward(trainer.weightless_loss(model))
        if not last:
            trainer.control = trainer.callback_handler.on_substep_end(args, trainer.state, trainer.control)
    grad_norm = engine.clip_grad_norm(model, args.max_grad_norm)
    if trainer.ranks.is_distributed:
        loss_sum = trainer.accelerator.reduce(loss_sum, reduction="sum")
    loss_value, norm_value = torch.stack([loss_sum.float(), grad_norm.float().to(loss_sum.device)]).tolist()
    return loss_value, norm_value


def default_micro_step(trainer, model, examples: list[Example], packed: bool, window_tokens: int,
                       stats: StepStats) -> torch.Tensor:
    """One micro-batch without collator or overrides: collated here, its summed token loss scaled by
    world size / the window's tokens and back-propagated. Returns the detached summed loss."""
    batch = trainer.device_batch(examples, packed)
    stats.real_tokens += sum(e.num_real_tokens(trainer.is_encoder_decoder) for e in examples)
    stats.padded_tokens += batch["input_ids"].numel() + (batch["labels"].numel() if trainer.is_encoder_decoder
                                                         else 0)
    with trainer.compute_loss_context_manager():
        loss = trainer.summed_loss(model, batch)
        trainer.engine.backward(loss * (trainer.ranks.world_size / window_tokens))
    return loss.detach()


def _step(trainer, loss_value: float, norm_value: float, window_tokens: int, stats: StepStats) -> None:
    """Take the update (or skip it, with its cause), with the guard armed around the optimizer step."""
    args, engine, optimizer = trainer.args, trainer.engine, trainer.optimizer
    cause = _gradient_problem(loss_value, norm_value)
    if cause is None:
        trainer.control = trainer.callback_handler.on_pre_optimizer_step(args, trainer.state, trainer.control)
        cause = _hyperparameter_problem(optimizer)  # after the callbacks, which may change the learning rate
    if cause is not None:
        _skip(trainer, stats, cause)
        return
    guard = trainer.guard
    if guard is not None:
        guard.snapshot()
    schedule = trainer.lr_scheduler.state_dict(), [group["lr"] for group in optimizer.param_groups]
    try:
        engine.step_optimizer(optimizer)
        if not _weights_finite(trainer):
            names = guard.non_finite_names(trainer.model)
            rates = ", ".join(f"{group['lr']:g}" for group in optimizer.param_groups)
            cause = f"the weights came out non-finite ({', '.join(names) or 'on another rank'}; learning rate {rates})"
            if not guard.snapshots:
                raise RuntimeError(f"step(): {cause} and `guard_updates=False`, so the update cannot be undone. "
                                   "The model is now unusable: reload it, and check the learning rate, weight "
                                   "decay and optimizer.")
            guard.restore()
            _skip(trainer, stats, cause)
            return
        trainer.control = trainer.callback_handler.on_optimizer_step(args, trainer.state, trainer.control)
        engine.clear_gradients(optimizer)
        learning_rate = trainer._get_learning_rate()
        trainer.lr_scheduler.step()
    except BaseException:
        if guard is not None:
            guard.restore()
        trainer.lr_scheduler.load_state_dict(schedule[0])
        for group, rate in zip(optimizer.param_groups, schedule[1]):
            group["lr"] = rate
        raise
    trainer.state.global_step += 1
    stats.record_update(loss_value, window_tokens, norm_value, learning_rate)
    trainer.control = trainer.callback_handler.on_step_end(args, trainer.state, trainer.control)
    if trainer.state.global_step == args.max_steps + 1:
        logger.warning("global_step passed `max_steps`=%d: the LR schedule's horizon is over.", args.max_steps)


def _gradient_problem(loss_value: float, norm_value: float) -> str | None:
    """Why the window's loss or gradient forbids the update, or None."""
    if not math.isfinite(loss_value):
        return f"non-finite loss (summed loss {loss_value})"
    if not math.isfinite(norm_value):
        return f"non-finite gradient (norm {norm_value})"
    return None


def _hyperparameter_problem(optimizer) -> str | None:
    """A non-finite learning rate, weight decay or epsilon in the optimizer's parameter groups, or None."""
    for index, group in enumerate(optimizer.param_groups):
        for name in _CHECKED_HYPERPARAMETERS:
            value = group.get(name)
            if isinstance(value, (int, float, torch.Tensor)) and not math.isfinite(float(value)):
                return f"non-finite `{name}` = {float(value)} in the optimizer's parameter group {index}"
    return None


def _skip(trainer, stats: StepStats, cause: str) -> None:
    trainer.engine.clear_gradients(trainer.optimizer)
    stats.skipped_updates += 1
    logger.warning("step(): skipped an optimizer update: %s. The weights were not changed.", cause)


def _weights_finite(trainer) -> bool:
    """Whether every weight is finite on every rank (without a guard, under DeepSpeed, not checked)."""
    if trainer.guard is None:
        return True
    return trainer.ranks.max(int(not trainer.guard.weights_finite()), trainer.args.device) == 0


def _random_state() -> tuple:
    """torch's CPU and (initialised) CUDA random states."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_random_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
