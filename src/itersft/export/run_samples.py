"""A run directory's scored samples, read for export: which rounds completed, which of them kept their
samples, and, when a folder cannot be exported, why and what to do.

Only complete rounds are read (`RunDirectory.last_complete_round`): a samples file of a later round was
written by a run stopped before that round's checkpoint, and the resumed run draws that round again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from itersft.loop.run_dir import ROUND_PATTERN, RunDirectory
from itersft.loop.scored_samples import ScoredSample, read_scored

IDENTITY_FILE = "run_identity.json"  # written by `itersft.loop.run_identity` when a run starts
RUN_MARKERS = (IDENTITY_FILE, "metrics.jsonl", "rounds")


class ExportError(ValueError):
    """The run directory cannot give the dataset asked for; the message says why and what to do."""


@dataclass
class RunSamples:
    """The scored samples of the rounds read, and what the run directory held besides."""

    root: Path
    samples: list[ScoredSample]
    rounds: list[int]
    """The rounds read, ascending."""
    rounds_without_samples: list[int]
    """Complete rounds that have no samples file (`write_samples` was off, or an older itersft ran them)."""
    rounds_incomplete: list[int]
    """Samples files of rounds that did not complete, left out."""
    pass_score: float | None
    """The run's `pass_score`, None when its identity file does not say."""


def read_run_samples(run_dir: str | Path, rounds: list[int] | None = None) -> RunSamples:
    """The scored samples of `rounds` (None: every complete round that has them) in the run directory
    `run_dir`, or an `ExportError` saying why there are none to read."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ExportError(f"`run_dir` {str(root)!r} " + ("is not a folder" if root.exists() else "does not exist")
                          + ": give the `output_dir` of a loop run.")
    if not any((root / marker).exists() for marker in RUN_MARKERS):
        raise ExportError(f"`run_dir` {str(root)!r} is not a loop run directory: it has none of "
                          f"{', '.join(RUN_MARKERS)} (what `itersft run` and `ExpertIteration` write). Give the "
                          "`output_dir` of a loop run.")
    # A reader, not the run's writer: `is_main=False` creates and writes nothing.
    run_dir_files = RunDirectory(root, is_main=False)
    last = run_dir_files.last_complete_round()
    files = {int(match.group(1)): path for path in sorted((root / "samples").glob("round-*.jsonl"))
             if (match := ROUND_PATTERN.match(path.stem))}
    complete = list(range(last + 1)) if last is not None else []
    if not complete:
        raise ExportError(f"`run_dir` {str(root)!r} has no complete round yet: rerun the run until one completes "
                          "(the samples of a round cut short are drawn again when it resumes).")
    with_samples = [r for r in complete if r in files]
    if not with_samples:
        raise ExportError(
            f"`run_dir` {str(root)!r} holds no scored samples for its rounds {round_span(complete)} (no "
            "samples/round-NNNN.jsonl): the run was made by an itersft from before every scored sample was kept, or "
            "with `write_samples` off, and its rejected samples are gone. Run the loop again with `write_samples` on "
            "(the default; a new `output_dir` starts it afresh) and export that run.")
    if rounds is not None:
        asked = sorted(rounds)
        missing = [r for r in asked if r not in complete]
        if missing:
            raise ExportError(f"`rounds`: {round_span(missing)} did not complete in {str(root)!r} (complete rounds: "
                              f"{round_span(complete)}).")
        missing = [r for r in asked if r not in files]
        if missing:
            raise ExportError(f"`rounds`: {round_span(missing)} kept no scored samples in {str(root)!r} (run with "
                              "`write_samples` off or by an older itersft); rounds that did: "
                              f"{round_span(with_samples)}.")
        with_samples = asked
    samples = [sample for r in with_samples for sample in read_scored(files[r])]
    return RunSamples(root=root, samples=samples, rounds=with_samples,
                      rounds_without_samples=[r for r in complete if r not in files],
                      rounds_incomplete=[r for r in files if r not in complete],
                      pass_score=_pass_score(root / IDENTITY_FILE))


def _pass_score(path: Path) -> float | None:
    try:
        identity = json.loads(path.read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    value = identity.get("loop.pass_score") if isinstance(identity, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def round_span(rounds: list[int]) -> str:
    """`[0, 1, 2, 5]` as "0-2, 5" (round numbers for a person)."""
    parts, start = [], None
    for index, r in enumerate(rounds):
        if start is None:
            start = r
        if index + 1 == len(rounds) or rounds[index + 1] != r + 1:
            parts.append(str(start) if start == r else f"{start}-{r}")
            start = None
    return ", ".join(parts)
