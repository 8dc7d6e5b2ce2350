"""Accumulates what one `step()` call did and turns it into the statistics it returns."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from itersft.trainer.micro_batch import MicroBatch


@dataclass
class StepStats:
    """Counters for one `step()` call. Losses are summed over tokens so the mean is token-weighted."""

    started: float = field(default_factory=time.perf_counter)
    loss_sum: float = 0.0
    loss_tokens: int = 0
    grad_norms: list[float] = field(default_factory=list)
    learning_rate: float | None = None
    updates: int = 0
    skipped_updates: int = 0
    samples: int = 0
    skipped_samples: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0

    def count(self, micro_batch: MicroBatch) -> None:
        """The tokens of one micro-batch that ran: its samples' real tokens, and
        every token its batch computed, padding included."""
        self.real_tokens += micro_batch.real_tokens
        self.padded_tokens += micro_batch.padded_tokens

    def record_update(self, loss_sum: float, loss_tokens: int, grad_norm: float, learning_rate: float) -> None:
        """One optimizer update that was taken."""
        self.loss_sum += loss_sum
        self.loss_tokens += loss_tokens
        self.grad_norms.append(grad_norm)
        self.learning_rate = learning_rate
        self.updates += 1

    def as_dict(self, global_step: int) -> dict[str, float | int | None]:
        """The statistics `step()` returns; `loss` is the mean over trained tokens of the updates taken."""
        elapsed = time.perf_counter() - self.started
        return {
            "loss": self.loss_sum / self.loss_tokens if self.loss_tokens else math.nan,
            "learning_rate": self.learning_rate,
            "grad_norm": sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else None,
            "updates": self.updates,
            "skipped_updates": self.skipped_updates,
            "samples": self.samples,
            "skipped_samples": self.skipped_samples,
            "trained_tokens": self.loss_tokens,
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "step_time": elapsed,
            "tokens_per_second": self.real_tokens / elapsed if elapsed > 0 else 0.0,
            "global_step": global_step,
        }
