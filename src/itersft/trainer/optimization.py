"""The optimizer and the LR schedule of an `IterativeSFTTrainer`: built at construction, reset on demand.

They exist as soon as the trainer does (so `trainer.optimizer` can be inspected or patched before the
first `step()`), built by transformers' `create_optimizer`/`create_scheduler` from the training
arguments, or taken from `optimizers=`, then handed to the engine with the model.

With `max_steps` set, the configured schedule runs over that horizon of optimizer updates. Unset, the
LR is constant after warmup: TRL 0.23 decayed it to zero over a zero-length horizon, so nothing
trained; here a schedule that needs a horizon warns and falls back to constant.
"""

from __future__ import annotations

import logging

from transformers.optimization import get_scheduler

logger = logging.getLogger(__name__)

# `state.max_steps` when no horizon is set: large enough that DefaultFlowCallback never ends training.
NO_HORIZON = 2**62


def prepare_optimization(trainer) -> None:
    """Create the optimizer and LR schedule (unless given) and hand model and optimizer to the engine."""
    args = trainer.args
    trainer.state.max_steps = args.max_steps if args.max_steps > 0 else NO_HORIZON
    trainer.state.compute_steps(args, trainer.state.max_steps)
    trainer.state.train_batch_size = args.per_device_train_batch_size
    if trainer.optimizer is None:
        trainer.create_optimizer()
    trainer.model_wrapped, trainer.optimizer = trainer.engine.prepare(trainer.model, trainer.optimizer, args)
    if trainer.is_deepspeed_enabled:
        trainer.deepspeed = trainer.model_wrapped  # the engine; transformers' saving code reads it here
    if trainer.is_fsdp_enabled:  # the sharded module is the model from now on (saving and loading expect it)
        trainer.model = trainer.model_wrapped
    if trainer.lr_scheduler is None:
        create_schedule(trainer)
    for name in ("model", "optimizer", "lr_scheduler"):
        setattr(trainer.callback_handler, name, getattr(trainer, name))


def create_schedule(trainer) -> None:
    """The configured schedule over `max_steps`, or constant after warmup without a horizon."""
    args = trainer.args
    if args.max_steps > 0:
        trainer.create_scheduler(num_training_steps=args.max_steps, optimizer=trainer.optimizer)
        return
    if args.lr_scheduler_type not in ("linear", "constant", "constant_with_warmup"):
        logger.warning("`lr_scheduler_type`=%s needs a horizon: set `max_steps`. Using a constant LR after "
                       "warmup.", args.lr_scheduler_type)
    trainer.lr_scheduler = get_scheduler("constant_with_warmup", trainer.optimizer,
                                         num_warmup_steps=int(args.warmup_steps))


def reset_optimizer(trainer) -> None:
    """Forget the optimizer's moments and restart the LR schedule (warmup included)."""
    trainer.optimizer.state.clear()
    for group in trainer.optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    trainer.lr_scheduler = None
    create_schedule(trainer)
    trainer.callback_handler.lr_scheduler = trainer.lr_scheduler
