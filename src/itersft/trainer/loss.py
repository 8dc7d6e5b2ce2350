"""The training loss: summed token cross-entropy, so the caller can normalise over a whole window.

Two ways to compute the same number for a causal LM:

* **full logits** (`summed_token_loss`): run the model, take its `(batch, seq, vocab)` logits, shift,
  cross-entropy in float32. Works for every model, wrapper and head.
* **label positions only** (`causal_summed_loss` with the model's `(decoder, lm_head)` split): run the
  decoder stack for hidden states, keep the hidden states of the positions whose next token is a label,
  and apply the LM head and cross-entropy a chunk of rows at a time (`linear_cross_entropy_sum`), so no
  full-vocabulary float32 logits exist for the whole micro-batch and none for unlabelled positions
  (masked prompts, padding). At small hidden sizes the head and the loss are most of the step.

The second path is taken only where it is provably the same computation: a model class whose forward
is `lm_head(decoder(...))` and nothing else (`ModelFacts.checked_head`), called directly (not through
DDP, FSDP, DeepSpeed or `torch.compile`, whose wrappers must see the forward), a plain `nn.Linear`
head (not LoRA-wrapped, quantised, offloaded or partitioned by ZeRO-3) and no prompt-learning adapter.
Otherwise a model whose forward takes `logits_to_keep` computes logits at the label positions only,
through the wrapper; anything else gets full logits. `SummedLoss` makes that choice once per trainer.
Seq2seq models get the full-logits loss on the decoder's output (`seq2seq_summed_loss`), the decoder fed
`decoder_inputs`.

Which positions carry a label follows one rule (`itersft.data.example.loss_targets`); `label_positions`
finds them for a causal batch, on the host when the micro-batch is built (`itersft.trainer.micro_batch`),
and `with_label_positions` adds them to a batch that arrives without them (a user's `compute_loss` call).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate.utils import is_compiled_module
from torch import nn
from torch.autograd.function import once_differentiable
from torch.distributed.fsdp import FSDPModule

from itersft import packed_attention
from itersft.data.example import IGNORE_INDEX, loss_targets
from itersft.trainer.model_facts import ModelFacts

# Float32 logits computed at once: bounds the loss's extra memory to just under 32 MiB per chunk. Under,
# not at: glibc's malloc maps a block of 32 MiB or more fresh from the kernel on every allocation (the
# ceiling of its adaptive mmap threshold, mallopt(3)), so a chunk of exactly 32 MiB cost ~8,000 page
# faults each time (a few percent of a step on a small model), while a smaller one is reused.
LOGITS_PER_CHUNK = 2**23 - 2**16
# The keys the fast routes read, per model kind (seq2seq: also needs `attention_mask`); a batch with any
# other key (a collator's extras) runs one forward with all of them.
FAST_KEYS = {False: frozenset({"input_ids", "attention_mask", "position_ids", "labels"}),
             True: frozenset({"input_ids", "attention_mask", "labels"})}
# What the trainer adds to a batch for its own loss; never a model input.
BOOKKEEPING = frozenset({"loss_positions", "loss_targets", "packed_lengths"})


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Sum of cross-entropy over the tokens whose label is not -100, in float32.

    `shift=True` (causal LMs): the logits at position t predict the label at t + 1 (`loss_targets`).
    Returning the sum rather than the mean is what lets `step()` divide by the token count of the whole
    accumulation window, so every token weighs the same however samples are split into micro-batches.
    """
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        loss_targets(labels, causal=shift).reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a causal batch: flat indices into `(batch * seq)` of the positions that carry a label
    (`loss_targets`), and those labels. Computed on the host, before the batch moves, so the device never
    has to report a count back (a boolean-mask gather would make it)."""
    targets = loss_targets(labels, causal=True).reshape(-1)
    positions = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    return positions, targets[positions]


def takes_fast_route(batch: dict, seq2seq: bool) -> bool:
    """Whether the batch holds only what the fast routes read (see `FAST_KEYS`)."""
    keys = batch.keys() - BOOKKEEPING
    return keys <= FAST_KEYS[seq2seq] and (not seq2seq or "attention_mask" in keys)


def with_label_positions(batch: dict, seq2seq: bool) -> dict:
    """`batch` with the label positions a causal fast route reads (`label_positions`), found once: where
    they are already there, or the batch is seq2seq or takes the full forward, it is returned as it is."""
    if seq2seq or "loss_positions" in batch or not takes_fast_route(batch, seq2seq):
        return batch
    positions, targets = label_positions(batch["labels"])
    return {**batch, "loss_positions": positions, "loss_targets": targets}


def decoder_inputs(base: nn.Module, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a seq2seq decoder is fed for `labels`: the labels shifted right, built by `base` (the
    transformers model) where it can; otherwise `labels` themselves, which the model shifts (its own mean
    loss is then ignored)."""
    if hasattr(base, "prepare_decoder_input_ids_from_labels"):
        return {"decoder_input_ids": base.prepare_decoder_input_ids_from_labels(labels=labels)}
    return {"labels": labels}


