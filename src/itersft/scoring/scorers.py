"""Scorers: turn (prompt, completion, metadata) into a number the filter can rank or threshold.

A scorer is a plain callable `(prompts, completions, **meta) -> list[float | None]`. `meta` holds
per-sample lists aligned with `prompts` (e.g. `answer=[...]`, gathered from each `Sample.meta`); a
scorer takes the keys it needs and swallows the rest with `**_`. None means "could not score this
one" (no answer found): such samples are kept apart from wrong answers and never pass a score-based
filter.

Built-ins (`BUILTIN_SCORERS`, selectable by name from a config file): `exact_match` and `numeric`
(also called `numeric_answer`) are the answer checks of STaR (Zelikman et al. 2022) and RFT on GSM8K
(Yuan et al. 2023); `math` checks answer equivalence with math-verify (LaTeX, fractions, `\\boxed`;
see `math_verifier`); `numeric` and `math` read the final answer by one rule, under which a hedge
("4 or 5") is never right and a self-correction counts its last answer (`final_answer`); `code`
runs the completion against the sample's unit tests in a sandbox (see `code_verifier`,
`code_sandbox`); `reasoning_gym` and `reasoning_gym_fallback` call a reasoning-gym task's own
`score_answer` (see `itersft.tasks.reasoning_gym`); `regex_match` builds format checks. Reward models
and LLM judges are user callables, passed directly or as a "package.module:function" string.

`RewardFunctions` (reward functions in TRL's GRPO convention, with weights) take a scorer's place
everywhere a scorer goes: `score_samples` hands them their batch (`reward_functions`).

`score_samples` is the only place that calls a scorer. By default it scores each sample alone in a
forked worker process under a hard wall-clock timeout (`pool`): a sample past the timeout
scores 0.0 and is counted, a worker that crashes costs one sample, never the run. With
`ScoringOptions(in_process=True, timeout=None)` the scorer is called once on the whole batch in this
process instead (GPU reward models), with no timeout; one sample that makes it raise must not throw
away a round of generation, so a failing batch call is retried one sample at a time and only the
samples that still raise become unscorable. `fail_fast=True` raises instead, while debugging a scorer.
Returned values are validated: a result that is not one value per completion (wrong length, a dict,
a set, a string), or a value that is not a number (a string, a dict, a list per sample), is a bug in
the scorer and raises `ScorerOutputError` naming the scorer and the value; NaN or inf marks that sample
unscorable. A scorer that fails on every sample is reported by `report.stop_if_every_sample_failed`.
`validate_meta` checks a dataset's metadata against a scorer before any model loads.
Not here: async scoring, caching.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from itersft.sampling.samples import Sample
from itersft.scoring.code_verifier import code
from itersft.scoring.final_answer import NUMBER, FinalAnswer, final_answer
from itersft.scoring.import_path import import_object, is_import_path
from itersft.scoring.math_verifier import math_answer
from itersft.scoring.pool import (
    ScorerOutputError,
    ScoringOptions,
    check_output,
    default_workers,
    run_per_sample,
    scorer_name,
    to_score,
)
from itersft.scoring.report import ScoringReport, describe_sample
from itersft.scoring.reward_functions import RewardFunctions
from itersft.tasks.reasoning_gym import reasoning_gym_fallback, reasoning_gym_strict

__all__ = ["BUILTIN_SCORERS", "Scorer", "ScoringReport", "exact_match", "numeric", "numeric_answer", "regex_match",
           "resolve_scorer", "score_samples", "validate_meta", "extract_number", "final_number_text"]

logger = logging.getLogger(__name__)

Scorer = Callable[..., Sequence[Any]]
"""The scorer protocol: `(prompts, completions, **meta) -> list[float | None]`."""


def _aligned(name: str, values: Sequence[Any], n: int) -> Sequence[Any]:
    """Return `values` if it has one entry per completion, else raise naming the meta key."""
    if len(values) != n:
        raise ValueError(f"`{name}` has {len(values)} entries but there are {n} completions")
    return values


def exact_match(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], **_: Any) -> list:
    """1.0 where `completion.strip() == str(answer).strip()`, else 0.0.

    For tasks whose whole completion is the answer (classification labels, short answers).
    """
    answer = _aligned("answer", answer, len(completions))
    return [1.0 if c.strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer, strict=True)]


def extract_number(text: str) -> float | None:
    """The number of `text`'s final answer (`final_answer`), or None when it has none.

    The final answer is the last `\\boxed{...}` (its last number), else the first number after a
    GSM8K-style `#### 42` marker (a model may keep talking after its answer), else the last number
    in the text. Handles negatives, decimals and thousands separators ("1,234.5"); not fractions,
    percentages or scientific notation. Whether that answer hedges is `final_answer`'s other half.
    """
    answer = final_answer(text)
    return answer.number if answer is not None else None


def final_number_text(answer: FinalAnswer) -> str | None:
    """The number of a final answer (`final_answer`) as written, thousands separators removed ("1234.5";
    exact where a float would round it), or None when it has none.

    For a checker that reads the answer as text (reasoning-gym's `score_answer`). Whether the answer
    hedges is the caller's to honour: a hedge is never right.
    """
    if answer.number is None:
        return None
    written = [match.group().replace(",", "") for match in NUMBER.finditer(answer.text)]
    return next((text for text in reversed(written) if float(text) == answer.number), None)


def _reference_number(answer: Any) -> float:
    """Parse a reference answer (a number, "1,234", or a GSM8K solution ending "#### 72")."""
    if isinstance(answer, bool):
        raise ValueError(f"`answer` must be a number or numeric string; got {answer!r}")
    if isinstance(answer, int | float):
        return float(answer)
    value = extract_number(str(answer))
    if value is None:
        raise ValueError(f"`answer` {answer!r} contains no number to compare against")
    return value


def numeric(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], **_: Any) -> list[float | None]:
    """1.0 where the completion's final answer is one number equal to `answer` (relative tolerance
    1e-6), else 0.0.

    The final answer and its number are found by `final_answer` (read its rule): the last box, else
    the `####` marker, else the last number; a self-correction counts the answer it ends on, and a
    hedge ("4 or 5", `\\boxed{4, 5}`, "10-12") scores 0.0 whichever value is right. A completion
    without a number is unscorable (None), so it is counted apart from wrong answers. A reference of 0
    must be matched exactly. A reference that holds no number raises ValueError (bad data, reported
    per sample by `score_samples`).
    """
    answer = _aligned("answer", answer, len(completions))
    scores: list[float | None] = []
    for completion, reference in zip(completions, answer, strict=True):
        expected = _reference_number(reference)
        final = final_answer(completion)
        if final is None or final.number is None:
            scores.append(None)
        elif final.hedged:
            scores.append(0.0)
        else:
            scores.append(1.0 if math.isclose(final.number, expected, rel_tol=1e-6, abs_tol=0.0) else 0.0)
    return scores


numeric_answer = numeric
"""The earlier name of `numeric` (the same function)."""


def regex_match(pattern: str | re.Pattern[str]) -> Scorer:
    """Build a scorer that checks each completion against `pattern` with `re.search`.

    Without a capture group, or when no `answer` meta is given: 1.0 if the pattern matches, else 0.0.
    With a group and `answer`: 1.0 only if the first group, stripped, equals `str(answer).strip()`
    (e.g. `regex_match(r"Answer: (\\w+)")` checks the stated answer and its format at once).
    """
    try:
        compiled = re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise ValueError(f"`pattern` {pattern!r} is not a valid regular expression: {exc}") from exc

    def scorer(
        prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any] | None = None, **_: Any
    ) -> list[float]:
        if answer is None or compiled.groups == 0:
            return [1.0 if compiled.search(c) else 0.0 for c in completions]
        answer = _aligned("answer", answer, len(completions))
        scores = []
        for completion, reference in zip(completions, answer, strict=True):
            match = compiled.search(completion)
            group = match.group(1) if match else None
            scores.append(1.0 if group is not None and group.strip() == str(reference).strip() else 0.0)
        return scores

    scorer.__name__ = scorer.__qualname__ = f"regex_match({compiled.pattern!r})"
    return scorer


def _answer_problems(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Rows without a usable `answer`: the reference every answer-checking scorer compares against."""
    return [f"row {i}: no `answer` (the reference this scorer compares against)" for i, row in enumerate(rows)
            if row.get("answer") is None]


