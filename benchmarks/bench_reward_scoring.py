"""Benchmark: samples scored per second with `trl.rewards` functions, through the loop's scoring vs. directly.

`direct` is what TRL's GRPO does: each reward function called once on the whole batch in this process,
then the weighted sum (no timeout, no isolation: a hang hangs, a crash ends the process). The loop's
systems go through `score_samples` with `RewardFunctions`:

* `loop (chunks)`: the default: forked scoring workers, each function called on chunks of up to 16
  samples, each chunk under the per-sample timeout, a failing chunk retried one sample at a time;
* `loop (one per call)`: `chunk_size=1`, every sample in its own worker call (isolation, no batching);
* `loop (in process)`: `score_in_process`, the whole batch per function here, as TRL calls it.

Two function sets: `format` (think_format_reward, soft overlong punishment, repetition penalty: cheap
functions, where the pool's overhead shows) and `format + math` (adding accuracy_reward, math-verify:
the verifier's own work dominates). The batch is conversational, k samples per prompt, with
completion ids of 64-256 tokens. The parent process first holds `--parent-mib` of touched memory, so
forking the workers costs what it costs beside a loaded model. Systems interleave (one batch each, in
turn) after a warm-up round; medians of the timed rounds.

    .venv/bin/python benchmarks/bench_reward_scoring.py [--samples 512] [--rounds 5] [--parent-mib 2048]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import header, median, snapshot, table  # noqa: E402

from itersft.sampling.samples import Sample  # noqa: E402
from itersft.scoring.pool import ScoringOptions, default_workers  # noqa: E402
from itersft.scoring.reward_functions import RewardFunctions  # noqa: E402
from itersft.scoring.scorers import score_samples  # noqa: E402


def batch(size: int, k: int = 8, seed: int = 0) -> list[Sample]:
    """`size` conversational samples, k per prompt: some well formatted, some right, of varied lengths."""
    rng = random.Random(seed)
    samples = []
    for i in range(size):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        answer = a + b + (0 if rng.random() < 0.5 else rng.randint(1, 9))
        words = ["add", "the", "tens", "then", "ones", "carry"]
        reasoning = " ".join(rng.choice(words) for _ in range(rng.randint(5, 60)))
        text = (f"<think>{reasoning}</think> The answer is \\boxed{{{answer}}}." if rng.random() < 0.6
                else f"{reasoning} so {answer}")
        samples.append(Sample(prompt=[{"role": "user", "content": f"What is {a} + {b}?"}], completion=text,
                              prompt_index=i // k, sample_index=i % k,
                              completion_ids=[rng.randrange(8192) for _ in range(rng.randint(64, 256))],
                              stop_token_id=2, meta={"solution": f"${a + b}$"}))
    return samples


def function_sets() -> dict[str, tuple[list, list[float]]]:
    from trl.rewards import (
        accuracy_reward,
        get_repetition_penalty_reward,
        get_soft_overlong_punishment,
        think_format_reward,
    )

    cheap = [think_format_reward, get_soft_overlong_punishment(256, 64), get_repetition_penalty_reward(3, -1.0)]
    return {"format": (cheap, [1.0, 1.0, 0.5]), "format + math": ([*cheap, accuracy_reward], [1.0, 1.0, 0.5, 2.0])}


def direct(functions, weights, samples) -> list[float | None]:
    """TRL's way: one keyword call per function on the whole batch, then the weighted nansum."""
    prompts = [s.prompt for s in samples]
    completions = [[{"role": "assistant", "content": s.completion}] for s in samples]
    ids = [[*s.completion_ids, s.stop_token_id] for s in samples]
    columns = {"solution": [s.meta["solution"] for s in samples]}
    rewards = [f(prompts=prompts, completions=completions, completion_ids=ids, trainer_state=None, **columns)
               for f in functions]
    totals = []
    for i in range(len(samples)):
        scored = [w * r[i] for w, r in zip(weights, rewards) if r[i] is not None]
        totals.append(sum(scored) if scored else None)
    return totals


SYSTEMS = ("direct (TRL's way)", "loop (chunks, default)", "loop (one per call)", "loop (in process)")


def run(system: str, functions, weights, samples) -> list[float | None]:
    """Score `samples` the way `system` does; returns each sample's weighted sum."""
    if system == SYSTEMS[0]:
        return direct(functions, weights, samples)
    options = ScoringOptions(timeout=None, in_process=True) if system == SYSTEMS[3] else ScoringOptions()
    chunk_size = 1 if system == SYSTEMS[2] else 16
    score_samples(RewardFunctions(functions, weights, chunk_size=chunk_size), samples, options=options)
    return [s.score for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parent-mib", type=int, default=2048)
    args = parser.parse_args()
    started = snapshot()
    ballast = torch.ones(args.parent_mib * 2**18)  # float32: 4 bytes each; ones() touches every page
    samples = batch(args.samples)
    rows = []
    for set_name, (functions, weights) in function_sets().items():
        expected = direct(functions, weights, samples)
        times: dict[str, list[float]] = {name: [] for name in SYSTEMS}
        for round_index in range(args.rounds + 1):
            for system in SYSTEMS:
                begin = time.perf_counter()
                scores = run(system, functions, weights, samples)
                if round_index:  # round 0 warms up (imports, math-verify's first parse)
                    times[system].append(time.perf_counter() - begin)
                assert all(a is None and b is None or abs(a - b) < 1e-9 for a, b in zip(scores, expected)), system
        base = median(times[SYSTEMS[0]])
        for name, values in times.items():
            seconds = median(values)
            rows.append([set_name, name, f"{seconds * 1000:.1f}", f"{args.samples / seconds:,.0f}",
                         f"{seconds / base:.1f}x"])
    del ballast
    print(header(f"reward scoring: {args.samples} conversational samples (k = 8), {default_workers()} workers, "
                 f"{args.parent_mib} MiB held by the parent, median of {args.rounds} interleaved rounds",
                 started=started))
    print(table(rows, ["functions", "system", "ms per batch", "samples/s", "time vs direct"]))


if __name__ == "__main__":
    main()
