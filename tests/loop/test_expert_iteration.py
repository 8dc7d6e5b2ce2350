"""The loop end to end on a toy model: artefacts, round policies, resume after kill -9 (between
rounds and inside a round checkpoint's write), the installed `itersft` script.

The base model is the toy causal LM briefly taught to answer "x" or "y" and stop (so completions
finish and some are correct); the scorer is exact match against a per-prompt answer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.filters import Threshold
from itersft.loop.callbacks import LoopCallback
from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
from itersft.sampling.sampler import SamplingConfig
from itersft.sampling.samples import Sample

PROMPTS = [f"q{i}:" for i in range(12)]
ANSWERS = ["x" if i % 2 else "y" for i in range(12)]
TIMING_KEYS = {"sampling_seconds", "sampling_tokens_per_second", "training_seconds", "training_tokens_per_second",
               "round_seconds"}


@pytest.fixture(scope="session")
def base_dir(answering_dir):
    """The toy model that answers "x"/"y" and stops (see conftest)."""
    return answering_dir


def _loop(base_dir, run_dir, labelled=None, **loop_options):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    config = IterativeSFTConfig(output_dir=str(run_dir / "trainer"), report_to="none", learning_rate=1e-2,
                                per_device_train_batch_size=4, save_strategy="no", seed=3)
    trainer = IterativeSFTTrainer(model, config, tokenizer)
    options = dict(output_dir=str(run_dir), rounds=2, prompts_per_round=6, step_size=8, seed=3)
    options.update(loop_options)
    sampling = SamplingConfig(num_samples=3, max_new_tokens=4, temperature=1.0, seed=3, chat_template=False)
    return ExpertIteration(trainer, sampling, "exact_match", Threshold(1.0), LoopConfig(**options), labelled=labelled)


def _meta():
    return [{"answer": a} for a in ANSWERS]


def test_two_rounds_write_exactly_the_expected_artefacts(tmp_path, base_dir):
    loop = _loop(base_dir, tmp_path)
    events = []

    class RunEvents(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            events.append("begin")

        def on_train_end(self, args, state, control, **kwargs):
            events.append("end")

    loop.trainer.add_callback(RunEvents())
    history = loop.run(PROMPTS, _meta(), eval_prompts=PROMPTS[:4], eval_meta=_meta()[:4])

    assert [m["round"] for m in history] == [0, 1]
    assert events == ["begin", "end"]  # the trainer's callbacks see one run: trackers flush at its end
    assert all(m["samples_kept"] > 0 and m["train_updates"] > 0 for m in history)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["accepted", "curves.png", "final", "loop_summary.json", "metrics.jsonl", "rounds", "run_identity.json",
         "samples", "trainer"])
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == ["round-0000", "round-0001"]
    round_files = {p.name for p in (tmp_path / "rounds" / "round-0001").iterdir()}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
            "loop_state.json", "loop_config.json"} <= round_files
    assert "buffer.json" not in round_files  # no buffer configured
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1]
    for m in history:
        assert m["samples_drawn"] == 6 * 3
        assert m["samples_kept"] == m["train_samples"] == len(_accepted(tmp_path, m["round"]))
        assert 0.0 <= m["eval_accuracy"] <= 1.0
        assert {"acceptance_rate", "kept_reward_mean", "distinct_2", "pass@1", "pass@k", "train_loss"} <= m.keys()
        # Every drawn sample, in the samples file; the kept ones are exactly those trained on (accepted/).
        drawn = _drawn(tmp_path, m["round"])
        assert len(drawn) == m["samples_drawn"] and {s["round"] for s in drawn} == {m["round"]}
        assert sorted((s["prompt_index"], s["sample_index"]) for s in drawn) == sorted(
            (i, j) for i in range(6 * m["round"], 6 * m["round"] + 6) for j in range(3))
        accepted = _accepted(tmp_path, m["round"])
        assert [(s["prompt"], s["completion"], s["score"]) for s in drawn if s["kept"]] == [
            (s["prompt"], s["completion"], s["score"]) for s in accepted]
        assert sum(not s["finished"] for s in drawn) >= m["samples_unfinished"]
        assert all(s["score"] == float(s["completion"].strip() == ANSWERS[s["prompt_index"]]) for s in drawn)
    # Round 1 samples a fresh slice of prompts.
    assert {s["prompt_index"] for s in _accepted(tmp_path, 1)} <= set(range(6, 12))
    assert all(s["score"] == 1.0 for r in (0, 1) for s in _accepted(tmp_path, r))
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert all(torch.equal(p, q) for p, q in zip(final.state_dict().values(), loop.trainer.model.state_dict().values()))
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert any("loop/eval_accuracy" in entry for entry in loop.trainer.state.log_history)


def test_restart_from_base_trains_each_round_from_the_initial_weights(tmp_path, base_dir):
    """Round 1 starts training from the weights the loop was built with, not from round 0's result."""
    loop = _loop(base_dir, tmp_path, restart_from_base=True)
    base = {k: v.clone() for k, v in loop.trainer.model.state_dict().items()}
    at_step_begin, round_ends = {}, []

    class Snapshots(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            at_step_begin.setdefault(state.global_step, {k: v.clone() for k, v in model.state_dict().items()})

    class RoundEnds(LoopCallback):
        def on_round_end(self, metrics):
            round_ends.append(metrics["global_step"])

    loop.trainer.add_callback(Snapshots())
    loop.callbacks.append(RoundEnds())
    history = loop.run(PROMPTS, _meta())
    assert all(m["samples_kept"] > 0 and m["train_updates"] > 0 for m in history)

    def same(weights):
        return all(torch.equal(weights[k], v) for k, v in base.items())

    assert same(at_step_begin[0]) and same(at_step_begin[round_ends[0]])  # round 0 and round 1 start at the base
    assert not same(at_step_begin[round_ends[0] - 1])  # round 0 trained away from it in between


def test_restart_from_base_is_refused_under_deepspeed(tmp_path):
    """DeepSpeed's optimizer would put the trained weights back after the base was loaded: refuse."""
    deepspeed_trainer = SimpleNamespace(is_deepspeed_enabled=True)  # checked before anything else is read
    with pytest.raises(ValueError, match="`restart_from_base` does not work under DeepSpeed"):
        ExpertIteration(deepspeed_trainer, SamplingConfig(), "exact_match", Threshold(1.0),
                        LoopConfig(output_dir=str(tmp_path), restart_from_base=True))


def test_replay_buffer_and_labelled_data_join_the_training_set(tmp_path, base_dir):
    labelled = [Sample(prompt=p, completion=a, prompt_index=i, sample_index=0) for i, (p, a)
                in enumerate(zip(PROMPTS, ANSWERS))]
    loop = _loop(base_dir, tmp_path, labelled=labelled, buffer_capacity=None, replay_samples=2, labelled_ratio=0.5)
    history = loop.run(PROMPTS, _meta())
    first, second = history
    assert all(m["samples_kept"] > 0 and m["train_updates"] > 0 for m in history)
    kept_first, kept_second = first["samples_kept"], second["samples_kept"]
    assert first["train_samples"] == 2 * kept_first  # no buffer yet; labelled = generated at ratio 0.5
    assert second["train_samples"] == 2 * (kept_second + min(2, kept_first))
    assert len(loop.buffer) == kept_first + kept_second
    assert (tmp_path / "rounds" / "round-0001" / "buffer.json").exists()


def test_reset_optimizer_clears_its_state_each_round(tmp_path, base_dir):
    """Adam counts its steps per parameter: after the run it has counted the last round's updates only."""
    loop = _loop(base_dir, tmp_path, reset_optimizer=True)
    loop.trainer.step(prompts=PROMPTS, completions=ANSWERS)
    assert len(loop.trainer.optimizer.state) > 0
    history = loop.run(PROMPTS, _meta())
    assert all(m["samples_kept"] > 0 and m["train_updates"] > 0 for m in history)
    steps = {int(state["step"]) for state in loop.trainer.optimizer.state.values()}
    assert steps == {history[-1]["train_updates"]}
    assert loop.trainer.state.global_step == 3 + history[0]["train_updates"] + history[1]["train_updates"]


def _accepted(run_dir: Path, round_index: int):
    path = run_dir / "accepted" / f"round-{round_index:04d}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _drawn(run_dir: Path, round_index: int):
    path = run_dir / "samples" / f"round-{round_index:04d}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


SLOW_SCORER = '''
import os
import time

import torch


def exact(prompts, completions, answer, **meta):
    """Exact match that takes a while (0.05 s a sample), so a kill lands inside a round, never after the last one."""
    time.sleep(0.05)
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


# The test's handle on a checkpoint write: with HOLD_CHECKPOINT="<round>:<marker file>", torch.save of
# the optimizer state into that round's staging folder (after the model's files, before the scheduler,
# RNG and loop state) completes, then writes the marker and waits to be killed, so the kill lands inside
# the round checkpoint's write.
if os.environ.get("HOLD_CHECKPOINT"):
    held_round, marker = os.environ["HOLD_CHECKPOINT"].split(":", 1)
    real_save = torch.save

    def save_and_hold(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if str(f).endswith(os.path.join(f".staging-round-{int(held_round):04d}", "optimizer.pt")):
            open(marker, "w").close()
            time.sleep(600)

    torch.save = save_and_hold
'''


def _write_run_config(directory: Path, base_dir: Path, run_dir: Path) -> Path:
    (directory / "slow_scorer.py").write_text(SLOW_SCORER)
    prompts = directory / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(PROMPTS, ANSWERS)))
    config = {
        "model": str(base_dir), "output_dir": str(run_dir), "prompts": {"path": str(prompts)},
        "eval_prompts": {"path": str(prompts), "limit": 4}, "scorer": "slow_scorer:exact",
        "filters": [{"threshold": 1.0}, {"dedup": {}}],
        "sampling": {"num_samples": 3, "max_new_tokens": 4, "seed": 5, "chat_template": False},
        "loop": {"rounds": 4, "prompts_per_round": 6, "step_size": 6, "seed": 5, "buffer_capacity": 50,
                 "replay_samples": 2},
        "training": {"learning_rate": 0.01, "per_device_train_batch_size": 2, "seed": 5},
    }
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_cli(config: Path, env: dict[str, str] | None = None, **popen):
    python_path = os.pathsep.join([str(config.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "itersft.cli.main", "run", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _comparable(run_dir: Path):
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    written = {f"{folder}/{p.name}": p.read_text() for folder in ("accepted", "samples")
               for p in sorted((run_dir / folder).iterdir())}
    weights = AutoModelForCausalLM.from_pretrained(run_dir / "final").state_dict()
    return metrics, written, weights


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, base_dir):
    """`itersft run` on the toy config, start to finish."""
    directory = tmp_path_factory.mktemp("reference")
    reference = _run_cli(_write_run_config(directory, base_dir, directory / "run"))
    output, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, output
    metrics, written, weights = _comparable(directory / "run")
    assert all(m["samples_kept"] > 0 and m["train_updates"] > 0 for m in metrics)
    assert sorted(written) == [f"{folder}/round-{r:04d}.jsonl" for folder in ("accepted", "samples") for r in range(4)]
    assert sorted(p.name for p in (directory / "run" / "rounds").iterdir()) == ["round-0002", "round-0003"]
    return metrics, written, weights


@pytest.mark.parametrize("kill_after_round", [0, 2])
def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path, base_dir, uninterrupted_run, kill_after_round):
    """Killed right after round k's checkpoint lands (mid-way through round k + 1), then rerun."""
    killed_dir = tmp_path / "killed"

    config = _write_run_config(tmp_path, base_dir, killed_dir)
    process = _run_cli(config)
    marker = killed_dir / "rounds" / f"round-{kill_after_round:04d}"
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "final").exists()

    resumed = _run_cli(config)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "Resuming after round" in output

    _assert_same_run(_comparable(killed_dir), uninterrupted_run)


