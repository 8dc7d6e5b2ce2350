"""Faults around the loop, injected: a scorer that fails on every sample, a rerun that is a different run,
old round checkpoints, an output folder that cannot be written, a full disk, a failure while `final/`
is written. Each asserts the exact outcome: the error and its message, what is on disk, and that the
rerun resumes where it should.

The read-only folder and the full disk are real where this machine allows a user + mount namespace
(`unshare -Urm`, no root needed): a read-only tmpfs, a small tmpfs filled up. Without one those tests
skip; the full disk is then still covered by an injected error where torch writes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.loop import full_disk
from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
from itersft.loop.filters import Threshold
from itersft.loop.run_dir import RunDirectory
from itersft.loop.run_identity import _source, compare
from itersft.loop.sampler import SamplingConfig
from itersft.loop.scoring.report import ScorerFailedError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import worker_full_disk  # noqa: E402

PROMPTS = worker_full_disk.PROMPTS
TIMING_KEYS = {"sampling_seconds", "sampling_tokens_per_second", "training_seconds", "training_tokens_per_second",
               "round_seconds"}


def _meta(changed: int | None = None):
    """The answers; `changed`: that prompt's answer swapped (other prompts, as far as the run can tell)."""
    return [{"answer": ("y" if m["answer"] == "x" else "x") if i == changed else m["answer"]}
            for i, m in enumerate(worker_full_disk.META)]


def _loop(model_dir, run_dir, scorer="exact_match", seed=3, learning_rate=1e-2, sampling_seed=3, trainer_dir=None,
          logging_steps=10, **options):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = IterativeSFTConfig(output_dir=str(trainer_dir or Path(run_dir).parent / "trainer"), report_to="none",
                              learning_rate=learning_rate, per_device_train_batch_size=4, save_strategy="no",
                              seed=seed, logging_steps=logging_steps)
    settings = dict(output_dir=str(run_dir), rounds=1, prompts_per_round=6, step_size=8, seed=3, score_workers=2)
    settings.update(options)
    sampling = SamplingConfig(num_samples=3, max_new_tokens=4, temperature=1.0, seed=sampling_seed,
                              chat_template=False)
    return ExpertIteration(IterativeSFTTrainer(model, args, tokenizer), sampling, scorer, Threshold(1.0),
                           LoopConfig(**settings))


def _rounds(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "rounds").iterdir())


def _trained(history) -> bool:
    return bool(history) and all(m["samples_kept"] > 0 and m["train_updates"] > 0 for m in history)


# ---- a scorer that fails on every sample --------------------------------------------------------


def needs_reference(prompts, completions, reference, **_):
    """Reads a metadata key that the prompts do not have: every call raises TypeError."""
    return [float(c == r) for c, r in zip(completions, reference)]


def verifier_down(prompts, completions, **_):
    raise ConnectionRefusedError(111, "Connection refused: the verification service at localhost:8000 is down")


@pytest.mark.parametrize("scorer, evaluate, where, exception", [
    (needs_reference, False, "round 0",
     "TypeError: needs_reference() missing 1 required positional argument: 'reference'"),
    (verifier_down, False, "round 0",
     "ConnectionRefusedError: [Errno 111] Connection refused: the verification service at localhost:8000 is down"),
    (verifier_down, True, "the held-out evaluation before round 0", "ConnectionRefusedError: [Errno 111]"),
])
def test_a_scorer_that_fails_on_every_sample_stops_the_run(tmp_path, answering_dir, scorer, evaluate, where,
                                                           exception):
    """Not exit 0 with nothing kept and an accuracy of 0.0: the error quotes the exception and its sample."""
    loop = _loop(answering_dir, tmp_path / "run", scorer=scorer)
    samples = 6 * 3 if not evaluate else 4  # the greedy evaluation draws one completion per held-out prompt
    with pytest.raises(ScorerFailedError) as failure:
        loop.run(PROMPTS, _meta(), eval_prompts=PROMPTS[:4] if evaluate else None,
                 eval_meta=_meta()[:4] if evaluate else None)
    message = str(failure.value)
    assert message.startswith(f"scorer {scorer.__name__} failed on all {samples} samples of {where} (raised, "
                              "crashed or timed out), so nothing could be kept and the run stops rather than train "
                              "on nothing. The first exception, on the sample with prompt_index=0, sample_index=0: "
                              + exception), message
    assert loop.trainer.state.global_step == 0 and _rounds(tmp_path / "run") == []
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- run identity ----------------------------------------------------------------------------------


