"""Benchmark 2: the mixed-length workload, itersft against TRL 0.23.1 and a bare PyTorch loop.

Workload: 64 samples per step, lengths uniform in 16-512 (fixed seed, the same samples for every
system), per-device batch 4, the Qwen2-style model of `_common.py` (hidden 256, 4 layers, 8k vocab,
~6M parameters), loss on every token. Every system runs in its own fresh process, so peak RSS is its
own high-water mark; TRL runs from its own virtualenv (benchmarks/.venv-trl, made by
`setup_trl_venv.sh`: torch 2.13.0 first, then trl 0.23.1 and transformers<5).

TRL gets a fair run: `max_steps` set and a constant LR schedule (its defaults decay the LR to zero),
its default collator and clipping. TRL ignores `gradient_accumulation_steps` (one optimizer update per
micro-batch) and pads every micro-batch to the longest sample of the whole step; both are what it
does, so both count. itersft is shown with one update per step (accumulation 16, the setting that
means the same as TRL's intent) in each `batching` mode, and with accumulation 1 (16 updates per step,
TRL's update count).

    .venv/bin/python benchmarks/bench_vs_trl.py [--rounds 1] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HERE, machine, median, parse, save_model, table  # noqa: E402

SYSTEMS = {
    "TRL 0.23.1 IterativeSFTTrainer": ["trl"],
    "bare loop (padded, full logits)": ["bare"],
    "itersft batching=sorted (default), accum 16": ["itersft", "--batching", "sorted", "--accumulation", "16"],
    "itersft batching=auto, accum 16": ["itersft", "--batching", "auto", "--accumulation", "16"],
    "itersft batching=packed, accum 16": ["itersft", "--batching", "packed", "--accumulation", "16"],
    "itersft batching=padded, accum 16": ["itersft", "--batching", "padded", "--accumulation", "16"],
    "itersft batching=sorted (default), accum 1": ["itersft", "--batching", "sorted", "--accumulation", "1"],
    "itersft batching=auto, accum 1": ["itersft", "--batching", "auto", "--accumulation", "1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per system (interleaved)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process, after one warm-up step")
    parser.add_argument("--trl-python", default=str(HERE / ".venv-trl" / "bin" / "python"))
    args = parser.parse_args()
    model_dir = save_model(Path(tempfile.mkdtemp()) / "model")
    systems = dict(SYSTEMS)
    if not Path(args.trl_python).exists():
        print(f"# {args.trl_python} not found: run benchmarks/setup_trl_venv.sh first. TRL is left out.")
        systems.pop("TRL 0.23.1 IterativeSFTTrainer")

    rates, rss, threads, padding = {n: [] for n in systems}, {n: [] for n in systems}, {}, {}
    for _ in range(args.rounds):
        for name, argv in systems.items():
            python = args.trl_python if argv[0] == "trl" else sys.executable
            command = [python, str(HERE / "_workers.py"), *argv, "--model", str(model_dir), "--steps", str(args.steps)]
            environment = {**os.environ, "PYTHONWARNINGS": "ignore"}
            done = subprocess.run(command, capture_output=True, text=True, env=environment)
            result = parse(done.stdout + done.stderr)
            rates[name] += [t / s for t, s in zip(result["tokens"], result["step_seconds"])]
            rss[name].append(result["peak_rss_mib"])
            threads[name] = f"{result['threads']} threads, torch {result['torch']}"
            padding[name] = sum(result["computed_tokens"]) / sum(result["tokens"])
            print(f"# {name}: {[round(s, 2) for s in result['step_seconds']]} s/step, "
                  f"{result['peak_rss_mib']:.0f} MiB", flush=True)

    reference = median(rates["TRL 0.23.1 IterativeSFTTrainer"]) if "TRL 0.23.1 IterativeSFTTrainer" in rates else None
    bare_rss = median(rss["bare loop (padded, full logits)"])
    rows = []
    for name in systems:
        rate = median(rates[name])
        rows.append([name, f"{rate / reference:.2f}x" if reference else "-", f"{median(rss[name]) / bare_rss:.2f}x",
                     f"{rate:,.0f}", f"{median(rss[name]):,.0f}", f"{padding[name]:.2f}", threads[name]])
    print(f"# mixed-length workload: 64 samples/step, lengths 16-512, batch 4; {args.rounds} process(es) x "
          f"{args.steps} timed steps (+1 warm-up) per system; medians")
    print(f"# machine: {machine()}")
    print(table(rows, ["system", "real tokens/s vs TRL", "peak RSS vs bare", "real tokens/s", "peak RSS MiB",
                       "computed/real tokens", "process"]))


if __name__ == "__main__":
    main()
