"""Checkpoints of an `IterativeSFTTrainer`: written atomically, resumed exactly, on every engine.

A checkpoint folder holds the model (or adapters), optimizer, scheduler, RNG states and trainer state:
everything resuming needs. It is written under a staging name and renamed into place
(`itersft.atomic.atomic_directory`), so a process killed mid-write never leaves a half-written
checkpoint that a resume would pick up. Every process must call these functions. The optimizer,
scaler, RNG and callback states are written and read by transformers' own (private) code, through
`itersft.trainer.transformers_private`, so the files are the ones transformers writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerState
from transformers.integrations.deepspeed import deepspeed_load_checkpoint
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

from itersft.atomic import atomic_directory
from itersft.trainer import transformers_private


def save_checkpoint(trainer, directory: str | os.PathLike, extra: Callable[[Path], None] | None = None) -> None:
    """Write a full checkpoint of `trainer` to `directory`, atomically.

    `extra(staging_dir)` may add files (the loop adds its own state) before the folder is renamed.
    """
    args = trainer.args
    with atomic_directory(directory, args.should_save, trainer.accelerator.wait_for_everyone) as staging:
        trainer.store_flos()
        trainer.save_model(str(staging), _internal_call=True)
        if not args.save_only_model:
            transformers_private.save_optimizer_scaler_rng(trainer, str(staging))
        if args.should_save:
            trainer.state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))
            if extra is not None:
                extra(staging)


def resume_from_checkpoint(trainer, checkpoint: str | bool = True) -> str | None:
    """Restore `trainer`'s model, optimizer, scheduler, RNG and state from a checkpoint folder.

    `True` picks the latest `checkpoint-*` in `args.output_dir` and returns None when there is none (a
    fresh start); a path must exist. Returns the folder resumed from.
    """
    if checkpoint is True:
        output_dir = trainer.args.output_dir
        checkpoint = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if checkpoint is None:
            return None
    if not os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME)):
        raise ValueError(f"`checkpoint`={checkpoint!r} is not a checkpoint folder (no {TRAINER_STATE_NAME}).")
    if trainer.is_deepspeed_enabled:  # the engine restores weights and optimizer shards from `global_step*/`
        # With adapters, the engine's checkpoint holds the trainable (adapter) weights only.
        deepspeed_load_checkpoint(trainer.model_wrapped, checkpoint, load_module_strict=not trainer.facts.adapters)
    else:
        transformers_private.load_model_weights(trainer, checkpoint)
    transformers_private.load_optimizer_scaler(trainer, checkpoint)
    state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
    state.is_local_process_zero = trainer.is_local_process_zero()
    state.is_world_process_zero = trainer.is_world_process_zero()
    trainer.state = state
    transformers_private.load_callbacks_rng(trainer, checkpoint)
    return checkpoint