class _LinearCrossEntropySum(torch.autograd.Function):
    """`F.cross_entropy(hidden @ weight.T + bias, targets, reduction="sum")`, a chunk of rows at a time.

    The gradients are computed in the forward pass, chunk by chunk (softmax minus one-hot, times the
    head's inputs), so backward only scales them by the incoming gradient: the float32 logits of one
    chunk are all that ever exist, and the head costs the same three matmuls as the plain path.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows):
        wants = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden) if wants[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if wants[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if wants[2] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows, target = hidden[start : start + chunk_rows], targets[start : start + chunk_rows]
            logits = F.linear(rows, weight, bias).float()
            target_logits = logits.gather(1, target[:, None])
            # log-sum-exp by hand, so the one exp over the chunk also yields the softmax for the gradient.
            shift = logits.amax(dim=-1, keepdim=True)
            exps = logits.sub_(shift).exp_()
            norm = exps.sum(dim=-1, keepdim=True)
            total += (shift + norm.log() - target_logits).sum()
            if not any(wants):
                continue
            # d(loss)/d(logits) = softmax - one_hot(target), built in place over the chunk's logits.
            grad_logits = exps.div_(norm)
            grad_logits[torch.arange(len(target), device=target.device), target] -= 1.0
            if wants[0]:
                grad_hidden[start : start + chunk_rows] = grad_logits.to(weight.dtype) @ weight
            if wants[1]:
                grad_weight.addmm_(grad_logits.t(), rows.float())
            if wants[2]:
                grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        scale = grad_output.float()
        return (
            None if grad_hidden is None else grad_hidden * scale.to(grad_hidden.dtype),
            None if grad_weight is None else (grad_weight * scale).to(weight_dtype),
            None if grad_bias is None else (grad_bias * scale).to(bias_dtype),
            None,
            None,
        )


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             targets: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T (+ bias)` against `targets` (no -100 among them).

    `hidden` is `(rows, hidden_size)`, `weight` the head's `(vocab, hidden_size)`. Float32 logits of at
    most `chunk_rows` rows exist at a time (default: `LOGITS_PER_CHUNK` values).
    """
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(weight.shape[0])
    return _LinearCrossEntropySum.apply(hidden, weight, bias, targets, chunk_rows)


