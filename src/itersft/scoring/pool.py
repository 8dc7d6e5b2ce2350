"""Run a scorer on one sample at a time in worker processes, each sample under a hard wall-clock limit.

Why processes: a Python thread cannot be stopped, and `signal.alarm` only works on the main thread of
the main interpreter. A verifier that times out through `signal.alarm` off the main thread is how one
RL framework once scored every problem 0, and switching its timeout off hung training in the next
release. Here each sample runs in a worker process; a sample that runs past `timeout` has the
worker's whole process group killed (SIGKILL: anything the scorer started dies with it), scores 0.0
and is counted as timed out, and a fresh worker takes the worker's place. A worker that dies while
scoring (segfault, `os._exit`, the kernel's OOM killer) costs the sample it held, which becomes
unscorable and is counted as an error; the other samples are scored as usual.

Start method: workers are *forked* from the calling process, so they inherit the scorer as it is:
closures, lambdas, bound methods and objects holding open files work without pickling, and modules
the scorer imported (e.g. sympy for `math`) are already loaded. The cost of forking: a forked child
must not use CUDA when the parent has initialised it (torch raises "Cannot re-initialize CUDA in
forked subprocess"), and libraries that run thread pools in the parent (OpenMP, tokenizers) only run
single-threaded in the child (tokenizers prints a warning at each fork unless
`TOKENIZERS_PARALLELISM` is set). A scorer that needs the GPU (a reward model) or that must see whole
batches runs with `ScoringOptions(in_process=True, timeout=None)` instead: one batch call in the
calling process and *no timeout at all* (a hang hangs the run, a crash ends it). The loop refuses
`in_process` unless the timeout is explicitly None, and logs a warning when it is used.
Forking needs a POSIX system; on Windows only `in_process` scoring is available.

A scorer may carry two optional attributes (the built-in `math` and `code` do):
`warm_up()`, called once in the calling process before the workers fork (import heavy modules once,
not in every worker against the timeout), and `check_meta(rows) -> list[str]` (see
`scorers.validate_meta`).

On Linux each worker also asks the kernel to kill it when the process that forked it dies
(`PR_SET_PDEATHSIG`), so a killed training run leaves no worker behind. A call may score several
samples at once (reward functions do, `reward_calls`): the pool then runs whatever the caller sends
and checks its output with the caller's `check`; deciding what to retry is the caller's. Not here:
results caching.
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Literal

from itersft.checks import Problems

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
"""Seconds one sample may take, by default."""

_in_worker = False
_PR_SET_PDEATHSIG = 1
_MESSAGE_LIMIT = 500  # characters of an error message sent back per sample


def in_scoring_worker() -> bool:
    """True inside a scoring pool worker, where the pool enforces the per-sample timeout."""
    return _in_worker


def default_workers() -> int:
    """The default number of scoring workers: the CPUs this process may use, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


def check_scoring_options(timeout: Any, workers: Any, in_process: Any, problems: Problems, prefix: str = "") -> None:
    """Record every problem with these scoring settings, naming `{prefix}timeout` and so on."""
    if problems.boolean(f"{prefix}in_process", in_process) and in_process:
        if timeout is not None:
            problems.add(
                f"`{prefix}in_process=True` runs the scorer in this process, where no timeout can be enforced; "
                f"set `{prefix}timeout` to None (null in YAML) to accept that a hanging scorer hangs the run "
                f"(got {prefix}timeout={timeout!r}).")
        if workers is not None:
            problems.add(f"`{prefix}workers` has no effect with `{prefix}in_process=True`; leave it unset "
                         f"(got {workers!r}).")
    elif timeout is None:
        problems.add(f"`{prefix}timeout` is None but scoring runs in worker processes, which need a limit; give "
                     f"seconds per sample, or set `{prefix}in_process=True` to score in this process without one.")
    problems.number(f"{prefix}timeout", timeout, minimum=0, exclusive_minimum=True, optional=True)
    problems.integer(f"{prefix}workers", workers, minimum=1, optional=True)


@dataclass(frozen=True)
class ScoringOptions:
    """How a scorer is run.

    Attributes:
        timeout: seconds one sample may take in a worker; past it the worker is killed and the sample
            scores 0.0 (counted in `ScoringReport.timed_out`). Must be None with `in_process`.
        workers: worker processes; None: the CPUs this process may use, at most 8.
        in_process: call the scorer once on the whole batch in this process instead, with no timeout
            and no protection against crashes; for GPU reward models and batching scorers.
    """

    timeout: float | None = DEFAULT_TIMEOUT
    workers: int | None = None
    in_process: bool = False

    def __post_init__(self) -> None:
        problems = Problems("ScoringOptions")
        check_scoring_options(self.timeout, self.workers, self.in_process, problems)
        problems.raise_if_any()


