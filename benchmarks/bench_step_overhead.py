"""Benchmark 1: `step()` against a bare PyTorch loop on identical padded micro-batches.

Same model (the Qwen2-style ~6M-parameter model of `_common.py`), same samples, same micro-batches
(`batching="padded"`, `shuffle_samples=False`: samples in the given order, right-padded, 4 per
micro-batch), one fused-AdamW update per step (accumulation over the step's 16 micro-batches), no
gradient clipping. What differs is only what the trainer adds: input validation, callbacks, the
statistics it returns (one host sync per update) and its loss path. Rows:

* `step()`: the default loss path (label positions only, chunked head + cross-entropy);
* `step()`, full logits forced: the same loss computation as the bare loop, so the ratio is the
  trainer's own overhead (target >= 0.95).

Runs every system once per round on the same step's samples, interleaved, and reports medians.

    .venv/bin/python benchmarks/bench_step_overhead.py [--rounds 3] [--samples 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import BATCH_SIZE, machine, median, save_model, table, workload  # noqa: E402
from _workers import LEARNING_RATE, bare_step, padded  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, after one warm-up round")
    parser.add_argument("--samples", type=int, default=64, help="samples per step")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import itersft.trainer.loss
    from itersft import IterativeSFTConfig, IterativeSFTTrainer

    model_dir = save_model(Path(tempfile.mkdtemp()) / "model")
    torch.manual_seed(0)
    bare_model = AutoModelForCausalLM.from_pretrained(model_dir)
    bare_model.train()
    optimizer = torch.optim.AdamW(bare_model.parameters(), lr=LEARNING_RATE, weight_decay=0.0, fused=True)

    def trainer():
        config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", learning_rate=LEARNING_RATE,
                                    per_device_train_batch_size=BATCH_SIZE,
                                    gradient_accumulation_steps=-(-args.samples // BATCH_SIZE),
                                    batching="padded", shuffle_samples=False, max_grad_norm=0.0,
                                    save_strategy="no", logging_steps=10**9)
        return IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config,
                                   tokenizer=AutoTokenizer.from_pretrained(model_dir))

    fast, full = trainer(), trainer()
    separable_head = itersft.trainer.loss.separable_head

    def full_logits_step(samples):
        itersft.trainer.loss.separable_head = lambda model, wrapped: None
        try:
            full.step(input_ids=samples)
        finally:
            itersft.trainer.loss.separable_head = separable_head

    systems = {
        "bare loop (full logits)": lambda samples: bare_step(
            bare_model, optimizer, [padded(samples[i : i + BATCH_SIZE], fast.pad_token_id)
                                    for i in range(0, len(samples), BATCH_SIZE)]),
        "itersft step() (default loss path)": lambda samples: fast.step(input_ids=samples),
        "itersft step() (full logits forced)": full_logits_step,
    }
    seconds = {name: [] for name in systems}
    tokens = 0
    for round_index in range(args.rounds + 1):
        samples = workload(round_index, samples=args.samples)
        for name, run in systems.items():
            started = time.perf_counter()
            run(samples)
            if round_index:
                seconds[name].append(time.perf_counter() - started)
        tokens = sum(len(s) for s in samples)

    base = tokens / median(seconds["bare loop (full logits)"])
    rows = []
    for name, values in seconds.items():
        rate = tokens / median(values)
        rows.append([name, f"{rate / base:.2f}x", f"{rate:,.0f}", f"{median(values):.2f}",
                     " ".join(f"{v:.2f}" for v in values)])
    print(f"# step() vs a bare PyTorch loop, identical padded micro-batches ({args.samples} samples/step, "
          f"lengths {16}-{512}, batch {BATCH_SIZE}, one update/step, {args.rounds} rounds + 1 warm-up)")
    print(f"# machine: {machine()}")
    print(table(rows, ["system", "real tokens/s vs bare", "real tokens/s", "median s/step", "all rounds (s)"]))


if __name__ == "__main__":
    main()
