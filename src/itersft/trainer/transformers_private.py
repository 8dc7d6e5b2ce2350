"""The adapter to transformers' *private* `Trainer` methods: every use itersft makes of one is here.

Checkpoints, resuming and the learning rate reuse what `transformers.Trainer` does for them, so a
checkpoint written by `step()` has the files and layout transformers writes (and resumes from), under
every engine. The methods that do it start with `_`: transformers may rename or change them in any
release, without notice. Nothing else in itersft calls one, so a transformers upgrade that breaks them
breaks this module alone (checked against transformers 5.24; `tests/trainer/test_eval_checkpoint.py` and
the two-process tests save and resume through each).

Used: `_save_optimizer_and_scheduler`, `_save_scaler`, `_save_rng_state`, `_save`, `_get_output_dir`;
`_load_from_checkpoint`, `_load_optimizer_and_scheduler`, `_load_scaler`, `_load_callback_state`,
`_load_rng_state`; `_get_learning_rate`. Overridden: `_save_checkpoint`, which transformers' own
code calls to write a numbered checkpoint (`save_numbered_checkpoint`).
"""

from __future__ import annotations

import os

import torch
from transformers.trainer_utils import rotate_checkpoints


def save_optimizer_scaler_rng(trainer, directory: str) -> None:
    """Write the optimizer and LR schedule, the gradient scaler and the RNG states, as transformers does."""
    trainer._save_optimizer_and_scheduler(directory)
    trainer._save_scaler(directory)
    trainer._save_rng_state(directory)


def save_weights(trainer, directory: str, state_dict: dict[str, torch.Tensor]) -> None:
    """Write `state_dict` as the model's weights in `directory` (with its config), as `save_model` would."""
    trainer._save(directory, state_dict=state_dict)


def load_model_weights(trainer, checkpoint: str) -> None:
    """Load the weights (or adapters) of a checkpoint into the model, on any engine but DeepSpeed."""
    trainer._load_from_checkpoint(checkpoint)


def load_optimizer_scaler(trainer, checkpoint: str) -> None:
    """Load the optimizer, the LR schedule and the gradient scaler of a checkpoint."""
    trainer._load_optimizer_and_scheduler(checkpoint)
    trainer._load_scaler(checkpoint)


def load_callbacks_rng(trainer, checkpoint: str) -> None:
    """Restore the stateful callbacks from `trainer.state` (already loaded) and the RNG states of a checkpoint."""
    trainer._load_callback_state()
    trainer._load_rng_state(checkpoint)


def learning_rate(trainer) -> float:
    """The learning rate the schedule set last (transformers' reading, which handles DeepSpeed's warm-up and
    schedules without `get_last_lr`)."""
    return trainer._get_learning_rate()


def save_numbered_checkpoint(trainer, model, trial) -> None:
    """`Trainer._save_checkpoint`, overridden: write `checkpoint-<global_step>` in the run's folder with the
    trainer's own atomic `save_checkpoint`, then rotate old ones (`save_total_limit`)."""
    run_dir = trainer._get_output_dir(trial=trial)
    trainer.save_checkpoint(os.path.join(run_dir, f"checkpoint-{trainer.state.global_step}"))
    if trainer.args.should_save:
        rotate_checkpoints(output_dir=run_dir, save_total_limit=trainer.args.save_total_limit,
                           best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=False)
