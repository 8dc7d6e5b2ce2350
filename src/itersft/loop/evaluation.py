"""Held-out evaluation for the loop: greedy accuracy, and pass@1 / pass@k from k samples per prompt."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from itersft.distributed import Ranks
from itersft.loop.metrics import pass_rates
from itersft.loop.sample_and_score import ScoredSamples, sample_and_score, score_and_gather
from itersft.sampling.prompts import Prompt
from itersft.sampling.sampler import SamplingConfig
from itersft.sampling.samples import Sample
from itersft.scoring.pool import ScoringOptions
from itersft.scoring.scorers import Scorer, resolve_scorer

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
    when = "before round 0" if round_index < 0 else f"after round {round_index}"

    def draw(config: SamplingConfig) -> ScoredSamples:
        return sample_and_score(model, tokenizer, config, scorer, prompts, meta, list(range(len(prompts))),
                                EVAL_ROUND_OFFSET + round_index, f"the held-out evaluation {when}", ranks=ranks,
                                lockstep=lockstep, progress=progress, scoring=scoring)

    def rescore(extra: Scorer, greedy: list[Sample]) -> ScoredSamples:
        """Copies of the greedy samples (every process's, the same on each) scored by `extra`: each process
        scores its share, as it scored its share of the draw."""
        share = ranks.block(greedy)[1] if ranks is not None else greedy
        return score_and_gather(extra, [replace(sample, score=None, rewards=None) for sample in share],
                                f"the held-out evaluation {when}", ranks=ranks, scoring=scoring)

    draws = [draw(replace(sampling, num_samples=1, temperature=0.0))]
    metrics: dict[str, Any] = {"eval_accuracy": pass_rates(draws[0].samples, pass_score)[0]}
    rescored = {name: rescore(resolve_scorer(extra), draws[0].samples) for name, extra in (extra_scorers or {}).items()}
    metrics.update({f"eval_accuracy_{name}": pass_rates(scored.samples, pass_score)[0]
                    for name, scored in rescored.items()})
    if num_samples > 0:
        draws.append(draw(replace(sampling, num_samples=num_samples)))
        metrics["eval_pass@1"], metrics["eval_pass@k"], _ = pass_rates(draws[1].samples, pass_score, k=num_samples)
    metrics["eval_samples_timed_out"] = sum(d.timed_out for d in [*draws, *rescored.values()])
    return metrics
