"""Shard -> sample -> score -> gather: how a round and a held-out evaluation draw their scored samples.

Each process samples and scores a contiguous share of the prompts, then every process receives every
process's samples, so what follows (the filter, the metrics) sees the same samples as in one process.
A scorer that fails on every sample stops the run here (`scoring.report`), for a round and an
evaluation alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from itersft.distributed import Ranks
from itersft.sampling.prompts import Prompt
from itersft.sampling.sampler import Sampler, SamplingConfig
from itersft.sampling.samples import Sample
from itersft.scoring.pool import ScoringOptions, scorer_name
from itersft.scoring.report import stop_if_every_sample_failed
from itersft.scoring.scorers import Scorer, score_samples


@dataclass
class ScoredSamples:
    """What one draw gave: `samples` of every process in rank order, with their scores; `scorer_errors`
    and `timed_out` counted over every process; `sampling_seconds` this process's time in the sampler."""

    samples: list[Sample]
    scorer_errors: int
    timed_out: int
    sampling_seconds: float


def sample_and_score(model, tokenizer, sampling: SamplingConfig, scorer: Scorer, prompts: list[Prompt],
                     meta: list[dict] | None, indices: list[int], round_index: int, where: str,
                     ranks: Ranks | None = None, lockstep: bool = False,
                     progress: Callable[[int, int], None] | None = None, scoring: ScoringOptions | None = None,
                     fail_fast: bool = False) -> ScoredSamples:
    """Draw `sampling.num_samples` completions for each prompt `prompts[i]`, i in `indices`, and score them.

    `round_index` seeds the draws (see `Sampler`); `where` names the batch in a `ScorerFailedError`
    ("round 3"). With `ranks`, this process takes its share of `indices` (`Ranks.block`); `lockstep`
    says the model's parameters are sharded over the processes, which then generate in lockstep.
    `progress(done, total)` reports this process's sampling; `scoring` and `fail_fast` say how the
    scorer runs (`score_samples`).
    """
    share = ranks.block(indices)[1] if ranks is not None else list(indices)
    sampler = Sampler(model, tokenizer, sampling, lockstep=ranks if lockstep else None)
    started = time.perf_counter()
    local = sampler.sample([prompts[i] for i in share], round_index,
                           meta=[meta[i] for i in share] if meta is not None else None,
                           prompt_indices=share, progress=progress)
    sampling_seconds = time.perf_counter() - started
    return score_and_gather(scorer, local, where, ranks=ranks, scoring=scoring, fail_fast=fail_fast,
                            sampling_seconds=sampling_seconds)


def score_and_gather(scorer: Scorer, local: list[Sample], where: str, ranks: Ranks | None = None,
                     scoring: ScoringOptions | None = None, fail_fast: bool = False,
                     sampling_seconds: float = 0.0) -> ScoredSamples:
    """Score this process's samples `local` in place, then gather every process's (see `sample_and_score`)."""
    report = score_samples(scorer, local, fail_fast=fail_fast, options=scoring)
    if ranks is None:
        samples, errors, timed_out = local, report.errors, report.timed_out
    else:
        samples = ranks.gather(local)
        errors, timed_out = ranks.sum([report.errors, report.timed_out], ranks.accelerator.device)
    stop_if_every_sample_failed(scorer_name(scorer), report, int(errors + timed_out), len(samples), where,
                                (scoring or ScoringOptions()).timeout)
    return ScoredSamples(samples, int(errors), int(timed_out), sampling_seconds)
