"""Hand-written references for the compat tests: the gradient one optimizer update must apply.

`UpdateRecorder` (a `TrainerCallback`) keeps, at every optimizer update, the parameters the update's
forward passes ran with and the gradients about to be applied. `expected_update` recomputes those
gradients from scratch on a copy of the model holding the recorded parameters: each sample alone (no
padding, no batching), its loss summed over tokens, divided by the label-token count of the whole
window, back-propagated; then clipped as `max_grad_norm` clips. A trainer that averages per
micro-batch, drops a label mask, ignores the user's collator or loss, or clears gradients too early
gives different numbers.

The one gradient recorder and reference of the test suite: imported by the test modules of this folder
and of `tests/trainer` (they put this folder on `sys.path`); not a test module itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

IGNORE_INDEX = -100


class UpdateRecorder(TrainerCallback):
    """Copies of every parameter and every gradient just before each optimizer update.

    `on_pre_optimizer_step` fires after clipping, so the gradients are the ones the optimizer applies.
    """

    def __init__(self):
        self.params: list[dict[str, torch.Tensor]] = []
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.params.append({n: p.detach().clone() for n, p in model.named_parameters()})
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


# ---- per-sample losses (summed over tokens, one sample, no padding) ------------------------------


def causal_loss_sum(model, input_ids: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                    temperature: float = 1.0) -> torch.Tensor:
    """Sum over the sample's label tokens of (weighted) cross-entropy of logits / `temperature`.

    The logits at position t predict the label at t + 1; `weights` (same length as `labels`) weighs
    each label token.
    """
    logits = model(input_ids=input_ids[None]).logits[0].float()
    losses = F.cross_entropy(logits[:-1] / temperature, labels[1:], ignore_index=IGNORE_INDEX, reduction="none")
    if weights is not None:
        losses = losses * weights[1:]
    return losses.sum()


def causal_label_count(labels: Sequence[torch.Tensor]) -> int:
    """Label tokens of causal samples: every label but the first (nothing predicts it) that is not -100."""
    return sum(int((lab[1:] != IGNORE_INDEX).sum()) for lab in labels)


def seq2seq_loss_sum(model, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropy over the target tokens, the decoder fed the right-shifted target."""
    logits = model(input_ids=source[None], labels=target[None]).logits[0].float()
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")


# ---- one update ----------------------------------------------------------------------------------


def expected_update(model, params: dict[str, torch.Tensor] | None, sample_losses: Sequence[Callable],
                    num_items: float, max_grad_norm: float = 0.0) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one update, computed sample by sample on a copy of `model`.

    `params`: the parameters to load into the copy first (recorded before the update; None keeps the
    model's own). `sample_losses`: one function per sample of the window, `model -> summed loss`.
    `num_items`: what the window's summed loss is divided by. Returns the mean loss and the gradients,
    clipped to `max_grad_norm` (0: no clipping) as `torch.nn.utils.clip_grad_norm_` does.
    """
    reference = copy.deepcopy(model)
    if params is not None:
        with torch.no_grad():
            for name, value in reference.named_parameters():
                value.copy_(params[name])
    reference.zero_grad(set_to_none=True)
    total = 0.0
    for sample_loss in sample_losses:
        loss = sample_loss(reference)
        (loss / num_items).backward()
        total += loss.item()
    grads = {n: p.grad.detach().clone() for n, p in reference.named_parameters() if p.grad is not None}
    return total / num_items, clipped(grads, max_grad_norm)


def clipped(grads: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """`grads` scaled as `clip_grad_norm_(max_norm)` would scale them (0 or None: unchanged)."""
    if not max_norm:
        return grads
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return {n: g * scale for n, g in grads.items()}


def assert_same_gradients(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same parameters hold gradients, every gradient equal within float32 noise, and not all zero."""
    assert sorted(actual) == sorted(expected)
    assert any(bool(g.abs().sum() > 0) for g in expected.values()), "the reference gradient is zero: a vacuous check"
    for name, grad in actual.items():
        torch.testing.assert_close(grad, expected[name], rtol=2e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
