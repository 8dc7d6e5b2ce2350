"""The loop's run directory: where each artefact lives, written by the main process only (files only:
the model and checkpoints are written by the trainer).

    <output_dir>/
      run_identity.json      what the run is (model, prompts, settings), compared on resume
                             (`run_identity`)
      rounds/round-0003/     full checkpoint after round 3 (model, optimizer, scheduler, RNG,
                             trainer state) + loop_state.json, buffer.json, loop_config.json;
                             only the newest `keep_rounds` are kept
      accepted/round-0003.jsonl   the samples kept (and trained on) in round 3
      samples/round-0003.jsonl    every sample drawn in round 3, scored, marked kept or not
                             (`scored_samples`; not with `LoopConfig.write_samples=False`)
      metrics.jsonl          one line per completed round
      curves.png             the per-round curves, drawn at the end
      final/                 the final model and tokenizer, loadable with `from_pretrained`

Round folders are renamed into place only when complete, so the latest one is always whole; every
other file is derived from it or rewritten atomically, so a kill at any point loses or duplicates
nothing when the run resumes. A round's `accepted/` and `samples/` files are written before its
checkpoint: a kill between the two leaves files of a round that did not complete, which the resumed
run draws again (the same samples: every draw is seeded) and replaces whole, and which nothing reads
meanwhile (`last_complete_round`). Old round folders are renamed out of the way before they are deleted,
so a kill while pruning never leaves a partial `round-*` folder either.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from itersft.atomic import write_json_atomic, write_text_atomic
from itersft.loop.curves import plot_curves
from itersft.loop.scored_samples import scored_lines
from itersft.sampling.samples import Sample

ROUND_PATTERN = re.compile(r"^round-(\d+)$")
STAGING_PATTERN = re.compile(r"^\.staging-round-(\d+)$")
DELETING_PREFIX = ".deleting-"


def check_output_dir(root: str | Path) -> None:
    """Create `root` (and its `rounds/`, `accepted/`) and write a probe file in it, or raise a ValueError
    naming `output_dir`: a run that cannot write its first checkpoint should fail before the model loads
    and before the first round is sampled, not after."""
    root = Path(root)
    try:
        (root / "rounds").mkdir(parents=True, exist_ok=True)
        (root / "accepted").mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-") as probe:
            probe.write(b"itersft")
            probe.flush()
    except OSError as exc:
        raise ValueError(f"`output_dir` {str(root)!r} cannot be written: {exc}. Choose a folder you can write to "
                         "(or fix its permissions, or free space on its disk).") from exc


class RunDirectory:
    """Paths and writers for one loop run; writers are no-ops off the main process."""

    def __init__(self, root: str | Path, is_main: bool = True):
        self.root = Path(root)
        self.is_main = is_main
        if is_main:
            check_output_dir(self.root)

    def round_dir(self, round_index: int) -> Path:
        return self.root / "rounds" / f"round-{round_index:04d}"

    def round_dirs(self) -> list[Path]:
        """The complete round checkpoints, oldest first."""
        found = [(int(m.group(1)), p) for p in (self.root / "rounds").glob("round-*")
                 if (m := ROUND_PATTERN.match(p.name))]
        return [path for _, path in sorted(found)]

    def latest_round_dir(self) -> Path | None:
        """The newest complete round checkpoint, or None."""
        found = self.round_dirs()
        return found[-1] if found else None

    def prune_rounds(self, keep: int | None) -> list[Path]:
        """Delete all but the newest `keep` round checkpoints (None: keep all), and what killed writes and
        deletions left behind: staging folders of rounds no newer than the newest complete one, and
        half-deleted folders. Returns the round folders deleted."""
        if not self.is_main:
            return []
        rounds = self.root / "rounds"
        complete = self.round_dirs()
        newest = int(ROUND_PATTERN.match(complete[-1].name).group(1)) if complete else -1
        doomed = complete[: -keep] if keep is not None else []
        for path in doomed:  # renamed first, so no partial round-* folder is ever visible
            path.rename(path.with_name(DELETING_PREFIX + path.name))
        for path in rounds.iterdir():
            staging = STAGING_PATTERN.match(path.name)
            if path.name.startswith(DELETING_PREFIX) or (staging and int(staging.group(1)) <= newest):
                shutil.rmtree(path, ignore_errors=True)
        return doomed

    def write_accepted(self, round_index: int, samples: list[Sample]) -> None:
        """The round's accepted samples, one JSON object per line."""
        if self.is_main:
            lines = "".join(json.dumps(asdict(s), sort_keys=True) + "\n" for s in samples)
            write_text_atomic(self.root / "accepted" / f"round-{round_index:04d}.jsonl", lines)

    def write_samples(self, round_index: int, drawn: list[Sample], kept: list[Sample]) -> None:
        """Every sample the round drew, scored, each marked kept when it is in `kept` (`scored_samples`)."""
        if self.is_main:
            self.samples_file(round_index).parent.mkdir(exist_ok=True)
            write_text_atomic(self.samples_file(round_index), scored_lines(round_index, drawn, kept))

    def samples_file(self, round_index: int) -> Path:
        return self.root / "samples" / f"round-{round_index:04d}.jsonl"

    def last_complete_round(self) -> int | None:
        """The newest round that completed, None when none did: the newest round checkpoint, or the last round
        in `metrics.jsonl` when that is later (the checkpoints of a finished run may have been deleted)."""
        latest = self.latest_round_dir()
        rounds = [int(ROUND_PATTERN.match(latest.name).group(1))] if latest is not None else []
        metrics = self.root / "metrics.jsonl"
        if metrics.is_file():
            rounds += [json.loads(line)["round"] for line in metrics.read_text().splitlines() if line.strip()]
        return max(rounds, default=None)

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
