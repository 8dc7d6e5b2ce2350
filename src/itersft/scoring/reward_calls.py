"""One call of one reward function, made as TRL's GRPO makes it (TRL 1.16, `GRPOTrainer._calculate_rewards`).

The call is by keyword: `prompts`, `completions`, `completion_ids`, one list per other prompt-dataset
column, and `trainer_state`, `log_extra`, `log_metric`:

* `prompts`: each sample's prompt as the data gave it (a string, or chat messages), repeated for the k
  samples of a prompt.
* `completions`: the completion's text where the prompt is a string; `[{"role": "assistant", "content":
  text}]` where the prompt is a conversation (TRL's rule: a prompt whose first item is a dict with a
  `role`). Decided by the prompt as given, not by whether the sampler applied the chat template. TRL
  decides once per batch from its first prompt, as its datasets cannot mix the two; here each sample
  is decided alone.
* `completion_ids`: the generated token ids followed by the stop token that ended the completion (TRL
  keeps the EOS it masks up to); no stop token where the completion was cut at `max_new_tokens` or at
  a stop string (TRL has no stop strings).
* every metadata column of the prompt (`Sample.meta`), one value per completion, None for a sample
  whose prompt lacks it; TRL leaves out the columns `prompt`, `completion` and `completion_ids`, and
  so does this. Columns named like the other arguments are refused when the data is checked
  (`reserved_column_problems`).
* `trainer_state`: the trainer's `transformers.TrainerState` as scoring starts (in a worker, a copy as
  of the fork).
* `log_extra(column, values)`: one value per completion of the call, kept in `Sample.reward_logs`
  (TRL adds them to its completions table). `log_metric(name, value)`: averaged over the calls of a
  batch and logged (TRL averages them per logging step).

The function returns one reward per completion: a number, or None where it does not apply. An async
function (TRL's test: its `__call__` is a coroutine function, through `functools.partial`) is run to
completion in an event loop of its own thread, as TRL runs it on its loop's thread.

`CallFunction` makes the call and returns what came back unchecked (it may run in a scoring worker,
where an exception is the sample's and a bad output is the function's bug); `check_call` then checks
it: `ScorerOutputError` names the function and the value.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from itersft.scoring.pool import ScorerOutputError, check_output, to_score

KIND = "reward function"
RESERVED = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
"""The argument names TRL passes besides the columns: a column must not take one of them."""
LEFT_OUT = ("prompt", "completion", "completion_ids")
"""Columns TRL does not pass (the prompt itself, and what the model generates)."""


def function_name(function: Callable) -> str:
    """TRL's name for a reward function: through `functools.partial`, its `__name__`, else its type's name."""
    while isinstance(function, functools.partial):
        function = function.func
    return getattr(function, "__name__", type(function).__name__)


def is_async(function: Callable) -> bool:
    """TRL's test for an async reward function, which covers partials and callable objects."""
    while isinstance(function, functools.partial):
        function = function.func
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__)


def run_coroutines(coroutines: Sequence[Any]) -> list[Any]:
    """Await `coroutines` together in a fresh event loop on a thread of its own (so a loop already running
    in this thread, as in a notebook, is no obstacle); return their results, or raise the first error."""
    async def together():
        return await asyncio.gather(*coroutines)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="itersft-reward") as executor:
        return executor.submit(asyncio.run, together()).result()


def reserved_column_problems(columns: Sequence[str]) -> list[str]:
    """Problems with metadata columns that would collide with the arguments a reward function takes."""
    return [f"column `{name}` has the name of an argument that reward functions receive ({', '.join(RESERVED)}); "
            "rename it" for name in columns if name in RESERVED and name not in LEFT_OUT]


