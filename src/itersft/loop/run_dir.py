"""The loop's run directory: where each artefact lives, written by the main process only (files only:
the model and checkpoints are written by the trainer).

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

from itersft.atomic import write_json_atomic, write_text_atomic
from itersft.loop.curves import plot_curves
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

    @property
    def final_dir(self) -> Path:
        return self.root / "final"

    def write_summary(self, state: dict[str, Any]) -> None:
        """`loop_summary.json` (the evaluation before the loop and the last round) and `curves.png`.

        `metrics.jsonl` is already current: every round checkpoint and every resume rewrites it.
        """
        if self.is_main:
            write_json_atomic(self.root / "loop_summary.json", {
                "rounds": len(state["history"]),
                "initial": state["initial"],
                "final": state["history"][-1] if state["history"] else {},
            })
            plot_curves(state["history"], self.root / "curves.png")
