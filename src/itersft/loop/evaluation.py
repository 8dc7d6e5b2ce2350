"""Held-out evaluation for the loop: greedy accuracy, and pass@1 / pass@k from k samples per prompt."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from itersft.distributed import Ranks
from itersft.loop.metrics import pass_rates
from itersft.sampling.prompts import Prompt
from itersft.sampling.sampler import Sampler, SamplingConfig
from itersft.scoring.pool import ScoringOptions, scorer_name
from itersft.scoring.report import stop_if_every_sample_failed
from itersft.scoring.scorers import Scorer, resolve_scorer, score_samples

# Eval draws use their own round indices so they never repeat the training rounds' samples.
EVAL_ROUND_OFFSET = 1_000_000


def evaluate_prompts(model, tokenizer, sampling: SamplingConfig, scorer: Scorer | str, prompts: list[Prompt],
                     meta: list[dict] | None, pass_score: float, num_samples: int, round_index: int,
                     ranks: Ranks | None = None, lockstep: bool = False,
                     progress: Callable[[int, int], None] | None = None,
                     scoring: ScoringOptions | None = None,
                     extra_scorers: Mapping[str, Scorer | str] | None = None) -> dict[str, Any]:
    """Score the model on held-out prompts.

    `eval_accuracy`: the share of prompts whose greedy completion scores at least `pass_score`
    (unscorable counts as wrong). With `num_samples` = k > 0, also `eval_pass@1` and `eval_pass@k`
    from k completions per prompt drawn with the loop's sampling settings (unbiased estimator).
    `extra_scorers` ({name: scorer}): the same greedy completions scored by each of them too, reported as
    `eval_accuracy_<name>` (a strict and a lenient answer check from one generation, say).
    `eval_samples_timed_out`: samples whose scoring ran past the timeout of `scoring` (they score 0.0).
    Prompts are strings or chat messages, rendered as `sampling` says (`itersft.sampling.prompts`).
    With `ranks`, each process samples and scores a share of the prompts and all get the same metrics;
    `lockstep` says the model's parameters are sharded over them (see `Sampler`). `progress(done, total)`
    reports this rank's sampling progress. A scorer that fails on every held-out sample raises
    `ScorerFailedError` rather than report an accuracy of 0.0 (see `scoring.report`).
    """
    scorer = resolve_scorer(scorer)
    timed_out = 0

    def draw(config: SamplingConfig) -> list:
        offset, share = ranks.block(list(range(len(prompts)))) if ranks else (0, list(range(len(prompts))))
        share_meta = [meta[i] for i in share] if meta is not None else None
        sampler = Sampler(model, tokenizer, config, lockstep=ranks if lockstep else None)
        return sampler.sample([prompts[i] for i in share], EVAL_ROUND_OFFSET + round_index, meta=share_meta,
                              prompt_indices=share, progress=progress)

    def score(scorer: Scorer, samples: list) -> list:
        """Score this rank's `samples` in place and return every rank's."""
        nonlocal timed_out
        report = score_samples(scorer, samples, options=scoring)
        timed_out += report.timed_out
        failed, total = ranks.sum([report.failed, len(samples)], ranks.accelerator.device) if ranks else (
            report.failed, len(samples))
        when = "before round 0" if round_index < 0 else f"after round {round_index}"
        stop_if_every_sample_failed(scorer_name(scorer), report, int(failed), int(total),
                                    f"the held-out evaluation {when}", (scoring or ScoringOptions()).timeout)
        return ranks.gather(samples) if ranks else samples

    greedy = draw(replace(sampling, num_samples=1, temperature=0.0))
    metrics: dict[str, Any] = {"eval_accuracy": pass_rates(score(scorer, greedy), pass_score)[0]}
    for name, extra in (extra_scorers or {}).items():  # the same completions, scored again
        metrics[f"eval_accuracy_{name}"] = pass_rates(score(resolve_scorer(extra), greedy), pass_score)[0]
    if num_samples > 0:
        pass_1, pass_k, _ = pass_rates(score(scorer, draw(replace(sampling, num_samples=num_samples))), pass_score,
                                       k=num_samples)
        metrics["eval_pass@1"], metrics["eval_pass@k"] = pass_1, pass_k
    if ranks is not None:
        (timed_out,) = ranks.sum([timed_out], ranks.accelerator.device)
    metrics["eval_samples_timed_out"] = int(timed_out)
    return metrics
