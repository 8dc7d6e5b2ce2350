"""Scorers and `score_samples`: numeric extraction cases, per-sample fallback, validation of results.

`score_samples` runs in two ways (forked workers with a timeout, the default; or in process, one batch
call): the result contract is tested in both (`MODES`). Scorers that record their calls in a closure
only work in process, since a worker's memory is its own.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from itersft.sampling.samples import Sample
from itersft.scoring.code_verifier import code
from itersft.scoring.final_answer import final_answer
from itersft.scoring.math_verifier import math_answer
from itersft.scoring.pool import ScoringOptions
from itersft.scoring.report import ScorerFailedError, stop_if_every_sample_failed
from itersft.scoring.scorers import (
    BUILTIN_SCORERS,
    ScoringReport,
    exact_match,
    extract_number,
    final_number_text,
    numeric,
    numeric_answer,
    regex_match,
    resolve_scorer,
    score_samples,
    validate_meta,
)
from itersft.tasks.reasoning_gym import reasoning_gym_fallback, reasoning_gym_strict

IN_PROCESS = ScoringOptions(timeout=None, in_process=True)
MODES = pytest.mark.parametrize("options", [IN_PROCESS, ScoringOptions(timeout=10, workers=2)],
                                ids=["in_process", "workers"])


def make(completions, answers=None, prompt="p"):
    return [
        Sample(
            prompt=prompt,
            completion=c,
            prompt_index=i,
            sample_index=0,
            meta={} if answers is None else {"answer": answers[i]},
        )
        for i, c in enumerate(completions)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", 42.0),
        ("first 3 then 7", 7.0),
        ("It costs $1,234 in total", 1234.0),
        ("1,234,567.89", 1234567.89),
        ("temperature is -5 degrees", -5.0),
        ("5-3=2", 2.0),
        ("see pages 10-12", 12.0),  # a hyphen between numbers is not a minus sign
        ("x = 3.25", 3.25),
        ("half is .5", 0.5),
        ("list: 1,2,3", 3.0),
        ("step 1: 48/2 = 24\n#### 72", 72.0),
        ("#### 72\nThat is why 10 apples", 72.0),  # the marked answer wins over later numbers
        ("#### -1,000", -1000.0),
        ("#### none\nbut 9", 9.0),  # marker without a number: fall back to the last number
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("It costs $1,234 in total", "1234"), ("#### -1,000\nor 7", "-1000"), ("x = 3.50", "3.50"),
    ("\\boxed{12.0} then 5", "12.0"), ("\\boxed{x}", None),
    ("so 123456789012345678901", "123456789012345678901"),  # exact, where a float would round it
])
def test_final_number_text_is_the_final_answers_number_as_written(text, expected):
    assert final_number_text(final_answer(text)) == expected


def test_exact_match_strips_and_stringifies():
    assert exact_match(["p"] * 3, [" yes\n", "no", "7"], answer=["yes", "yes", 7]) == [1.0, 0.0, 1.0]


def test_exact_match_rejects_misaligned_answer():
    with pytest.raises(ValueError, match="`answer`"):
        exact_match(["p", "p"], ["a", "b"], answer=["a"])


def test_numeric_answer():
    completions = ["so 1,234", "it is 12", "no number", "#### 0.1", "3.0000001", "-7"]
    answers = [1234, "12.0", 5, "x #### 0.1", 3, "-7"]
    scores = numeric_answer(["p"] * 6, completions, answer=answers)
    assert scores == [1.0, 1.0, None, 1.0, 1.0, 1.0]
    assert numeric_answer(["p"], ["3.0001"], answer=[3]) == [0.0]  # outside relative 1e-6
    assert numeric_answer(["p"], ["1e-12 is 0.000000000001"], answer=[0]) == [0.0]


def test_numeric_answer_rejects_reference_without_number():
    with pytest.raises(ValueError, match="no number"):
        numeric_answer(["p"], ["1"], answer=["unknown"])


def test_regex_match_with_and_without_group():
    plain = regex_match(r"\bfinal\b")
    assert plain(["p", "p"], ["the final one", "finally"]) == [1.0, 0.0]
    grouped = regex_match(r"Answer: (\w+)")
    completions = ["Answer: Paris", "Answer: Rome", "Paris"]
    assert grouped(["p"] * 3, completions, answer=["Paris", "Paris", "Paris"]) == [1.0, 0.0, 0.0]
    assert grouped(["p"] * 3, completions) == [1.0, 1.0, 0.0]  # no answer: format check only
    assert "Answer" in grouped.__name__


def test_regex_match_rejects_bad_pattern():
    with pytest.raises(ValueError, match="`pattern`"):
        regex_match("(unclosed")


def test_resolve_scorer_forms():
    assert resolve_scorer("numeric_answer") is numeric_answer
    assert resolve_scorer(exact_match) is exact_match
    assert resolve_scorer("itersft.scoring.scorers:exact_match") is exact_match
    assert resolve_scorer("math:isclose") is math.isclose
    assert BUILTIN_SCORERS == {"exact_match": exact_match, "numeric": numeric, "numeric_answer": numeric,
                               "math": math_answer, "code": code, "reasoning_gym": reasoning_gym_strict,
                               "reasoning_gym_fallback": reasoning_gym_fallback}
    assert numeric_answer is numeric  # the earlier name is the same function, not a copy


@pytest.mark.parametrize("spec", ["nope", "no_such_module_xyz:f", "math:no_such_function", "math:pi", 3])
def test_resolve_scorer_errors_name_argument_and_value(spec):
    with pytest.raises(ValueError, match="`scorer`") as info:
        resolve_scorer(spec)
    assert repr(spec) in str(info.value) or str(spec) in str(info.value)


@MODES
def test_score_samples_sets_scores_and_passes_meta(options):
    samples = make(["42", "41", "none"], answers=[42, 42, 42])
    report = score_samples(numeric_answer, samples, options=options)
    assert [s.score for s in samples] == [1.0, 0.0, None]
    assert report == ScoringReport(scored=2, unscorable=1, errors=0, invalid=0, first_error=None)


def test_score_samples_missing_meta_key_is_none():
    seen = {}

    def scorer(prompts, completions, answer, **_):
        seen["answer"] = answer
        return [0.0] * len(completions)

    samples = make(["a", "b"], answers=[1, 2])
    samples[1].meta = {}
    score_samples(scorer, samples, options=IN_PROCESS)
    assert seen["answer"] == [1, None]


def test_score_samples_missing_meta_key_is_none_in_workers():
    samples = make(["a", "b"], answers=[1, 2])
    samples[1].meta = {}
    score_samples(lambda prompts, completions, answer, **_: [float(answer[0] is None)], samples,
                  options=ScoringOptions(timeout=10, workers=1))
    assert [s.score for s in samples] == [0.0, 1.0]


def test_one_bad_sample_is_isolated(caplog):
    calls = []

    def scorer(prompts, completions, **_):
        calls.append(len(completions))
        if "boom" in completions:
            raise KeyError("boom")
        return [float(len(c)) for c in completions]

    samples = make(["a", "boom", "ccc"])
    with caplog.at_level(logging.WARNING, logger="itersft.scoring.scorers"):
        report = score_samples(scorer, samples, options=IN_PROCESS)
    assert [s.score for s in samples] == [1.0, None, 3.0]
    assert (report.scored, report.unscorable, report.errors) == (2, 1, 1)
    assert "KeyError" in report.first_error and "boom" in report.first_error
    assert calls == [3, 1, 1, 1]  # one batch call, then one call per sample
    assert any("failed on 1 of 3 samples" in r.getMessage() for r in caplog.records)


def test_one_bad_sample_is_isolated_in_workers(caplog):
    def scorer(prompts, completions, **_):
        if "boom" in completions:
            raise KeyError("boom")
        return [float(len(c)) for c in completions]

    samples = make(["a", "boom", "ccc"])
    with caplog.at_level(logging.WARNING, logger="itersft.scoring.scorers"):
        report = score_samples(scorer, samples, options=ScoringOptions(timeout=10, workers=2))
    assert [s.score for s in samples] == [1.0, None, 3.0]
    assert (report.scored, report.unscorable, report.errors, report.timed_out) == (2, 1, 1, 0)
    assert report.first_error == "KeyError: 'boom'"
    assert any("failed on 1 of 3 samples" in r.getMessage() for r in caplog.records)


def test_fail_fast_propagates_with_scorer_and_prompt_index():
    def picky(prompts, completions, **_):
        if "boom" in completions:
            raise ZeroDivisionError("bad sample")
        return [1.0] * len(completions)

    samples = make(["a", "b", "boom"])
    with pytest.raises(RuntimeError, match=r"picky.*prompt_index=2") as info:
        score_samples(picky, samples, fail_fast=True, options=IN_PROCESS)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    # In workers the exception lives in another process: its type and message travel, not the object.
    with pytest.raises(RuntimeError, match=r"picky.*prompt_index=2.*ZeroDivisionError: bad sample"):
        score_samples(picky, make(["a", "b", "boom"]), fail_fast=True, options=ScoringOptions(timeout=10, workers=2))


def test_fail_fast_batch_only_failure():
    def batch_only(prompts, completions, **_):
        if len(completions) > 1:
            raise MemoryError("batch too big")
        return [1.0]

    with pytest.raises(RuntimeError, match="none of them alone"):
        score_samples(batch_only, make(["a", "b"]), fail_fast=True, options=IN_PROCESS)


@pytest.mark.parametrize("result", [[1.0, 1.0, 1.0], "11", {0: 1.0, 1: 0.0}, {1.0, 0.0}, None, 1.0])
@MODES
def test_wrong_length_or_type_raises(result, options):
    """One value per completion, in order: a dict (whose keys were once taken as scores), a set, a string,
    a bare number or a list of the wrong length is a broken scorer."""
    with pytest.raises(ValueError, match="scorer <lambda>"):
        score_samples(lambda prompts, completions, **_: result, make(["a", "b"]), options=options)


def test_wrong_length_raises_in_process():
    with pytest.raises(ValueError, match="returned 1 scores for 2 samples"):
        score_samples(lambda prompts, completions, **_: [1.0], make(["a", "b"]), options=IN_PROCESS)


@MODES
def test_nan_and_inf_become_unscorable_and_numbers_of_any_type_score(options):
    """NaN and inf depend on the sample (a reward model's odd input): unscorable, counted as invalid."""
    values = [1, True, float("nan"), float("inf"), None, 0.25, np.float32(0.5), torch.tensor(2.0)]
    samples = make([str(i) for i in range(len(values))])
    report = score_samples(lambda prompts, completions, **_: [values[int(c)] for c in completions], samples,
                           options=options)
    assert [s.score for s in samples] == [1.0, 1.0, None, None, None, 0.25, 0.5, 2.0]
    assert (report.scored, report.unscorable, report.invalid, report.errors) == (5, 3, 2, 0)


@pytest.mark.parametrize("value", ["0.5", [1.0], {"score": 1.0}, b"1", torch.tensor([1.0, 0.0]), 1j])
@MODES
def test_a_value_that_is_not_a_number_is_a_broken_scorer(options, value):
    """A string, a list or a dict per sample is a bug in the scorer, not an unscorable sample: it raises,
    naming the scorer, the value and the sample, instead of quietly scoring nothing."""
    def per_sample(prompts, completions, **_):
        return [value if c == "bad" else 1.0 for c in completions]

    with pytest.raises(ValueError) as info:
        score_samples(per_sample, make(["ok", "bad"]), options=options)
    message = str(info.value)
    assert message.startswith(f"scorer per_sample returned {value!r} (a {type(value).__name__}) as the score of ")
    assert "prompt_index=1, sample_index=0" in message


@MODES
def test_the_report_names_the_first_sample_the_scorer_raised_on(options):
    def picky(prompts, completions, **_):
        if any(c != "ok" for c in completions):
            raise KeyError("answer")
        return [1.0] * len(completions)

    samples = make(["ok", "bad", "worse"])
    report = score_samples(picky, samples, options=options)
    assert (report.errors, report.failed, report.first_error, report.first_error_sample) == (
        2, 2, "KeyError: 'answer'", (1, 0))


def test_a_scorer_that_fails_on_every_sample_stops_with_the_first_exception_and_its_sample():
    report = ScoringReport(unscorable=3, errors=2, timed_out=1, first_error="KeyError: 'answer'",
                           first_error_sample=(4, 1))
    with pytest.raises(ScorerFailedError) as info:
        stop_if_every_sample_failed("exact", report, failed=3, total=3, where="round 2", timeout=30.0)
    assert str(info.value).startswith(
        "scorer exact failed on all 3 samples of round 2 (raised, crashed or timed out), so nothing could be kept "
        "and the run stops rather than train on nothing. The first exception, on the sample with prompt_index=4, "
        "sample_index=1: KeyError: 'answer'")
    stop_if_every_sample_failed("exact", report, failed=2, total=3, where="round 2", timeout=30.0)  # one scored
    stop_if_every_sample_failed("exact", ScoringReport(), failed=0, total=0, where="round 2", timeout=30.0)
    with pytest.raises(ScorerFailedError, match="of round 0 .*Every sample ran past the 1.5 s timeout"):
        stop_if_every_sample_failed("slow", ScoringReport(timed_out=2, scored=2), 2, 2, "round 0", 1.5)
    with pytest.raises(ScorerFailedError, match="This process scored none of them"):  # another rank's samples
        stop_if_every_sample_failed("exact", ScoringReport(), 2, 2, "round 0", 1.5)


@MODES
def test_scores_are_overwritten_not_left_stale(options):
    samples = make(["x"])
    samples[0].score = 1.0
    score_samples(lambda prompts, completions, **_: [None], samples, options=options)
    assert samples[0].score is None


@MODES
def test_empty_batch_does_not_call_scorer(options):
    """Not even its `warm_up` (which runs here, in this process, before any worker starts)."""
    calls = []

    class Recording:
        def warm_up(self):
            calls.append("warm_up")

        def __call__(self, prompts, completions, **meta):
            calls.append("call")
            return [1.0] * len(completions)

    assert score_samples(Recording(), [], options=options) == ScoringReport()
    assert calls == []


def test_validate_meta_names_every_bad_row():
    with pytest.raises(ValueError) as info:
        validate_meta("numeric", [{"answer": "7"}, {}, {"answer": "seven"}, {"answer": 3}], 4, "eval_meta")
    message = str(info.value)
    assert "`eval_meta` does not suit scorer numeric (2 problem(s))" in message
    assert "row 1: no `answer`" in message and "row 2: `answer` 'seven' contains no number" in message
    assert "row 0" not in message and "row 3" not in message
    with pytest.raises(ValueError, match="row 0: no `answer`"):
        validate_meta("exact_match", None, 1)  # no meta at all: every row is empty
    validate_meta("exact_match", [{"answer": "x"}], 1)
    validate_meta(lambda prompts, completions, **_: [1.0], None, 3)  # no check_meta: nothing to check
