"""reasoning-gym as a task source (`itersft.tasks.reasoning_gym`), against the installed reasoning-gym itself.

Prompts and meta from a spec, held-out sets that share no question with training, the two scorers
against the task's own `score_answer` (full and partial credit, strict and fallback), and bad specs
refused before any model loads. The loop end to end is in `test_reasoning_gym_loop.py`.

Marked `reasoning_gym` and skipped unless reasoning-gym is installed (`pip install 'itersft[reasoning-gym]'`);
under CI=true such a skip is a failure (tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from itersft.filters import Threshold
from itersft.sampling.samples import Sample
from itersft.scoring.scorers import resolve_scorer, score_samples, validate_meta

pytestmark = [pytest.mark.reasoning_gym,
              pytest.mark.skipif(importlib.util.find_spec("reasoning_gym") is None,
                                 reason="needs reasoning-gym: pip install 'itersft[reasoning-gym]'")]

ARITHMETIC = {"name": "basic_arithmetic", "config": {"min_terms": 2, "max_terms": 2, "max_digits": 1,
                                                     "operators": ["+", "-", "*"], "allow_parentheses": False}}
# One-digit sums only: 100 distinct questions, so sets of a few dozen repeat some by chance.
SUMS = {"name": "basic_arithmetic", "config": {"min_terms": 2, "max_terms": 2, "max_digits": 1, "operators": ["+"],
                                               "allow_parentheses": False, "allow_negation": False}}


def dataset(spec: dict, size: int, seed: int):
    import reasoning_gym

    return reasoning_gym.create_dataset(spec["name"], size=size, seed=seed, **spec.get("config", {}))


def gym_prompts(*args, **kwargs):
    from itersft.tasks.reasoning_gym import gym_prompts

    return gym_prompts(*args, **kwargs)


def score(scorer: str, completions: list[str], meta: list[dict]) -> list:
    """A built-in scorer called as the loop calls it: meta gathered into per-key lists."""
    return resolve_scorer(scorer)([None] * len(completions), completions,
                                  **{key: [row[key] for row in meta] for key in meta[0]})


def test_prompts_are_the_tasks_entries_with_reasoning_gyms_system_prompt():
    from reasoning_gym.utils import SYSTEM_PROMPTS

    built = gym_prompts({**ARITHMETIC, "size": 6, "seed": 3})
    entries = [dataset(ARITHMETIC, 6, 3)[i] for i in range(6)]
    assert built.prompts == [[{"role": "system", "content": SYSTEM_PROMPTS["default"]},
                              {"role": "user", "content": entry["question"]}] for entry in entries]
    assert [row["answer"] for row in built.meta] == [entry["answer"] for entry in entries]
    assert [row["reasoning_gym"]["index"] for row in built.meta] == list(range(6))
    assert json.loads(json.dumps(built.meta)) == built.meta  # JSON as it is: the run identity hashes it


def test_few_shot_examples_show_the_tag_format_and_their_questions_are_never_asked():
    built = gym_prompts({**SUMS, "size": 40, "seed": 0, "few_shot": 2, "system_prompt": None})
    entries = [dataset(SUMS, 42, 0)[i] for i in range(42)]
    examples = [turn for entry in entries[:2] for turn in (
        {"role": "user", "content": entry["question"]},
        {"role": "assistant", "content": f"<answer>{entry['answer']}</answer>"})]
    shown = {entry["question"] for entry in entries[:2]}
    asked = [entry["question"] for entry in entries[2:] if entry["question"] not in shown]
    assert built.dropped_as_examples == 40 - len(asked) == 1  # "Calculate 4 + 1." is drawn again at index 36
    assert [prompt[:4] for prompt in built.prompts] == [examples] * len(asked)
    assert [prompt[4:] for prompt in built.prompts] == [[{"role": "user", "content": q}] for q in asked]


def test_a_held_out_set_drops_every_question_the_training_prompts_hold():
    train = gym_prompts({**SUMS, "size": 64, "seed": 0, "few_shot": 1})
    # Seed 40 draws its entry i as seed 0 draws entry 40 + i: 24 of the 64 are training entries outright.
    held_out = gym_prompts({**SUMS, "size": 64, "seed": 40, "few_shot": 1}, held_out_from=train.prompts)
    seen = {turn["content"] for prompt in train.prompts for turn in prompt if turn["role"] == "user"}
    entries = [dataset(SUMS, 65, 40)[i] for i in range(65)]
    expected = [e["question"] for e in entries[1:] if e["question"] not in {*seen, entries[0]["question"]}]
    assert [prompt[-1]["content"] for prompt in held_out.prompts] == expected
    assert held_out.dropped_as_seen + held_out.dropped_as_examples == 64 - len(expected)
    assert held_out.dropped_as_seen >= 24
    with pytest.raises(ValueError, match="every question was dropped .* at least the training `size`"):
        gym_prompts({**SUMS, "size": 20, "seed": 0, "few_shot": 1}, held_out_from=train.prompts, section="eval_prompts")


def test_the_strict_scorer_is_the_tasks_own_score_answer_on_the_last_answer_tag():
    from reasoning_gym.utils import extract_answer

    built = gym_prompts({**ARITHMETIC, "size": 4, "seed": 0})
    data = dataset(ARITHMETIC, 4, 0)
    gold = [row["answer"] for row in built.meta]
    completions = [f"So <answer>{gold[0]}</answer>",  # full credit
                   f"<answer>7</answer> no, <answer>{gold[1]} apples</answer>",  # the last tag, partial credit
                   f"<answer>{int(gold[2]) + 1}</answer>",  # wrong
                   f"The answer is {gold[3]}."]  # no tag
    expected = [data.score_answer(extract_answer(c), data[i]) for i, c in enumerate(completions[:3])] + [None]
    assert score("reasoning_gym", completions, built.meta) == expected
    assert expected[:3] == [1.0, len(gold[1]) / len(f"{gold[1]} apples"), 0.0]


def test_the_fallback_takes_the_final_answers_number_only_without_a_tag_and_only_for_numeric_answers():
    built = gym_prompts({**ARITHMETIC, "size": 3, "seed": 0})
    gold = [row["answer"] for row in built.meta]
    completions = [f"{gold[0]} + 0 = {gold[0]}.", f"<answer>x</answer> so {gold[1]}", "no number here"]
    assert score("reasoning_gym_fallback", completions, built.meta) == [1.0, 0.0, None]
    assert score("reasoning_gym", completions, built.meta) == [None, 0.0, None]
    # The final answer by `numeric`'s rule (itersft.scoring.final_answer): a box wins over later numbers,
    # and a hedge is never right, even when its last value is.
    boxed_then_more, hedged = f"\\boxed{{{gold[0]}}}, checked in 99 steps", f"{int(gold[0]) + 1} or {gold[0]}"
    assert score("reasoning_gym_fallback", [boxed_then_more, hedged], [built.meta[0]] * 2) == [1.0, 0.0]

    words = gym_prompts({"name": "spell_backward", "size": 1, "seed": 0})
    reversed_word = words.meta[0]["answer"]
    assert score("reasoning_gym_fallback", [reversed_word], words.meta) == [None]  # not a number: tags only
    assert score("reasoning_gym_fallback", [f"<answer>{reversed_word}</answer>"], words.meta) == [1.0]


def test_partial_credit_is_kept_apart_from_a_right_answer():
    """gsm_symbolic scores a wrong number 0.01: a sample is kept only at a full score."""
    built = gym_prompts({"name": "gsm_symbolic", "size": 1, "seed": 0})
    scores = score("reasoning_gym", ["<answer>999999</answer>", f"<answer>{built.meta[0]['answer']}</answer>"],
                   built.meta * 2)
    assert scores == [0.01, 1.0]
    samples = [Sample(prompt="q", completion="", prompt_index=0, sample_index=i, score=s) for i, s in enumerate(scores)]
    assert Threshold(1.0)(samples) == [samples[1]]


def test_entries_are_rebuilt_from_the_spec_not_read_back_from_json():
    """rearc's metadata holds tuples: after a JSON round trip its own gold answer scores 0.05; rebuilt, 1.0."""
    built = gym_prompts({"name": "rearc", "size": 1, "seed": 0})
    data = dataset({"name": "rearc"}, 1, 0)
    entry = data[0]
    assert data.score_answer(entry["answer"], json.loads(json.dumps(entry))) < 1.0
    assert score("reasoning_gym", [f"<answer>{entry['answer']}</answer>"], json.loads(json.dumps(built.meta))) == [1.0]