def _assert_same_run(got, expected):
    (metrics, written, weights), (expected_metrics, expected_written, expected_weights) = got, expected
    assert metrics == expected_metrics
    assert written == expected_written  # accepted/ and samples/: every round once, as the uninterrupted run wrote it
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0, msg=name)


def test_kill_inside_a_round_checkpoint_write_then_resume_matches_an_uninterrupted_run(tmp_path, base_dir,
                                                                                     uninterrupted_run):
    """SIGKILL while round 1's checkpoint is half written (model files and optimizer state in its staging
    folder, the rest not yet): nothing partial is ever taken for a round, and the rerun redoes round 1."""
    killed_dir = tmp_path / "killed"
    config = _write_run_config(tmp_path, base_dir, killed_dir)
    marker = tmp_path / "inside-the-write"
    process = _run_cli(config, env={"HOLD_CHECKPOINT": f"1:{marker}"})
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()[0] if process.poll() is not None else "no write was held"
    staging = killed_dir / "rounds" / ".staging-round-0001"
    written = {p.name for p in staging.iterdir()}
    assert {"model.safetensors", "optimizer.pt"} <= written
    assert not written & {"scheduler.pt", "trainer_state.json", "loop_state.json"}  # the write is not finished
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert sorted(p.name for p in (killed_dir / "rounds").iterdir()) == [".staging-round-0001", "round-0000"]

    resumed = _run_cli(config)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "Resuming after round 0" in output
    assert sorted(p.name for p in (killed_dir / "rounds").iterdir()) == ["round-0002", "round-0003"]
    _assert_same_run(_comparable(killed_dir), uninterrupted_run)


