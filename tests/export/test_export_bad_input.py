"""What `itersft export` does with what it cannot export: a folder that is not a run directory, a run from
before scored samples were kept, an unknown format, options of another format, an `--out` it cannot
write, a DPO export that finds no pair. Each is one message on stderr, no traceback, and exit status 1
(argparse's own usage error, status 2, for an unknown format), with nothing written. Then: a run stopped between a
round's samples file and its checkpoint, exported before and after it resumes.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from itersft.cli.main import main as itersft
from itersft.export import ExportConfig, ExportError, export_rows
from itersft.loop import LoopConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "loop"))
from export_runs import run_loop  # noqa: E402
from faulty_loop import on_a_read_only_folder  # noqa: E402


def export(capsys, run_dir, *options: str) -> tuple[int, str]:
    """`itersft export` in this process: its exit status and the message it printed on stderr (and nothing on
    stdout)."""
    capsys.readouterr()  # what came before (a loop's progress bars) is not the command's
    status = itersft(["export", str(run_dir), *options])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("itersft export: "), captured
    return status, captured.err.strip()


def test_a_folder_that_is_not_a_run_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "out.jsonl"
    assert export(capsys, tmp_path, "--format", "sft", "--out", str(out)) == (1, (
        f"itersft export: `run_dir` {str(tmp_path)!r} is not a loop run directory: it has none of run_identity.json, "
        "metrics.jsonl, rounds (what `itersft run` and `ExpertIteration` write). Give the `output_dir` of a loop run."))
    assert export(capsys, tmp_path / "missing", "--format", "sft", "--out", str(out)) == (1, (
        f"itersft export: `run_dir` {str(tmp_path / 'missing')!r} does not exist: give the `output_dir` of a loop "
        "run."))
    assert export(capsys, tmp_path / "notes.txt", "--format", "sft", "--out", str(out))[1].endswith(
        "notes.txt' is not a folder: give the `output_dir` of a loop run.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_run_from_before_scored_samples_were_kept_says_what_to_rerun(tmp_path, answering_dir, capsys):
    """`write_samples=False` writes what older itersft wrote: no samples/ folder."""
    run_dir = tmp_path / "run"
    run_loop(answering_dir, run_dir, rounds=1, write_samples=False)
    assert not (run_dir / "samples").exists() and (run_dir / "accepted" / "round-0000.jsonl").exists()
    with pytest.raises(ValueError, match=r"`write_samples` must be True or False, got 'no'\."):
        LoopConfig(output_dir=str(tmp_path), write_samples="no")
    status, message = export(capsys, run_dir, "--format", "dpo", "--out", str(tmp_path / "dpo.jsonl"))
    assert status == 1 and message == (
        f"itersft export: `run_dir` {str(run_dir)!r} holds no scored samples for its rounds 0 (no "
        "samples/round-NNNN.jsonl): the run was made by an itersft from before every scored sample was kept, or with "
        "`write_samples` off, and its rejected samples are gone. Run the loop again with `write_samples` on (the "
        "default; a new `output_dir` starts it afresh) and export that run.")
    assert not (tmp_path / "dpo.jsonl").exists()


def test_an_unknown_format_and_options_of_another_format_are_refused(standard_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as usage:
        itersft(["export", str(standard_run), "--format", "ppo", "--out", str(tmp_path / "x.jsonl")])
    assert usage.value.code == 2
    assert "itersft export: error: argument --format: invalid choice: 'ppo'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^Invalid ExportConfig:\n- `format` must be one of 'sft', 'dpo', 'kto', "
                                         r"got 'ppo'\.$"):
        ExportConfig("ppo")
    status, message = export(capsys, standard_run, "--format", "kto", "--out", str(tmp_path / "x.jsonl"),
                             "--min-margin", "0.5")
    assert status == 1 and message == ("itersft export: Invalid ExportConfig:\n- `min_margin` applies to format "
                                       "'dpo' only; format is 'kto': leave it out.")
    with pytest.raises(ValueError) as refused:
        ExportConfig("sft", pairs_per_prompt=2, threshold=0.5, include_unfinished=True, rounds=[0, 0])
    assert str(refused.value).splitlines() == [
        "Invalid ExportConfig:", "- `rounds` names a round twice: [0, 0].",
        "- `pairs_per_prompt` applies to format 'dpo' only; format is 'sft': leave it out.",
        "- `threshold` applies to format 'kto' only; format is 'sft': leave it out.",
        "- `include_unfinished` does not apply to format 'sft': it exports the samples the loop kept, and the loop "
        "never keeps an unfinished one."]
    assert not (tmp_path / "x.jsonl").exists()


def test_an_out_that_cannot_be_written_is_refused_before_anything_is_read(standard_run, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    status, message = export(capsys, standard_run, "--format", "sft", "--out", str(tmp_path / "a-file" / "x.jsonl"))
    assert status == 1 and message.startswith(f"itersft export: `out` '{tmp_path}/a-file/x.jsonl' cannot be written: ")
    assert message.endswith(f"[Errno 17] File exists: '{tmp_path}/a-file'. Choose a path in a folder you can write to.")
    status, message = export(capsys, standard_run, "--format", "sft", "--out", str(tmp_path / "x.parquet"))
    assert status == 1 and message == (f"itersft export: `out` must name a .jsonl file (JSON lines, which "
                                       f"`datasets.load_dataset('json', ...)` reads), got '{tmp_path}/x.parquet'.")
    status, message = export(capsys, tmp_path / "not-a-run", "--format", "sft", "--out",
                             str(tmp_path / "a-file" / "x.jsonl"))
    assert status == 1 and "`out`" in message  # checked first: nothing is read for an export that cannot land


def test_an_out_in_a_read_only_folder_is_refused(standard_run, tmp_path):
    read_only = tmp_path / "read-only"
    result = on_a_read_only_folder(read_only, [sys.executable, "-m", "itersft.cli.main", "export", str(standard_run),
                                               "--format", "sft", "--out", str(read_only / "sft.jsonl")])
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"itersft export: `out` '{read_only}/sft.jsonl' cannot be written: "), result.stderr
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr


def always_one(prompts, completions, **_):
    return [1.0] * len(completions)


def test_a_dpo_export_with_no_pair_says_why_and_writes_nothing(tmp_path, answering_dir, capsys):
    """A scorer that ties every sample: no pair (ties are never paired), exit status 1, no file, and the
    other formats still export."""
    run_dir = tmp_path / "run"
    run_loop(answering_dir, run_dir, scorer=always_one, rounds=1)
    out = tmp_path / "dpo.jsonl"
    status, message = export(capsys, run_dir, "--format", "dpo", "--out", str(out))
    _, summary = export_rows(run_dir, ExportConfig("dpo"))
    tied = summary.prompt_groups_without_pair["all_tied"]
    assert tied > 0 and summary.rows == 0 and summary.prompt_groups == 6
    assert status == 1 and message.startswith(
        f"itersft export: no DPO pair in the 18 samples of rounds 0 of {run_dir}: of 6 prompt groups (a prompt's "
        f"samples in one round), {tied} all samples tied")
    assert message.endswith("Tied scores are never paired. More samples per prompt (`num_samples`), a scorer with more "
                            "than one value, or `include_unfinished` give pairs; a lower `min_margin` may. Nothing was "
                            "written.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run-trainer"]
    assert itersft(["export", str(run_dir), "--format", "kto", "--out", str(tmp_path / "kto.jsonl")]) == 0


def test_rounds_that_did_not_complete_or_kept_no_samples_are_refused(standard_run, tmp_path):
    with pytest.raises(ExportError, match=r"^`rounds`: 2-3 did not complete in .* \(complete rounds: 0-1\)\.$"):
        export_rows(standard_run, ExportConfig("sft", rounds=[3, 2]))
    partial = tmp_path / "run"
    shutil.copytree(standard_run, partial)
    (partial / "samples" / "round-0000.jsonl").unlink()
    with pytest.raises(ExportError, match=r"^`rounds`: 0 kept no scored samples in .*; rounds that did: 1\.$"):
        export_rows(partial, ExportConfig("sft", rounds=[0, 1]))
    _, summary = export_rows(partial, ExportConfig("sft"))
    assert summary.rounds == [1] and summary.rounds_without_samples == [0]


# ---- a run stopped between a round's samples file and its checkpoint ------------------------------------


def test_a_round_cut_short_is_left_out_then_written_once_when_the_run_resumes(tmp_path, answering_dir, monkeypatch):
    """Round 1's samples file is written, then its checkpoint fails (as a kill there would leave it): the
    export reads round 0 only and names round 1 as cut short; the resumed run draws round 1 again, the file is
    the same, and every sample of both rounds is read exactly once."""
    from itersft import IterativeSFTTrainer

    run_dir = tmp_path / "run"
    real_save = IterativeSFTTrainer.save_checkpoint

    def killed_in_round_1(self, directory, *args, **kwargs):
        if Path(directory).name == "round-0001":
            raise KeyboardInterrupt("killed while round 1's checkpoint was written")
        return real_save(self, directory, *args, **kwargs)

    monkeypatch.setattr(IterativeSFTTrainer, "save_checkpoint", killed_in_round_1)
    with pytest.raises(KeyboardInterrupt):
        run_loop(answering_dir, run_dir)
    monkeypatch.undo()
    cut_short = (run_dir / "samples" / "round-0001.jsonl").read_bytes()
    assert sorted(p.name for p in (run_dir / "rounds").iterdir()) == ["round-0000"]
    _, summary = export_rows(run_dir, ExportConfig("kto"))
    assert summary.rounds == [0] and summary.rounds_incomplete == [1] and summary.samples_read == 18
    assert summary.lines()[-1] == ("samples of rounds that did not complete, left out (the run stopped before their "
                                   "checkpoint; resuming it draws them again): 1")

    run_loop(answering_dir, run_dir)  # the same command again: resumes after round 0
    assert (run_dir / "samples" / "round-0001.jsonl").read_bytes() == cut_short
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["round-0000.jsonl", "round-0001.jsonl"]
    _, summary = export_rows(run_dir, ExportConfig("kto"))
    assert summary.rounds == [0, 1] and summary.rounds_incomplete == [] and summary.samples_read == 36
    keys = [(s["round"], s["prompt_index"], s["sample_index"])
            for path in sorted((run_dir / "samples").iterdir()) for s in map(json.loads, path.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 36
