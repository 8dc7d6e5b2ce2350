"""The loop with reward functions in TRL's GRPO convention, end to end on a toy chat model.

Prompts come from a `datasets.Dataset` in TRL's prompt-only format; the reward functions are
`trl.rewards`' own plus one in TRL's documented style that reads `trainer_state`. Every sample the
filter sees must carry the rewards TRL 1.16's `_calculate_rewards` computes for it (`trl_reference`),
and its score their weighted sum; the kept ones are those above their prompt's mean. The command line
runs `examples/grpo_rewards.yaml` as written, on the toy model; bad input stops it before any model loads.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.rewards import accuracy_reward, get_soft_overlong_punishment, think_format_reward

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.cli import run as run_command
from itersft.filters import AboveGroupMean
from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
from itersft.sampling.sampler import SamplingConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scoring"))
from trl_reference import trl_rewards_per_function, trl_weighted_sum  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def thinking_dir(fine_tuned_copy):
    """The toy model after 40 updates on chat turns "q<i>" answered "\\boxed{i mod 3}", after "<think>i</think>"
    for odd i, so its samples differ in format, answer and length, and the rewards tell them apart."""
    conversations = [[{"role": "user", "content": f"q{i}"},
                      {"role": "assistant", "content": ("<think>{i}</think>" if i % 2 else "") + f"\\boxed{{{i % 3}}}"}]
                     for i in range(8)]
    return fine_tuned_copy("thinking", 3e-2, 40, messages=conversations)


def dataset(n: int = 8) -> Dataset:
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"q{i}"}], "solution": f"${i % 3}$", "level": i}
                              for i in range(n)])


def step_seen(completions, trainer_state, **kwargs):
    """A reward function in TRL's documented style: the trainer's optimizer steps so far."""
    return [float(trainer_state.global_step)] * len(completions)


class Recording:
    """A filter that keeps copies of what it is given, then applies `inner`."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __call__(self, samples):
        self.seen.append(copy.deepcopy(samples))
        return self.inner(samples)

    def __repr__(self):
        return f"Recording({self.inner!r})"


def trainer_for(model_dir: Path, run_dir: Path) -> IterativeSFTTrainer:
    config = IterativeSFTConfig(output_dir=str(run_dir / "trainer"), report_to="none", learning_rate=1e-3,
                                per_device_train_batch_size=4, save_strategy="no", seed=1)
    return IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config,
                               AutoTokenizer.from_pretrained(model_dir))


def test_the_loop_scores_with_trls_reward_functions_as_trl_does(tmp_path, thinking_dir):
    functions = [think_format_reward, accuracy_reward, get_soft_overlong_punishment(10, 4), step_seen]
    weights = [0.5, 1.0, 1.0, 0.0]
    recording = Recording(AboveGroupMean())
    loop = ExpertIteration(trainer_for(thinking_dir, tmp_path), SamplingConfig(num_samples=4, max_new_tokens=24,
                                                                             temperature=1.0, seed=1),
                           filter=recording, config=LoopConfig(output_dir=str(tmp_path), rounds=2, step_size=8),
                           reward_funcs=functions, reward_weights=weights)
    history = loop.run(dataset(), eval_prompts=dataset(4))

    for round_index, drawn in enumerate(recording.seen):
        expected = trl_rewards_per_function(functions[:3], drawn)
        got = torch.tensor([[math.nan if s.rewards[n] is None else s.rewards[n] for n in list(s.rewards)[:3]]
                            for s in drawn])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, equal_nan=True)
        steps = history[round_index - 1]["global_step"] if round_index else 0
        assert {s.rewards["step_seen"] for s in drawn} == {float(steps)}  # the trainer's state as scoring began
        sums = trl_weighted_sum(torch.cat([expected, torch.full((len(drawn), 1), float(steps))], dim=1), weights)
        assert [s.score for s in drawn] == pytest.approx(sums.tolist(), abs=1e-6)
        assert len({s.score for s in drawn}) > 1, "the rewards should tell some samples apart"
        eos = AutoTokenizer.from_pretrained(thinking_dir).eos_token_id  # the toy template ends turns with it
        assert {s.stop_token_id for s in drawn if s.finished} == {eos}  # what TRL's completion_ids end with
        assert {s.stop_token_id for s in drawn if not s.finished} <= {None}
        accepted = [json.loads(line) for line in
                    (tmp_path / "accepted" / f"round-{round_index:04d}.jsonl").read_text().splitlines()]
        kept = [s for s in AboveGroupMean()(drawn) if s.finished]
        assert [(row["prompt_index"], row["sample_index"], row["rewards"]) for row in accepted] == [
            (s.prompt_index, s.sample_index, s.rewards) for s in kept]
    assert history[0]["train_samples"] > 0 and history[1]["global_step"] > history[0]["global_step"] > 0
    assert "eval_accuracy" in history[-1]