class ScorerOutputError(ValueError):
    """The scorer returned something other than one value per completion: a bug in the scorer."""


def check_output(result: Any, expected: int, name: str, kind: str = "scorer") -> list[Any]:
    """`result` as a list of `expected` values, or ScorerOutputError naming the `kind` ("scorer",
    "reward function") called `name`.

    A mapping is refused: iterating it yields its keys, which were once taken as the scores. Sets are
    refused because they have no order; strings and bytes because they are one value, not a list.
    """
    if isinstance(result, Mapping | Set | str | bytes) or not hasattr(result, "__len__"):
        raise ScorerOutputError(
            f"{kind} {name} must return a list with one score (or None) per completion; "
            f"got {type(result).__name__}")
    if len(result) != expected:
        raise ScorerOutputError(
            f"{kind} {name} returned {len(result)} scores for {expected} samples; "
            "it must return exactly one score (or None) per completion")
    return list(result)


def to_score(value: Any, name: str, sample: str = "a sample", kind: str = "scorer") -> tuple[float | None, bool]:
    """(score, valid): None stays None; a finite number becomes a float; NaN and inf are invalid (the
    sample is unscorable: a reward model may give NaN on one odd input, which says nothing about the
    scorer). Anything else (a string, a dict, a list per sample, a multi-element tensor) is a bug in the
    scorer named `name`: ScorerOutputError, naming `sample`. Bools are numbers (True scores 1.0), as
    are numpy scalars and one-element tensors."""
    if value is None:
        return None, True
    number = None
    if not isinstance(value, str | bytes | Mapping) and hasattr(value, "__float__"):
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):  # RuntimeError: e.g. a multi-element tensor
            pass
    if number is None:
        shown = repr(value)
        shown = shown if len(shown) <= 200 else shown[:197] + "..."
        raise ScorerOutputError(f"{kind} {name} returned {shown} (a {type(value).__name__}) as the score of {sample}; "
                                "a score must be a number (or None for a sample it cannot score)")
    if not math.isfinite(number):
        return None, False
    return number, True


Status = Literal["ok", "invalid", "error", "output_error", "crashed", "timed_out"]


@dataclass
class Outcome:
    """What became of one call: `value` is set for "ok" (by default a float or the scorer's None; with a
    `check` of the caller's, what that check returned)."""

    status: Status
    value: Any = None
    message: str | None = None


Check = Callable[[Any, str], tuple[Any, bool]]
"""Run in the worker on what one call returned: (value, valid), or ScorerOutputError for a bad output."""


def one_score(result: Any, name: str) -> tuple[float | None, bool]:
    """The default `Check`: the call returned a list of one score (see `check_output`, `to_score`)."""
    (value,) = check_output(result, 1, name)
    return to_score(value, name)


def scorer_name(scorer: Callable) -> str:
    return getattr(scorer, "__name__", None) or repr(scorer)


