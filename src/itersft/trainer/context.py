"""What one optimizer update works with: `UpdateContext`, built by the trainer for each `step()` call.

The update (`itersft.trainer.update`) reads nothing else of the trainer: the engine and the ranks, the
model as the engine wrapped it, the optimizer, its schedule and the guard that can undo a step, the
callbacks with the state they report, and the trainer's own loss (`TrainerLoss`). A `compute_loss` or
`training_step` override is the one thing that needs the trainer itself; it comes in as the update's
micro-step (`itersft.trainer.hooks.OverrideMicroStep`).

`backward_share` is the one place where a loss meets the world-size factor; `update_context` the one
place that reads a trainer's attributes for an update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler

from itersft.data.example import Example
from itersft.distributed import Ranks
from itersft.trainer import transformers_private
from itersft.trainer.engine import Engine
from itersft.trainer.guard import UpdateGuard
from itersft.trainer.loss import SummedLoss
from itersft.trainer.micro_batch import Collation


def backward_share(engine: Engine, ranks: Ranks, loss: torch.Tensor) -> None:
    """Backward of `loss`, this rank's share of a token mean over every rank (its summed token loss divided
    by the label tokens of all ranks). Data parallelism averages gradients over ranks; the world-size factor
    undoes that, so the gradient is that of the mean over every token of every rank."""
    engine.backward(loss * ranks.world_size)


@dataclass
class Callbacks:
    """transformers' callback handler with the arguments, state and control it is called with, as
    `Trainer.train` calls it. `control` is the trainer's, handed back to it when the call ends."""

    handler: CallbackHandler
    args: TrainingArguments
    state: TrainerState
    control: TrainerControl

    def fire(self, event: str) -> None:
        """Call every callback's `event` hook (`on_step_begin`, `on_optimizer_step`, ...)."""
        self.control = getattr(self.handler, event)(self.args, self.state, self.control)


@dataclass(frozen=True)
class TrainerLoss:
    """The trainer's own loss, as every path computes it: `summed` in the `context` the trainer's
    `compute_loss_context_manager` gives (autocast, or whatever a subclass adds), on `device`.
    `pad_token_id` and `seq2seq` are for the weightless forward's dummy batch."""

    summed: SummedLoss
    context: Callable[[], contextlib.AbstractContextManager]
    device: torch.device
    pad_token_id: int
    seq2seq: bool

    def weightless(self, module: nn.Module) -> torch.Tensor:
        """A zero loss from a real forward pass through `module` (the model, possibly DDP-wrapped).

        A rank with no samples left in a window still runs forward and backward, so the collective
        gradient reduction of the other ranks does not wait for it forever; its gradient is zero.
        """
        pad = self.pad_token_id
        dummy = Example(torch.full((2,), pad), torch.ones(2, dtype=torch.long), torch.full((2,), pad))
        with self.context():
            return self.summed(module, Collation(pad, self.seq2seq)([dummy]).inputs(self.device)) * 0.0


@dataclass
class UpdateContext:
    """Everything one optimizer update needs (see the module docstring).

    Attributes:
        module: the model as the engine wrapped it: forward, backward and clipping run through it.
        model: the model under the engine's wrapper, for naming parameters in warnings.
        learning_rate: reads the learning rate the schedule set for the update just taken.
        max_grad_norm: clipping threshold (None or 0: none).
        max_steps: the schedule's horizon in updates (<= 0: none).
    """

    engine: Engine
    ranks: Ranks
    module: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    guard: UpdateGuard | None
    callbacks: Callbacks
    loss: TrainerLoss
    learning_rate: Callable[[], float]
    max_grad_norm: float | None
    max_steps: int

    @property
    def device(self) -> torch.device:
        return self.loss.device


def trainer_loss(trainer) -> TrainerLoss:
    """`trainer`'s own loss, with the `compute_loss_context_manager` it has now (a subclass's included)."""
    return TrainerLoss(trainer.summed_loss, trainer.compute_loss_context_manager, trainer.args.device,
                       trainer.pad_token_id, trainer.is_encoder_decoder)


def update_context(trainer) -> UpdateContext:
    """What `update.run_update` works with, read from `trainer` at the start of each `step()` call (so an
    optimizer, schedule or state replaced between calls is the one used)."""
    return UpdateContext(
        engine=trainer.engine, ranks=trainer.ranks, module=trainer.model_wrapped, model=trainer.model,
        optimizer=trainer.optimizer, lr_scheduler=trainer.lr_scheduler, guard=trainer.guard,
        callbacks=Callbacks(trainer.callback_handler, trainer.args, trainer.state, trainer.control),
        loss=trainer_loss(trainer), learning_rate=partial(transformers_private.learning_rate, trainer),
        max_grad_norm=trainer.args.max_grad_norm, max_steps=trainer.args.max_steps,
    )
