"""Reward functions in TRL's GRPO convention, checked against TRL 1.16's own `_calculate_rewards`.

The reference (`trl_reference`) runs TRL's method on the same samples; each test compares what
`score_samples` records (`Sample.rewards`, `Sample.score`, `Sample.reward_logs`) with it, in the
scoring pool (chunks of samples per worker call) and in process. Timeouts here are about a second,
and the functions that hang sleep far longer, so no assertion depends on this machine's speed.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from transformers import TrainerState
from trl.rewards import (
    accuracy_reward,
    get_cosine_scaled_reward,
    get_repetition_penalty_reward,
    get_soft_overlong_punishment,
    reasoning_accuracy_reward,
    think_format_reward,
)

from itersft.sampling.samples import Sample
from itersft.scoring.pool import ScorerOutputError, ScoringOptions
from itersft.scoring.report import stop_if_every_sample_failed
from itersft.scoring.reward_functions import RewardFunctions
from itersft.scoring.scorer_choice import choose_scorer
from itersft.scoring.scorers import score_samples, validate_meta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_reference import trl_inputs, trl_rewards_per_function, trl_weighted_sum  # noqa: E402

HANG = 10_000
POOL = ScoringOptions(timeout=20, workers=2)
IN_PROCESS = ScoringOptions(timeout=None, in_process=True)
COMPLETIONS = [r"<think>2+2</think> \boxed{4}", r"\boxed{4}", r"<think>no</think> \boxed{5}", "<think>a</think>",
               r"It is \boxed{\frac{1}{2}}", "<think><think>x</think> 4"]


def chat_samples(solutions=(r"$4$", r"$\frac{1}{2}$", "not math"), k=6):
    """k samples for each of three conversational prompts, each prompt with a `solution` and a `level` column."""
    return [Sample(prompt=[{"role": "system", "content": "Think first."}, {"role": "user", "content": f"q{p}"}],
                   completion=COMPLETIONS[j % len(COMPLETIONS)], prompt_index=p, sample_index=j,
                   completion_ids=list(range(3 + 2 * j)), stop_token_id=2 if j % 3 else None,
                   meta={"solution": solution, "level": p})
            for p, solution in enumerate(solutions) for j in range(k)]


def string_samples():
    return [Sample(prompt=f"What is {p}+{p}?", completion=c, prompt_index=p, sample_index=j,
                   completion_ids=[5] * (j + 1), stop_token_id=1, meta={"solution": f"${2 * p}$"})
            for p in range(2) for j, c in enumerate(COMPLETIONS)]


def assert_matches_trl(samples, functions, weights, reference_functions=None):
    """Our per-function rewards and weighted sums equal TRL's for `samples` (scored already)."""
    expected = trl_rewards_per_function(reference_functions or functions, samples)
    names = list(samples[0].rewards)
    got = torch.tensor([[math.nan if s.rewards[n] is None else s.rewards[n] for n in names] for s in samples])
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=0, atol=1e-6)
    total = trl_weighted_sum(expected, weights)
    for sample, reference in zip(samples, total.tolist()):
        if math.isnan(reference):
            assert sample.score is None
        else:
            assert sample.score == pytest.approx(reference, abs=1e-6)


TRL_FUNCTIONS = [think_format_reward, accuracy_reward, get_soft_overlong_punishment(8, 4),
                 get_repetition_penalty_reward(2, -1.0), get_cosine_scaled_reward(max_len=10)]


@pytest.mark.parametrize("options", [POOL, IN_PROCESS], ids=["pool", "in_process"])
def test_trls_own_reward_functions_give_what_trl_computes(options):
    """trl.rewards as shipped: math-verify, None for a solution that does not parse, completion ids with the
    stop token (the overlong and cosine rewards count it), weights."""
    weights = [1.0, 2.0, 0.5, 0.25, 1.5]
    samples = chat_samples()
    report = score_samples(RewardFunctions(TRL_FUNCTIONS, weights), samples, options=options)
    assert_matches_trl(samples, TRL_FUNCTIONS, weights)
    assert report.errors == report.timed_out == 0
    assert {s.rewards["accuracy_reward"] for s in samples if s.meta["solution"] == "not math"} == {None}
    assert samples[0].rewards == {"think_format_reward": 1.0, "accuracy_reward": 1.0,
                                  "soft_overlong_punishment_reward": 0.0, "repetition_penalty_reward": 0.0,
                                  "cosine_scaled_reward": pytest.approx(0.5 + 0.25 * (1 + math.cos(0.3 * math.pi)))}