def test_a_weighted_mix_scores_each_question_by_its_own_task():
    import reasoning_gym
    from reasoning_gym.composite import DatasetSpec

    mix = [{"name": "chain_sum", "weight": 1, "config": {"max_terms": 2, "max_digits": 1}},
           {"name": "spell_backward", "weight": 3}]
    built = gym_prompts({"datasets": mix, "size": 40, "seed": 5})
    composite = reasoning_gym.create_dataset("composite", size=40, seed=5, datasets=[
        DatasetSpec(m["name"], m["weight"], m.get("config", {})) for m in mix])
    sources = [composite[i]["metadata"]["source_dataset"] for i in range(40)]
    assert [p[-1]["content"] for p in built.prompts] == [composite[i]["question"] for i in range(40)]
    assert 0 < sources.count("chain_sum") < sources.count("spell_backward")
    tagged = [f"<answer>{row['answer']}</answer>" for row in built.meta]
    assert score("reasoning_gym", tagged, built.meta) == [1.0] * 40
    wrong = [f"<answer>{row['answer']}0</answer>" for row in built.meta]
    assert score("reasoning_gym", wrong, built.meta) == [composite.score_answer(f"{composite[i]['answer']}0",
                                                                                composite[i]) for i in range(40)]


def test_scoring_in_forked_workers_gives_what_the_scorer_gives_in_process():
    built = gym_prompts({**ARITHMETIC, "size": 4, "seed": 1})
    completions = [f"<answer>{row['answer']}</answer>" if i % 2 else "It is 3." for i, row in enumerate(built.meta)]
    samples = [Sample(prompt=p, completion=c, prompt_index=i, sample_index=0, meta=m)
               for i, (p, c, m) in enumerate(zip(built.prompts, completions, built.meta))]
    score_samples(resolve_scorer("reasoning_gym_fallback"), samples)  # default: per sample, forked workers
    assert [s.score for s in samples] == score("reasoning_gym_fallback", completions, built.meta)