def test_a_dataset_without_a_prompt_column_stops_before_the_first_round(tmp_path, thinking_dir):
    loop = ExpertIteration(trainer_for(thinking_dir, tmp_path), SamplingConfig(), filter=AboveGroupMean(),
                           config=LoopConfig(output_dir=str(tmp_path)), reward_funcs=[think_format_reward])
    questions = Dataset.from_list([{"question": "q1", "solution": "1"}])
    with pytest.raises(ValueError, match=r"no `prompt` column \(its columns: \['question', 'solution'\]\)"):
        loop.run(questions)
    with pytest.raises(ValueError, match="leave `meta` out"):
        loop.run(dataset(), meta=[{}] * 8)
    assert not any((tmp_path / "rounds").iterdir()) and not (tmp_path / "run_identity.json").exists()


def test_scorer_and_reward_funcs_together_are_refused(tmp_path, thinking_dir):
    with pytest.raises(ValueError, match="both `scorer`"):
        ExpertIteration(trainer_for(thinking_dir, tmp_path), SamplingConfig(), "exact_match", AboveGroupMean(),
                        LoopConfig(output_dir=str(tmp_path)), reward_funcs=[think_format_reward])


def test_the_run_configs_default_filter_with_reward_funcs_needs_no_threshold():
    from itersft.cli import run_config

    assert repr(run_config.build_filter({"reward_funcs": ["trl.rewards:think_format_reward"]})) == "AboveGroupMean()"
    assert repr(run_config.build_filter({"scorer": "exact_match"})) == "Threshold(min_score=1.0)"


def test_the_readmes_show_the_example_config_as_it_is():
    example = (ROOT / "examples" / "grpo_rewards.yaml").read_text()
    for readme in ("README.md", "README.zh-CN.md"):
        blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / readme).read_text(), flags=re.S)
        assert example in blocks, f"{readme} should show examples/grpo_rewards.yaml as it is"


def test_the_example_config_runs_as_written(tmp_path, thinking_dir):
    """`itersft run examples/grpo_rewards.yaml` from the repository root, on the toy chat model."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "itersft.cli.main", "run", "examples/grpo_rewards.yaml",
                             "--model", str(thinking_dir), "--output-dir", str(tmp_path / "run")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["samples_scored"] == m["samples_drawn"] == 128 for m in metrics)
    identity = json.loads((tmp_path / "run" / "run_identity.json").read_text())["identity"]
    assert identity["scorer"] == ("reward_funcs=['trl.rewards:think_format_reward', 'trl.rewards:accuracy_reward'] "
                                  "reward_weights=[0.25, 1.0]")
    assert identity["filter"] == "Compose(AboveGroupMean(), Dedup(normalize=True))"


@pytest.mark.parametrize("change, message", [
    ({"scorer": "exact_match"}, "both `scorer`"),
    ({"reward_weights": [1.0]}, r"`reward_weights` has 1 weight\(s\) but there are 2"),
    ({"reward_funcs": ["trl.rewards:think_format_reward", "no_such_module:reward"]},
     r"`reward_funcs\[1\]` 'no_such_module:reward' could not be imported"),
    ({"reward_funcs": None}, "neither `scorer` nor `reward_funcs`"),
    ({"reward_fns": []}, r"unknown key\(s\) \['reward_fns'\]"),
])
def test_bad_reward_settings_stop_the_command_before_any_model_loads(tmp_path, monkeypatch, change, message):
    """The model is one that does not exist: the error must come first."""
    config = yaml.safe_load((ROOT / "examples" / "grpo_rewards.yaml").read_text())
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    for section in ("prompts", "eval_prompts"):
        config[section]["path"] = str(ROOT / config[section]["path"])
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=message):
        run_command.main(SimpleNamespace(config=str(tmp_path / "run.yaml"), output_dir=str(tmp_path / "run"),
                                         model=str(tmp_path / "no-model-here")))
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]  # made when checked writable, no more