def test_reasoning_accuracy_reward_and_string_prompts():
    """String prompts get string completions: a function reading `completion[0]["content"]` fails on every
    sample there, as in TRL; one written for strings works."""

    def length(completions, **_):
        return [float(len(c)) for c in completions]

    samples = string_samples()
    score_samples(RewardFunctions([length]), samples, options=POOL)
    assert_matches_trl(samples, [length], [1.0])
    chat = chat_samples()
    reasoning = functools.partial(reasoning_accuracy_reward, reasoning_delimiters=["</think>"])
    score_samples(RewardFunctions([reasoning]), chat, options=POOL)
    assert_matches_trl(chat, [reasoning], [1.0])
    assert chat[0].rewards == {"reasoning_accuracy_reward": 1.0}  # partials keep the function's name, as in TRL


class Echo:
    """A reward function that records every argument it gets (in this process) and returns a reward that
    depends on all of one sample's arguments, so equal rewards mean equal arguments in a worker too."""

    __name__ = "echo"

    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        n = len(kwargs["prompts"])
        columns = sorted(k for k in kwargs if k not in ("prompts", "completions", "completion_ids", "trainer_state",
                                                          "log_extra", "log_metric"))
        return [float(zlib.crc32(repr((kwargs["prompts"][i], kwargs["completions"][i], kwargs["completion_ids"][i],
                                       [(c, kwargs[c][i]) for c in columns],
                                       kwargs["trainer_state"].global_step)).encode()) % 1_000_003) for i in range(n)]


@pytest.mark.parametrize("make", [chat_samples, string_samples], ids=["conversational", "standard"])
def test_each_call_gets_exactly_trls_arguments(make):
    """Keyword arguments only: prompts, completions, completion_ids, every other column (None where a prompt
    lacks it; TRL takes the columns of the first row, here of any), trainer_state, log_extra, log_metric."""
    samples = make()
    samples[1].meta["only_here"] = 7
    ours, theirs = Echo(), Echo()
    state = TrainerState(global_step=12)
    functions = RewardFunctions([ours])
    functions.bind(type("Trainer", (), {"state": state, "args": None})())
    score_samples(functions, samples, options=IN_PROCESS)
    trl_rewards_per_function([theirs], samples, trainer_state=state)
    (got,), (expected,) = ours.calls, theirs.calls
    assert set(got) == set(expected) | {"only_here"}
    for key in expected:
        if key in ("log_extra", "log_metric"):
            assert callable(got[key])
        elif key == "trainer_state":
            assert got[key] is state
        else:
            assert got[key] == expected[key], key
    assert got["only_here"] == [None, 7] + [None] * (len(samples) - 2)


def test_the_pool_passes_the_same_arguments_in_chunks():
    """Through the worker pool (chunks of 5 samples): the rewards, functions of every argument, equal TRL's."""
    samples = chat_samples()
    echo = Echo()
    functions = RewardFunctions([echo], chunk_size=5)
    functions.bind(type("Trainer", (), {"state": TrainerState(global_step=3), "args": None})())
    score_samples(functions, samples, options=POOL)
    expected = trl_rewards_per_function([Echo()], samples, trainer_state=TrainerState(global_step=3))
    assert [s.rewards["echo"] for s in samples] == expected[:, 0].tolist()


def test_none_is_left_out_of_the_sum_and_a_sample_no_function_scored_is_unscorable():
    def odd_only(completions, level, **_):
        return [1.0 if lv % 2 else None for lv in level]

    def first_prompt_only(completions, level, **_):
        return [2.0 if lv == 0 else None for lv in level]

    samples = chat_samples()
    report = score_samples(RewardFunctions([odd_only, first_prompt_only], [1.0, 3.0]), samples, options=POOL)
    assert_matches_trl(samples, [odd_only, first_prompt_only], [1.0, 3.0])
    assert {s.score for s in samples if s.prompt_index == 2} == {None}
    assert report.unscorable == sum(s.prompt_index == 2 for s in samples) and report.invalid == 0


async def async_length(completions, **_):
    return [float(len(c[0]["content"])) for c in completions]


