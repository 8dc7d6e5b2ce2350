"""One optimizer update of `step()`: forward and backward over an accumulation window, then step or skip.

It works on a `micro_batch.Window` with an `UpdateContext` (engine, ranks, optimizer, guard, callbacks,
loss), the same on every path; what differs per micro-batch is the `MicroStep`: the trainer's own loss
(`own_micro_step`, with or without a user's collator) or a user's `compute_loss`/`training_step`
(`hooks.OverrideMicroStep`).

The loss of the update is the mean over every label token of the window, on every rank: each
micro-batch's *summed* token loss is divided by the window's label tokens over all ranks and multiplied
by the world size before backward (`context.backward_share`), because data parallelism averages gradients
over ranks. The result is the gradient of the mean over every token of the window, however the samples
are split into micro-batches and ranks.

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
from typing import Protocol

import torch

from itersft.trainer.context import UpdateContext, backward_share
from itersft.trainer.micro_batch import MicroBatch, Window
from itersft.trainer.stats import StepStats

logger = logging.getLogger(__name__)

# Optimizer hyperparameters that turn every weight non-finite when they are.
_CHECKED_HYPERPARAMETERS = ("lr", "weight_decay", "eps")


class MicroStep(Protocol):
    """Forward and backward of one non-empty micro-batch of `window`; returns the detached summed token
    loss it contributed (this rank's), which summed over micro-batches and ranks is the window's."""

    def __call__(self, ctx: UpdateContext, micro_batch: MicroBatch, window: Window) -> torch.Tensor: ...


def own_micro_step(ctx: UpdateContext, micro_batch: MicroBatch, window: Window) -> torch.Tensor:
    """A micro-batch through the trainer's own loss (no override; the batch is the trainer's or a
    collator's): its summed token loss over the window's label tokens, back-propagated (`backward_share`)."""
    batch = micro_batch.inputs(ctx.device)
    with ctx.loss.context():
        loss = ctx.loss.summed(ctx.module, batch)
        backward_share(ctx.engine, ctx.ranks, loss / window.label_tokens)
    return loss.detach()


def run_update(ctx: UpdateContext, window: Window, stats: StepStats, micro_step: MicroStep = own_micro_step) -> None:
    """Forward/backward every micro-batch of `window`, then one update.

    A window with no label token over all ranks (a collator masked every label) is skipped before any
    forward, on every rank alike. Callback hooks fire as in `Trainer.train`: `on_step_begin`,
    `on_substep_end` after each micro-batch but the last, `on_pre_optimizer_step`, `on_optimizer_step`,
    `on_step_end`; gradients are cleared after `on_optimizer_step`, so a callback there still sees them.
    """
    if window.label_tokens == 0:
        stats.skipped_updates += 1
        logger.warning("step(): skipped an optimizer update: its samples hold no label token (-100 everywhere "
                       "after the data collator), on any rank.")
        return
    random_state = _random_state()
    try:
        loss_sum, grad_norm = _accumulate(ctx, window, stats, micro_step)
        _step(ctx, loss_sum, grad_norm, window.label_tokens, stats)
    except BaseException:
        ctx.engine.clear_gradients(ctx.optimizer)
        _set_random_state(random_state)
        raise


def _accumulate(ctx: UpdateContext, window: Window, stats: StepStats, micro_step: MicroStep) -> tuple[float, float]:
    """Forward and backward over the window's micro-batches; returns (summed loss over ranks, grad norm)."""
    ctx.callbacks.fire("on_step_begin")
    loss_sum = torch.zeros((), device=ctx.device)
    last_index = len(window.micro_batches) - 1
    for index, micro_batch in enumerate(window.micro_batches):
        with ctx.engine.accumulating(ctx.module, index == last_index):
            if micro_batch.examples:
                stats.count(micro_batch)
                loss_sum += micro_step(ctx, micro_batch, window)
            else:  # this rank ran out of samples: take part in the gradient sync, weightless
                ctx.engine.backward(ctx.loss.weightless(ctx.module))
        if index != last_index:
            ctx.callbacks.fire("on_substep_end")
    grad_norm = ctx.engine.clip_grad_norm(ctx.module, ctx.max_grad_norm)
    if ctx.ranks.is_distributed:
        loss_sum = ctx.engine.accelerator.reduce(loss_sum, reduction="sum")
    loss_value, norm_value = torch.stack([loss_sum.float(), grad_norm.float().to(loss_sum.device)]).tolist()
    return loss_value, norm_value


def _step(ctx: UpdateContext, loss_value: float, norm_value: float, window_tokens: int, stats: StepStats) -> None:
    """Take the update (or skip it, with its cause), with the guard armed around the optimizer step."""
    optimizer, guard, callbacks = ctx.optimizer, ctx.guard, ctx.callbacks
    cause = _gradient_problem(loss_value, norm_value)
    if cause is None:
        callbacks.fire("on_pre_optimizer_step")
        cause = _hyperparameter_problem(optimizer)  # after the callbacks, which may change the learning rate
    if cause is not None:
        _skip(ctx, stats, cause)
        return
    if guard is not None:
        guard.snapshot()
    schedule = ctx.lr_scheduler.state_dict(), [group["lr"] for group in optimizer.param_groups]
    try:
        ctx.engine.step_optimizer(optimizer)
        if not _weights_finite(ctx):
            names = guard.non_finite_names(ctx.model)
            rates = ", ".join(f"{group['lr']:g}" for group in optimizer.param_groups)
            cause = f"the weights came out non-finite ({', '.join(names) or 'on another rank'}; learning rate {rates})"
            if not guard.snapshots:
                raise RuntimeError(f"step(): {cause} and `guard_updates=False`, so the update cannot be undone. "
                                   "The model is now unusable: reload it, and check the learning rate, weight "
                                   "decay and optimizer.")
            guard.restore()
            _skip(ctx, stats, cause)
            return
        callbacks.fire("on_optimizer_step")
        ctx.engine.clear_gradients(optimizer)
        learning_rate = ctx.learning_rate()
        ctx.lr_scheduler.step()
    except BaseException:
        if guard is not None:
            guard.restore()
        ctx.lr_scheduler.load_state_dict(schedule[0])
        for group, rate in zip(optimizer.param_groups, schedule[1]):
            group["lr"] = rate
        raise
    callbacks.state.global_step += 1
    stats.record_update(loss_value, window_tokens, norm_value, learning_rate)
    callbacks.fire("on_step_end")
    if callbacks.state.global_step == ctx.max_steps + 1:
        logger.warning("global_step passed `max_steps`=%d: the LR schedule's horizon is over.", ctx.max_steps)


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


def _skip(ctx: UpdateContext, stats: StepStats, cause: str) -> None:
    ctx.engine.clear_gradients(ctx.optimizer)
    stats.skipped_updates += 1
    logger.warning("step(): skipped an optimizer update: %s. The weights were not changed.", cause)


def _weights_finite(ctx: UpdateContext) -> bool:
    """Whether every weight is finite on every rank (without a guard, under DeepSpeed, not checked)."""
    if ctx.guard is None:
        return True
    return ctx.ranks.max(int(not ctx.guard.weights_finite()), ctx.device) == 0


def _random_state() -> tuple:
    """torch's CPU and (initialised) CUDA random states."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_random_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
