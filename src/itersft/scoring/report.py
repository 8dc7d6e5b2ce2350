"""What happened when a batch was scored, and the one failure that stops a run: a scorer that failed on
every sample.

A scorer *fails* on a sample when it raises, when its worker process dies, or when it runs past the
timeout. One failing sample is data (a malformed answer, a pathological program) and the loop goes on
with it unscorable (or scored 0.0, for a timeout). A scorer that fails on *every* sample of a round is
broken or cut off (a verifier service that is down, a metadata key that no sample has): going on
would keep nothing, train nothing and report an accuracy of 0.0 that reads as a bad model, so the loop
stops with `ScorerFailedError`, quoting the first exception and the sample it was raised on.

Not failures: a None (the scorer says it cannot score this one), NaN or inf (unscorable: data-dependent,
e.g. a reward model on an odd input). A value that is not a number at all (a string, a dict, a list per
sample) is a bug in the scorer and raises `ScorerOutputError` at once, on the first such sample.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ScoringReport:
    """What happened when a batch was scored.

    `scored + unscorable` is the number of samples. `errors` (the scorer raised on the sample, or its
    worker process died) and `invalid` (it returned NaN or inf) are both counted inside `unscorable`,
    as are explicit None returns. `timed_out` samples ran past the timeout and score 0.0, so they count
    inside `scored`. `first_error` is the first error's message, `first_error_sample` the
    (prompt_index, sample_index) of the sample it was raised on.
    """

    scored: int = 0
    unscorable: int = 0
    errors: int = 0
    invalid: int = 0
    first_error: str | None = None
    timed_out: int = 0
    first_error_sample: tuple[int, int] | None = None

    @property
    def failed(self) -> int:
        """Samples the scorer failed on: it raised, its worker died, or it ran past the timeout."""
        return self.errors + self.timed_out

    def record_error(self, sample, message: str | None) -> None:
        """Count one sample the scorer raised (or crashed) on, remembering the first."""
        self.errors += 1
        if self.first_error is None:
            self.first_error = message
            self.first_error_sample = (sample.prompt_index, sample.sample_index)


def describe_sample(sample) -> str:
    """Which sample, for an error message."""
    return f"prompt_index={sample.prompt_index}, sample_index={sample.sample_index}"


class ScorerFailedError(RuntimeError):
    """The scorer failed on every sample of a round or an evaluation; the run stops."""


def stop_if_every_sample_failed(scorer: str, local: ScoringReport, failed: int, total: int, where: str,
                                timeout: float | None) -> None:
    """Raise ScorerFailedError when `failed` (over every process) equals `total` > 0 samples.

    `local` is this process's report: its first error, with the sample it was raised on, is quoted
    (every process raises; one that scored nothing says so). `where` names the batch ("round 3").
    """
    if total == 0 or failed < total:
        return
    if local.first_error is not None:
        prompt_index, sample_index = local.first_error_sample or (None, None)
        first = (f"The first exception, on the sample with prompt_index={prompt_index}, "
                 f"sample_index={sample_index}: {local.first_error}")
    elif local.timed_out:
        first = f"Every sample ran past the {timeout:g} s timeout (`score_timeout`)."
    else:
        first = "This process scored none of them: see the other processes' logs for the exception."
    raise ScorerFailedError(
        f"scorer {scorer} failed on all {total} samples of {where} (raised, crashed or timed out), so nothing "
        f"could be kept and the run stops rather than train on nothing. {first} Check the scorer: a verifier "
        "that is down, a metadata key that the samples lack, an exception in its code (`fail_fast=True` "
        "stops at the first failure, with its traceback).")
