"""`export_run`: a loop run's scored samples as a dataset TRL's SFT, DPO or KTO trainer trains on.

    summary = export_run("runs/loop", "runs/loop-dpo.jsonl", ExportConfig("dpo"))
    dataset = datasets.load_dataset("json", data_files="runs/loop-dpo.jsonl", split="train")
    trl.DPOTrainer(model=model, args=DPOConfig(...), train_dataset=dataset, processing_class=tokenizer)

The dataset is JSON lines, one row per line (what `datasets`' json loader reads), written whole and
renamed into place; the summary goes beside it as `<name>.summary.json`. An export with no row to
write (no kept sample, no pair, no scored sample) raises `ExportError` saying why and writes nothing.
`export_rows` gives the rows and the summary without writing (e.g. for `datasets.Dataset.from_list`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from itersft.atomic import write_json_atomic, write_text_atomic
from itersft.export.config import ExportConfig
from itersft.export.pairs import preference_pairs
from itersft.export.rows import is_conversational, kto_rows, select, sft_rows
from itersft.export.run_samples import ExportError, read_run_samples, round_span
from itersft.export.summary import NO_PAIR, ExportSummary

logger = logging.getLogger(__name__)


def export_rows(run_dir: str | Path, config: ExportConfig) -> tuple[list[dict[str, Any]], ExportSummary]:
    """The rows of `config.format` built from the run in `run_dir`, and the summary of what was made and
    left out. Raises `ExportError` when the folder holds no scored samples to read (see `read_run_samples`)."""
    run = read_run_samples(run_dir, config.rounds)
    fmt = config.format
    selection = select(run.samples, kept_only=fmt == "sft", scored_only=fmt != "sft",
                       include_unfinished=config.include_unfinished)
    summary = ExportSummary(format=fmt, run_dir=str(run.root), rounds=run.rounds, samples_read=len(run.samples),
                            rows=0, left_out=dict(selection.left_out),
                            conversational=is_conversational(selection.groups),
                            rounds_without_samples=run.rounds_without_samples,
                            rounds_incomplete=run.rounds_incomplete)
    if fmt == "sft":
        rows = sft_rows(selection.groups)
    elif fmt == "kto":
        threshold = config.threshold if config.threshold is not None else run.pass_score
        if threshold is None:
            raise ExportError(f"`threshold`: the run in {str(run.root)!r} does not record its `pass_score` (no "
                              "readable run_identity.json); give the score at or above which a sample is desirable.")
        rows = kto_rows(selection.groups, threshold)
        desirable = sum(row["label"] for row in rows)
        summary.threshold, summary.desirable, summary.undesirable = threshold, desirable, len(rows) - desirable
    else:
        pairing = preference_pairs(selection, config.pairs_per_prompt or 1, config.min_margin or 0.0)
        rows = pairing.rows
        summary.prompt_groups, summary.prompt_groups_with_pairs = pairing.groups, pairing.groups_with_pairs
        summary.prompt_groups_without_pair = {reason: pairing.without_pair[reason] for reason in NO_PAIR}
        summary.mean_margin = pairing.mean_margin
        summary.pairs_per_prompt, summary.min_margin = config.pairs_per_prompt or 1, config.min_margin or 0.0
    summary.rows = len(rows)
    return rows, summary


def export_run(run_dir: str | Path, out: str | Path, config: ExportConfig) -> ExportSummary:
    """Write the `config.format` dataset of the run in `run_dir` to `out` (a `.jsonl` file) and its summary
    to `<out without .jsonl>.summary.json`; return the summary.

    `out` is checked to be writable before anything is read. Raises `ExportError` (a ValueError) when the
    run cannot give the dataset, or gives no row; nothing is written then.
    """
    out = check_out(out)
    rows, summary = export_rows(run_dir, config)
    if not rows:
        raise ExportError(nothing_to_export(summary))
    summary.out = str(out)
    write_text_atomic(out, "".join(json.dumps(row) + "\n" for row in rows))
    write_json_atomic(summary_path(out), asdict(summary))
    for line in summary.lines():
        logger.info("%s", line)
    return summary


def summary_path(out: str | Path) -> Path:
    """Where the summary of the dataset written to `out` goes: `dpo.jsonl` -> `dpo.summary.json`."""
    out = Path(out)
    return out.with_name(out.stem + ".summary.json")


def check_out(out: str | Path) -> Path:
    """`out` as a Path, once its folder exists (created if need be) and takes a file; else an ExportError."""
    out = Path(out)
    if out.suffix != ".jsonl":
        raise ExportError(f"`out` must name a .jsonl file (JSON lines, which `datasets.load_dataset('json', ...)` "
                          f"reads), got {str(out)!r}.")
    if out.is_dir():
        raise ExportError(f"`out` {str(out)!r} is a folder; name the .jsonl file to write.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ExportError(f"`out` {str(out)!r} cannot be written: {exc}. Choose a path in a folder you can write "
                          "to.") from exc
    return out


def nothing_to_export(summary: ExportSummary) -> str:
    """Why an export made no row, and what would make some."""
    read = f"{summary.samples_read} samples of rounds {round_span(summary.rounds)} of {summary.run_dir}"
    left_out = ", ".join(f"{n} {reason}" for reason, n in summary.left_out.items() if n) or "none"
    if summary.format == "dpo":
        reasons = ", ".join(f"{n} {NO_PAIR[r]}" for r, n in summary.prompt_groups_without_pair.items() if n)
        return (f"no DPO pair in the {read}: of {summary.prompt_groups} prompt groups (a prompt's samples in one "
                f"round), {reasons or 'none usable'} (samples left out: {left_out}). Tied scores are never paired. "
                "More samples per prompt (`num_samples`), a scorer with more than one value, or `include_unfinished` "
                "give pairs; a lower `min_margin` may. Nothing was written.")
    if summary.format == "sft":
        return f"no kept sample in the {read} (samples left out: {left_out}). Nothing was written."
    return f"no scored sample to label in the {read} (samples left out: {left_out}). Nothing was written."