def _numeric_problems(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    problems = _answer_problems(rows)
    for i, row in enumerate(rows):
        if row.get("answer") is not None:
            try:
                _reference_number(row["answer"])
            except ValueError as exc:
                problems.append(f"row {i}: {exc}")
    return problems


exact_match.check_meta = _answer_problems
numeric.check_meta = _numeric_problems

BUILTIN_SCORERS: dict[str, Scorer] = {"exact_match": exact_match, "numeric": numeric, "numeric_answer": numeric,
                                      "math": math_answer, "code": code, "reasoning_gym": reasoning_gym_strict,
                                      "reasoning_gym_fallback": reasoning_gym_fallback}
"""Scorers selectable by name (e.g. from a config file); `numeric_answer` is `numeric` by its earlier name."""


def resolve_scorer(spec: Scorer | str) -> Scorer:
    """Turn `spec` into a scorer: a callable or `RewardFunctions` (returned as is), a `BUILTIN_SCORERS`
    name, or a "package.module:function" import path (imported only now, so the CLI stays fast)."""
    accepted = (
        f"a callable, a built-in name ({', '.join(sorted(BUILTIN_SCORERS))}) "
        "or an import path 'package.module:function'"
    )
    if callable(spec) or isinstance(spec, RewardFunctions):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"`scorer` must be {accepted}; got {spec!r} of type {type(spec).__name__}")
    if spec in BUILTIN_SCORERS:
        return BUILTIN_SCORERS[spec]
    if not is_import_path(spec):
        raise ValueError(f"`scorer` must be {accepted}; got {spec!r}")
    try:
        target = import_object(spec)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"`scorer` {spec!r} could not be imported ({exc}); expected {accepted}") from exc
    if not callable(target):
        raise ValueError(f"`scorer` {spec!r} resolves to a non-callable {type(target).__name__}")
    return target