class AsyncFormat:
    __name__ = "async_format"

    async def __call__(self, completions, **_):
        return [float(c[0]["content"].startswith("<think>")) for c in completions]


@pytest.mark.parametrize("options", [POOL, IN_PROCESS], ids=["pool", "in_process"])
def test_async_functions_and_async_callable_objects(options):
    functions = [async_length, AsyncFormat(), think_format_reward]
    samples = chat_samples()
    score_samples(RewardFunctions(functions, [0.5, 1.0, -1.0]), samples, options=options)
    assert_matches_trl(samples, functions, [0.5, 1.0, -1.0])


@pytest.mark.parametrize("options, calls", [(POOL, 6), (IN_PROCESS, 18)], ids=["pool", "in_process"])
def test_log_extra_and_log_metric_are_kept(options, calls):
    """accuracy_reward logs its parsed answers with log_extra, as TRL's completions table holds them; an async
    function's log_metric values are averaged over its calls (chunks of 6 in the pool, one call in process)."""

    async def with_metric(completions, log_metric, **_):
        log_metric("length", float(len(completions)))
        return [0.0] * len(completions)

    samples = chat_samples()
    functions = RewardFunctions([accuracy_reward, with_metric], chunk_size=6)
    score_samples(functions, samples, options=options)
    logged = {}
    trl_rewards_per_function([accuracy_reward], samples, logged=logged)
    assert set(logged) == {"solution", "gold_parsed", "answer_parsed"}
    for column, values in logged.items():
        assert [s.reward_logs[column] for s in samples] == values
    assert functions.metrics == {"length": float(calls)}


def crash_hang_or_raise(completions, **_):
    """0.5, except: "<think>a</think>" kills its worker, r"\\boxed{4}" hangs, "<think><think>..." raises."""
    contents = [c[0]["content"] for c in completions]
    if "<think>a</think>" in contents:
        os._exit(3)
    if r"\boxed{4}" in contents:
        time.sleep(HANG)
    if any(c.startswith("<think><think>") for c in contents):
        raise KeyError("no such thing")
    return [0.5] * len(contents)


def test_a_chunk_that_fails_is_scored_again_one_sample_at_a_time(caplog):
    """A crash, a hang and an exception each cost the sample that caused it, for that function only."""
    samples = chat_samples(k=6)
    report = score_samples(RewardFunctions([crash_hang_or_raise, think_format_reward], chunk_size=6), samples,
                           options=ScoringOptions(timeout=2, workers=2))
    by_completion = {s.completion: s.rewards["crash_hang_or_raise"] for s in samples}
    assert by_completion == {COMPLETIONS[0]: 0.5, COMPLETIONS[1]: 0.0, COMPLETIONS[2]: 0.5, COMPLETIONS[3]: None,
                             COMPLETIONS[4]: 0.5, COMPLETIONS[5]: None}
    assert [s.rewards["think_format_reward"] for s in samples] == trl_rewards_per_function(
        [think_format_reward], samples)[:, 0].tolist()
    assert (report.errors, report.timed_out) == (6, 3)  # per prompt: a crash, an exception; a hang (0.0)
    assert "crash_hang_or_raise" in report.first_error
    assert any("failed on 9 of 18 samples" in r.getMessage() for r in caplog.records)


def test_a_function_that_fails_on_every_sample_stops_the_run_even_when_another_scores_them():
    def broken(completions, missing_column, **_):
        return [1.0] * len(completions)

    samples = chat_samples()
    functions = RewardFunctions([think_format_reward, broken])
    report = score_samples(functions, samples, options=POOL)
    assert all(s.score is not None for s in samples)  # think_format_reward scored every one
    with pytest.raises(RuntimeError, match="failed on all 18 samples.*reward function broken: TypeError"):
        stop_if_every_sample_failed(functions.__name__, report, report.failed, len(samples), "round 0", 20)


@pytest.mark.parametrize("options", [POOL, IN_PROCESS], ids=["pool", "in_process"])
@pytest.mark.parametrize("output, message", [
    (lambda n: [1.0] * (n + 1), r"reward function bad returned \d+ scores for \d+ samples"),
    (lambda n: ["1.0"] * n, r"reward function bad returned '1.0' \(a str\) as the score of completion 0"),
    (lambda n: {"a": 1.0}, r"reward function bad must return a list .* got dict"),
])
def test_a_bad_output_raises_naming_the_function_the_value_and_a_sample(options, output, message):
    def bad(completions, **_):
        return output(len(completions))

    with pytest.raises(ScorerOutputError, match=message + r".*on the sample with prompt_index=0, sample_index=0"):
        score_samples(RewardFunctions([bad]), chat_samples(), options=options)