@dataclass
class Batch:
    """The per-sample arguments of one call (everything but `trainer_state` and the log hooks); picklable,
    so it can travel to a scoring worker."""

    prompts: list[Any]
    completions: list[Any]
    completion_ids: list[list[int]]
    columns: dict[str, list[Any]]

    @classmethod
    def of(cls, samples: Sequence[Any], columns: Sequence[str]) -> Batch:
        return cls(prompts=[s.prompt for s in samples],
                   completions=[s.completion if isinstance(s.prompt, str)
                                else [{"role": "assistant", "content": s.completion}] for s in samples],
                   completion_ids=[[*s.completion_ids, *(() if s.stop_token_id is None else (s.stop_token_id,))]
                                   for s in samples],
                   columns={key: [s.meta.get(key) for s in samples] for key in columns})

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class CallResult:
    """A checked call: (reward, valid) per completion, and what the function logged."""

    rewards: list[tuple[float | None, bool]]
    metrics: dict[str, list[float]] = field(default_factory=dict)
    logs: dict[str, list[Any]] = field(default_factory=dict)


class CallFunction:
    """Calls reward function `functions[index]` on a `Batch` as TRL does; returns (name, size, output, metrics,
    logs) for `check_call`. One object serves every function of a scoring batch (one pool of workers)."""

    def __init__(self, functions: Sequence[Callable], names: Sequence[str], trainer_state: Any):
        self.functions, self.names, self.trainer_state = list(functions), list(names), trainer_state

    def warm_up(self) -> None:
        """Each function's own `warm_up()`, if it has one, before workers fork (see `scoring.pool`)."""
        for function in self.functions:
            if callable(getattr(function, "warm_up", None)):
                function.warm_up()

    def __call__(self, index: int, batch: Batch) -> tuple[str, int, Any, dict, dict]:
        metrics: dict[str, list[float]] = defaultdict(list)
        logs: dict[str, list[Any]] = {}
        output = self.functions[index](**self.arguments(batch, logs, metrics))
        if is_async(self.functions[index]):
            (output,) = run_coroutines([output])
        return self.names[index], len(batch), output, dict(metrics), logs

    def coroutine(self, index: int, batch: Batch, logs: dict, metrics: dict):
        """The call of an async function, not yet awaited (in process, TRL awaits them together)."""
        return self.functions[index](**self.arguments(batch, logs, metrics))

    def arguments(self, batch: Batch, logs: dict[str, list[Any]], metrics: dict[str, list[float]]) -> dict[str, Any]:
        def log_extra(column: str, values: list) -> None:
            logs[column] = list(values)

        def log_metric(name: str, value: float) -> None:
            metrics[name].append(value)

        return {"prompts": batch.prompts, "completions": batch.completions, "completion_ids": batch.completion_ids,
                **batch.columns, "trainer_state": self.trainer_state, "log_extra": log_extra,
                "log_metric": log_metric}


def check_call(returned: tuple[str, int, Any, dict, dict], _: str = "") -> tuple[CallResult, bool]:
    """What a `CallFunction` call returned, checked: one number or None per completion (NaN and inf are
    kept as invalid), `log_extra` columns of one value per completion, numeric `log_metric` values.
    Raises ScorerOutputError naming the function and the value. The pool's `Check`."""
    name, size, output, metrics, logs = returned
    values = check_output(output, size, name, KIND)
    rewards = [to_score(value, name, f"completion {i} of the {size} it was given", KIND)
               for i, value in enumerate(values)]
    for column, column_values in logs.items():
        if len(column_values) != size:
            raise ScorerOutputError(f"{KIND} {name} logged {len(column_values)} values for the column {column!r} "
                                    f"with `log_extra` for {size} completions; it must log one per completion")
    numbers = {}
    for metric, metric_values in metrics.items():
        try:
            numbers[metric] = [float(v) for v in metric_values]
        except (TypeError, ValueError, RuntimeError):
            raise ScorerOutputError(f"{KIND} {name} logged {metric_values!r} for the metric {metric!r} with "
                                    "`log_metric`; a metric must be a number") from None
    return CallResult(rewards, numbers, logs), True