def validate_meta(scorer: Scorer | str, meta: Sequence[Mapping[str, Any]] | None, num_prompts: int,
                  argument: str = "meta") -> None:
    """Raise one ValueError listing every row of `meta` that `scorer` cannot score (before any model loads).

    Uses the scorer's optional `check_meta(rows) -> list[str]` attribute (problems naming the row);
    the built-ins check that `answer` is present (`numeric`: that it holds a number) and that `code`
    tests parse as Python. `meta` None means every prompt has empty metadata. A scorer without
    `check_meta` is not checked.
    """
    check = getattr(resolve_scorer(scorer), "check_meta", None)
    if not callable(check):
        return
    rows = list(meta) if meta is not None else [{}] * num_prompts
    problems = check(rows)
    if problems:
        shown = "\n- ".join(problems[:20]) + (f"\n- ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ValueError(f"`{argument}` does not suit scorer {scorer_name(resolve_scorer(scorer))} "
                         f"({len(problems)} problem(s)):\n- {shown}")


def _meta_keys(samples: Sequence[Sample]) -> list[str]:
    keys: dict[str, None] = {}
    for sample in samples:
        keys.update(dict.fromkeys(sample.meta))
    return list(keys)


def _call(scorer: Scorer, samples: Sequence[Sample]) -> list[Any]:
    """Call `scorer` on `samples` with their meta gathered into per-key lists; check the output."""
    meta = {key: [s.meta.get(key) for s in samples] for key in _meta_keys(samples)}
    result = scorer([s.prompt for s in samples], [s.completion for s in samples], **meta)
    return check_output(result, len(samples), scorer_name(scorer))


