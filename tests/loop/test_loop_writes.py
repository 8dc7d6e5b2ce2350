"""Writes that fail, for real where this machine allows it: an output folder that cannot be written (a
read-only tmpfs), a full disk (a small tmpfs, filled up), a failure while `final/` is written. Each asserts
the exact outcome: the error and its message, what is (and is not) on disk, and that the rerun resumes.

The read-only folder and the full disk need a user + mount namespace (`unshare -Urm`, no root needed);
without one the read-only tests fall back to mode bits (not as root) and the real full disk skips, its
report then still covered by an error injected where torch writes.
"""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft.loop import full_disk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import worker_full_disk  # noqa: E402
from faulty_loop import (  # noqa: E402
    PROMPTS,
    TIMING_KEYS,
    build_loop,
    meta,
    needs_namespaces,
    on_a_read_only_folder,
    round_folders,
    trained,
)

# ---- an output folder that cannot be written ---------------------------------------------------------


def test_itersft_run_refuses_a_read_only_output_dir_before_loading_anything(tmp_path):
    """The model does not exist: an error about it would mean the output folder was checked too late."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "q0:", "answer": "x"}) + "\n")
    read_only = tmp_path / "read-only"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": str(tmp_path / "no-such-model"), "output_dir": str(read_only),
                                      "prompts": {"path": str(prompts)}, "scorer": "exact_match"}))
    result = on_a_read_only_folder(read_only, [sys.executable, "-m", "itersft.cli.main", "run", str(config)])
    assert result.returncode == 2 and "Traceback" not in result.stderr  # bad input: one message
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"itersft run: error: `output_dir` {str(read_only)!r} cannot be written: "), result.stderr
    assert "Read-only file system" in last or "Permission denied" in last
    assert "no-such-model" not in result.stderr


PYTHON_API = '''
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
from itersft.filters import Threshold
from itersft.sampling.sampler import SamplingConfig

model_dir, output_dir, trainer_dir = sys.argv[1:]
trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), IterativeSFTConfig(
    output_dir=trainer_dir, report_to="none", save_strategy="no"), AutoTokenizer.from_pretrained(model_dir))
try:
    ExpertIteration(trainer, SamplingConfig(), "exact_match", Threshold(1.0), LoopConfig(output_dir=output_dir))
except ValueError as error:
    print("refused:", error)
'''


def test_the_python_api_refuses_a_read_only_output_dir_when_the_loop_is_built(tmp_path, answering_dir):
    read_only = tmp_path / "read-only"
    result = on_a_read_only_folder(read_only, [sys.executable, "-c", PYTHON_API, str(answering_dir), str(read_only),
                                                str(tmp_path / "trainer")])
    assert result.returncode == 0, result.stderr
    (refusal,) = [line for line in result.stdout.splitlines() if line.startswith("refused: ")]
    assert refusal.startswith(f"refused: `output_dir` {str(read_only)!r} cannot be written: "), result.stdout
    assert refusal.endswith("Choose a folder you can write to (or fix its permissions, or free space on its disk).")


def test_an_output_dir_below_a_file_is_refused_when_the_loop_is_built(tmp_path, answering_dir):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match=r"^`output_dir` '.*/a-file/run' cannot be written: \[Errno 20\] Not a "
                                         r"directory"):
        build_loop(answering_dir, tmp_path / "a-file" / "run", trainer_dir=tmp_path / "trainer")


# ---- a full disk -------------------------------------------------------------------------------------

TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def test_torchs_write_failure_on_a_full_disk_is_reported_as_one(tmp_path, monkeypatch):
    """torch's writer says nothing about space; with < 1 MiB left it is a full disk. The partial folder goes."""
    staging = tmp_path / "rounds" / ".staging-round-0003"
    staging.mkdir(parents=True)
    (staging / "optimizer.pt").write_bytes(b"partial")
    monkeypatch.setattr(full_disk, "free_bytes", lambda path: 0)
    with pytest.raises(OSError) as failure:
        with full_disk.reporting_full_disk(tmp_path / "rounds" / "round-0003", "the round 3 checkpoint", staging,
                                           then="rerun the same command: the run resumes after round 2"):
            raise RuntimeError(TORCH_FULL_DISK)
    assert failure.value.errno == errno.ENOSPC and isinstance(failure.value.__cause__, RuntimeError)
    assert str(failure.value) == (
        f"[Errno 28] No space left on device: writing the round 3 checkpoint to {tmp_path}/rounds/round-0003 failed "
        "with 0 bytes free on its file system. Free some space and rerun the same command: the run resumes after "
        f"round 2. The error raised was RuntimeError: {TORCH_FULL_DISK}")
    assert not staging.exists()


@pytest.mark.parametrize("raised", [OSError(errno.ENOSPC, "No space left on device"),
                                    RuntimeError("Error while serializing: I/O error: No space left on device "
                                                 "(os error 28)"),
                                    OSError(errno.EDQUOT, "Disk quota exceeded")])
def test_an_error_that_says_the_disk_is_full_is_reported_as_a_full_disk(tmp_path, raised):
    with pytest.raises(OSError, match=r"^\[Errno 28\] No space left on device: writing the final model to ") as info:
        with full_disk.reporting_full_disk(tmp_path / "final", "the final model"):
            raise raised
    assert info.value.__cause__ is raised


