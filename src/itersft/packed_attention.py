"""Attention over a packed row one sample at a time, for models on `sdpa` or `eager` attention.

A packed micro-batch (`itersft.data.packing`) is one row holding several samples end to end. With
flash-attention kernels transformers attends such a row sample by sample. With `sdpa` and `eager` it
builds a block-diagonal mask over the whole row and attends the row as a whole: a cost in (tokens in
the row)^2, most of it spent on pairs of tokens the mask then throws away. Here the attention of each
sample's slice of the row runs on its own, with a causal kernel: the cost is the sum of the samples'
squared lengths (what padding each sample to its own length would cost, with no padding), and the
result is the same attention, since each token sees exactly the earlier tokens of its own sample.

How: `attend_per_sample` is registered in transformers' `AttentionInterface` under `NAME` (one new
registry entry, added on first use; no existing entry is replaced), and `attending_per_sample(model)`
points the model's config at it for the duration of one forward call, then restores it. The sample
lengths reach every attention layer as the forward keyword `packed_lengths` (a tuple of ints on the
host, so no device sync is needed to find the boundaries).

Deliberately not used (`applies` says False; the caller keeps transformers' masked path, which is
correct, only slower) where the switch could be missed or outlive the call: activation checkpointing
(the forward runs again during backward, after the switch is undone, and would attend the row whole
with no mask: transformers' flag or torch's checkpoint wrappers), configs with sub-configs
(multimodal models), and attention other than `sdpa` or `eager` (flash kernels already attend per
sample; flex and the rest are left as they are). Also not on accelerators, for now: there a packed
row of a few thousand tokens costs little attention under the mask in one kernel per layer, while a
kernel per sample adds launches (several per sample and layer, forward and backward) that may cost
more than they save; only CPU has been measured (`benchmarks/bench_batching_modes.py --device cuda`
is the check). The switch is not thread-safe: another thread running
the same model during a packed forward would see it (step() and the loop run the model from one thread).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence

import torch
from torch import nn

NAME = "itersft_per_sample_sdpa"
# The implementations whose result `attend_per_sample` reproduces: plain softmax attention, no soft-capping
# (the packable model types of `itersft.data.packing` use none).
REPLACEABLE = frozenset({"sdpa", "eager"})


def attend_per_sample(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, *, packed_lengths: Sequence[int] | None = None,
                      sliding_window: int | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature for one packed row (`query` is `(1, heads, tokens, dim)`).

    Each sample's slice goes through transformers' own sdpa function with a causal kernel; a sample
    longer than the layer's `sliding_window` gets the window as an explicit mask. Returns
    `(1, tokens, heads, dim)`, as every attention function does.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if packed_lengths is None or query.shape[0] != 1 or sum(packed_lengths) != query.shape[2]:
        raise RuntimeError(f"{NAME} attends one packed row and needs `packed_lengths` summing to its length; got "
                           f"lengths {packed_lengths} for a query of shape {tuple(query.shape)}. It is meant to be "
                           "switched on by `attending_per_sample` around a packed forward call only.")
    kwargs.pop("is_causal", None)  # each slice is causal by construction
    outputs, start = [], 0
    for length in packed_lengths:
        end = start + length
        mask = None
        if sliding_window is not None and length > sliding_window:
            rows = torch.arange(length, device=query.device)
            distance = rows[:, None] - rows[None, :]
            mask = ((distance >= 0) & (distance < sliding_window))[None, None]
        output, _ = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end],
                                           value[:, :, start:end], mask, is_causal=mask is None, **kwargs)
        outputs.append(output)
        start = end
    return torch.cat(outputs, dim=1), None


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if getattr(model, "active_peft_config", None) is not None else model


def applies(model: nn.Module) -> bool:
    """Whether a packed forward of `model` (a `PreTrainedModel` or `PeftModel`) may attend per sample here."""
    base = _base(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in REPLACEABLE:
        return False
    device = getattr(base, "device", None)
    if getattr(device, "type", None) != "cpu":
        return False  # measured on CPU only; see the module docstring
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "sub_configs", None):
        return False  # never packed (seq2seq), or sub-models the switch would not reach (multimodal)
    return not _checkpointed(base)


# Per model: whether torch's own checkpoint wrappers sit in it (`checkpoint_wrapper`, as FSDP's
# activation checkpointing applies, or the composable `checkpoint`), and the modules that carry
# transformers' `gradient_checkpointing` flag (it sets the flag only on modules that have it). Both are
# fixed once the model is wrapped, so they are found once and the check costs a few attribute reads per
# micro-batch rather than a walk over every module. Wrapping layers after the first packed step is not seen.
_CHECKPOINTING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _checkpointed(model: nn.Module) -> bool:
    """Whether activation checkpointing is on for any layer of `model`."""
    found = _CHECKPOINTING.get(model)
    if found is None:
        from torch.distributed._composable.contract import _get_registry
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

        wrapped = any(isinstance(m, ActivationWrapper) or "checkpoint" in (_get_registry(m) or {})
                      for m in model.modules())
        flagged = tuple(m for m in model.modules() if hasattr(m, "gradient_checkpointing"))
        found = _CHECKPOINTING[model] = (wrapped, flagged)
    wrapped, flagged = found
    return wrapped or any(module.gradient_checkpointing is True for module in flagged)


@contextlib.contextmanager
def attending_per_sample(model: nn.Module) -> Iterator[None]:
    """Point `model`'s attention at `attend_per_sample` for the calls made inside; restore it after.

    Only for a forward whose every attention call is on one packed row given `packed_lengths`; check
    `applies(model)` first.
    """
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, attend_per_sample)
    config = _base(model).config
    previous = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = previous