def run_per_sample(scorer: Callable, calls: Sequence[tuple[tuple, dict]], timeout: float, workers: int,
                   stop_on_error: bool = False, check: Check = one_score) -> list[Outcome | None]:
    """Call `scorer(*args, **kwargs)` for each `(args, kwargs)` in `calls` in forked workers, each call
    under `timeout` seconds.

    By default each call scores one sample and must return a one-element list (`one_score`); a caller
    that sends several samples per call passes its own `check`, which turns what the call returned into
    (value, valid) inside the worker. Returns one `Outcome` per call, in order. With `stop_on_error`,
    scoring stops at the first error, crash or bad output (the calls not yet run get None); a bad
    output ("output_error") always stops it, since it means the scorer is broken.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        raise RuntimeError("Scoring in worker processes needs the 'fork' start method, which this platform lacks; "
                           "score with `in_process=True` and `timeout=None` (no timeout).")
    warm_up = getattr(scorer, "warm_up", None)
    if callable(warm_up):
        warm_up()
    outcomes: list[Outcome | None] = [None] * len(calls)
    queue = deque(range(len(calls)))
    unreachable = 0  # consecutive sends that found their worker dead
    slots: list[_Worker | None] = [None] * min(workers, len(calls))
    try:
        while queue or any(w is not None and w.index is not None for w in slots):
            for number, worker in enumerate(slots):
                while queue and (worker is None or worker.index is None):
                    if worker is None:
                        worker = slots[number] = _Worker(scorer, check, [w for w in slots if w is not None])
                    index = queue.popleft()
                    if worker.assign(index, calls[index], timeout):
                        unreachable = 0
                        continue
                    worker.kill()  # it died while idle: a fresh worker retries the call
                    worker = slots[number] = None
                    unreachable += 1
                    if unreachable >= 3:
                        raise RuntimeError(f"scoring workers for {scorer_name(scorer)} die before they can take a "
                                           "sample; the scorer cannot run in forked workers here")
                    queue.appendleft(index)
            busy = [w for w in slots if w is not None and w.index is not None]
            if not busy:
                continue
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                             timeout=max(0.0, min(w.deadline for w in busy) - time.monotonic())))
            for number, worker in enumerate(slots):
                if worker is None or worker.index is None:
                    continue
                index, outcome = worker.index, worker.collect(ready)
                if outcome is None:
                    continue
                outcomes[index] = outcome
                if outcome.status in ("crashed", "timed_out"):
                    worker.kill()
                    slots[number] = None
                if outcome.status == "output_error" or (stop_on_error and outcome.status in ("error", "crashed")):
                    return outcomes
    finally:
        for worker in slots:
            if worker is not None:
                worker.stop()
    return outcomes


class _Worker:
    """One forked worker process and the parent's end of its pipe."""

    def __init__(self, scorer: Callable, check: Check, others: list[_Worker]):
        context = multiprocessing.get_context("fork")
        self.conn, child_conn = context.Pipe(duplex=True)
        inherited = [w.conn for w in others]  # the child closes its copies of the other workers' pipes
        # Not a daemon, so a scorer may start processes of its own; `stop` or `kill` always reaps it.
        self.process = context.Process(target=_serve, args=(child_conn, self.conn, inherited, scorer, check,
                                                            os.getpid()),
                                       name="itersft-scorer", daemon=False)
        self.process.start()
        child_conn.close()
        try:  # also done by the child; whichever runs first makes the worker its own process group
            os.setpgid(self.process.pid, self.process.pid)
        except OSError:
            pass
        self.index: int | None = None
        self.deadline = math.inf

    def assign(self, index: int, call: tuple[tuple, dict], timeout: float) -> bool:
        """Send one call; False when the worker is gone (the call was not charged to it)."""
        try:
            self.conn.send((index, call))
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            return False
        self.index, self.deadline = index, time.monotonic() + timeout
        return True

    def collect(self, ready: set) -> Outcome | None:
        """The outcome of the sample in hand if it is settled (answered, crashed or past its deadline)."""
        if self.conn in ready:
            try:
                index, status, value, message = self.conn.recv()
            except Exception:  # EOF or a half-written message: the worker died
                return self._crashed()
            assert index == self.index, (index, self.index)
            self.index, self.deadline = None, math.inf
            return Outcome(status, value, message)
        if self.process.sentinel in ready:
            return self._crashed()
        if time.monotonic() >= self.deadline:
            return Outcome("timed_out", 0.0, None)
        return None

    def _crashed(self) -> Outcome:
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is not None and code < 0:
            described = f"killed by {signal.Signals(-code).name}"
        elif code is not None:
            described = f"exited with status {code}"
        else:
            described = "closed its pipe"
        return Outcome("crashed", None, f"the scoring worker {described} while scoring this sample")

    def kill(self) -> None:
        """SIGKILL the worker's process group (the worker and anything it started) and reap it."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except OSError:  # the group is gone, or was never formed: kill the worker itself
            self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        """Let an idle worker exit, then kill what is left of its process group (strays it started)."""
        if self.index is None:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=5.0)
        self.kill()


def _serve(conn, parent_end, inherited, scorer: Callable, check: Check, parent_pid: int) -> None:
    """The worker: score one call at a time until told to stop or the pipe closes."""
    global _in_worker
    _in_worker = True
    parent_end.close()
    for other in inherited:
        other.close()
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        return
    name = scorer_name(scorer)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        index, (args, kwargs) = task
        conn.send((index, *_score_one(scorer, check, name, args, kwargs)))


def _score_one(scorer: Callable, check: Check, name: str, args: tuple, kwargs: dict) -> tuple[Status, Any, str | None]:
    try:
        result = scorer(*args, **kwargs)
    except BaseException as exc:  # SystemExit and MemoryError included: the worker lives on
        return "error", None, _describe(exc)
    try:
        value, valid = check(result, name)
    except ScorerOutputError as exc:
        return "output_error", None, str(exc)
    return ("ok" if valid else "invalid"), value, None


def _describe(exc: BaseException) -> str:
    message = f"{type(exc).__name__}: {exc}"[:_MESSAGE_LIMIT]
    if "CUDA" in message and "fork" in message:
        message += (" (scorers that use the GPU cannot run in forked workers: score with in_process=True and "
                    "timeout=None)")
    return message


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
