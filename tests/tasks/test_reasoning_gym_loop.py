"""One reasoning-gym task end to end through `itersft run` on the toy model (see `tests/conftest.py`).

The run config takes its training and held-out questions from reasoning-gym (`prompts: {reasoning_gym:
...}`, another seed for `eval_prompts`) and scores with `scorer: reasoning_gym_fallback`, the task's own
`score_answer` on the `<answer>` tag or, without one, the last number. The toy model is first taught to
answer every gcd question "1" (a tag takes more updates than a test should spend), so the loop has
right and wrong answers to tell apart: right exactly where the gcd is 1.
"""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
import yaml

from itersft.cli import run as run_command

pytestmark = [pytest.mark.reasoning_gym,
              pytest.mark.skipif(importlib.util.find_spec("reasoning_gym") is None,
                                 reason="needs reasoning-gym: pip install 'itersft[reasoning-gym]'")]

GCD = {"min_numbers": 2, "max_numbers": 2, "min_value": 10, "max_value": 99}
# Seeds chosen so that both sets hold questions whose gcd is 1 (4 of 12 and 2 of the 6 held out) and others.
TRAIN = {"name": "gcd", "size": 12, "seed": 46, "config": GCD, "system_prompt": None}
HELD_OUT = {**TRAIN, "size": 8, "seed": 56}  # entries 10 and 11 of seed 46 are its entries 0 and 1


def entries(seed: int, size: int) -> list[dict]:
    import reasoning_gym

    data = reasoning_gym.create_dataset("gcd", size=size, seed=seed, **GCD)
    return [data[i] for i in range(size)]


@pytest.fixture(scope="module")
def answers_one_dir(fine_tuned_copy):
    """The toy model after 12 updates on gcd questions (seed 100, never asked below) answered "1"."""
    conversations = [[{"role": "user", "content": entry["question"]}, {"role": "assistant", "content": "1"}]
                     for entry in entries(100, 8)]
    return fine_tuned_copy("answers_one", 5e-2, 12, messages=conversations)


