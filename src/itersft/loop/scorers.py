"""Scorers: turn (prompt, completion, metadata) into a number the filter can rank or threshold.

A scorer is a plain callable `(prompts, completions, **meta) -> list[float | None]`, called once per
round on the whole batch. `meta` holds per-sample lists aligned with `prompts` (e.g. `answer=[...]`,
gathered from each `Sample.meta`); a scorer takes the keys it needs and swallows the rest with `**_`.
None means "could not score this one" (no answer found, verifier timed out): such samples are kept
apart from wrong answers and never pass a score-based filter.

Built-ins are the verifiers of the self-training papers: `exact_match` and `numeric_answer` are the
answer checks of STaR (Zelikman et al. 2022) and RFT on GSM8K (Yuan et al. 2023); `regex_match` covers
format checks. Reward models, unit-test runners and LLM judges are user callables, passed directly or
as a "package.module:function" string (so a YAML config can name them).

`score_samples` is the only place that calls a scorer. One sample that makes the scorer raise must not
throw away a round of generation, so a failing batch call is retried one sample at a time and only the
samples that still raise become unscorable (`fail_fast=True` turns that off while debugging a scorer).
Returned values are validated: wrong length is a bug in the scorer and raises; a non-number, NaN or
inf marks that sample unscorable. Not here: async or parallel scoring, caching, timeouts.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from itersft.loop.samples import Sample

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


# A number: optional minus (only when not glued to a preceding word or number, so "5-3" is 5 and 3),
# digits with optional thousands separators ("1,234,567"), optional decimals; or a bare ".5".
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<!\d)\.\d+)")
_GSM8K_MARKER = "####"


def extract_number(text: str) -> float | None:
    """The final numeric answer in `text`, or None when there is none.

    If the text has a GSM8K-style `#### 42` marker followed by a number, that number wins (a model may
    keep talking after its answer); otherwise the last number in the text. Handles negatives,
    decimals and thousands separators ("1,234.5"); not fractions, percentages or scientific notation.
    """
    marker = text.rfind(_GSM8K_MARKER)
    if marker != -1:
        match = _NUMBER.search(text, marker + len(_GSM8K_MARKER))
        if match is not None:
            return float(match.group().replace(",", ""))
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return float(matches[-1].replace(",", ""))


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


def numeric_answer(
    prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], **_: Any
) -> list[float | None]:
    """1.0 where the completion's final number equals `answer` (relative tolerance 1e-6), else 0.0.

    The final number is found by `extract_number`; a completion without one is unscorable (None), so
    it is counted apart from wrong answers. A reference of 0 must be matched exactly. A reference that
    holds no number raises ValueError (bad data, reported per sample by `score_samples`).
    """
    answer = _aligned("answer", answer, len(completions))
    scores: list[float | None] = []
    for completion, reference in zip(completions, answer, strict=True):
        expected = _reference_number(reference)
        got = extract_number(completion)
        if got is None:
            scores.append(None)
        else:
            scores.append(1.0 if math.isclose(got, expected, rel_tol=1e-6, abs_tol=0.0) else 0.0)
    return scores


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


BUILTIN_SCORERS: dict[str, Scorer] = {"exact_match": exact_match, "numeric_answer": numeric_answer}
"""Scorers selectable by name (e.g. from a config file)."""


def resolve_scorer(spec: Scorer | str) -> Scorer:
    """Turn `spec` into a scorer: a callable (returned as is), a `BUILTIN_SCORERS` name, or a
    "package.module:function" import path (imported only now, so the CLI stays fast)."""
    accepted = (
        f"a callable, a built-in name ({', '.join(sorted(BUILTIN_SCORERS))}) "
        "or an import path 'package.module:function'"
    )
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"`scorer` must be {accepted}; got {spec!r} of type {type(spec).__name__}")
    if spec in BUILTIN_SCORERS:
        return BUILTIN_SCORERS[spec]
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"`scorer` must be {accepted}; got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            target = getattr(target, attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"`scorer` {spec!r} could not be imported ({exc}); expected {accepted}") from exc
    if not callable(target):
        raise ValueError(f"`scorer` {spec!r} resolves to a non-callable {type(target).__name__}")
    return target


@dataclass
class ScoringReport:
    """What happened when a batch was scored.

    `scored + unscorable` is the number of samples. `errors` (the scorer raised on the sample) and
    `invalid` (it returned a non-number, NaN or inf) are both counted inside `unscorable`, as are
    explicit None returns. `first_error` is the first exception's message, for the log line.
    """

    scored: int = 0
    unscorable: int = 0
    errors: int = 0
    invalid: int = 0
    first_error: str | None = None


def _scorer_name(scorer: Scorer) -> str:
    return getattr(scorer, "__name__", None) or repr(scorer)


def _to_score(value: Any) -> tuple[float | None, bool]:
    """(score, valid): None stays None; a finite number becomes a float; anything else is invalid."""
    if value is None:
        return None, True
    if isinstance(value, str | bytes) or not hasattr(value, "__float__"):
        return None, False
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: e.g. a multi-element tensor
        return None, False
    if not math.isfinite(number):
        return None, False
    return number, True


class ScorerOutputError(ValueError):
    """The scorer returned something other than one value per completion: a bug in the scorer."""


def _call(scorer: Scorer, samples: Sequence[Sample]) -> list[Any]:
    """Call `scorer` on `samples` with their meta gathered into per-key lists; check the length."""
    keys: dict[str, None] = {}
    for sample in samples:
        keys.update(dict.fromkeys(sample.meta))
    meta = {key: [s.meta.get(key) for s in samples] for key in keys}
    result = scorer([s.prompt for s in samples], [s.completion for s in samples], **meta)
    name = _scorer_name(scorer)
    if isinstance(result, str | bytes) or not hasattr(result, "__len__"):
        raise ScorerOutputError(f"scorer {name} must return a list of scores; got {type(result).__name__}")
    if len(result) != len(samples):
        raise ScorerOutputError(
            f"scorer {name} returned {len(result)} scores for {len(samples)} samples; "
            "it must return exactly one score (or None) per completion"
        )
    return list(result)


def score_samples(scorer: Scorer, samples: list[Sample], fail_fast: bool = False) -> ScoringReport:
    """Score `samples` in place (`sample.score`) with one batch call and report what happened.

    Meta keys missing from some samples are passed as None for those samples. If the batch call raises,
    the samples are scored one at a time and those that still raise get score None (counted in
    `errors`). With `fail_fast=True` the exception is raised instead, as a RuntimeError naming the
    scorer and the first sample that raises alone (found by that same one-at-a-time pass). A result of
    the wrong length (`ScorerOutputError`, a ValueError) always raises.
    """
    name = _scorer_name(scorer)
    report = ScoringReport()
    if not samples:
        return report
    try:
        values = _call(scorer, samples)
    except ScorerOutputError:
        raise
    except Exception as exc:
        values = _score_one_by_one(scorer, samples, report, fail_fast, exc)

    for sample, value in zip(samples, values, strict=True):
        score, valid = _to_score(value)
        sample.score = score
        if score is not None:
            report.scored += 1
            continue
        report.unscorable += 1
        if not valid:
            report.invalid += 1
    if report.errors:
        logger.warning(
            "scorer %s raised on %d of %d samples; they are unscorable. First error: %s",
            name,
            report.errors,
            len(samples),
            report.first_error,
        )
    if report.invalid:
        logger.warning(
            "scorer %s returned a non-number, NaN or inf for %d of %d samples; they are unscorable",
            name,
            report.invalid,
            len(samples),
        )
    return report


def _score_one_by_one(
    scorer: Scorer, samples: list[Sample], report: ScoringReport, fail_fast: bool, batch_exc: Exception
) -> list[Any]:
    """Score each sample alone after the batch call raised; a sample that raises gets None."""
    name = _scorer_name(scorer)
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
                    f"scorer {name} raised on the sample with prompt_index={sample.prompt_index}, "
                    f"sample_index={sample.sample_index}: {type(exc).__name__}: {exc}"
                ) from exc
            report.errors += 1
            if report.first_error is None:
                report.first_error = f"{type(exc).__name__}: {exc}"
            values.append(None)
    if fail_fast:  # no sample fails alone: the failure needs the whole batch, so report it as such
        raise RuntimeError(
            f"scorer {name} raised on the batch of {len(samples)} samples but on none of them alone: "
            f"{type(batch_exc).__name__}: {batch_exc}"
        ) from batch_exc
    return values