def score_samples(scorer: Scorer, samples: list[Sample], fail_fast: bool = False,
                  options: ScoringOptions | None = None) -> ScoringReport:
    """Score `samples` in place (`sample.score`) and report what happened.

    `options` (default `ScoringOptions()`) says how: each sample alone in a forked worker under a
    per-sample timeout (a timed-out sample scores 0.0, a crashed worker's sample is unscorable and
    counted in `errors`), or `in_process` in one batch call, retried one sample at a time if it raises
    (samples that still raise are unscorable, counted in `errors`). Meta keys missing from some
    samples are passed as None for those samples. With `fail_fast=True` an error is raised instead,
    as a RuntimeError naming the scorer and the first sample that fails alone (timeouts still score
    0.0). An output that is not one number (or None) per completion (`ScorerOutputError`, a
    ValueError) always raises, naming the sample. `RewardFunctions` score their way (chunks of
    samples per call, each function's reward in `sample.rewards`; see `reward_functions`).
    """
    options = options or ScoringOptions()
    name = scorer_name(scorer)
    report = ScoringReport()
    if not samples:
        return report
    if isinstance(scorer, RewardFunctions):
        results = scorer.score(samples, options, report, fail_fast)
    elif options.in_process:
        try:
            values = _call(scorer, samples)
        except ScorerOutputError:
            raise
        except Exception as exc:
            values = _score_one_by_one(scorer, samples, report, fail_fast, exc)
        results = [to_score(value, name, f"the sample with {describe_sample(sample)}")
                   for sample, value in zip(samples, values, strict=True)]
    else:
        results = _score_in_workers(scorer, samples, options, report, fail_fast)

    for sample, (score, valid) in zip(samples, results, strict=True):
        sample.score = score
        if score is not None:
            report.scored += 1
            continue
        report.unscorable += 1
        if not valid:
            report.invalid += 1
    if report.errors:
        logger.warning("scorer %s failed on %d of %d samples; they are unscorable. First error: %s",
                       name, report.errors, len(samples), report.first_error)
    if report.invalid:
        logger.warning("scorer %s returned NaN or inf for %d of %d samples; they are unscorable",
                       name, report.invalid, len(samples))
    if report.timed_out:
        logger.warning("scorer %s ran past the %g s timeout on %d of %d samples; they score 0.0",
                       name, options.timeout, report.timed_out, len(samples))
    return report


def _score_in_workers(scorer: Scorer, samples: list[Sample], options: ScoringOptions, report: ScoringReport,
                      fail_fast: bool) -> list[tuple[float | None, bool]]:
    """(score, valid) per sample, each scored alone in a worker process (see `scoring.pool`)."""
    keys = _meta_keys(samples)
    calls = [(([s.prompt], [s.completion]), {key: [s.meta.get(key)] for key in keys}) for s in samples]
    outcomes = run_per_sample(scorer, calls, options.timeout, options.workers or default_workers(),
                              stop_on_error=fail_fast)
    for sample, outcome in zip(samples, outcomes, strict=True):
        if outcome is not None and outcome.status == "output_error":
            raise ScorerOutputError(f"{outcome.message} (on the sample with {describe_sample(sample)})")
    results: list[tuple[float | None, bool]] = []
    for sample, outcome in zip(samples, outcomes, strict=True):
        if outcome is None:  # not run: scoring stopped at a failure (fail_fast), raised below
            continue
        if outcome.status in ("error", "crashed"):
            if fail_fast:
                raise RuntimeError(f"scorer {scorer_name(scorer)} failed on the sample with {describe_sample(sample)}: "
                                   f"{outcome.message}")
            report.record_error(sample, outcome.message)
            results.append((None, True))
        elif outcome.status == "timed_out":
            report.timed_out += 1
            results.append((0.0, True))
        else:
            results.append((outcome.value, outcome.status == "ok"))
    return results


def _score_one_by_one(
    scorer: Scorer, samples: list[Sample], report: ScoringReport, fail_fast: bool, batch_exc: Exception
) -> list[Any]:
    """Score each sample alone after the batch call raised; a sample that raises gets None."""
    name = scorer_name(scorer)
    logger.warning(
        "scorer %s raised on the batch of %d samples (%s: %s); scoring them one at a time",
        name,
        len(samples),
        type(batch_exc).__name__,
        batch_exc,
    )
    values: list[Any] = []
    for sample in samples:
        try:
            values.append(_call(scorer, [sample])[0])
        except ScorerOutputError:
            raise
        except Exception as exc:
            if fail_fast:
                raise RuntimeError(
                    f"scorer {name} raised on the sample with {describe_sample(sample)}: {type(exc).__name__}: {exc}"
                ) from exc
            report.record_error(sample, f"{type(exc).__name__}: {exc}")
            values.append(None)
    if fail_fast:  # no sample fails alone: the failure needs the whole batch, so report it as such
        raise RuntimeError(
            f"scorer {name} raised on the batch of {len(samples)} samples but on none of them alone: "
            f"{type(batch_exc).__name__}: {batch_exc}"
        ) from batch_exc
    return values

