"""Which `batching` mode is fastest (they all learn the same thing): step() time per mode, one process.

The training workload of `bench_training.py` (16 texts of 16-512 tokens per step, per-device batch
4) on the ~6.3M model, with `--large` a ~65M one (hidden 768, 6 layers, 32k vocabulary), or with
`--model` one of `_models.py` (on `--device cuda`, CUDA synchronised around every step). One
trainer per mode, all from the same weights; in each round every mode runs one step on the same
texts, the order rotating between rounds; speeds are relative to `padded` and the median of the
per-round ratios. The library's default should be the fastest row at every accumulation.

    python benchmarks/bench_batching_modes.py                      # accumulation 1 and 4, 5 rounds
    python benchmarks/bench_batching_modes.py --large --rounds 3
    python benchmarks/bench_batching_modes.py --model smollm2-135m --device cuda --bf16 --rounds 3   # gpu.sh
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BATCH_SIZE, header, median, quiet_transformers, save_model, snapshot, table, text_workload  # noqa: E402
from _models import MODELS, prepare_model  # noqa: E402

LARGE = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 6,
         "num_attention_heads": 12, "num_key_value_heads": 4}
MODES = ("padded", "sorted", "packed", "auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accumulation", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, after one warm-up round")
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine)")
    parser.add_argument("--model", default=None, choices=sorted(MODELS),
                        help="a model of _models.py instead of the ~6.3M one (or --large)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (float32 weights)")
    args = parser.parse_args()
    quiet_transformers()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from itersft import IterativeSFTConfig, IterativeSFTTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if args.model:
        model_dir = prepare_model(args.model, Path(tempfile.mkdtemp()))
        size = f"{args.model} ({MODELS[args.model]['label']})"
    else:
        model_dir = save_model(Path(tempfile.mkdtemp()) / "model", **(LARGE if args.large else {}))
        size = "~65M (hidden 768, 6 layers, 32k vocab)" if args.large else "~6.3M (hidden 256, 4 layers, 8k vocab)"
    size += f", {'bf16 autocast' if args.bf16 else 'float32'} on {args.device}"
    default = IterativeSFTConfig.batching
    for accumulation in args.accumulation:
        began = snapshot()
        trainers = {}
        for mode in MODES:
            config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", save_strategy="no",
                                        per_device_train_batch_size=BATCH_SIZE, learning_rate=1e-4,
                                        gradient_accumulation_steps=accumulation, batching=mode, bf16=args.bf16,
                                        use_cpu=args.device == "cpu")
            trainers[mode] = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config,
                                                 tokenizer=AutoTokenizer.from_pretrained(model_dir))
        seconds, padding = {mode: [] for mode in MODES}, {}
        for round_index in range(args.rounds + 1):
            texts = text_workload(round_index)
            for mode in MODES[round_index % len(MODES):] + MODES[:round_index % len(MODES)]:
                sync()
                started = clock()
                stats = trainers[mode].step(texts=texts)
                sync()
                if round_index:
                    seconds[mode].append(clock() - started)
                    padding[mode] = stats["padded_tokens"] / stats["real_tokens"]
        rows = []
        for mode in MODES:
            ratios = [base / own for base, own in zip(seconds["padded"], seconds[mode])]
            rows.append([f"batching={mode}" + (" (default)" if mode == default else ""), f"**{median(ratios):.2f}x**",
                         " ".join(f"{r:.2f}" for r in ratios), f"{median(seconds[mode]):.2f}", f"{padding[mode]:.2f}"])
        print(header(f"batching modes: {size}, 16 texts/step of 16-512 tokens, batch {BATCH_SIZE}, accumulation "
                     f"{accumulation}; 1 warm-up + {args.rounds} rounds, median of per-round speed vs padded"
                     + ("; CPU seconds" if args.clock == "cpu" else ""), device=args.device, started=began))
        print(table(rows, ["system", "speed vs padded", "per round", "median s/step", "computed/real tokens"]),
              flush=True)
        del trainers


if __name__ == "__main__":
    main()
