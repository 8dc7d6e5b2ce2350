"""Held-out evaluation for the loop: greedy accuracy, and pass@1 / pass@k from k samples per prompt."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from itersft.distributed import Ranks
from itersft.loop.metrics import pass_at_k
from itersft.loop.prompts import Prompt
from itersft.loop.sampler import Sampler, SamplingConfig
from itersft.loop.scorers import Scorer, resolve_scorer, score_samples

# Eval draws use their own round indices so they never repeat the training rounds' samples.
EVAL_ROUND_OFFSET = 1_000_000


def evaluate_prompts(model, tokenizer, sampling: SamplingConfig, scorer: Scorer | str, prompts: list[Prompt],
                     meta: list[dict] | None, pass_score: float, num_samples: int, round_index: int,
                     progress: bool = False, ranks: Ranks | None = None, lockstep: bool = False) -> dict[str, Any]:
    """Score the model on held-out prompts.

    `eval_accuracy`: the share of prompts whose greedy completion scores at least `pass_score`
    (unscorable counts as wrong). With `num_samples` = k > 0, also `eval_pass@1` and `eval_pass@k`
    from k completions per prompt drawn with the loop's sampling settings (unbiased estimator).
    Prompts are strings or chat messages, rendered as `sampling` says (`itersft.loop.prompts`).
    With `ranks`, each process samples and scores a share of the prompts and all get the same metrics;
    `lockstep` says the model's parameters are sharded over them (see `Sampler`).
    """
    scorer = resolve_scorer(scorer)

    def draw_and_score(config: SamplingConfig) -> list:
        offset, share = ranks.block(list(range(len(prompts)))) if ranks else (0, list(range(len(prompts))))
        share_meta = [meta[i] for i in share] if meta is not None else None
        sampler = Sampler(model, tokenizer, config, lockstep=ranks if lockstep else None)
        samples = sampler.sample([prompts[i] for i in share], EVAL_ROUND_OFFSET + round_index, meta=share_meta,
                                 prompt_offset=offset, progress=progress)
        score_samples(scorer, samples)
        return ranks.gather(samples) if ranks else samples

    samples = draw_and_score(replace(sampling, num_samples=1, temperature=0.0))
    metrics: dict[str, Any] = {"eval_accuracy": _share_passing(samples, pass_score)}
    if num_samples > 0:
        drawn = draw_and_score(replace(sampling, num_samples=num_samples))
        by_prompt: dict[int, list[bool]] = {}
        for sample in drawn:
            by_prompt.setdefault(sample.prompt_index, []).append(_passes(sample, pass_score))
        metrics["eval_pass@1"] = _mean([pass_at_k(len(c), sum(c), 1) for c in by_prompt.values()])
        metrics["eval_pass@k"] = _mean([pass_at_k(len(c), sum(c), num_samples) for c in by_prompt.values()])
    return metrics


def _passes(sample, pass_score: float) -> bool:
    return sample.score is not None and sample.score >= pass_score


def _share_passing(samples, pass_score: float) -> float:
    return _mean([_passes(s, pass_score) for s in samples])


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
