"""The scoring pool: a hang or a crash costs one sample, never the run; timeouts are per sample.

Timeouts are about a second so the tests stay short; the scorers that hang sleep far longer than any
timeout, so no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import time

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.filters import Threshold
from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
from itersft.sampling.sampler import SamplingConfig
from itersft.sampling.samples import Sample
from itersft.scoring.pool import ScoringOptions, in_scoring_worker
from itersft.scoring.scorers import score_samples

HANG = 10_000  # seconds a hanging scorer sleeps: far past every timeout here


def make(completions):
    return [Sample(prompt="p", completion=c, prompt_index=i, sample_index=0) for i, c in enumerate(completions)]


def length_or_hang(prompts, completions, **_):
    """len(completion), except that "hang" sleeps (for all practical purposes) forever."""
    if completions[0] == "hang":
        time.sleep(HANG)
    return [float(len(completions[0]))]


def test_a_scorer_that_hangs_costs_one_sample(caplog):
    samples = make(["a", "hang", "ccc", "dd"])
    report = score_samples(length_or_hang, samples, options=ScoringOptions(timeout=1, workers=2))
    assert [s.score for s in samples] == [1.0, 0.0, 3.0, 2.0]
    assert (report.scored, report.unscorable, report.timed_out, report.errors) == (4, 0, 1, 0)
    assert any("ran past the 1 s timeout on 1 of 4 samples" in r.getMessage() for r in caplog.records)
    assert multiprocessing.active_children() == []  # the killed worker was reaped, the others stopped


def test_timeouts_are_per_sample_not_per_batch():
    """Four samples of 0.5 s each on one worker: 2 s in all, each well under the 1.5 s limit."""

    def slow(prompts, completions, **_):
        time.sleep(0.5)
        return [1.0]

    samples = make(["a", "b", "c", "d"])
    report = score_samples(slow, samples, options=ScoringOptions(timeout=1.5, workers=1))
    assert report.timed_out == 0
    assert [s.score for s in samples] == [1.0] * 4


def test_a_hung_scorer_is_killed_with_the_processes_it_started(tmp_path):
    """The whole process group goes: a child the scorer spawned does not outlive the timeout."""
    pid_file = tmp_path / "child.pid"

    def spawns_and_hangs(prompts, completions, **_):
        child = os.fork()
        if child == 0:
            time.sleep(HANG)
            os._exit(0)
        pid_file.write_text(str(child))
        time.sleep(HANG)

    report = score_samples(spawns_and_hangs, make(["x"]), options=ScoringOptions(timeout=1, workers=1))
    assert report.timed_out == 1
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:  # SIGKILL is delivered at once; reaping by init may lag
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped has already died)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def crashes_on_some(prompts, completions, **_):
    if completions[0] == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    if completions[0] == "exit":
        os._exit(3)
    if completions[0] == "memory":
        raise MemoryError("scorer ran out of memory")
    if completions[0] == "sys.exit":
        raise SystemExit(0)
    return [1.0]


def test_a_worker_that_crashes_costs_one_sample():
    samples = make(["ok", "segfault", "ok", "exit", "memory", "sys.exit", "ok"])
    report = score_samples(crashes_on_some, samples, options=ScoringOptions(timeout=10, workers=2))
    assert [s.score for s in samples] == [1.0, None, 1.0, None, None, None, 1.0]
    assert (report.scored, report.unscorable, report.errors, report.timed_out) == (3, 4, 4, 0)
    assert report.first_error == "the scoring worker killed by SIGSEGV while scoring this sample"


def test_fail_fast_names_the_sample_whose_worker_crashed():
    with pytest.raises(RuntimeError, match=r"prompt_index=1.*exited with status 3"):
        score_samples(crashes_on_some, make(["ok", "exit"]), fail_fast=True,
                      options=ScoringOptions(timeout=10, workers=1))


def test_fail_fast_does_not_raise_on_a_timeout():
    samples = make(["hang", "a"])
    report = score_samples(length_or_hang, samples, fail_fast=True, options=ScoringOptions(timeout=1, workers=2))
    assert [s.score for s in samples] == [0.0, 1.0] and report.timed_out == 1


def test_lambdas_and_closures_run_in_workers_and_see_the_parent_state():
    offset = {"value": 10.0}
    samples = make(["a", "bb"])
    score_samples(lambda prompts, completions, **_: [offset["value"] + len(completions[0])], samples,
                  options=ScoringOptions(timeout=10, workers=2))
    assert [s.score for s in samples] == [11.0, 12.0]


def test_warm_up_runs_once_in_the_parent_before_the_workers_fork():
    state = {"warm": 0, "parent": os.getpid()}

    def scorer(prompts, completions, **_):
        assert in_scoring_worker() and os.getpid() != state["parent"]
        return [float(state["warm"])]

    def warm_up():
        assert os.getpid() == state["parent"]
        state["warm"] += 1

    scorer.warm_up = warm_up
    samples = make(["a", "b", "c"])
    score_samples(scorer, samples, options=ScoringOptions(timeout=10, workers=2))
    assert [s.score for s in samples] == [1.0, 1.0, 1.0] and state["warm"] == 1
    assert not in_scoring_worker()


def test_a_cuda_error_in_a_worker_says_how_to_score_on_the_gpu():
    def gpu_scorer(prompts, completions, **_):
        raise RuntimeError("Cannot re-initialize CUDA in forked subprocess.")

    report = score_samples(gpu_scorer, make(["a"]), options=ScoringOptions(timeout=10, workers=1))
    assert "score with in_process=True and timeout=None" in report.first_error


@pytest.mark.parametrize(("options", "message"), [
    (dict(in_process=True), "set `timeout` to None"),
    (dict(timeout=None), "set `in_process=True` to score in this process without one"),
    (dict(timeout=0), "`timeout` must be a finite number > 0"),
    (dict(timeout=float("inf")), "`timeout` must be a finite number > 0"),
    (dict(workers=0), "`workers` must be an int >= 1 or None"),
    (dict(in_process=True, timeout=None, workers=2), "`workers` has no effect"),
])
def test_scoring_options_refuse_what_they_cannot_honour(options, message):
    with pytest.raises(ValueError, match="Invalid ScoringOptions") as info:
        ScoringOptions(**options)
    assert message in str(info.value)


def test_loop_config_names_the_scoring_fields(tmp_path):
    with pytest.raises(ValueError) as info:
        LoopConfig(output_dir=str(tmp_path), score_in_process=True, score_workers=3)
    assert "`score_in_process=True` runs the scorer in this process" in str(info.value)
    assert "`score_workers` has no effect" in str(info.value)
    config = LoopConfig(output_dir=str(tmp_path), score_timeout=2.5, score_workers=3)
    assert config.scoring == ScoringOptions(timeout=2.5, workers=3, in_process=False)
    assert LoopConfig(output_dir=str(tmp_path), score_in_process=True, score_timeout=None).scoring.in_process


ANSWERS = ["x" if i % 2 else "y" for i in range(12)]


def exact_but_hangs_on_q1(prompts, completions, answer, **_):
    """Exact match, except that every sample of prompt "q1:" hangs."""
    if prompts[0] == "q1:":
        time.sleep(HANG)
    return [float(completions[0].strip() == answer[0])]


def test_the_loop_finishes_a_round_in_which_the_scorer_hangs(tmp_path, answering_dir):
    """Prompt q1's three samples hang: they are killed, counted and score 0; the rest train the model."""
    model = AutoModelForCausalLM.from_pretrained(answering_dir)
    tokenizer = AutoTokenizer.from_pretrained(answering_dir)
    trainer = IterativeSFTTrainer(model, IterativeSFTConfig(
        output_dir=str(tmp_path / "trainer"), report_to="none", learning_rate=1e-2, per_device_train_batch_size=4,
        save_strategy="no", seed=3), tokenizer)
    config = LoopConfig(output_dir=str(tmp_path / "run"), rounds=1, prompts_per_round=6, step_size=8, seed=3,
                        score_timeout=1.0, score_workers=2)
    loop = ExpertIteration(trainer, SamplingConfig(num_samples=3, max_new_tokens=4, temperature=1.0, seed=3),
                           exact_but_hangs_on_q1, Threshold(1.0), config)
    prompts, meta = [f"q{i}:" for i in range(12)], [{"answer": a} for a in ANSWERS]
    (metrics,) = loop.run(prompts, meta, eval_prompts=prompts[:2], eval_meta=meta[:2])

    assert metrics["samples_drawn"] == 18 and metrics["samples_timed_out"] == 3
    assert metrics["scorer_errors"] == 0 and metrics["samples_unscorable"] == 0
    assert metrics["samples_kept"] >= 1 and metrics["train_updates"] >= 1
    assert metrics["eval_samples_timed_out"] == 1  # q1's greedy completion, in the held-out evaluation
    assert loop.run_dir.root.joinpath("accepted", "round-0000.jsonl").read_text().count('"prompt": "q1:"') == 0