def test_itersft_run_trains_on_the_answers_reasoning_gym_scores_right(tmp_path, answers_one_dir):
    import reasoning_gym

    run = tmp_path / "run"
    config = {"model": str(answers_one_dir), "output_dir": str(run), "scorer": "reasoning_gym_fallback",
              "prompts": {"reasoning_gym": TRAIN}, "eval_prompts": {"reasoning_gym": HELD_OUT},
              "sampling": {"num_samples": 2, "max_new_tokens": 24, "temperature": 1.0},
              "loop": {"rounds": 1}, "training": {"learning_rate": 1e-3}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert run_command.main(SimpleNamespace(config=str(tmp_path / "run.yaml"), output_dir=None, model=None)) == 0

    train = entries(46, 12)
    held_out = [entry for entry in entries(56, 8) if entry["question"] not in {e["question"] for e in train}]
    identity = json.loads((run / "run_identity.json").read_text())["identity"]
    assert identity["prompts.count"] == 12 and identity["eval_prompts.count"] == len(held_out) == 6
    assert identity["scorer"] == "reasoning_gym_fallback"

    metrics = json.loads((run / "metrics.jsonl").read_text())
    accepted = [json.loads(line) for line in (run / "accepted" / "round-0000.jsonl").read_text().splitlines()]
    assert metrics["samples_drawn"] == 24 and metrics["samples_kept"] == len(accepted) > 0
    assert metrics["samples_kept"] < metrics["samples_scored"]  # wrong answers ("1" to a gcd of 3, "11") are scored 0
    task = reasoning_gym.create_dataset("gcd", size=12, seed=46, **GCD)
    for sample in accepted:
        entry = train[sample["meta"]["reasoning_gym"]["index"]]
        assert sample["prompt"] == [{"role": "user", "content": entry["question"]}]
        assert sample["meta"]["answer"] == entry["answer"] == "1" and sample["completion"].strip() == "1"
        assert sample["score"] == task.score_answer(sample["completion"].strip(), entry) == 1.0
    assert metrics["train_samples"] == len(accepted) and metrics["train_updates"] > 0
    # Greedy, the model answers "1" to every held-out question: right where the gcd is 1.
    assert metrics["eval_accuracy"] == sum(entry["answer"] == "1" for entry in held_out) / len(held_out) == 2 / 6
    sources = json.loads((run / "run_identity.json").read_text())["sources"]
    assert sources["eval_prompts"] == f"reasoning-gym {json.dumps(HELD_OUT, sort_keys=True)}"


def _run_without_a_model(tmp_path, prompts, sampling=None):
    """`itersft run` whose `model` does not exist: an error about it would mean a model load was tried."""
    config = {"model": str(tmp_path / "no-such-model"), "output_dir": str(tmp_path / "run"), "scorer": "reasoning_gym",
              "prompts": prompts, "sampling": sampling or {}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return run_command.main(SimpleNamespace(config=str(tmp_path / "run.yaml"), output_dir=None, model=None))


def test_an_unknown_task_or_config_key_is_refused_before_the_model_loads(tmp_path):
    with pytest.raises(ValueError) as raised:
        _run_without_a_model(tmp_path, {"reasoning_gym": {**TRAIN, "name": "gdc"}})
    assert "`name` 'gdc' is not a reasoning-gym task; close names: gcd" in str(raised.value)
    with pytest.raises(ValueError, match=r"`config.max_valu` is not a setting of gcd; did you mean max_value, min_"):
        _run_without_a_model(tmp_path, {"reasoning_gym": {**TRAIN, "config": {"max_valu": 9}}})
    with pytest.raises(ValueError, match=r"`prompts`: unknown key\(s\) \['split'\]; accepted with `reasoning_gym`"):
        _run_without_a_model(tmp_path, {"reasoning_gym": TRAIN, "split": "test"})


def test_a_reasoning_gym_set_takes_the_keys_every_source_shares_but_gives_no_labelled_pairs():
    from itersft.cli import run_config

    prompts, meta = run_config.read_prompts("prompts", {"reasoning_gym": TRAIN, "limit": 3, "meta_fields": ["answer"]})
    assert [prompt[-1]["content"] for prompt in prompts] == [entry["question"] for entry in entries(46, 3)]
    assert meta == [{"answer": entry["answer"]} for entry in entries(46, 3)]
    with pytest.raises(ValueError, match=r"^`labelled`: a `reasoning_gym` source gives questions without completions"):
        run_config.read_labelled({"reasoning_gym": TRAIN})


def test_a_sampling_system_prompt_that_the_tasks_own_would_override_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"`sampling.system_prompt` is set, but `prompts.reasoning_gym` gives"):
        _run_without_a_model(tmp_path, {"reasoning_gym": {**TRAIN, "system_prompt": "default"}},
                             sampling={"system_prompt": "Be brief."})


def test_held_out_accuracy_is_reported_strictly_and_with_the_fallback_from_one_generation(answers_one_dir):
    """`evaluate_prompts(extra_scorers=...)`: the untagged "1" counts with the fallback only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from itersft.loop.evaluation import evaluate_prompts
    from itersft.sampling.sampler import SamplingConfig
    from itersft.tasks.reasoning_gym import gym_prompts

    held_out = gym_prompts(HELD_OUT)
    model = AutoModelForCausalLM.from_pretrained(answers_one_dir)
    tokenizer = AutoTokenizer.from_pretrained(answers_one_dir)
    metrics = evaluate_prompts(model, tokenizer, SamplingConfig(max_new_tokens=8), "reasoning_gym_fallback",
                               held_out.prompts, held_out.meta, pass_score=1.0, num_samples=0, round_index=0,
                               extra_scorers={"strict": "reasoning_gym"})
    ones = sum(row["answer"] == "1" for row in held_out.meta) / len(held_out.meta)
    assert 0 < ones < 1
    assert (metrics["eval_accuracy"], metrics["eval_accuracy_strict"]) == (ones, 0.0)


def test_the_example_config_reads_disjoint_training_and_held_out_questions():
    """examples/reasoning_gym.yaml, as `itersft run` reads it before any model loads."""
    from pathlib import Path

    from itersft.cli import run_config

    config = run_config.load_config(Path(__file__).parents[2] / "examples" / "reasoning_gym.yaml")
    prompts, meta = run_config.read_prompts("prompts", config["prompts"])
    eval_prompts, eval_meta = run_config.read_prompts("eval_prompts", config["eval_prompts"], held_out_from=prompts)
    assert len(prompts) == 256 and 0 < len(eval_prompts) <= 192
    assert not {p[-1]["content"] for p in prompts} & {p[-1]["content"] for p in eval_prompts}
    # No system turn: the sampling settings add theirs.
    assert all(turn["role"] == "user" for prompt in prompts for turn in prompt)
    assert run_config.build_scoring(config) == ("reasoning_gym_fallback", None)
    assert run_config.build_sampling(config).system_prompt.startswith("Answer the question.")
    assert {"answer", "reasoning_gym"} <= set(meta[0]) and {"answer", "reasoning_gym"} <= set(eval_meta[0])
