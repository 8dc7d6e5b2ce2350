"""The user's extension points in `step()`: a `data_collator`, and `compute_loss` / `training_step` overrides.

Micro-batches are built once for every path (`micro_batch.plan_windows`); these hooks change how they are
built and run, as transformers' `Trainer` handles one, with its signatures and conventions:

* **data_collator**: every micro-batch is built by the user's collator from per-sample feature dicts
  (`data.user_collator`, a `micro_batch.Collation` holding it), and the loss is over the `labels` it
  returned (-100 = no loss). The window's label tokens are counted on the collator's output, over all
  ranks, before any forward: the update's loss stays the mean over every label token of the window.
  Sorting by length within a window still applies (it only regroups one update's samples); packing
  cannot (the collator lays out the batch). Without an override the batch then runs through the
  trainer's own loss (`update.own_micro_step`), as without a collator.
* **compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None)** is called for every
  micro-batch; `inputs` holds model inputs only (`input_ids`, `attention_mask` or `position_ids`,
  `labels`, and whatever else a collator returned), on the device. `num_items_in_batch` is the
  window's label-token count over all ranks (a 0-dim tensor), so a loss that divides its token sum by
  it is this rank's share of the window's token mean, however samples are split into micro-batches and
  ranks. The trainer's own `compute_loss` returns exactly that (summed cross-entropy / the count).
* **training_step(model, inputs, num_items_in_batch=None)** is called for every micro-batch
  (`OverrideMicroStep`) with `model = trainer.model_wrapped`; it does the backward and returns the
  detached loss. The trainer's own calls `compute_loss` inside `compute_loss_context_manager()`, divides by
  `current_gradient_accumulation_steps` unless `loss_is_scaled_for_ga`, and back-propagates.
* **the world-size factor** (a deliberate difference from transformers): data parallelism averages
  gradients over ranks, so a loss normalised by the count over all ranks must be multiplied by the
  number of processes before backward (`context.backward_share`). itersft's `training_step` does that,
  not `compute_loss`, so a `compute_loss` override that divides by `num_items_in_batch` (alone, or added
  to `super()`'s loss) is exact under DDP, FSDP2 and DeepSpeed. A `training_step` override that runs its
  own backward must multiply by `self.accelerator.num_processes` itself (and pass `scale_wrt_gas=False`
  under DeepSpeed, or call `self.engine.backward`). A loss declared a per-micro-batch mean
  (`loss_is_scaled_for_ga = False`) gets no factor: it averages over ranks, as in transformers.

Empty micro-batches (a rank with no sample left) never reach an override: they run the trainer's own
weightless forward so the collectives of the other ranks complete.
"""

from __future__ import annotations

import torch

from itersft.data.example import count_label_tokens
from itersft.trainer.context import UpdateContext, backward_share
from itersft.trainer.micro_batch import MicroBatch, Window

OVERRIDABLE = ("compute_loss", "training_step")


def overridden(trainer, base: type) -> bool:
    """Whether `trainer` replaces an `OVERRIDABLE` method: in a subclass of `base`, or on the instance."""
    return any(getattr(type(trainer), name) is not getattr(base, name) or name in vars(trainer)
               for name in OVERRIDABLE)


class OverrideMicroStep:
    """`update.run_update`'s micro-step for a trainer whose `compute_loss` or `training_step` is overridden:
    every micro-batch goes through `trainer.training_step`, as in transformers' `Trainer`."""

    def __init__(self, trainer):
        self.trainer = trainer

    def __call__(self, ctx: UpdateContext, micro_batch: MicroBatch, window: Window) -> torch.Tensor:
        """Returns the micro-batch's loss times the window's token count, so that summed over micro-batches
        and ranks it is the window's summed loss, as the statistics expect."""
        trainer = self.trainer
        # transformers' name for the window's micro-batch count, read by code ported from its `training_step`.
        trainer.current_gradient_accumulation_steps = len(window.micro_batches)
        num_items = torch.tensor(window.label_tokens, device=ctx.device)
        loss = trainer.training_step(ctx.module, micro_batch.inputs(ctx.device), num_items)
        check_scalar(loss, f"{type(trainer).__qualname__}.training_step")
        share = loss.detach().float() * window.label_tokens
        return share if loss_is_scaled(trainer, num_items) else share / ctx.ranks.world_size


