"""`IterativeSFTConfig`: `transformers.TrainingArguments` plus the few settings iterative SFT adds.

Every `TrainingArguments` field keeps its meaning, in units of optimizer updates: `max_steps`,
`logging_steps`, `eval_steps` and `save_steps` count updates, and one update happens every
`gradient_accumulation_steps` micro-batches of `per_device_train_batch_size` samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

TRUNCATION_MODES = ("keep_end", "keep_start")
BATCHING_MODES = ("auto", "sorted", "packed", "padded")


@dataclass
class IterativeSFTConfig(TrainingArguments):
    """Configuration for `IterativeSFTTrainer`.

    The fields below are added to `TrainingArguments`; TRL 0.23's `IterativeSFTConfig` fields keep
    their names (`max_length`, `truncation_mode`, `optimize_device_cache`, `model_init_kwargs`).
    """

    max_length: int | None = field(
        default=None,
        metadata={"help": "Longest sequence, in tokens, that `step()` trains on; longer ones are truncated "
                          "along the sequence axis (for seq2seq: source and target each). None: no limit."},
    )
    truncation_mode: str = field(
        default="keep_end",
        metadata={"help": "Which tokens truncation keeps: `keep_end` (the last `max_length`) or "
                          "`keep_start` (the first `max_length`)."},
    )
    optimize_device_cache: bool = field(
        default=False,
        metadata={"help": "Free the accelerator's cached memory after every `step()` (no-op on CPU)."},
    )
    model_init_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `from_pretrained` when `model` is a hub id or a path "
                          "(e.g. `{'dtype': 'bfloat16'}`). Only valid with a model given by name."},
    )
    shuffle_samples: bool = field(
        default=True,
        metadata={"help": "Shuffle the samples of each `step()` call before cutting micro-batches, "
                          "reproducibly from `seed` and the update count. False keeps the given order."},
    )
    add_eos_token: bool = field(
        default=True,
        metadata={"help": "Append the EOS token to tokenised `texts`, completions and seq2seq targets "
                          "that do not already end with it, so the model learns to stop."},
    )
    batching: str = field(
        default="auto",
        metadata={"help": "How `step()` lays out micro-batches; every mode learns the same thing (same loss and "
                          "gradient per update). `auto` (the fastest measured): sorted, and each micro-batch packed "
                          "when that is cheaper, which is always where the row is attended sample by sample "
                          "(flash-attention, or sdpa/eager on CPU without activation checkpointing). `sorted`: "
                          "within each accumulation window, samples of similar length share a micro-batch, "
                          "right-padded. `packed`: sorted, then each causal micro-batch is one padding-free row with "
                          "per-sample `position_ids` (elsewhere sdpa and eager attend that row whole, at a cost in "
                          "(tokens in the row)^2). `padded`: the given (shuffled) order, right-padded. Seq2seq and "
                          "models without packed-sequence support are never packed."},
    )
    logging_steps: float = field(
        default=10,
        metadata={"help": "Log every this many optimizer updates (checked at the end of each `step()`)."},
    )

    def __post_init__(self):
        super().__post_init__()
        problems = []
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            problems.append(f"`max_length` must be a positive int or None, got {self.max_length!r}.")
        if self.truncation_mode not in TRUNCATION_MODES:
            problems.append(
                f"`truncation_mode` must be one of {TRUNCATION_MODES}, got {self.truncation_mode!r}."
            )
        if self.batching not in BATCHING_MODES:
            problems.append(f"`batching` must be one of {BATCHING_MODES}, got {self.batching!r}.")
        if self.model_init_kwargs is not None and not isinstance(self.model_init_kwargs, dict):
            problems.append(f"`model_init_kwargs` must be a dict or None, got {type(self.model_init_kwargs)}.")
        if problems:
            raise ValueError("Invalid IterativeSFTConfig:\n- " + "\n- ".join(problems))
