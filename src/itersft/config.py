"""`IterativeSFTConfig`: `transformers.TrainingArguments` plus the settings iterative SFT adds, each
defined, defaulted and checked here and nowhere else.

Every `TrainingArguments` field keeps its meaning, in units of optimizer updates: `max_steps`,
`logging_steps`, `eval_steps` and `save_steps` count updates, and one update happens every
`gradient_accumulation_steps` micro-batches of `per_device_train_batch_size` samples.

The trainer also accepts a plain `TrainingArguments`; `setting(args, name)` then supplies this class's
default for the fields it lacks, and `check_training_arguments` checks either kind the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from itersft.checks import Problems, is_real

TRUNCATION_MODES = ("keep_end", "keep_start")
BATCHING_MODES = ("auto", "sorted", "packed", "padded")


def documented(default: Any, help: str, identity: bool = True) -> Any:
    """A dataclass field with its help text (shown by `HfArgumentParser` and in the docs); `identity=False`
    for a setting that does not change what a loop run trains (left out of its identity: `run_identity`)."""
    return field(default=default, metadata={"help": help, **({} if identity else {"identity": False})})


@dataclass
class IterativeSFTConfig(TrainingArguments):
    """Configuration for `IterativeSFTTrainer`.

    The fields below are added to `TrainingArguments`; TRL 0.23's `IterativeSFTConfig` fields keep
    their names (`max_length`, `truncation_mode`, `optimize_device_cache`, `model_init_kwargs`).
    """

    max_length: int | None = documented(None,
        "Longest sequence, in tokens, that `step()` trains on; longer ones are truncated "
        "along the sequence axis (for seq2seq: source and target each). None: no limit.")
    truncation_mode: str = documented("keep_end",
        "Which tokens truncation keeps: `keep_end` (the last `max_length`) or "
        "`keep_start` (the first `max_length`).")
    optimize_device_cache: bool = documented(False,
        "Free the accelerator's cached memory after every `step()` (no-op on CPU).", identity=False)
    model_init_kwargs: dict[str, Any] | None = documented(None,
        "Keyword arguments for `from_pretrained` when `model` is a hub id or a path "
        "(e.g. `{'dtype': 'bfloat16'}`). Only valid with a model given by name.")
    shuffle_samples: bool = documented(True,
        "Shuffle the samples of each `step()` call before cutting micro-batches, "
        "reproducibly from `seed` and the update count. False keeps the given order.")
    add_eos_token: bool = documented(True,
        "Append the EOS token to tokenised `texts`, completions and seq2seq targets "
        "that do not already end with it, so the model learns to stop.")
    batching: str = documented("auto",
        "How `step()` lays out micro-batches; every mode learns the same thing (same loss and "
        "gradient per update). `auto` (the fastest measured): sorted, and each micro-batch packed "
        "when that is cheaper, which is always where the row is attended sample by sample "
        "(flash-attention, or sdpa/eager on CPU without activation checkpointing). `sorted`: within "
        "each accumulation window, samples of similar length share a micro-batch, right-padded. "
        "`packed`: sorted, then each causal micro-batch is one padding-free row with per-sample "
        "`position_ids` (elsewhere sdpa and eager attend that row whole under a block-diagonal mask, at "
        "a cost in (tokens in the row)^2). `padded`: the given (shuffled) order, right-padded. Seq2seq "
        "and models without packed-sequence support are never packed, nor is a `data_collator`'s batch "
        "(it lays out its own; `packed` is refused with one); `compute_loss`/`training_step` overrides "
        "get packed rows only with `packed`.")
    guard_updates: bool = documented(True,
        "Copy the trainable weights and the optimizer state before each update, so an update that makes a "
        "weight non-finite, or that is interrupted (out of memory, KeyboardInterrupt), is undone and the next "
        "one is unchanged. Costs one more copy of both (with AdamW, 3x the trainable weights; small with LoRA). "
        "False saves that memory: a non-finite weight after an update then raises instead. Not under DeepSpeed.")
    logging_steps: float = documented(10,
        "Log every this many optimizer updates (checked at the end of each `step()`).", identity=False)

    def __post_init__(self):
        super().__post_init__()
        check_training_arguments(self)


ITERATIVE_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(IterativeSFTConfig)
    if f.name not in {g.name for g in fields(TrainingArguments)}
}
"""The defaults of the fields `IterativeSFTConfig` adds, for a plain `TrainingArguments` that lacks them."""


def setting(args: TrainingArguments, name: str) -> Any:
    """`args.<name>` for an iterative-SFT setting, or its `IterativeSFTConfig` default when `args` lacks it."""
    return getattr(args, name, ITERATIVE_DEFAULTS[name])


def check_max_length(value: Any, problems: Problems, name: str = "max_length") -> None:
    problems.integer(name, value, minimum=1, optional=True)


def check_truncation_mode(value: Any, problems: Problems, name: str = "truncation_mode") -> None:
    problems.choice(name, value, TRUNCATION_MODES)


def check_training_arguments(args: TrainingArguments) -> None:
    """Check every setting the trainer reads, in `IterativeSFTConfig` or a plain `TrainingArguments`.

    Raises one `ValueError` listing every problem. Bools are not numbers here (`max_length=True` is a
    mistake, not 1), and a non-finite learning rate or weight decay is refused because it would turn
    the weights into NaN on the first update.
    """
    problems = Problems(type(args).__name__)
    check_max_length(setting(args, "max_length"), problems)
    check_truncation_mode(setting(args, "truncation_mode"), problems)
    problems.choice("batching", setting(args, "batching"), BATCHING_MODES)
    for name in ("optimize_device_cache", "shuffle_samples", "add_eos_token", "guard_updates"):
        problems.boolean(name, setting(args, name))
    init_kwargs = setting(args, "model_init_kwargs")
    if init_kwargs is not None and not isinstance(init_kwargs, dict):
        problems.add(f"`model_init_kwargs` must be a dict or None, got {type(init_kwargs).__name__}.")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        problems.integer(name, getattr(args, name), minimum=1)
    problems.integer("max_steps", args.max_steps, minimum=-1)
    problems.integer("seed", args.seed)
    for name in ("learning_rate", "weight_decay", "warmup_steps"):
        problems.number(name, getattr(args, name), minimum=0)
    problems.number("max_grad_norm", args.max_grad_norm, minimum=0, optional=True)
    for name in ("adam_beta1", "adam_beta2"):
        problems.number(name, getattr(args, name), minimum=0, maximum=1, exclusive_maximum=True)
    problems.number("adam_epsilon", args.adam_epsilon, minimum=0, exclusive_minimum=True)
    for name in ("logging_steps", "save_steps", "eval_steps"):
        problems.number(name, getattr(args, name), minimum=0, exclusive_minimum=True, optional=name == "eval_steps")
    if args.label_smoothing_factor:
        problems.add(f"`label_smoothing_factor`={args.label_smoothing_factor!r} is not supported: `step()`'s loss is "
                     "plain token cross-entropy. Set it to 0, or smooth in a `compute_loss` override.")
    if args.neftune_noise_alpha is not None:
        problems.add(f"`neftune_noise_alpha`={args.neftune_noise_alpha!r} is not supported: NEFTune noise is "
                     "added by `Trainer.train()`, which `step()` does not run. Leave it at None.")
    if args.average_tokens_across_devices is not True:
        problems.add(f"`average_tokens_across_devices`={args.average_tokens_across_devices!r} is not supported: "
                     "every update's loss is the mean over the label tokens of all processes (what True means), "
                     "so a rank's few tokens never weigh as much as another's many. Leave it at True.")
    horizon = args.max_steps if is_real(args.max_steps) and args.max_steps > 0 else None
    for name in ("logging_steps", "eval_steps", "save_steps", "warmup_steps"):
        value = getattr(args, name)
        if horizon is None and is_real(value) and 0 < value < 1:
            problems.add(f"`{name}`={value} is a fraction of the training horizon, but `max_steps` is not set. "
                         "Give a whole number of updates or set `max_steps`.")
    problems.raise_if_any()
