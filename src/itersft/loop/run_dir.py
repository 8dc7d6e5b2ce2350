"""The loop's run directory: where each artefact lives, written by the main process only.

    <output_dir>/
      rounds/round-0003/     full checkpoint after round 3 (model, optimizer, scheduler, RNG,
                             trainer state) + loop_state.json, buffer.json, loop_config.json
      accepted/round-0003.jsonl   the samples kept (and trained on) in round 3
      metrics.jsonl          one line per completed round
      curves.png             the per-round curves, drawn at the end
      final/                 the final model and tokenizer, loadable with `from_pretrained`

Round folders are renamed into place only when complete, so the latest one is always whole; every
other file is derived from it or rewritten atomically, so a kill at any point loses or duplicates
nothing when the run resumes.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from itersft.checkpoint import write_json_atomic, write_text_atomic
from itersft.loop.samples import Sample

ROUND_PATTERN = re.compile(r"^round-(\d+)$")


class RunDirectory:
    """Paths and writers for one loop run; writers are no-ops off the main process."""

    def __init__(self, root: str | Path, is_main: bool = True):
        self.root = Path(root)
        self.is_main = is_main
        if is_main:
            (self.root / "rounds").mkdir(parents=True, exist_ok=True)
            (self.root / "accepted").mkdir(exist_ok=True)

    def round_dir(self, round_index: int) -> Path:
        return self.root / "rounds" / f"round-{round_index:04d}"

    def latest_round_dir(self) -> Path | None:
        """The newest complete round checkpoint, or None."""
        rounds = self.root / "rounds"
        found = [(int(m.group(1)), p) for p in rounds.glob("round-*") if (m := ROUND_PATTERN.match(p.name))]
        return max(found)[1] if found else None

    def write_accepted(self, round_index: int, samples: list[Sample]) -> None:
        """The round's accepted samples, one JSON object per line."""
        if self.is_main:
            lines = "".join(json.dumps(asdict(s), sort_keys=True) + "\n" for s in samples)
            write_text_atomic(self.root / "accepted" / f"round-{round_index:04d}.jsonl", lines)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """`metrics.jsonl`, rewritten whole from the checkpointed history (never appended)."""
        if self.is_main:
            lines = "".join(json.dumps(m, sort_keys=True) + "\n" for m in history)
            write_text_atomic(self.root / "metrics.jsonl", lines)

    def finish(self, trainer, state: dict[str, Any]) -> None:
        """Save the final model and tokenizer, the summary of the run, and the curves.

        `metrics.jsonl` is already current: every round checkpoint and every resume rewrites it.
        """
        final = self.root / "final"
        trainer.save_model(str(final))
        if self.is_main:
            trainer.processing_class.save_pretrained(str(final))
            write_json_atomic(self.root / "loop_summary.json", {
                "rounds": len(state["history"]),
                "initial": state["initial"],
                "final": state["history"][-1] if state["history"] else {},
            })
            plot_curves(state["history"], self.root / "curves.png")


# One panel per entry: (title, metric keys drawn on it).
CURVES = (("held-out accuracy", ("eval_accuracy",)), ("acceptance rate", ("acceptance_rate",)),
          ("train loss", ("train_loss",)), ("diversity of kept", ("distinct_1", "distinct_2")))


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """One small panel per metric group, x = round. Metrics a run did not record are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(title, [k for k in keys if any(m.get(k) is not None for m in history)]) for title, keys in CURVES]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for axis, (title, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(m["round"], m[key]) for m in history if m.get(key) is not None]
            axis.plot([r for r, _ in points], [v for _, v in points], marker="o", label=key)
        if len(keys) > 1:
            axis.legend(fontsize=7)
        axis.set_title(title)
        axis.set_xlabel("round")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