def test_any_other_write_failure_is_raised_unchanged(tmp_path):
    staging = tmp_path / ".staging-final"
    staging.mkdir()
    bug = RuntimeError(TORCH_FULL_DISK)  # torch's message, but this disk has room: not a full disk
    with pytest.raises(RuntimeError) as info:
        with full_disk.reporting_full_disk(tmp_path / "final", "the final model", staging):
            raise bug
    assert info.value is bug and not staging.exists()


def test_a_full_disk_in_a_round_checkpoint_stops_the_run_and_the_rerun_resumes(tmp_path, answering_dir, monkeypatch,
                                                                              caplog):
    """The disk fills while round 1's optimizer state is written (injected where torch writes)."""
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        if ".staging-round-0001" in str(f):
            Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    run = tmp_path / "run"
    with pytest.raises(OSError) as failure:
        build_loop(answering_dir, run, rounds=2).run(PROMPTS, meta())
    assert str(failure.value).startswith(f"[Errno 28] No space left on device: writing the round 1 checkpoint to "
                                         f"{run}/rounds/round-0001 failed with ")
    assert "Free some space and rerun the same command: the run resumes after round 0." in str(failure.value)
    assert round_folders(run) == ["round-0000"]  # no partial staging folder left
    monkeypatch.setattr(torch, "save", real_save)
    with caplog.at_level(logging.INFO, logger="itersft.loop.expert_iteration"):
        history = build_loop(answering_dir, run, rounds=2).run(PROMPTS, meta())
    assert "Resuming after round 0 from" in caplog.text
    assert len(history) == 2 and trained(history) and round_folders(run) == ["round-0000", "round-0001"]


@needs_namespaces
def test_a_really_full_disk_is_reported_and_the_rerun_matches_an_uninterrupted_run(tmp_path, answering_dir):
    """A 8 MiB tmpfs, filled after round 0 so that round 1's optimizer state does not fit: torch's own
    write fails. Once the ballast is deleted, the rerun resumes and ends where an uninterrupted run does."""
    run, out = tmp_path / "run", tmp_path / "out"
    run.mkdir()
    out.mkdir()
    worker = [sys.executable, str(HERE / "worker_full_disk.py"), str(answering_dir), str(run), str(out)]
    result = subprocess.run(["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"',
                             str(run), *worker], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    outcome = json.loads((out / "result.json").read_text())

    failure = outcome["failure"]
    assert failure["errno"] == errno.ENOSPC and failure["cause"] == "RuntimeError"
    assert failure["message"].startswith(f"[Errno 28] No space left on device: writing the round 1 checkpoint to "
                                         f"{run}/rounds/round-0001 failed with 0 bytes free on its file system (")
    assert "Free some space and rerun the same command: the run resumes after round 0. The error raised was " \
           "RuntimeError: [enforce fail at inline_container.cc" in failure["message"]
    assert outcome["rounds_after_failure"] == ["round-0000"]  # the partial round 1 folder is gone
    assert outcome["resumed_log"][0].startswith("Resuming after round 0 from")
    assert outcome["rounds_at_the_end"] == ["round-0000", "round-0001"] and trained(outcome["history"])

    reference = worker_full_disk.build(answering_dir, tmp_path / "reference", tmp_path / "reference-trainer")
    expected = reference.run(PROMPTS, worker_full_disk.META)
    assert [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in outcome["history"]] == \
           [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in expected]
    weights = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    for name, tensor in AutoModelForCausalLM.from_pretrained(tmp_path / "reference" / "final").state_dict().items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0, msg=name)


# ---- final/ -------------------------------------------------------------------------------------------


def test_a_failure_while_final_is_written_leaves_no_final_and_the_rerun_writes_it(tmp_path, answering_dir, caplog):
    run = tmp_path / "run"
    loop = build_loop(answering_dir, run)
    tokenizer = loop.trainer.processing_class
    save_pretrained = tokenizer.save_pretrained
    seen = {}

    def fail_mid_write(directory, *args, **kwargs):
        if ".staging-final" not in str(directory):  # the round checkpoints are written as usual
            return save_pretrained(directory, *args, **kwargs)
        seen["final visible while written"] = (run / "final").exists()
        seen["written so far"] = sorted(p.name for p in Path(directory).iterdir())
        (Path(directory) / "tokenizer_config.json").write_text("")  # a 0-byte file, as a kill would leave
        raise RuntimeError("killed mid-write")

    tokenizer.save_pretrained = fail_mid_write
    with pytest.raises(RuntimeError, match="killed mid-write"):
        loop.run(PROMPTS, meta())
    assert seen["final visible while written"] is False and "model.safetensors" in seen["written so far"]
    assert not (run / "final").exists() and not (run / ".staging-final").exists()
    assert round_folders(run) == ["round-0000"]

    with caplog.at_level(logging.INFO, logger="itersft.loop.expert_iteration"):
        history = build_loop(answering_dir, run).run(PROMPTS, meta())
    assert "Resuming after round 0 from" in caplog.text and trained(history)
    final = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()
    checkpoint = AutoModelForCausalLM.from_pretrained(run / "rounds" / "round-0000").state_dict()
    assert all(torch.equal(final[name], tensor) for name, tensor in checkpoint.items())
    assert AutoTokenizer.from_pretrained(run / "final").eos_token == tokenizer.eos_token
