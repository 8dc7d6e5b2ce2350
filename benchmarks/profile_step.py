"""Where `step()`'s time goes: torch.profiler over a few steps of the training workload.

The workload of `bench_training.py` (16 texts of 16-512 tokens, per-device batch 4, the ~6.3M model).
Prints the operators by self CPU time, then the step's time split into the parts that matter for
speed: matrix products, attention kernels, the LM head + loss (`_LinearCrossEntropySum`, which holds
its own products), the optimizer, and the rest (elementwise work, host-side Python). Run it with one
thread to see the single-core split without interference between threads.

    python benchmarks/profile_step.py [--accumulation 1] [--steps 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BATCH_SIZE, header, quiet_transformers, save_model, snapshot, text_workload  # noqa: E402

# Each operator's own (self) time goes to the first part whose keys match it or one of its callers.
PARTS = {
    "LM head + loss (chunked, label positions only)": ("_linearcrossentropysum",),
    "attention kernels (forward and backward)": ("scaled_dot_product", "scaleddotproduct", "flash_attention"),
    "optimizer (fused AdamW) and gradient clipping": ("optimizer.step", "_fused_adamw", "clip_grad", "_foreach_norm"),
    "matrix products (decoder, forward and backward)": ("aten::mm", "aten::addmm", "aten::bmm"),
}
REST = "everything else (elementwise, norms, embedding, host-side Python)"


def part_of(event) -> str:
    chain = []
    while event is not None:
        chain.append(event.name.lower())
        event = event.cpu_parent
    for part, keys in PARTS.items():
        names = chain if part != "matrix products (decoder, forward and backward)" else chain[:1]
        if any(key in name for name in names for key in keys):
            return part
    return REST


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps, after one warm-up step")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batching", default=None, help="default: the library's default")
    args = parser.parse_args()
    quiet_transformers()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from itersft import IterativeSFTConfig, IterativeSFTTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = save_model(Path(tempfile.mkdtemp()) / "model")
    extra = {"batching": args.batching} if args.batching else {}
    config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", save_strategy="no", learning_rate=1e-4,
                                per_device_train_batch_size=BATCH_SIZE, gradient_accumulation_steps=args.accumulation,
                                **extra)
    trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config,
                                  tokenizer=AutoTokenizer.from_pretrained(model_dir))
    trainer.step(texts=text_workload(0))
    started_at = snapshot()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for index in range(1, args.steps + 1):
            trainer.step(texts=text_workload(index))
        wall = time.perf_counter() - started
    print(header(f"step() profile: ~6.3M model, 16 texts/step of 16-512 tokens, batch {BATCH_SIZE}, accumulation "
                 f"{args.accumulation}, batching={trainer.settings.batching}; {args.steps} steps after 1 warm-up",
                 started=started_at))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    totals = dict.fromkeys([*PARTS, REST], 0.0)
    for event in prof.events():
        totals[part_of(event)] += event.self_cpu_time_total
    profiled = sum(totals.values())
    print(f"\n# {wall:.2f} s wall for {args.steps} steps; {profiled / 1e6:.2f} s of operator time (all threads)")
    for name, value in totals.items():
        print(f"- {name}: {value / profiled:.0%}")


if __name__ == "__main__":
    main()
