"""Which `batching` mode to default to: step time of each mode, in one process, interleaved.

Rows: `padded` with full logits forced (the path before this work), then `padded`, `sorted`,
`packed` and `auto` with the default loss path. `--large` uses a ~65M-parameter model (hidden 768,
6 layers, 32k vocabulary) with 16 samples per step instead of the ~6M one with 64.

    .venv/bin/python benchmarks/bench_batching_modes.py --accumulation 16 --rounds 3
    .venv/bin/python benchmarks/bench_batching_modes.py --accumulation 1 --rounds 2
    .venv/bin/python benchmarks/bench_batching_modes.py --large --accumulation 4 --rounds 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BATCH_SIZE, machine, median, save_model, table, workload  # noqa: E402

LARGE = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 6,
         "num_attention_heads": 12, "num_key_value_heads": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accumulation", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, after one warm-up round")
    parser.add_argument("--large", action="store_true")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import itersft.trainer.loss
    from itersft import IterativeSFTConfig, IterativeSFTTrainer

    samples = 16 if args.large else 64
    model_dir = save_model(Path(tempfile.mkdtemp()) / "model", **(LARGE if args.large else {}))
    systems = [("padded", True), ("padded", False), ("sorted", False), ("packed", False), ("auto", False)]
    trainers = {}
    for mode, full_logits in systems:
        config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", save_strategy="no",
                                    per_device_train_batch_size=BATCH_SIZE,
                                    gradient_accumulation_steps=args.accumulation, batching=mode)
        trainers[mode, full_logits] = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config,
                                                          tokenizer=AutoTokenizer.from_pretrained(model_dir))
    separable_head = itersft.trainer.loss.separable_head
    seconds = {key: [] for key in trainers}
    for round_index in range(args.rounds + 1):
        batch = workload(round_index, samples=samples)
        for (mode, full_logits), trainer in trainers.items():
            itersft.trainer.loss.separable_head = (lambda model, wrapped: None) if full_logits else separable_head
            started = time.perf_counter()
            trainer.step(input_ids=batch)
            if round_index:
                seconds[mode, full_logits].append(time.perf_counter() - started)
    itersft.trainer.loss.separable_head = separable_head
    base = median(seconds["padded", True])
    rows = [[f"batching={mode}" + (", full logits forced" if full else ""), f"{base / median(values):.2f}x",
             f"{median(values):.2f}", " ".join(f"{v:.2f}" for v in values)]
            for (mode, full), values in seconds.items()]
    size = "~65M (hidden 768, 6 layers, 32k vocab)" if args.large else "~6M (hidden 256, 4 layers, 8k vocab)"
    print(f"# batching modes: {size}, {samples} samples/step (lengths 16-512), batch {BATCH_SIZE}, accumulation "
          f"{args.accumulation}; {args.rounds} rounds + 1 warm-up; medians")
    print(f"# machine: {machine()}")
    print(table(rows, ["system", "speed vs old path", "median s/step", "all rounds (s)"]))


if __name__ == "__main__":
    main()
