"""Benchmark 4: time per `step()` as the step grows from 16 to 256 samples.

The mixed-length workload (lengths uniform 16-512, batch 4) on the Qwen2-style model of
`_common.py`, default settings (`batching="auto"`) with `gradient_accumulation_steps=16`, so a
step of n samples makes n/64 updates (16 samples: one update over 4 micro-batches). Linear scaling
means a constant time per real token: the last column is each size's seconds per 1k real tokens
relative to the 64-sample step's.

    .venv/bin/python benchmarks/bench_scaling.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BATCH_SIZE, header, median, save_model, snapshot, table, workload  # noqa: E402

SIZES = (16, 32, 64, 128, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per size, after one warm-up step")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from itersft import IterativeSFTConfig, IterativeSFTTrainer

    model_dir = save_model(Path(tempfile.mkdtemp()) / "model")
    config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", per_device_train_batch_size=BATCH_SIZE,
                                gradient_accumulation_steps=16, save_strategy="no", logging_steps=10**9)
    trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config,
                                  tokenizer=AutoTokenizer.from_pretrained(model_dir))
    trainer.step(input_ids=workload(10_000, samples=64))  # warm-up
    began = snapshot()
    seconds, tokens = {n: [] for n in SIZES}, {n: [] for n in SIZES}
    for round_index in range(args.rounds):
        for n in SIZES:
            samples = workload(round_index, samples=n)
            started = time.perf_counter()
            trainer.step(input_ids=samples)
            seconds[n].append(time.perf_counter() - started)
            tokens[n].append(sum(len(s) for s in samples))
    per_k = {n: median([s / t * 1000 for s, t in zip(seconds[n], tokens[n])]) for n in SIZES}
    rows = [[n, f"{median(seconds[n]):.2f}", f"{median(seconds[n]) / n * 1000:.1f}", f"{median(tokens[n]):,.0f}",
             f"{per_k[n]:.3f}", f"{per_k[n] / per_k[64]:.2f}x"] for n in SIZES]
    print(header(f"step() time vs step size, mixed lengths 16-512, batch {BATCH_SIZE}, accumulation 16, default "
                 f"batching; {args.rounds} rounds + 1 warm-up step; medians", started=began))
    print(table(rows, ["samples/step", "s/step", "ms/sample", "real tokens", "s per 1k tokens",
                       "s per 1k tokens vs 64"]))


if __name__ == "__main__":
    main()
