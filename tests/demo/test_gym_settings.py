"""`itersft demo-gym`'s settings and task, checked without loading a model: bad settings refused by name,
every task preset built by reasoning-gym, and held-out questions that are never training questions."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys

import pytest

from itersft.cli.demo_real import parse_settings
from itersft.demo.gym import GYM_DEMO_HYPERPARAMETERS, GYM_VERIFIERS, HELD_OUT_OFFSET, SEED_STRIDE, TASKS
from itersft.demo.gym import GymDemoHyperparameters as Settings


def test_the_defaults_choose_the_precision_and_keep_with_the_fallback_verifier():
    assert GYM_DEMO_HYPERPARAMETERS.precision == "auto" and GYM_DEMO_HYPERPARAMETERS.verifier == "fallback"
    assert not hasattr(GYM_DEMO_HYPERPARAMETERS, "bf16")  # one precision setting, the real demo's
    assert GYM_DEMO_HYPERPARAMETERS.task in TASKS


def test_the_gym_settings_parse_and_refuse_by_name_with_the_inherited_ones():
    assert parse_settings(["task=chain_sum", "few_shot=2", "verifier=strict", "precision=fp32"], Settings,
                          "demo-gym") == {"task": "chain_sum", "few_shot": 2, "verifier": "strict", "precision": "fp32"}
    with pytest.raises(SystemExit, match="itersft demo-gym: --set 'few_shot=two': few_shot takes an integer"):
        parse_settings(["few_shot=two"], Settings, "demo-gym")
    with pytest.raises(ValueError) as error:
        dataclasses.replace(GYM_DEMO_HYPERPARAMETERS, task="leg_counting", few_shot=-1, verifier="calculation",
                            rounds=0, precision="float32")
    for named in ("`task` must be one of 'arithmetic', 'chain_sum', got 'leg_counting'",
                  "`precision` must be one of 'auto', 'bf16', 'fp32', got 'float32'",
                  "`few_shot` must be an int >= 0, got -1", "`verifier` must be one of 'fallback', 'strict'",
                  "`rounds` must be an int >= 1"):
        assert named in str(error.value)


def test_the_command_stops_before_loading_a_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "itersft.cli.main", "demo-gym", "--set", "task=nope",
                             "--model", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "itersft demo-gym: Invalid" in result.stderr and "`task` must be one of" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.reasoning_gym
@pytest.mark.skipif(importlib.util.find_spec("reasoning_gym") is None, reason="needs `pip install reasoning-gym`")
@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("verifier", sorted(GYM_VERIFIERS))
def test_each_task_builds_with_held_out_questions_apart_from_the_training_ones(task, verifier):
    from itersft.scoring.scorers import resolve_scorer
    from itersft.tasks.reasoning_gym import reasoning_gym_fallback, reasoning_gym_strict

    settings = dataclasses.replace(GYM_DEMO_HYPERPARAMETERS, task=task, verifier=verifier)
    built = settings.make_task(2)
    assert len(built.train_prompts) == settings.rounds * settings.prompts_per_round
    questions = {prompt[-1]["content"] for prompt in built.train_prompts}
    assert not questions & {prompt[-1]["content"] for prompt in built.eval_prompts}
    seeds = (built.facts["train_seed"], built.facts["held_out_seed"])
    assert seeds == (2 * SEED_STRIDE, 2 * SEED_STRIDE + HELD_OUT_OFFSET)
    assert len(built.eval_prompts) == built.facts["held_out_questions"] == (
        settings.num_eval - built.facts["held_out_dropped"]["training_questions"])
    scorers = {"fallback": reasoning_gym_fallback, "strict": reasoning_gym_strict}
    assert resolve_scorer(built.verifier) is scorers[verifier]
    assert resolve_scorer(built.eval_scorer) is reasoning_gym_fallback
    assert {name: resolve_scorer(scorer) for name, scorer in built.also_evaluated.items()} == {
        "strict": reasoning_gym_strict}

