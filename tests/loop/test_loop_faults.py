"""Faults in a loop run, injected: a scorer that fails on every sample, a rerun that is a different run, old
round checkpoints piling up. Each asserts the exact outcome: the error and its message, what is on
disk, and that the rerun resumes where it should. (Writes that fail: test_loop_writes.py.)
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest

from itersft.loop.expert_iteration import LoopConfig
from itersft.loop.run_dir import RunDirectory
from itersft.loop.run_identity import _source, compare, outside_identity
from itersft.scoring.report import ScorerFailedError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faulty_loop import PROMPTS, build_loop, meta, round_folders, trained  # noqa: E402

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
    loop = build_loop(answering_dir, tmp_path / "run", scorer=scorer)
    samples = 6 * 3 if not evaluate else 4  # the greedy evaluation draws one completion per held-out prompt
    with pytest.raises(ScorerFailedError) as failure:
        loop.run(PROMPTS, meta(), eval_prompts=PROMPTS[:4] if evaluate else None,
                 eval_meta=meta()[:4] if evaluate else None)
    message = str(failure.value)
    assert message.startswith(f"scorer {scorer.__name__} failed on all {samples} samples of {where} (raised, "
                              "crashed or timed out), so nothing could be kept and the run stops rather than train "
                              "on nothing. The first exception, on the sample with prompt_index=0, sample_index=0: "
                              + exception), message
    assert loop.trainer.state.global_step == 0 and round_folders(tmp_path / "run") == []
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- run identity ----------------------------------------------------------------------------------


def test_a_rerun_that_is_a_different_run_is_refused_naming_each_change(tmp_path, answering_dir, causal_dir, caplog):
    """Rerun 1 changes only what is not the run (more rounds, where the model folder and the trainer's files
    are, logging, scoring workers, how output_dir is spelled): it resumes. Rerun 2 changes the model, the
    sampling seed, the prompt slice, one answer and the learning rate: refused, naming exactly those.
    Rerun 3 is rerun 2 with `resume_changed`: it resumes, and the change is recorded."""
    run = tmp_path / "run"
    first = build_loop(answering_dir, run).run(PROMPTS, meta())
    identity = json.loads((run / "run_identity.json").read_text())
    assert identity["changes"] == [] and identity["identity"]["sampling.seed"] == 3

    moved = tmp_path / "moved-model"
    shutil.copytree(answering_dir, moved)
    with caplog.at_level(logging.INFO, logger="itersft.loop.expert_iteration"):
        second = build_loop(moved, str(tmp_path / "elsewhere" / ".." / "run") + "/", rounds=2, keep_rounds=None,
                       score_workers=1, logging_steps=3, trainer_dir=tmp_path / "trainer-2").run(PROMPTS, meta())
    assert "Resuming after round 0 from" in caplog.text
    assert second[0] == first[0] and len(second) == 2 and trained(second)
    assert json.loads((run / "run_identity.json").read_text()) == identity  # nothing changed

    changed = dict(rounds=3, sampling_seed=4, prompts_per_round=4, learning_rate=2e-2)
    refused = build_loop(causal_dir, run, **changed)
    with pytest.raises(ValueError) as refusal:
        refused.run(PROMPTS, meta(changed=7))
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

    third = build_loop(causal_dir, run, resume_changed=True, **changed).run(PROMPTS, meta(changed=7))
    assert len(third) == 3 and third[:2] == second and trained(third[2:])
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


def test_the_settings_outside_a_runs_identity_are_those_their_fields_declare(tmp_path):
    """Declared where each setting is (`metadata={"identity": False}`); transformers' own fields by name."""
    from transformers import TrainingArguments

    from itersft import IterativeSFTConfig
    from itersft.sampling.sampler import SamplingConfig

    assert outside_identity(LoopConfig(output_dir=str(tmp_path))) == {
        "output_dir", "rounds", "fail_fast", "score_timeout", "score_workers", "score_in_process", "keep_rounds",
        "write_samples", "resume_changed"}
    assert outside_identity(SamplingConfig()) == {"batch_size"}
    training = outside_identity(IterativeSFTConfig(output_dir=str(tmp_path), report_to="none"))
    assert {"optimize_device_cache", "logging_steps", "output_dir", "report_to", "eval_steps", "save_strategy",
            "dataloader_num_workers"} <= training
    assert not training & {"learning_rate", "seed", "max_length", "batching", "add_eos_token", "shuffle_samples",
                           "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type"}
    plain = outside_identity(TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    assert plain == training - {"optimize_device_cache"}  # `logging_steps` is transformers' field too


def test_itersft_run_has_the_resume_changed_flag():
    from itersft.cli.main import build_parser

    assert build_parser().parse_args(["run", "c.yaml", "--resume-changed"]).resume_changed is True
    assert build_parser().parse_args(["run", "c.yaml"]).resume_changed is False


# ---- keep_rounds -------------------------------------------------------------------------------------


def test_only_the_newest_keep_rounds_checkpoints_stay_and_the_run_resumes_from_them(tmp_path, answering_dir, caplog):
    run = tmp_path / "run"
    history = build_loop(answering_dir, run, rounds=2, keep_rounds=1).run(PROMPTS, meta())
    assert trained(history) and round_folders(run) == ["round-0001"] and (run / "final").is_dir()
    with caplog.at_level(logging.INFO, logger="itersft.loop.expert_iteration"):
        history = build_loop(answering_dir, run, rounds=3, keep_rounds=1).run(PROMPTS, meta())
    assert "Resuming after round 1 from" in caplog.text
    assert len(history) == 3 and trained(history) and round_folders(run) == ["round-0002"]


def test_pruning_keeps_the_newest_rounds_and_clears_what_killed_writes_left(tmp_path):
    run_dir = RunDirectory(tmp_path)
    for name in ("round-0000", "round-0001", "round-0002", "round-0003", ".staging-round-0002",
                 ".staging-round-0004", ".deleting-round-0000"):
        (tmp_path / "rounds" / name).mkdir(parents=True)
        (tmp_path / "rounds" / name / "model.safetensors").write_bytes(b"weights")
    assert RunDirectory(tmp_path).prune_rounds(None) == []
    assert round_folders(tmp_path) == [".staging-round-0004", "round-0000", "round-0001", "round-0002", "round-0003"]
    assert [p.name for p in run_dir.prune_rounds(2)] == ["round-0000", "round-0001"]
    # The staging folder of a round newer than every complete one stays: it may be being written.
    assert round_folders(tmp_path) == [".staging-round-0004", "round-0002", "round-0003"]
    run_dir.prune_rounds(1)
    assert round_folders(tmp_path) == [".staging-round-0004", "round-0003"]
    assert RunDirectory(tmp_path, is_main=False).prune_rounds(1) == []


@pytest.mark.parametrize("value, expected", [(0, "an int >= 1 or None, got 0"), (True, "an int >= 1 or None, got True"),
                                             (1.5, "an int >= 1 or None, got 1.5")])
def test_keep_rounds_must_be_a_positive_int_or_none(tmp_path, value, expected):
    with pytest.raises(ValueError, match=f"Invalid LoopConfig:\n- `keep_rounds` must be {expected}"):
        LoopConfig(output_dir=str(tmp_path), keep_rounds=value)
    assert LoopConfig(output_dir=str(tmp_path), keep_rounds=None).keep_rounds is None
    assert LoopConfig(output_dir=str(tmp_path)).keep_rounds == 2