def test_log_extra_must_log_one_value_per_completion():
    def short_log(completions, log_extra, **_):
        log_extra("note", ["x"])
        return [0.0] * len(completions)

    with pytest.raises(ScorerOutputError, match="logged 1 values for the column 'note'.*for 6 completions"):
        score_samples(RewardFunctions([short_log], chunk_size=6), chat_samples(), options=POOL)


def test_names_follow_trl_and_repeats_are_told_apart():
    functions = RewardFunctions([think_format_reward, get_soft_overlong_punishment(8, 4),
                                 get_soft_overlong_punishment(16, 4), lambda completions, **_: [0.0]])
    assert functions.names == ["think_format_reward", "soft_overlong_punishment_reward",
                               "soft_overlong_punishment_reward_2", "<lambda>"]


def test_import_paths_and_the_description_for_the_run_identity():
    functions = RewardFunctions(["trl.rewards:think_format_reward", accuracy_reward], [1, 0.5])
    assert functions.functions[0] is think_format_reward
    assert functions.describe() == ("reward_funcs=['trl.rewards:think_format_reward', "
                                    "'trl.rewards.accuracy_rewards:accuracy_reward'] reward_weights=[1.0, 0.5]")


@pytest.mark.parametrize("arguments, message", [
    (([think_format_reward, accuracy_reward], [1.0]),
     r"`reward_weights` has 1 weight\(s\) but there are 2 reward function\(s\)"),
    (([think_format_reward], [True]), "`reward_weights` must be a list of finite numbers"),
    (([think_format_reward], [math.inf]), "`reward_weights` must be a list of finite numbers"),
    (([think_format_reward, 3],), r"`reward_funcs\[1\]` is 3, a int, which is not callable"),
    ((["trl.rewards:no_such_reward"],), r"`reward_funcs\[0\]` 'trl.rewards:no_such_reward' could not be imported"),
    ((["no_such_package.rewards:f"],), r"could not be imported \(ModuleNotFoundError"),
    (([],), "`reward_funcs` is empty"),
])
def test_bad_reward_functions_are_refused_with_every_problem_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        RewardFunctions(*arguments)


@pytest.mark.parametrize("scorer, reward_funcs, weights, message", [
    ("exact_match", [think_format_reward], None, "both `scorer` .* and `reward_funcs` are given"),
    (None, None, None, "neither `scorer` nor `reward_funcs`"),
    ("exact_match", None, [1.0], r"`reward_weights` \(\[1.0\]\) go with `reward_funcs`"),
    (None, RewardFunctions([think_format_reward]), [1.0], "a RewardFunctions holds its own weights"),
])
def test_choosing_the_scorer_refuses_contradictions(scorer, reward_funcs, weights, message):
    with pytest.raises(ValueError, match=message):
        choose_scorer(scorer, reward_funcs, weights)


def test_a_column_named_like_an_argument_is_refused_before_scoring():
    with pytest.raises(ValueError, match="column `completions` has the name of an argument"):
        validate_meta(RewardFunctions([think_format_reward]), [{"completions": 1, "completion": "x"}], 1)
    validate_meta(RewardFunctions([think_format_reward]), [{"completion": "left out, as TRL does"}], 1)


def test_a_reward_model_that_does_not_load_is_named(tmp_path):
    with pytest.raises(ValueError, match="reward model .*nothing-here.* could not be loaded"):
        RewardFunctions([str(tmp_path / "nothing-here")])


def test_reward_calls_see_the_prompt_and_completion_as_trl_builds_them():
    """The inputs TRL builds for the reference are what a reward function sees (the reference is sound)."""
    samples = chat_samples()[:2]
    _, prompts, completions, ids = trl_inputs(samples)
    assert completions[0] == [{"role": "assistant", "content": COMPLETIONS[0]}]
    assert ids == [[0, 1, 2], [0, 1, 2, 3, 4, 2]]  # the stop token follows, where one ended the completion
