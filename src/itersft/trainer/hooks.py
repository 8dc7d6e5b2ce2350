"""The user's extension points in `step()`: a `data_collator`, and `compute_loss` / `training_step` overrides.

Without them `step()` never comes here (`update.default_micro_step` runs, as fast as before they
existed). With them, each micro-batch of an accumulation window is handled as transformers' `Trainer`
handles one, with its signatures and conventions:

* **data_collator**: every micro-batch is built by the user's collator from per-sample feature dicts
  (`data.user_collator`), and the loss is over the `labels` it returned (-100 = no loss). The window's
  label tokens are counted on the collator's output, over all ranks, before any forward: the update's
  loss stays the mean over every label token of the window. Sorting by length within a window still
  applies (it only regroups one update's samples); packing cannot (the collator lays out the batch).
* **compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None)** is called for every
  micro-batch; `inputs` holds model inputs only (`input_ids`, `attention_mask` or `position_ids`,
  `labels`, and whatever else a collator returned), on the device. `num_items_in_batch` is the
  window's label-token count over all ranks (a 0-dim tensor), so a loss that divides its token sum by
  it is this rank's share of the window's token mean, however samples are split into micro-batches and
  ranks. The trainer's own `compute_loss` returns exactly that (summed cross-entropy / the count).
* **training_step(model, inputs, num_items_in_batch=None)** is called for every micro-batch with
  `model = trainer.model_wrapped`; it does the backward and returns the detached loss. The trainer's own
  calls `compute_loss` inside `compute_loss_context_manager()`, divides by
  `current_gradient_accumulation_steps` unless `loss_is_scaled_for_ga`, and back-propagates.
* **the world-size factor** (a deliberate difference from transformers): data parallelism averages
  gradients over ranks, so a loss normalised by the count over all ranks must be multiplied by the
  number of processes before backward. itersft's `training_step` does that, not `compute_loss`, so a
  `compute_loss` override that divides by `num_items_in_batch` (alone, or added to `super()`'s loss) is
  exact under DDP, FSDP2 and DeepSpeed. A `training_step` override that runs its own backward must
  multiply by `self.accelerator.num_processes` itself (and pass `scale_wrt_gas=False` under DeepSpeed,
  or call `self.engine.backward`). A loss declared a per-micro-batch mean (`loss_is_scaled_for_ga =
  False`) gets no factor: it averages over ranks, as in transformers.

Empty micro-batches (a rank with no sample left) never reach an override: they run the trainer's own
weightless forward so the collectives of the other ranks complete.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from itersft.data.example import Example
from itersft.data.user_collator import label_count
from itersft.trainer.loss import label_positions, summed_token_loss
from itersft.trainer.stats import StepStats

OVERRIDABLE = ("compute_loss", "training_step")
# The keys the trainer's fast loss routes read; a batch with any other key runs one forward with all of them.
FAST_KEYS = {False: frozenset({"input_ids", "attention_mask", "position_ids", "labels"}),
             True: frozenset({"input_ids", "attention_mask", "labels"})}


def overridden(trainer, base: type) -> bool:
    """Whether `trainer` replaces an `OVERRIDABLE` method: in a subclass of `base`, or on the instance."""
    return any(getattr(type(trainer), name) is not getattr(base, name) or name in vars(trainer)
               for name in OVERRIDABLE)


def micro_step(trainer, overridden: bool) -> Callable | None:
    """How `update.run_update` runs each micro-batch: None for its default (no collator, no override)."""
    if overridden:
        return override_micro_step
    return collated_micro_step if trainer.user_collator is not None else None


def takes_fast_route(batch: dict, seq2seq: bool) -> bool:
    """Whether the batch holds only what the trainer's fast loss routes read (see `FAST_KEYS`)."""
    keys = batch.keys() - {"loss_positions", "loss_targets"}
    return keys <= FAST_KEYS[seq2seq] and (not seq2seq or "attention_mask" in keys)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def count_batch(stats: StepStats, examples: list[Example], batch: dict, seq2seq: bool) -> None:
    """Real tokens are the samples' own; padded tokens are what the batch holds."""
    stats.real_tokens += sum(e.num_real_tokens(seq2seq) for e in examples)
    stats.padded_tokens += batch["input_ids"].numel() + (batch["labels"].numel() if seq2seq else 0)


# ---- one micro-batch ------------------------------------------------------------------------------


def collated_micro_step(trainer, model, examples: list[Example], host: dict, window_tokens: int,
                        stats: StepStats) -> torch.Tensor:
    """A collator's micro-batch without overrides: the trainer's own summed loss, scaled as the default
    path scales it; returns the detached summed loss."""
    count_batch(stats, examples, host, trainer.is_encoder_decoder)
    batch = to_device(host, trainer.args.device)
    with trainer.compute_loss_context_manager():
        loss = summed_loss(trainer, model, batch)
        trainer.engine.backward(loss * (trainer.ranks.world_size / window_tokens))
    return loss.detach()


def override_micro_step(trainer, model, examples: list[Example], host: dict, window_tokens: int,
                        stats: StepStats) -> torch.Tensor:
    """A micro-batch through `trainer.training_step`; returns its loss times the window's token count, so
    that summed over micro-batches and ranks it is the window's summed loss, as the statistics expect."""
    count_batch(stats, examples, host, trainer.is_encoder_decoder)
    inputs = to_device(host, trainer.args.device)
    num_items = torch.tensor(window_tokens, device=trainer.args.device)
    loss = trainer.training_step(model, inputs, num_items)
    check_scalar(loss, f"{type(trainer).__qualname__}.training_step")
    share = loss.detach().float() * window_tokens
    return share if loss_is_scaled(trainer, num_items) else share / trainer.ranks.world_size


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
        trainer.engine.backward(loss * trainer.ranks.world_size)
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
    labels = inputs["labels"]
    if return_outputs or not takes_fast_route(inputs, seq2seq):
        summed, outputs = forward_loss(trainer, model, inputs)
    else:
        batch = inputs if seq2seq else {**inputs, **dict(zip(("loss_positions", "loss_targets"),
                                                             label_positions(labels)))}
        summed, outputs = trainer.summed_loss(model, batch), None
    if num_items_in_batch is None:
        num_items_in_batch = label_count(inputs, seq2seq)
    loss = summed / num_items_in_batch
    return (loss, outputs) if return_outputs else loss


def summed_loss(trainer, module, batch: dict) -> torch.Tensor:
    """Summed token loss of a batch with labels: the trainer's fast route where the batch holds only what
    it reads, else one forward with every key the collator returned."""
    if takes_fast_route(batch, trainer.is_encoder_decoder):
        return trainer.summed_loss(module, batch)
    return forward_loss(trainer, module, batch)[0]


def forward_loss(trainer, module, inputs: dict):
    """`(summed token loss, model outputs)` from one forward with every input but `labels` (and the
    trainer's own bookkeeping); a seq2seq decoder is fed the right-shifted labels unless given its inputs."""
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "loss_positions", "loss_targets")}
    if trainer.is_encoder_decoder and "decoder_input_ids" not in model_inputs:
        base = trainer.facts.base
        if hasattr(base, "prepare_decoder_input_ids_from_labels"):
            model_inputs["decoder_input_ids"] = base.prepare_decoder_input_ids_from_labels(labels=labels)
        else:
            model_inputs["labels"] = labels  # the model shifts them itself; its own (mean) loss is ignored
    outputs = module(**model_inputs, use_cache=False)
    return summed_token_loss(outputs.logits, labels, shift=not trainer.is_encoder_decoder), outputs


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