def test_the_installed_console_script_imports_a_scorer_from_the_working_directory(tmp_path, base_dir):
    """`itersft run` as installed (the venv's script, not `python -m`), from the folder holding the scorer
    module: the script's own folder is first on its sys.path, so this import once failed."""
    script = shutil.which("itersft", path=str(Path(sys.executable).parent))
    assert script is not None, f"no `itersft` script beside {sys.executable}: install the package (`make install`)"
    config = _write_run_config(tmp_path, base_dir, tmp_path / "run")
    settings = yaml.safe_load(config.read_text())
    settings["loop"]["rounds"] = 1
    config.write_text(yaml.safe_dump(settings))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if os.environ.get("PYTHONPATH"):  # the source under test (as absolute paths: the cwd changes), nothing else
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p)
    result = subprocess.run([script, "run", config.name], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (metrics,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics["samples_kept"] > 0 and metrics["train_updates"] > 0


ALWAYS_RIGHT = '''
def score(prompts, completions, **meta):
    """Every completion is right: the toy model cannot add, and the example must still keep and train."""
    return [1.0] * len(completions)
'''


def test_the_example_config_runs(tmp_path, base_dir):
    """`itersft run examples/expert_iteration.yaml`, on the toy model, from the repository root; the scorer
    is swapped for one that accepts every completion (the toy model cannot add), every other key kept."""
    root = Path(__file__).resolve().parents[2]
    settings = yaml.safe_load((root / "examples" / "expert_iteration.yaml").read_text())
    (tmp_path / "always_right.py").write_text(ALWAYS_RIGHT)
    settings["scorer"] = "always_right:score"
    config = tmp_path / "example.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "itersft.cli.main", "run", str(config),
                             "--model", str(base_dir), "--output-dir", str(tmp_path / "run")],
                            cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "round" in result.stdout and "eval acc" in result.stdout
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(m["samples_kept"] > 0 and m["train_updates"] > 0 for m in metrics)


@pytest.mark.parametrize("bad", [{"rounds": True}, {"restart_from_base": 1}, {"labelled_ratio": 1.0},
                                 {"prompts_per_round": 0}, {"keep_rounds": 0}, {"resume_changed": "yes"}])
def test_loop_config_names_each_bad_setting(tmp_path, bad):
    (name,) = bad
    with pytest.raises(ValueError, match=f"Invalid LoopConfig:\n- `{name}`"):
        LoopConfig(output_dir=str(tmp_path), **bad)