def default_chunk_rows(vocab_size: int) -> int:
    """Rows of logits per chunk for a head of `vocab_size` outputs: `LOGITS_PER_CHUNK` values, at least 16 rows."""
    return max(16, LOGITS_PER_CHUNK // vocab_size)



def separable_head(model: nn.Module, facts: ModelFacts) -> tuple[nn.Module, nn.Linear] | None:
    """`(decoder, lm_head)` when the loss may be computed from the decoder's hidden states, else None.

    `model` is the trainer's model as the engine left it (a `PreTrainedModel`, a `PeftModel`, or an
    FSDP-sharded module); the split is valid only where `model` itself is called and no forward hook
    sits on the model or its head (see `SummedLoss.route`).
    """
    if not facts.checked_head or isinstance(model, FSDPModule):
        return None  # FSDP gathers the sharded parameters in the root module's forward: it must run
    base = facts.base
    head = base.get_output_embeddings()
    decoder = getattr(base, base.base_model_prefix, None)
    if type(head) is not nn.Linear or decoder is None or getattr(head, "_hf_hook", None) is not None:
        return None
    return decoder, head


def _hooked(*modules: nn.Module) -> bool:
    """Whether a forward hook sits on any of `modules` (the route that skips their forward would skip it)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class SummedLoss:
    """The summed token loss of one micro-batch, by the fastest exact route for the module called.

    Built once per trainer, after the engine has wrapped the model: `model` is the trainer's model and
    `autocast` the mixed-precision context (accelerate's), which the direct decoder call enters itself
    since it bypasses the wrapped model's patched forward. Called with the module to run: `model` itself
    (evaluation; training in one process) may take the decoder + chunked head route; a wrapper (DDP)
    must be called as a whole. Forward hooks are not fixed (a user or a library such as ZeRO-3 may add
    them at any time), so they are looked up on every call: where the model or its head carries one, the
    full forward runs so the hook sees it. A batch with keys the fast routes do not read (a collator's
    extras) runs one forward with all of them (`with_outputs`). A packed row (`packed_lengths` in the
    batch) is attended sample by sample where `switches_attention` says so.
    """

    def __init__(self, model: nn.Module, facts: ModelFacts,
                 autocast: Callable[[], contextlib.AbstractContextManager]):
        self.model = model
        self.facts = facts
        self.autocast = autocast
        self.head = None if facts.is_encoder_decoder else separable_head(model, facts)

    def route(self, module: nn.Module) -> str:
        """`"head"` (decoder + chunked head), `"logits_to_keep"`, `"full"` or `"seq2seq"`, for `module`."""
        if self.facts.is_encoder_decoder:
            return "seq2seq"
        if self.head is not None and module is self.model and not _hooked(self.model, self.facts.base, self.head[1]):
            return "head"
        return "logits_to_keep" if self.facts.takes_logits_to_keep else "full"

    def switches_attention(self, module: nn.Module) -> bool:
        """Whether a packed row run through `module` goes through `itersft.packed_attention` (not through
        `torch.compile`, whose graph would not see the switch of attention function)."""
        return packed_attention.applies(self.model) and not is_compiled_module(module)

    def attends_per_sample(self, module: nn.Module) -> bool:
        """Whether a packed row run through `module` is attended sample by sample: by flash-attention
        kernels, or by `itersft.packed_attention` (`switches_attention`). Packing then always pays."""
        return self.facts.flash_attention or self.switches_attention(module)

    def __call__(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        seq2seq = self.facts.is_encoder_decoder
        if not takes_fast_route(batch, seq2seq):
            return self.with_outputs(module, batch)[0]
        route = self.route(module)
        if route == "seq2seq":
            return seq2seq_summed_loss(module, batch, self.facts.base)
        batch = with_label_positions(batch, seq2seq)
        attention = contextlib.nullcontext()
        if batch.get("packed_lengths") is not None:
            if self.switches_attention(module):
                attention = packed_attention.attending_per_sample(self.model)
            else:  # flash kernels, or transformers' block-diagonal mask: the lengths are not read
                batch = {k: v for k, v in batch.items() if k != "packed_lengths"}
        with attention:
            return causal_summed_loss(module, batch, self.autocast, self.head if route == "head" else None,
                                      keep_logits=route == "logits_to_keep")

    def with_outputs(self, module: nn.Module, inputs: dict[str, torch.Tensor]):
        """`(summed token loss, model outputs)` from one full forward with every input but `labels` and the
        trainer's bookkeeping; a seq2seq decoder gets `decoder_inputs` unless the batch brings its own."""
        seq2seq = self.facts.is_encoder_decoder
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k != "labels" and k not in BOOKKEEPING}
        if seq2seq and "decoder_input_ids" not in model_inputs:
            model_inputs.update(decoder_inputs(self.facts.base, labels))
        outputs = module(**model_inputs, use_cache=False)
        return summed_token_loss(outputs.logits, labels, shift=not seq2seq), outputs


def causal_summed_loss(module: nn.Module, batch: dict[str, torch.Tensor],
                       autocast: Callable[[], contextlib.AbstractContextManager],
                       head: tuple[nn.Module, nn.Linear] | None = None, keep_logits: bool = False) -> torch.Tensor:
    """Summed token loss of one causal micro-batch, computed at its label positions only when possible.

    `batch` holds the model inputs (`input_ids` and `attention_mask` or, packed, `position_ids` and
    possibly `packed_lengths`, read by `itersft.packed_attention`) plus `loss_positions`/`loss_targets`
    from `label_positions` and `labels` for the full-logits path. `head`
    is `module`'s `(decoder, lm_head)` split where it may be used; `keep_logits` says `module`'s forward
    takes `logits_to_keep`.
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "packed_lengths") if k in batch}
    positions, targets = batch["loss_positions"], batch["loss_targets"]
    if head is not None:
        decoder, lm_head = head
        with autocast():
            hidden = decoder(**inputs, use_cache=False).last_hidden_state
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
            return linear_cross_entropy_sum(hidden, lm_head.weight, lm_head.bias, targets)
    if inputs["input_ids"].shape[0] == 1 and keep_logits:
        # One row (packed, or a batch of one): keep the logits of the label positions only.
        logits = module(**inputs, use_cache=False, logits_to_keep=positions).logits
        return F.cross_entropy(logits[0].float(), targets, reduction="sum")
    logits = module(**inputs, use_cache=False).logits
    return summed_token_loss(logits, batch["labels"], shift=True)


def seq2seq_summed_loss(module: nn.Module, batch: dict[str, torch.Tensor], base: nn.Module) -> torch.Tensor:
    """Summed token loss of one seq2seq micro-batch: the encoder reads `input_ids`, the decoder the
    `decoder_inputs` built from `labels`."""
    logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                    **decoder_inputs(base, batch["labels"])).logits
    return summed_token_loss(logits, batch["labels"], shift=False)