def test_a_rerun_that_is_a_different_run_is_refused_naming_each_change(tmp_path, answering_dir, causal_dir, caplog):
    """Rerun 1 changes only what is not the run (more rounds, where the model folder and the trainer's files
    are, logging, scoring workers, how output_dir is spelled): it resumes. Rerun 2 changes the model, the
    sampling seed, the prompt slice, one answer and the learning rate: refused, naming exactly those.
    Rerun 3 is rerun 2 with `resume_changed`: it resumes, and the change is recorded."""
    run = tmp_path / "run"
    first = _loop(answering_dir, run).run(PROMPTS, _meta())
    identity = json.loads((run / "run_identity.json").read_text())
    assert identity["changes"] == [] and identity["identity"]["sampling.seed"] == 3

    moved = tmp_path / "moved-model"
    shutil.copytree(answering_dir, moved)
    with caplog.at_level(logging.INFO, logger="itersft.loop.expert_iteration"):
        second = _loop(moved, str(tmp_path / "elsewhere" / ".." / "run") + "/", rounds=2, keep_rounds=None,
                       score_workers=1, logging_steps=3, trainer_dir=tmp_path / "trainer-2").run(PROMPTS, _meta())
    assert "Resuming after round 0 from" in caplog.text
    assert second[0] == first[0] and len(second) == 2 and _trained(second)
    assert json.loads((run / "run_identity.json").read_text()) == identity  # nothing changed

    changed = dict(rounds=3, sampling_seed=4, prompts_per_round=4, learning_rate=2e-2)
    refused = _loop(causal_dir, run, **changed)
    with pytest.raises(ValueError) as refusal:
        refused.run(PROMPTS, _meta(changed=7))
    message = str(refusal.value)
    assert message.startswith(f"Refusing to resume the run in {str(run)!r} (after round 1): it was started as a "
                              "different run, and resuming would continue its checkpoint under the new settings. "
                              "Changed (5):\n")
    listed = [line for line in message.splitlines() if line.startswith("- ")]
    assert [line.split(":")[0] for line in listed] == ["- loop.prompts_per_round", "- model.weights", "- prompts",
                                                       "- sampling.seed", "- training.learning_rate"]
    assert "- sampling.seed: 3 -> 4" in listed and "- training.learning_rate: 0.01 -> 0.02" in listed
    assert message.endswith("or resume anyway with `LoopConfig.resume_changed=True` (`itersft run --resume-changed`).")
    assert refused.trainer.state.global_step == 0  # refused before the checkpoint was loaded

    third = _loop(causal_dir, run, resume_changed=True, **changed).run(PROMPTS, _meta(changed=7))
    assert len(third) == 3 and third[:2] == second and _trained(third[2:])
    recorded = json.loads((run / "run_identity.json").read_text())
    assert recorded["identity"]["sampling.seed"] == 4
    (change,) = recorded["changes"]
    assert change["after_round"] == 1 and change["fields"]["sampling.seed"] == [3, 4]
    assert sorted(change["fields"]) == ["loop.prompts_per_round", "model.weights", "prompts", "sampling.seed",
                                        "training.learning_rate"]


