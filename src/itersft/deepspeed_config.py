"""DeepSpeed (through accelerate) as `IterativeSFTTrainer` drives it: what the config may hold, and its completion.

`step()` owns the optimizer, the LR schedule and the accumulation windows (a window may be shorter
than `gradient_accumulation_steps`, and its loss is normalised by the window's token count). So the
DeepSpeed config must not bring its own `optimizer` or `scheduler`: the trainer's (a torch optimizer,
or the one given in `optimizers`) runs inside DeepSpeed's ZeRO wrapper, and the trainer steps its LR
schedule once per update. "auto" values are filled from the training arguments and the model, as
transformers' Trainer fills them.
"""

from __future__ import annotations

from transformers import TrainingArguments


def finalize_deepspeed_config(accelerator, args: TrainingArguments, model) -> None:
    """Check the DeepSpeed config accelerate will use and fill its remaining "auto" values in place."""
    hf_config = accelerator.state.deepspeed_plugin.hf_ds_config
    config = hf_config.config
    owned = [section for section in ("optimizer", "scheduler") if section in config]
    if owned:
        raise ValueError(
            f"The DeepSpeed config has {' and '.join(repr(s) for s in owned)} section(s): remove them. "
            "IterativeSFTTrainer builds the optimizer and LR schedule from the training arguments (or takes "
            "`optimizers=`), and DeepSpeed runs them."
        )
    hf_config.trainer_config_finalize(args, model, max(args.max_steps, 0))
    # DeepSpeed asks for this flag before it wraps an optimizer it did not build itself.
    config["zero_allow_untested_optimizer"] = True


def zero_stage(accelerator) -> int:
    """The ZeRO stage of the run's DeepSpeed config (0 without DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0