def override_eval_loss(trainer, micro_batch: MicroBatch, total: int) -> torch.Tensor:
    """One eval batch's summed loss by a `compute_loss` override, called as `step()` calls it, with
    `num_items_in_batch` = `total`, the eval set's label tokens over all ranks (`evaluation.token_mean_loss`)."""
    device = trainer.args.device
    if micro_batch.label_tokens == 0:
        return torch.zeros((), dtype=torch.float64, device=device)
    num_items = torch.tensor(total, device=device)
    loss = trainer.compute_loss(trainer.model, micro_batch.inputs(device), num_items_in_batch=num_items)
    check_scalar(loss, f"{type(trainer).__qualname__}.compute_loss")
    return loss.double() * (total if loss_is_scaled(trainer, num_items) else micro_batch.label_tokens)


# ---- the trainer's own training_step and compute_loss ---------------------------------------------


def training_step(trainer, model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """Forward and backward of one micro-batch of `step()`; returns the detached loss.

    `IterativeSFTTrainer.training_step` (transformers' signature): `compute_loss` inside
    `compute_loss_context_manager()`, divided by `current_gradient_accumulation_steps` unless
    `loss_is_scaled_for_ga`, back-propagated (times the world size when scaled: see the module doc).
    """
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
    check_scalar(loss, f"{type(trainer).__qualname__}.compute_loss", needs_grad=True)
    if loss_is_scaled(trainer, num_items_in_batch):
        backward_share(trainer.engine, trainer.ranks, loss)
    else:
        loss = loss / trainer.current_gradient_accumulation_steps
        trainer.engine.backward(loss)
    return loss.detach()


def compute_loss(trainer, model, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
    """Summed token cross-entropy over `inputs["labels"]` (-100 = no loss) / `num_items_in_batch`.

    `IterativeSFTTrainer.compute_loss` (transformers' signature). `num_items_in_batch` None (evaluation,
    direct calls): the batch's own label-token count. `return_outputs=True` returns `(loss, outputs)`
    from one full forward (`outputs.logits` is `(batch, seq, vocab)`); otherwise the trainer's fastest
    exact route computes the loss (for a causal model: at the label positions only).
    """
    seq2seq = trainer.is_encoder_decoder
    if return_outputs:
        summed, outputs = trainer.summed_loss.with_outputs(model, inputs)
    else:
        summed, outputs = trainer.summed_loss(model, inputs), None
    if num_items_in_batch is None:
        num_items_in_batch = count_label_tokens(inputs["labels"], causal=not seq2seq)
    loss = summed / num_items_in_batch
    return (loss, outputs) if return_outputs else loss


def loss_is_scaled(trainer, num_items_in_batch) -> bool:
    """`loss_is_scaled_for_ga` resolved as transformers resolves it: None means scaled when the model takes
    `num_items_in_batch` as a loss kwarg and one was given."""
    if trainer.loss_is_scaled_for_ga is not None:
        return bool(trainer.loss_is_scaled_for_ga)
    return bool(trainer.model_accepts_loss_kwargs and num_items_in_batch is not None)


def check_scalar(loss, where: str, needs_grad: bool = False) -> None:
    """The loss an override returns must be a 0-dim tensor; `needs_grad`: one that backward can reach."""
    if isinstance(loss, torch.Tensor) and loss.dim() == 0:
        if needs_grad and not loss.requires_grad:
            raise ValueError(f"{where} returned a loss that does not require grad (detached, or computed under "
                             "torch.no_grad()): nothing would be trained. Return the loss as computed.")
        return
    returned = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
                else f"a {type(loss).__name__}")
    raise ValueError(f"{where} returned {returned}; it must return a scalar tensor (0-dim), e.g. `.sum() / "
                     "num_items_in_batch` of the token losses. Return `(loss, outputs)` only when "
                     "`return_outputs=True`.")