def test_identity_comparison_skips_what_is_not_the_run(tmp_path):
    recorded = {"model.weights": "a", "model.source": "/models/m", "sampling.seed": 1, "training.old_setting": 1}
    moved = {"model.weights": "a", "model.source": "/elsewhere/m", "sampling.seed": 1, "training.new_setting": 2}
    assert compare(recorded, moved) == {}  # same weights: a moved folder is the same model
    sharded = {**moved, "model.weights": None}
    assert compare(recorded, sharded) == {"model.source": ("/models/m", "/elsewhere/m")}  # no fingerprint: the path
    (tmp_path / "m").mkdir()
    (tmp_path / "x").mkdir()
    assert _source(str(tmp_path / "x" / ".." / "m") + "/") == _source(str(tmp_path / "m")) == str(tmp_path / "m")
    assert _source("org/model-on-the-hub") == "org/model-on-the-hub"


def test_itersft_run_has_the_resume_changed_flag():
    from itersft.cli.main import build_parser

    assert build_parser().parse_args(["run", "c.yaml", "--resume-changed"]).resume_changed is True
    assert build_parser().parse_args(["run", "c.yaml"]).resume_changed is False


# ---- keep_rounds -------------------------------------------------------------------------------------


def test_only_the_newest_keep_rounds_checkpoints_stay_and_the_run_resumes_from_them(tmp_path, answering_dir, caplog):
    run = tmp_path / "run"
    history = _loop(answering_dir, run, rounds=2, keep_rounds=1).run(PROMPTS, _meta())
    assert _trained(history) and _rounds(run) == ["round-0001"] and (run / "final").is_dir()
    with caplog.at_level(logging.INFO, logger="itersft.loop.expert_iteration"):
        history = _loop(answering_dir, run, rounds=3, keep_rounds=1).run(PROMPTS, _meta())
    assert "Resuming after round 1 from" in caplog.text
    assert len(history) == 3 and _trained(history) and _rounds(run) == ["round-0002"]


def test_pruning_keeps_the_newest_rounds_and_clears_what_killed_writes_left(tmp_path):
    run_dir = RunDirectory(tmp_path)
    for name in ("round-0000", "round-0001", "round-0002", "round-0003", ".staging-round-0002",
                 ".staging-round-0004", ".deleting-round-0000"):
        (tmp_path / "rounds" / name).mkdir(parents=True)
        (tmp_path / "rounds" / name / "model.safetensors").write_bytes(b"weights")
    assert RunDirectory(tmp_path).prune_rounds(None) == []
    assert _rounds(tmp_path) == [".staging-round-0004", "round-0000", "round-0001", "round-0002", "round-0003"]
    assert [p.name for p in run_dir.prune_rounds(2)] == ["round-0000", "round-0001"]
    assert _rounds(tmp_path) == [".staging-round-0004", "round-0002", "round-0003"]  # a newer round's staging stays
    run_dir.prune_rounds(1)
    assert _rounds(tmp_path) == [".staging-round-0004", "round-0003"]
    assert RunDirectory(tmp_path, is_main=False).prune_rounds(1) == []


@pytest.mark.parametrize("value, expected", [(0, "an int >= 1 or None, got 0"), (True, "an int >= 1 or None, got True"),
                                             (1.5, "an int >= 1 or None, got 1.5")])
def test_keep_rounds_must_be_a_positive_int_or_none(tmp_path, value, expected):
    with pytest.raises(ValueError, match=f"Invalid LoopConfig:\n- `keep_rounds` must be {expected}"):
        LoopConfig(output_dir=str(tmp_path), keep_rounds=value)
    assert LoopConfig(output_dir=str(tmp_path), keep_rounds=None).keep_rounds is None
    assert LoopConfig(output_dir=str(tmp_path)).keep_rounds == 2


# ---- an output folder that cannot be written ---------------------------------------------------------


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0


NAMESPACES = _namespaces_work()
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason="no user + mount namespace here (`unshare -Urm`)")


