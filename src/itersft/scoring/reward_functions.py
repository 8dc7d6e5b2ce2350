"""Reward functions in TRL's GRPO convention, in place of a scorer: `RewardFunctions`.

Each function is called by keyword as TRL's GRPO calls it (`reward_calls` says exactly with what); a
function given as "package.module:function" is imported, and a reward model (a local folder or hub id
of a sequence classifier with one label, a loaded `PreTrainedModel`, or a `RewardModel`) scores the
prompt and completion as TRL's reward models do (`reward_model`).

**Combining, as TRL does.** Each function gives each sample a reward or None (None, NaN and inf all
mean "does not apply"). A sample's score is the weighted sum, with `reward_weights` (default 1.0
each), over the functions that scored it: TRL's `nansum`. A sample that no function scored is
unscorable (score None), as TRL leaves it out. Every function's own reward is kept in
`Sample.rewards` ({name: reward or None}), the names being TRL's (a function's `__name__`, a
model's folder name; a name used twice gets "_2", "_3"). TRL sums in float32; here in float64, so a
reward of 0.7 stays 0.7 for a `Threshold(0.7)`.

**Filters on a weighted sum.** `Threshold(t)` keeps a sample whose weighted sum is at least t;
`BestOfK(n)` keeps a prompt's n samples with the largest sums; `TopPercent(p)` the p% largest sums of
the round; `DropUniformPrompts` and `LoopConfig.pass_score` (held-out accuracy, pass@k) compare the
sum with their pass score. A threshold only means something on the scale of the rewards, so the run
config's default filter with `reward_funcs` is `AboveGroupMean`: keep a sample whose sum is above its
prompt's mean, the samples GRPO would push up (positive advantage), at any scale.

**How they run.** Like a scorer, in forked worker processes under `LoopConfig.score_timeout`
(`scoring.pool`), so a function that hangs or crashes costs one sample, not the run. Calls are
batched where the isolation allows, by this rule: each function is called on chunks of up to
`chunk_size` samples (fewer when that leaves a worker idle), each chunk under one per-sample timeout;
a chunk that raises, crashes, runs past the timeout or returns a bad output is called again one sample
at a time, each under the timeout. So a bad sample costs only itself, as with a scorer: alone it
becomes unscorable for that function (it raised or crashed), scores 0.0 (it ran past the timeout) or
raises `ScorerOutputError` (a bad output is a bug in the function). A function slower than the
timeout divided by the chunk size loses one timeout per chunk before it runs alone: give it a larger
`score_timeout` or `chunk_size=1`. Functions run side by side in the pool, so TRL's async functions
(awaited together in TRL) overlap here too. The exceptions run in this process, on the whole batch,
with no timeout and no isolation (a call that raises is retried one sample at a time): reward models
(they are too large to fork, and a forked worker cannot use the GPU), and every function with
`score_in_process`, where async functions are awaited together as TRL does.

**Failures.** A function that fails (raises, crashes or times out) on every sample of a round stops
the run, as a scorer does (`ScorerFailedError`, quoting the function and its first error): the
report's `errors` and `timed_out` are those of the function that failed most. `log_metric` values are
averaged per batch and logged (logger `itersft.scoring.reward_functions`, and `metrics`); `log_extra`
columns land in `Sample.reward_logs`.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from itersft.checks import Problems, is_real
from itersft.scoring.import_path import import_object, is_import_path
from itersft.scoring.pool import Outcome, ScorerOutputError, ScoringOptions, default_workers, run_per_sample
from itersft.scoring.report import ScoringReport, describe_sample
from itersft.scoring.reward_calls import (
    KIND,
    LEFT_OUT,
    Batch,
    CallFunction,
    CallResult,
    check_call,
    function_name,
    is_async,
    reserved_column_problems,
    run_coroutines,
)
from itersft.scoring.reward_model import RewardModel, model_problems

__all__ = ["RewardFunctions"]

logger = logging.getLogger(__name__)


class RewardFunctions:
    """One or more reward functions in TRL's convention and their weights, used in place of a scorer.

    Args:
        functions: a reward function or a list of them: callables (sync or async), "package.module:function"
            strings, reward models as a local folder or hub id (any other string; loaded now as
            `AutoModelForSequenceClassification` with `num_labels=1`), a loaded `PreTrainedModel`, or a
            `RewardModel` (a model with its own tokenizer).
        weights: one number per function (TRL's `reward_weights`); None: 1.0 each.
        chunk_size: samples per call in a scoring worker (see the module docstring); 1 calls each sample alone.

    Every problem is collected and raised as one ValueError before any reward model loads. `bind(trainer)`
    makes each call pass `trainer.state` as `trainer_state` (None until then).
    """

    def __init__(self, functions: Any, weights: Sequence[float] | None = None, chunk_size: int = 16):
        problems = Problems("reward functions")
        specs = list(functions) if isinstance(functions, list | tuple) else [functions]
        if not specs:
            problems.add("`reward_funcs` is empty: give at least one reward function.")
        resolved = [_resolve(spec, f"reward_funcs[{i}]", problems) for i, spec in enumerate(specs)]
        if weights is not None:
            if not isinstance(weights, list | tuple) or not all(is_real(w) for w in weights):
                problems.add("`reward_weights` must be a list of finite numbers, one per reward function; "
                             f"got {weights!r}.")
            elif len(weights) != len(specs):
                problems.add(f"`reward_weights` has {len(weights)} weight(s) but there are {len(specs)} reward "
                             f"function(s): give one weight per function, in the same order (got {list(weights)!r}).")
        problems.integer("chunk_size", chunk_size, minimum=1)
        problems.raise_if_any()
        self.functions: list[Callable] = [RewardModel.from_pretrained(r) if isinstance(r, str) else r for r in resolved]
        self.loaded = [isinstance(r, str) for r in resolved]  # reward models this object loaded (and may move)
        self.specs = specs
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(specs)
        self.names = _unique([f.__name__ if isinstance(f, RewardModel) else function_name(f) for f in self.functions])
        self.chunk_size = chunk_size
        self.metrics: dict[str, float] = {}
        self._trainer = None
        self.__name__ = f"reward_funcs[{', '.join(self.names)}]"

    def bind(self, trainer) -> None:
        """Pass `trainer.state` as `trainer_state` (read at each scoring: a resume replaces it), and move the
        reward models this object loaded to `trainer.args.device`."""
        self._trainer = trainer
        for function, loaded in zip(self.functions, self.loaded):
            if loaded:
                function.model.to(trainer.args.device)

    def describe(self) -> str:
        """The functions and weights as text, for the run's identity: a string spec as given, a callable as
        module:qualified name, a loaded model by its name."""
        parts = [spec if isinstance(spec, str) else _described(function)
                 for spec, function in zip(self.specs, self.functions)]
        return f"reward_funcs={parts} reward_weights={self.weights}"

    def check_meta(self, rows: Sequence[dict]) -> list[str]:
        """Problems with the metadata columns (see `scorers.validate_meta`): names the call itself uses, and
        what each function's own `check_meta` finds."""
        columns = list(dict.fromkeys(key for row in rows for key in row))
        problems = reserved_column_problems(columns)
        for name, function in zip(self.names, self.functions):
            check = getattr(function, "check_meta", None)
            if callable(check):
                problems.extend(f"{KIND} {name}: {problem}" for problem in check(rows))
        return problems

    # ---- scoring ----------------------------------------------------------------------------------

    def score(self, samples: list, options: ScoringOptions, report: ScoringReport,
              fail_fast: bool) -> list[tuple[float | None, bool]]:
        """Each sample's (weighted sum, valid); sets `rewards` (and `reward_logs`) on each sample and fills
        `report` (see the module docstring). Called by `scorers.score_samples`."""
        columns = [key for key in dict.fromkeys(k for s in samples for k in s.meta) if key not in LEFT_OUT]
        caller = CallFunction(self.functions, self.names, getattr(self._trainer, "state", None))
        runs = [_FunctionRun(name, len(samples)) for name in self.names]
        here = [i for i, f in enumerate(self.functions) if options.in_process or getattr(f, "runs_in_process", False)]
        pooled = [i for i in range(len(self.functions)) if i not in here]
        if pooled:
            _score_in_workers(caller, pooled, samples, columns, runs, options, fail_fast, self.chunk_size)
        if here:
            _score_here(caller, here, samples, columns, runs, fail_fast)
        return self._combine(samples, runs, report)

    def _combine(self, samples: list, runs: list[_FunctionRun],
                 report: ScoringReport) -> list[tuple[float | None, bool]]:
        results = []
        for i, sample in enumerate(samples):
            rewards = [run.rewards[i] for run in runs]
            sample.rewards = {run.name: value for run, (value, _) in zip(runs, rewards)}
            logs = {column: value for run in runs for column, value in run.logs[i].items()}
            sample.reward_logs = logs or None
            scored = [weight * value for weight, (value, _) in zip(self.weights, rewards) if value is not None]
            total = math.fsum(scored) if scored else None
            results.append((total, total is not None or all(valid for _, valid in rewards)))
        worst = max(runs, key=lambda run: run.report.failed)
        report.errors, report.timed_out = worst.report.errors, worst.report.timed_out
        if worst.report.first_error is not None:
            report.first_error = f"{KIND} {worst.name}: {worst.report.first_error}"
            report.first_error_sample = worst.report.first_error_sample
        for run in runs:
            if run.report.failed:
                logger.warning("%s %s failed on %d of %d samples (%d ran past the timeout and score 0.0, the others "
                               "are unscored by it); first error: %s", KIND, run.name, run.report.failed, len(samples),
                               run.report.timed_out, run.report.first_error)
        logged: dict[str, list[float]] = {}
        for run in runs:  # TRL keeps one list per metric name, whichever function logged it
            for metric, values in run.metrics.items():
                logged.setdefault(metric, []).extend(values)
        self.metrics = {metric: sum(values) / len(values) for metric, values in logged.items()}
        if self.metrics:
            logger.info("reward function metrics (log_metric, mean over the batch): %s", self.metrics)
        return results


class _FunctionRun:
    """One function's results over a batch: (reward, valid) per sample, its failures, what it logged."""

    def __init__(self, name: str, size: int):
        self.name = name
        self.rewards: list[tuple[float | None, bool]] = [(None, True)] * size
        self.logs: list[dict[str, Any]] = [{} for _ in range(size)]
        self.metrics: dict[str, list[float]] = {}
        self.report = ScoringReport()

    def take(self, positions: Sequence[int], result: CallResult) -> None:
        for position, reward in zip(positions, result.rewards, strict=True):
            self.rewards[position] = reward
        for column, values in result.logs.items():
            for position, value in zip(positions, values, strict=True):
                self.logs[position][column] = value
        for metric, values in result.metrics.items():
            self.metrics.setdefault(metric, []).extend(values)


def _chunks(size: int, chunk_size: int, workers: int) -> list[range]:
    """Consecutive chunks of at most `chunk_size` positions, small enough that every worker gets one."""
    step = max(1, min(chunk_size, math.ceil(size / workers)))
    return [range(start, min(start + step, size)) for start in range(0, size, step)]


def _score_in_workers(caller: CallFunction, functions: list[int], samples: list, columns: list[str],
                      runs: list[_FunctionRun], options: ScoringOptions, fail_fast: bool, chunk_size: int) -> None:
    """Chunks in the pool; a chunk that fails, again one sample per call (see the module docstring)."""
    workers = options.workers or default_workers()
    jobs = [(f, list(chunk)) for f in functions for chunk in _chunks(len(samples), chunk_size, workers)]
    retry: list[tuple[int, list[int]]] = []
    bad_output: dict[int, str] = {}
    for attempt in ("chunks", "alone"):
        calls = [((f, Batch.of([samples[p] for p in positions], columns)), {}) for f, positions in jobs]
        outcomes = run_per_sample(caller, calls, options.timeout, workers,
                                  stop_on_error=fail_fast and attempt == "alone", check=check_call)
        for (f, positions), outcome in zip(jobs, outcomes, strict=True):
            if outcome is None:  # not run: scoring stopped at a failure (fail_fast), raised below
                continue
            if outcome.status == "ok":
                runs[f].take(positions, outcome.value)
            elif len(positions) > 1:
                retry.extend((f, [p]) for p in positions)
                if outcome.status == "output_error":
                    bad_output[f] = outcome.message
            else:
                _settle_alone(runs[f], samples[positions[0]], positions[0], outcome, fail_fast)
        jobs, retry = retry, []
        if not jobs:
            break
    for message in bad_output.values():  # a bad output on a chunk that no sample gives alone: still a bug
        raise ScorerOutputError(f"{message} (on a call with several samples; alone each was fine)")


def _settle_alone(run: _FunctionRun, sample, position: int, outcome: Outcome, fail_fast: bool) -> None:
    """Record the outcome of a call on one sample that did not succeed."""
    if outcome.status == "output_error":
        raise ScorerOutputError(f"{outcome.message} (on the sample with {describe_sample(sample)})")
    if outcome.status == "timed_out":
        run.report.timed_out += 1
        run.rewards[position] = (0.0, True)
        return
    if fail_fast:
        raise RuntimeError(f"{KIND} {run.name} failed on the sample with {describe_sample(sample)}: {outcome.message}")
    run.report.record_error(sample, outcome.message)


def _score_here(caller: CallFunction, functions: list[int], samples: list, columns: list[str],
                runs: list[_FunctionRun], fail_fast: bool) -> None:
    """The whole batch per function in this process (async functions awaited together, as in TRL); a call
    that raises or returns a bad output is made again one sample at a time."""
    batch = Batch.of(samples, columns)
    everything = list(range(len(samples)))
    waiting = [f for f in functions if is_async(caller.functions[f])]
    logs: dict[int, tuple[dict, dict]] = {f: ({}, defaultdict(list)) for f in waiting}
    awaited = run_coroutines([_settled(caller.coroutine(f, batch, *logs[f])) for f in waiting]) if waiting else []
    outputs = dict(zip(waiting, awaited))
    for f in functions:
        try:
            if f in outputs:
                if isinstance(outputs[f], BaseException):
                    raise outputs[f]
                returned = (caller.names[f], len(batch), outputs[f], dict(logs[f][1]), logs[f][0])
            else:
                returned = caller(f, batch)
            runs[f].take(everything, check_call(returned)[0])
            continue
        except Exception as exc:  # a ScorerOutputError too: the samples alone say which one is bad
            failure = exc
        for position in everything:
            try:
                runs[f].take([position], check_call(caller(f, Batch.of([samples[position]], columns)))[0])
            except ScorerOutputError as exc:
                raise ScorerOutputError(f"{exc} (on the sample with {describe_sample(samples[position])})") from exc
            except Exception as exc:
                failed = Outcome("error", None, f"{type(exc).__name__}: {exc}")
                _settle_alone(runs[f], samples[position], position, failed, fail_fast)
        if isinstance(failure, ScorerOutputError):
            raise ScorerOutputError(f"{failure} (on the whole batch; alone each sample was fine)") from failure
        if fail_fast:
            raise RuntimeError(f"{KIND} {runs[f].name} raised on the batch of {len(samples)} samples but on none of "
                               f"them alone: {type(failure).__name__}: {failure}") from failure


async def _settled(coroutine):
    """The coroutine's result, or the exception it raised (so one failing function does not cancel the rest)."""
    try:
        return await coroutine
    except Exception as exc:
        return exc


def _resolve(spec: Any, argument: str, problems: Problems) -> Any:
    """A callable, or a string naming a reward model still to load; records a problem otherwise."""
    if isinstance(spec, RewardModel):
        return spec
    if _is_model(spec):
        wrong = model_problems(spec)
        for problem in wrong:
            problems.add(f"`{argument}` {problem}")
        try:
            return None if wrong else RewardModel(spec)
        except ValueError as exc:  # its tokenizer cannot be found
            problems.add(f"`{argument}`: {exc}")
            return None
    if isinstance(spec, str):
        if os.path.exists(spec) or not is_import_path(spec):
            return spec  # a reward model's folder or hub id, loaded once every argument is checked
        try:
            spec = import_object(spec)
        except (ImportError, AttributeError) as exc:
            problems.add(f"`{argument}` {_shown(spec)} could not be imported ({type(exc).__name__}: {exc}); a "
                         "reward function is given as 'package.module:function', importable from here.")
            return None
    if not callable(spec):
        problems.add(f"`{argument}` is {_shown(spec)}, a {type(spec).__name__}, which is not callable: give a "
                     "function, a 'package.module:function' string, or a reward model (a folder, a hub id or a "
                     "loaded sequence classifier).")
        return None
    return spec


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_model(value: Any) -> bool:
    """A transformers model (checked without importing transformers for anything that has no `config`)."""
    if getattr(value, "config", None) is None:
        return False
    from transformers import PreTrainedModel

    return isinstance(value, PreTrainedModel)


def _unique(names: list[str]) -> list[str]:
    """`names` with a repeat of an earlier name suffixed "_2", "_3", ... so each names one function."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        candidate = name if seen[name] == 1 else f"{name}_{seen[name]}"
        while candidate in unique:
            candidate += "_"
        unique.append(candidate)
    return unique


def _described(function: Callable) -> str:
    if isinstance(function, RewardModel):
        return f"reward model {function.__name__}"
    module = getattr(function, "__module__", None) or type(function).__module__
    return f"{module}:{getattr(function, '__qualname__', None) or type(function).__qualname__}"
