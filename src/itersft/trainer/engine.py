"""What differs between one process, DDP, FSDP2 and DeepSpeed ZeRO-2/3 when `step()` makes an update.

accelerate wraps the model and the optimizer; `Engine` holds the few places where `step()` must act
differently per engine, so the update itself reads the same for all of them:

* **gradient sync**: only the last micro-batch of an accumulation window reduces gradients over ranks
  (`accumulating`); DeepSpeed reads the same boundary from `sync_gradients` to take its step there.
* **backward**: DeepSpeed must not divide the loss by its accumulation steps: a window may be shorter,
  and the loss is already normalised by the window's token count.
* **clip, step, clear**: DeepSpeed clips, steps and clears inside the last backward of a window; the
  others do it here. Every engine clears through the optimizer (`optimizer.zero_grad()`, as TRL did,
  so code that patches it keeps working), then any trainable parameter the optimizer does not hold.

DeepSpeed's config must not bring its own `optimizer` or `scheduler`: the trainer's optimizer (a torch
optimizer, or the one given in `optimizers`) runs inside DeepSpeed's ZeRO wrapper, and the trainer
steps its LR schedule once per update. "auto" values are filled from the training arguments and the
model, as transformers' Trainer fills them.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import TrainingArguments


class Engine:
    """The engine-specific parts of an update, for the accelerator a trainer was built with."""

    def __init__(self, accelerator, deepspeed: bool, fsdp: bool):
        self.accelerator = accelerator
        self.deepspeed = deepspeed
        self.fsdp = fsdp
        if fsdp and not accelerator.is_fsdp2:
            raise ValueError("FSDP1 is not supported: use FSDP2, with `fsdp_version: 2` in the accelerate config file "
                             "or `fsdp_config={'version': 2}` in the training arguments (transformers' default).")
        self._unheld: list[nn.Parameter] = []

    @property
    def shards_parameters(self) -> bool:
        """Whether each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3), so that every
        forward pass is a collective and code that runs the model outside `step()` must keep ranks in step."""
        return self.fsdp or zero_stage(self.accelerator) == 3

    def prepare(self, model: nn.Module, optimizer, args: TrainingArguments):
        """Hand model and optimizer to accelerate; returns `(wrapped model, wrapped optimizer)`."""
        if self.deepspeed:
            finalize_deepspeed_config(self.accelerator, args, model)
        wrapped, optimizer = self.accelerator.prepare(model, optimizer)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self._unheld = [p for p in wrapped.parameters() if p.requires_grad and id(p) not in held]
        if self.fsdp:
            # `generate` reads parameters outside `forward`: let FSDP gather them for it too (needed with LoRA).
            torch.distributed.fsdp.register_fsdp_forward_method(wrapped, "generate")
        return wrapped, optimizer

    def accumulating(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward and backward: gradients are reduced over ranks on the
        window's last micro-batch only."""
        if self.deepspeed:
            self.accelerator.sync_gradients = last
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else self.accelerator.no_sync(model)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of an already normalised loss."""
        if self.deepspeed:
            self.accelerator.backward(loss, scale_wrt_gas=False)
        else:
            self.accelerator.backward(loss)

    def clip_grad_norm(self, model: nn.Module, max_grad_norm: float | None) -> torch.Tensor:
        """Clip the gradients to `max_grad_norm` (None or 0: no clipping) and return the pre-clip norm."""
        max_norm = max_grad_norm if max_grad_norm else float("inf")
        norm = self.accelerator.clip_grad_norm_(model.parameters(), max_norm)
        return norm.full_tensor() if isinstance(norm, DTensor) else torch.as_tensor(norm)

    def step_optimizer(self, optimizer) -> None:
        """Step the optimizer (DeepSpeed did in the window's last backward)."""
        if not self.deepspeed:
            optimizer.step()

    def clear_gradients(self, optimizer) -> None:
        """Drop every pending gradient: through `optimizer.zero_grad()` (looked up on every call, called
        without arguments, so a replacement the user installed runs as TRL's trainer ran it), then those
        of trainable parameters the optimizer does not hold (which would otherwise pile up across updates
        and inflate the clipping norm). Under DeepSpeed the wrapper's `zero_grad` does nothing: the
        engine clears its partitioned gradients itself when it steps or skips a non-finite step.
        """
        optimizer.zero_grad()
        if self.deepspeed:
            return
        for parameter in self._unheld:
            parameter.grad = None


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
