"""Undoing an optimizer update that went wrong, so a failed update never half-applies.

Before each optimizer step `UpdateGuard.snapshot` copies what the step may change: the weights the
optimizer holds and its state (Adam's moments and step counts). After the step, `weights_finite` looks
for an inf or NaN in those weights in one fused pass; if there is one (a learning rate that overflows,
a custom optimizer's bug), or if anything raises between the snapshot and the end of the update (an
out-of-memory error inside the step, a KeyboardInterrupt), `restore` puts weights and state back as
they were, so the next update is the one that would have come.

The copies cost memory: one more copy of the trainable weights and of the optimizer state (with AdamW,
three times the trainable weights), kept between updates. With adapters (LoRA) that is small; for full
fine-tuning of a large model `IterativeSFTConfig(guard_updates=False)` turns the snapshot off, and then
a non-finite weight after an update raises an error instead of being undone.

Under DeepSpeed the engine steps inside the last backward and keeps its own float32 master weights,
which no snapshot here could restore; it is not guarded (DeepSpeed skips non-finite steps itself).
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of `tensor` this process holds (a DTensor's local shard)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class UpdateGuard:
    """Checks `optimizer`'s weights after each step and, with `snapshots`, keeps what undoing a step needs.

    Without `snapshots` (`guard_updates=False`), `snapshot` and `restore` do nothing: the check still runs.
    """

    def __init__(self, optimizer, snapshots: bool = True):
        self.optimizer = optimizer
        self.snapshots = snapshots
        self._params: list[torch.Tensor] = []
        self._weights: list[torch.Tensor] = []
        self._state: dict[int, dict] = {}

    def params(self) -> list[torch.Tensor]:
        """The weights the optimizer may change (its parameter groups, in order)."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the optimizer's weights and state into buffers kept from the previous snapshot."""
        if not self.snapshots:
            return
        params = self.params()
        if [id(p) for p in params] != [id(p) for p in self._params]:
            self._params = params
            self._weights = [torch.empty_like(_local(p)) for p in params]
            self._state = {}
        torch._foreach_copy_(self._weights, [_local(p) for p in params])
        state = self.optimizer.state
        saved: dict[int, dict] = {}
        for index, p in enumerate(params):
            if p not in state:
                continue
            previous = self._state.get(index, {})
            saved[index] = {key: _copy_into(previous.get(key), value) for key, value in state[p].items()}
        self._state = saved

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights and optimizer state of the last snapshot."""
        if not self.snapshots:
            return
        torch._foreach_copy_([_local(p) for p in self._params], self._weights)
        state = self.optimizer.state
        for index, p in enumerate(self._params):
            if index not in self._state:
                state.pop(p, None)  # the optimizer had no state for it yet
                continue
            for key, value in self._state[index].items():
                current = state[p].get(key)
                if isinstance(value, torch.Tensor) and isinstance(current, torch.Tensor):
                    _local(current).copy_(_local(value))
                else:
                    state[p][key] = value.clone() if isinstance(value, torch.Tensor) else value

    @torch.no_grad()
    def weights_finite(self) -> bool:
        """Whether every weight the optimizer holds is finite, on this process (one fused pass)."""
        tensors = [_local(p) for p in self.params() if _local(p).is_floating_point() and _local(p).numel()]
        if not tensors:
            return True
        found = torch.zeros(1, device=tensors[0].device)
        # The loss scaler's fused inf/NaN check; multiplying by 1.0 leaves every weight as it was.
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, torch.ones(1, device=found.device))
        return not bool(found.item())

    def non_finite_names(self, model: torch.nn.Module, limit: int = 3) -> list[str]:
        """Names of (at most `limit`) parameters of `model` holding an inf or NaN, for the warning."""
        names = []
        for name, p in model.named_parameters():
            if p.is_floating_point() and not bool(torch.isfinite(_local(p.detach())).all()):
                names.append(name)
                if len(names) == limit:
                    break
        return names


def _copy_into(buffer, value):
    """`value` copied into `buffer` when they match in shape and dtype (no new allocation), else cloned."""
    if not isinstance(value, torch.Tensor):
        return value
    if isinstance(buffer, torch.Tensor) and buffer.shape == value.shape and buffer.dtype == value.dtype:
        return buffer.copy_(value)
    return value.detach().clone()
