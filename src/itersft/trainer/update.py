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

import torch

from itersft.data.example import Example
from itersft.trainer.stats import StepStats

logger = logging.getLogger(__name__)


def run_update(trainer, window: list[tuple[list[Example], bool]], window_tokens: int, stats: StepStats) -> None:
    """Forward/backward every micro-batch of `window` (each with whether it is packed), then one update.

    `window_tokens` counts the window's label tokens over all ranks. Callback hooks fire as in
    `Trainer.train`: `on_step_begin`, `on_substep_end` after each micro-batch but the last,
    `on_pre_optimizer_step`, `on_optimizer_step`, `on_step_end`.
    """
    args, engine = trainer.args, trainer.engine
    model = trainer.model_wrapped
    scale = trainer.ranks.world_size / window_tokens
    trainer.control = trainer.callback_handler.on_step_begin(args, trainer.state, trainer.control)
    loss_sum = torch.zeros((), device=args.device)
    for index, (examples, packed) in enumerate(window):
        last = index == len(window) - 1
        if not examples:  # this rank ran out of samples: take part in the gradient sync, weightless
            with engine.accumulating(model, last):
                engine.backward(trainer.weightless_loss(model))
            continue
        batch = trainer.device_batch(examples, packed)
        stats.real_tokens += sum(e.num_real_tokens(trainer.is_encoder_decoder) for e in examples)
        stats.padded_tokens += batch["input_ids"].numel() + (batch["labels"].numel() if trainer.is_encoder_decoder
                                                             else 0)
        with engine.accumulating(model, last), trainer.compute_loss_context_manager():
            loss = trainer.summed_loss(model, batch)
            engine.backward(loss * scale)
        loss_sum += loss.detach()
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
    engine.apply_update(trainer.optimizer)
    trainer.control = trainer.callback_handler.on_optimizer_step(args, trainer.state, trainer.control)
    learning_rate = trainer._get_learning_rate()
    trainer.lr_scheduler.step()
    trainer.state.global_step += 1
    stats.record_update(loss_value, window_tokens, norm_value, learning_rate)
    trainer.control = trainer.callback_handler.on_step_end(args, trainer.state, trainer.control)
    if trainer.state.global_step == args.max_steps + 1:
        logger.warning("global_step passed `max_steps`=%d: the LR schedule's horizon is over.", args.max_steps)