def _on_a_read_only_folder(folder: Path, command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` with `folder` read-only: a read-only tmpfs over it in a namespace, or, without
    namespaces and as a user other than root (whom permissions do not stop), its mode bits."""
    folder.mkdir(parents=True, exist_ok=True)
    if NAMESPACES:
        command = ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o ro,size=1m tmpfs "$0" && exec "$@"', str(folder),
                   *command]
    elif os.geteuid() != 0:
        folder.chmod(0o555)
    else:
        pytest.skip("root without namespaces: no way to make a folder read-only for this process")
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_itersft_run_refuses_a_read_only_output_dir_before_loading_anything(tmp_path):
    """The model does not exist: an error about it would mean the output folder was checked too late."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "q0:", "answer": "x"}) + "\n")
    read_only = tmp_path / "read-only"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": str(tmp_path / "no-such-model"), "output_dir": str(read_only),
                                      "prompts": {"path": str(prompts)}, "scorer": "exact_match"}))
    result = _on_a_read_only_folder(read_only, [sys.executable, "-m", "itersft.cli.main", "run", str(config)])
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ValueError: `output_dir` {str(read_only)!r} cannot be written: "), result.stderr
    assert "Read-only file system" in last or "Permission denied" in last
    assert "no-such-model" not in result.stderr


PYTHON_API = '''
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
from itersft.loop.filters import Threshold
from itersft.loop.sampler import SamplingConfig

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
    result = _on_a_read_only_folder(read_only, [sys.executable, "-c", PYTHON_API, str(answering_dir), str(read_only),
                                                str(tmp_path / "trainer")])
    assert result.returncode == 0, result.stderr
    (refusal,) = [line for line in result.stdout.splitlines() if line.startswith("refused: ")]
    assert refusal.startswith(f"refused: `output_dir` {str(read_only)!r} cannot be written: "), result.stdout
    assert refusal.endswith("Choose a folder you can write to (or fix its permissions, or free space on its disk).")


def test_an_output_dir_below_a_file_is_refused_when_the_loop_is_built(tmp_path, answering_dir):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match=r"^`output_dir` '.*/a-file/run' cannot be written: \[Errno 20\] Not a "
                                         r"directory"):
        _loop(answering_dir, tmp_path / "a-file" / "run", trainer_dir=tmp_path / "trainer")


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
        _loop(answering_dir, run, rounds=2).run(PROMPTS, _meta())
    assert str(failure.value).startswith(f"[Errno 28] No space left on device: writing the round 1 checkpoint to "
                                         f"{run}/rounds/round-0001 failed with ")
    assert "Free some space and rerun the same command: the run resumes after round 0." in str(failure.value)
    assert _rounds(run) == ["round-0000"]  # no partial staging folder left
    monkeypatch.setattr(torch, "save", real_save)
    with caplog.at_level(logging.INFO, logger="itersft.loop.expert_iteration"):
        history = _loop(answering_dir, run, rounds=2).run(PROMPTS, _meta())
    assert "Resuming after round 0 from" in caplog.text
    assert len(history) == 2 and _trained(history) and _rounds(run) == ["round-0000", "round-0001"]


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
    assert outcome["rounds_at_the_end"] == ["round-0000", "round-0001"] and _trained(outcome["history"])

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
    loop = _loop(answering_dir, run)
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
        loop.run(PROMPTS, _meta())
    assert seen["final visible while written"] is False and "model.safetensors" in seen["written so far"]
    assert not (run / "final").exists() and not (run / ".staging-final").exists()
    assert _rounds(run) == ["round-0000"]

    with caplog.at_level(logging.INFO, logger="itersft.loop.expert_iteration"):
        history = _loop(answering_dir, run).run(PROMPTS, _meta())
    assert "Resuming after round 0 from" in caplog.text and _trained(history)
    final = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()
    checkpoint = AutoModelForCausalLM.from_pretrained(run / "rounds" / "round-0000").state_dict()
    assert all(torch.equal(final[name], tensor) for name, tensor in checkpoint.items())
    assert AutoTokenizer.from_pretrained(run / "final").eos_token == tokenizer.eos_token
