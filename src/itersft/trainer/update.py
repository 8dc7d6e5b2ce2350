"""One optimizer update of `step()`: forward and backward over an accumulation window, then step or skip.

The loss of the update is the mean over every label token of the window, on every rank: each
micro-batch's *summed* token loss is scaled by world size / (the window's label tokens over all ranks)
before backward, because data parallelism averages gradients over ranks. The result is the gradient of
the mean over every token of the window, however the samples are split into micro-batches and ranks.

An update whose loss or gradient is not finite is skipped: the gradients are dropped and the weights
are not touched.
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
    args, engine = trainer.args, trainer.engine
    micro_step = micro_step or default_micro_step
    if window_tokens == 0:
        stats.skipped_updates += 1
        logger.warning("step(): skipped an optimizer update: its samples hold no label token (-100 everywhere "
                       "after the data collator), on any rank.")
        return
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
    if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
        engine.clear_gradients(trainer.optimizer)
        stats.skipped_updates += 1
        logger.warning("step(): skipped an optimizer update: non-finite %s (loss sum %s, grad norm %s). "
                       "The weights were not changed.", "loss" if not math.isfinite(loss_value) else "gradient",
                       loss_value, norm_value)
        return
    trainer.control = trainer.callback_handler.on_pre_optimizer_step(args, trainer.state, trainer.control)
    engine.step(trainer.optimizer)
    trainer.control = trainer.callback_handler.on_optimizer_step(args, trainer.state, trainer.control)
    engine.clear_gradients(trainer.optimizer)
    learning_rate = trainer._get_learning_rate()
    trainer.lr_scheduler.step()
    trainer.state.global_step += 1
    stats.record_update(loss_value, window_tokens, norm_value, learning_rate)
    trainer.control = trainer.callback_handler.on_step_end(args, trainer.state, trainer.control)
    if trainer.state.global_step == args.max_steps + 1:
        logger.warning("global_step passed `max_steps`=%d: the LR schedule's horizon is over.", args.max_steps)


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
