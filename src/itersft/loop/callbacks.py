"""Hooks that let a caller watch the loop: the CLI draws its progress bars and round table with them.

The loop itself never prints or draws: it logs through `logging` and `Trainer.log` (so `report_to`
trackers see every round's metrics) and calls these hooks, on the main process only.
"""

from __future__ import annotations

from typing import Any


class LoopCallback:
    """Subclass and override the hooks you need; each does nothing by default.

    `phase` is `"round"` (sampling the round's prompts) or `"eval"` (sampling the held-out prompts,
    with `round_index` -1 for the evaluation before the first round).
    """

    def on_sampling_progress(self, phase: str, round_index: int, done: int, total: int) -> None:
        """`done` of this process's `total` prompts have been sampled."""

    def on_round_end(self, metrics: dict[str, Any]) -> None:
        """A round finished and was checkpointed; `metrics` is its line of `metrics.jsonl`."""

    def on_run_end(self, history: list[dict[str, Any]]) -> None:
        """The run finished: `final/` and the summary are written."""