def test_an_answer_that_the_rebuilt_entry_does_not_have_is_an_error():
    built = gym_prompts({**ARITHMETIC, "size": 1, "seed": 0})
    changed = [{**built.meta[0], "answer": "not the gold"}]
    with pytest.raises(ValueError, match="regenerated entry 0 .* not the meta's 'not the gold'"):
        score("reasoning_gym", ["<answer>1</answer>"], changed)


# ---- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ({"name": "basic_arithmetc", "size": 4, "seed": 0},
     "`name` 'basic_arithmetc' is not a reasoning-gym task; close names: basic_arithmetic, bitwise_arithmetic"),
    ({"name": "basic_arithmetic", "size": 4, "seed": 0, "config": {"max_term": 2}},
     "`config.max_term` is not a setting of basic_arithmetic; did you mean max_terms, min_terms? accepted: min_terms"),
    ({"name": "chain_sum", "size": 4, "seed": 0, "config": {"seed": 3}}, "`config.seed`: set `seed` at the top"),
    ({"name": "chain_sum", "size": 4}, "`seed` is required"),
    ({"name": "chain_sum", "size": 0, "seed": 0, "few_shot": -1, "system_prompt": "dflt"},
     "`size` must be an int >= 1, got 0.\n- `few_shot` must be an int >= 0, got -1.\n- `system_prompt` must be one of"),
    ({"name": "chain_sum", "size": 4, "seed": 0, "sise": 3}, "`sise` is not a setting; did you mean size?"),
    ({"datasets": [{"name": "leg_countin", "weight": 1}, {"name": "chain_sum", "weight": 0}], "size": 4, "seed": 0},
     "`datasets[0].name` 'leg_countin' is not a reasoning-gym task; close names: leg_counting"),
    ({"name": "composite", "size": 4, "seed": 0}, "a mix of tasks is given as `datasets:"),
    ({"name": "chain_sum", "datasets": [], "size": 4, "seed": 0}, "either `name` (one task) or `datasets`"),
    ({"name": "basic_arithmetic", "size": 4, "seed": 0, "config": {"min_terms": 3, "max_terms": 2}},
     "reasoning-gym refused the configuration: max_terms must be >= min_terms"),
])
def test_a_bad_spec_is_one_error_naming_what_to_change(spec, expected):
    with pytest.raises(ValueError) as raised:
        gym_prompts(spec)
    assert expected in str(raised.value)


def test_a_mix_reports_every_bad_entry_at_once():
    with pytest.raises(ValueError) as raised:
        gym_prompts({"datasets": [{"name": "leg_countin", "weight": 1}, {"name": "chain_sum", "weight": 0}],
                     "size": 4, "seed": 0})
    assert "`datasets[1].weight` must be a finite number > 0, got 0." in str(raised.value)


def test_meta_without_a_reasoning_gym_reference_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match=r"row 1: meta `reasoning_gym` must be \{task, index\}"):
        validate_meta("reasoning_gym", [gym_prompts({**ARITHMETIC, "size": 1, "seed": 0}).meta[0], {"answer": "3"}], 2)
