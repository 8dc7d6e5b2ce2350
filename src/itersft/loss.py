"""The training loss: summed token cross-entropy, so the caller can normalise over a whole window.

Two ways to compute the same number for a causal LM:

* **full logits** (`summed_token_loss`): run the model, take its `(batch, seq, vocab)` logits, shift,
  cross-entropy in float32. Works for every model, wrapper and head.
* **label positions only** (`causal_summed_loss` on a model with a separable head): run the decoder
  stack for hidden states, keep the hidden states of the positions whose next token is a label, and
  apply the LM head and cross-entropy a chunk of rows at a time (`linear_cross_entropy_sum`), so no
  full-vocabulary float32 logits exist for the whole micro-batch and none for unlabelled positions
  (masked prompts, padding). At small hidden sizes the head and the loss are most of the step.

The second path is taken only where it is provably the same computation: a model class whose forward
is `lm_head(decoder(...))` and nothing else (`SEPARABLE_HEAD_MODEL_TYPES`), called directly (not
through DDP, FSDP, DeepSpeed or `torch.compile`, whose wrappers must see the forward), a plain
`nn.Linear` head (not LoRA-wrapped, quantised, offloaded or partitioned by ZeRO-3) and no
prompt-learning adapter. Otherwise a model whose forward takes `logits_to_keep` computes logits at the
label positions only, through the wrapper; anything else gets full logits.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate.utils import is_compiled_module
from torch import nn
from torch.autograd.function import once_differentiable
from torch.distributed.fsdp import FSDPModule

from itersft import packed_attention
from itersft.data.example import IGNORE_INDEX

# `model_type`s whose `...ForCausalLM.forward` is exactly `logits = lm_head(model(...).last_hidden_state)`
# in transformers 5 (checked in its source: no logit scaling or soft-capping, which e.g. gemma2, granite
# and cohere apply). Their decoders also build masks from `position_ids`, so packed rows work.
SEPARABLE_HEAD_MODEL_TYPES = frozenset({
    "gemma", "llama", "mistral", "olmo", "olmo2", "phi", "phi3", "qwen2", "qwen3", "smollm3", "stablelm",
    "starcoder2",
})

# Rows of float32 logits computed at once: bounds the loss's extra memory to about 32 MiB per chunk.
LOGITS_PER_CHUNK = 2**23


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Sum of cross-entropy over the tokens whose label is not -100, in float32.

    `shift=True` (causal LMs): the logits at position t predict the label at t + 1. Returning the sum
    rather than the mean is what lets `step()` divide by the token count of the whole accumulation
    window, so every token weighs the same however samples are split into micro-batches.
    """
    if shift:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a causal batch: flat indices into `(batch * seq)` of the positions whose *next* label counts,
    and those labels. Computed on the host, before the batch moves, so the device never has to report a
    count back (a boolean-mask gather would make it)."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    targets = targets.reshape(-1)
    positions = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    return positions, targets[positions]


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
        chunk_rows = max(16, LOGITS_PER_CHUNK // weight.shape[0])
    return _LinearCrossEntropySum.apply(hidden, weight, bias, targets, chunk_rows)


def separable_head(model: nn.Module, wrapped: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """`(decoder, lm_head)` when the loss may be computed from the decoder's hidden states, else None.

    `model` is the trainer's unwrapped model (a `PreTrainedModel` or `PeftModel`), `wrapped` what
    accelerate returned for it; see the module docstring for the conditions.
    """
    if wrapped is not model or isinstance(model, FSDPModule):
        return None  # FSDP gathers the sharded parameters in the root module's forward: it must run
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None:
        if getattr(peft_config, "is_prompt_learning", False):
            return None
        model = model.get_base_model()
    cls = type(model)
    if (getattr(model.config, "model_type", None) not in SEPARABLE_HEAD_MODEL_TYPES
            or not cls.__module__.startswith("transformers.models.") or not cls.__name__.endswith("ForCausalLM")):
        return None
    head = model.get_output_embeddings()
    decoder = getattr(model, model.base_model_prefix, None)
    if type(head) is not nn.Linear or decoder is None or getattr(head, "_hf_hook", None) is not None:
        return None
    if head._forward_hooks or head._forward_pre_hooks:  # e.g. ZeRO-3 gathers the weight only in the head's forward
        return None
    return decoder, head


def causal_summed_loss(model: nn.Module, wrapped: nn.Module, batch: dict[str, torch.Tensor],
                       autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """Summed token loss of one causal micro-batch, computed at its label positions only when possible.

    `batch` holds the model inputs (`input_ids` and `attention_mask` or, packed, `position_ids` and
    `packed_lengths`) plus `loss_positions`/`loss_targets` from `label_positions` and `labels` for the
    full-logits path. A packed row is attended sample by sample where `itersft.packed_attention`
    applies.
    `autocast` is the mixed-precision context (accelerate's), which the direct decoder call must enter
    itself since it bypasses the patched forward of the wrapped model.
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    positions, targets = batch["loss_positions"], batch["loss_targets"]
    attention = contextlib.nullcontext()
    if batch.get("packed_lengths") is not None and packed_attention.applies(model) and not is_compiled_module(wrapped):
        # A packed row, attended sample by sample rather than as a whole under a block-diagonal mask.
        inputs["packed_lengths"] = batch["packed_lengths"]
        attention = packed_attention.attending_per_sample(model)
    split = separable_head(model, wrapped)
    if split is not None:
        decoder, head = split
        with autocast(), attention:
            hidden = decoder(**inputs, use_cache=False).last_hidden_state
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
            return linear_cross_entropy_sum(hidden, head.weight, head.bias, targets)
    if inputs["input_ids"].shape[0] == 1 and _takes_logits_to_keep(model):
        # One row (packed, or a batch of one): keep the logits of the label positions only.
        with attention:
            logits = wrapped(**inputs, use_cache=False, logits_to_keep=positions).logits
        return F.cross_entropy(logits[0].float(), targets, reduction="sum")
    with attention:
        logits = wrapped(**inputs, use_cache=False).logits
    return summed_token_loss(logits, batch["labels"], shift=True)


def _takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model's forward keeps only the logits asked for (prompt learning shifts positions)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None:
        if getattr(peft_config, "is_prompt_learning", False):
            return False
        model = model.get_base_model()
    try:
        return "logits_to_keep" in inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return False
