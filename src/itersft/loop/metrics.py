"""Per-round sample metrics: how much was accepted, how the kept and rejected rewards compare, whether
the model still solves prompts in several ways, and pass@k.

Pure functions over lists, for the loop to log each round:
- `distinct_n`: distinct n-grams / all n-grams, the diversity measure RAFT (Dong et al. 2023) tracked
  (its distinct-2 fell from 0.39 to 0.22 while reward rose).
- `pass_at_k`: the unbiased pass@k estimator of Chen et al. 2021 (Codex); ReST-EM (Singh et al. 2023)
  reports self-training helps pass@1 more than pass@k, so both are worth watching.
- `score_summary` and `round_sample_metrics`: acceptance rate and kept-vs-rejected reward statistics,
  which users of the old IterativeSFTTrainer asked for.
Not here: timings (the trainer logs those) or anything that needs a model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from itersft.checks import is_integer
from itersft.sampling.samples import Sample


def distinct_n(texts: Iterable[str], n: int, unit: Literal["word", "char"] = "word") -> float:
    """Distinct n-grams divided by total n-grams, over all `texts`; 0.0 when there are no n-grams.

    `unit="word"` splits on whitespace; `unit="char"` uses characters (for languages written without
    spaces). n-grams never span two texts.
    """
    if not is_integer(n) or n < 1:
        raise ValueError(f"`n` must be an integer >= 1; got {n!r}")
    if unit not in ("word", "char"):
        raise ValueError(f"`unit` must be 'word' or 'char'; got {unit!r}")
    total = 0
    distinct: set[tuple[str, ...]] = set()
    for text in texts:
        tokens = text.split() if unit == "word" else list(text)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        distinct.update(grams)
    return len(distinct) / total if total else 0.0


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Probability that at least one of `k` samples, drawn without replacement from `num_samples` of
    which `num_correct` are correct, is correct: `1 - C(n - c, k) / C(n, k)` (Chen et al. 2021)."""
    for name, value in (("num_samples", num_samples), ("num_correct", num_correct), ("k", k)):
        if not is_integer(value):
            raise ValueError(f"`{name}` must be an integer; got {value!r}")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"`num_correct` must be in [0, num_samples={num_samples}]; got {num_correct}")
    if not 1 <= k <= num_samples:
        raise ValueError(f"`k` must be in [1, num_samples={num_samples}]; got {k}")
    if num_samples - num_correct < k:  # every draw of k includes a correct sample
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def score_summary(scores: Iterable[float | None]) -> dict[str, float | int | None]:
    """`mean`, `min`, `max` and `count` of the scores that are not None (None values when none are)."""
    values = [s for s in scores if s is not None]
    if not values:
        return {"mean": None, "min": None, "max": None, "count": 0}
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "count": len(values)}


def pass_rates(samples: Sequence[Sample], pass_score: float,
               k: int | None = None) -> tuple[float | None, float | None, int | None]:
    """`(pass@1, pass@k, k)` averaged over prompts (grouped by `prompt_index`), with the unbiased estimator.

    `k` defaults to the fewest samples any prompt has; a sample is correct when it `passes(pass_score)`.
    All three are None when there are no samples.
    """
    correct: dict[int, list[bool]] = defaultdict(list)
    for sample in samples:
        correct[sample.prompt_index].append(sample.passes(pass_score))
    if not correct:
        return None, None, None
    if k is None:
        k = min(len(flags) for flags in correct.values())
    pass_1 = [pass_at_k(len(flags), sum(flags), 1) for flags in correct.values()]
    pass_k = [pass_at_k(len(flags), sum(flags), k) for flags in correct.values()]
    return sum(pass_1) / len(pass_1), sum(pass_k) / len(pass_k), k


def round_sample_metrics(
    drawn: Sequence[Sample],
    kept: Sequence[Sample],
    pass_score: float = 1.0,
    unit: Literal["word", "char"] = "word",
) -> dict[str, Any]:
    """Metrics of one round: `drawn` are the scored samples, `kept` the filter's output from the finished
    ones (what the round trains on).

    `kept` must hold the same objects as `drawn` (filters return them, not copies); every drawn sample
    not kept is rejected. Returns `samples_drawn`, `samples_scored`, `samples_unscorable`,
    `samples_unfinished` (drawn samples cut off at `max_new_tokens`, which the filter never sees),
    `samples_kept`, `acceptance_rate` (kept / drawn), `kept_reward_{mean,min,max}` and
    `rejected_reward_{mean,min,max}` over scored samples, `distinct_1`/`distinct_2` of the kept
    completions (in `unit`s), and `pass@1`/`pass@k` averaged over prompts (grouped by prompt_index) with
    `samples_per_prompt` = k = the fewest samples any prompt has; a sample is correct when
    `score >= pass_score`, and unscorable samples count as incorrect. Undefined values are None.
    """
    drawn_ids = {id(s) for s in drawn}
    strangers = sum(id(s) not in drawn_ids for s in kept)
    if strangers:
        raise ValueError(
            f"`kept` holds {strangers} samples that are not in `drawn`; pass the filter's output for "
            "exactly these drawn samples"
        )
    kept_ids = {id(s) for s in kept}
    scored = sum(s.score is not None for s in drawn)
    kept_summary = score_summary(s.score for s in kept)
    rejected_summary = score_summary(s.score for s in drawn if id(s) not in kept_ids)
    pass_1, pass_k, k = pass_rates(drawn, pass_score)
    completions = [s.completion for s in kept]
    return {
        "samples_drawn": len(drawn),
        "samples_scored": scored,
        "samples_unscorable": len(drawn) - scored,
        "samples_unfinished": sum(not s.finished for s in drawn),
        "samples_kept": len(kept),
        "acceptance_rate": len(kept) / len(drawn) if drawn else None,
        **{f"kept_reward_{key}": kept_summary[key] for key in ("mean", "min", "max")},
        **{f"rejected_reward_{key}": rejected_summary[key] for key in ("mean", "min", "max")},
        "distinct_1": distinct_n(completions, 1, unit),
        "distinct_2": distinct_n(completions, 2, unit),
        "pass@1": pass_1,
        "pass@k": pass_k,
        "samples_per_prompt": k,
    }
