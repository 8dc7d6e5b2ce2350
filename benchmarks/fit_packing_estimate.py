"""Check `packing.packing_pays` against measured time, where a packed row is attended under a mask.

`batching="auto"` packs a micro-batch or pads it by `packing_pays`'s estimate wherever a packed row is
attended as a whole under transformers' block-diagonal mask (sdpa and eager on an accelerator or
under activation checkpointing; on CPU otherwise each sample is attended on its own and packing always
pays). This times both layouts of random micro-batches of 4 samples (16-700 tokens) on the
benchmark's Qwen2-style model (`_common.MODEL`) with grouped key/value heads and without, forward and
backward through the trainer's loss on CPU, fits time difference = a * (padding tokens saved) + c *
(attention pairs added), and prints the fitted a / c in units of hidden size (the estimate's
`TOKEN_COST_PER_WIDTH`) and, per micro-batch, which layout was faster and which the estimate picks.

    python benchmarks/fit_packing_estimate.py [--batches 14] [--repeats 3] [--threads 1]   # ~2 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MODEL, header, quiet_transformers, save_model, snapshot, table  # noqa: E402


def seconds(model, loss, lengths: list[int], packed: bool) -> float:
    """CPU seconds of forward and backward through the trainer's loss for random samples of `lengths`,
    packed (no `packed_lengths`: attended under transformers' block-diagonal mask) or padded."""
    import torch

    from itersft.data.collate import collate
    from itersft.data.example import Example
    from itersft.trainer.loss import label_positions

    examples = [Example.causal(ids, torch.ones_like(ids), None)
                for ids in (torch.randint(4, MODEL["vocab_size"], (n,)) for n in lengths)]
    batch = collate(examples, 0, False, packed)
    batch["loss_positions"], batch["loss_targets"] = label_positions(batch["labels"])
    begun = time.process_time()
    loss(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return time.process_time() - begun


def fit(kv_heads: int, batches: list[list[int]], repeats: int) -> tuple[float, int, str]:
    """Time both layouts of every micro-batch; returns the fitted token cost per unit of hidden size, how
    many micro-batches `packing_pays` lays out the faster way, and the table."""
    import numpy
    from transformers import AutoModelForCausalLM

    from itersft.data.packing import packing_pays
    from itersft.trainer.loss import SummedLoss
    from itersft.trainer.model_facts import inspect_model

    model = AutoModelForCausalLM.from_pretrained(
        save_model(Path(tempfile.mkdtemp()) / "model", num_key_value_heads=kv_heads)).train()
    loss = SummedLoss(model, inspect_model(model), contextlib.nullcontext)
    measured = []
    for lengths in batches:
        times = {True: [], False: []}
        for repeat in range(repeats):
            for packed in (True, False) if repeat % 2 else (False, True):
                times[packed].append(seconds(model, loss, lengths, packed))
        measured.append((lengths, statistics.median(times[True]), statistics.median(times[False])))
    design = numpy.array([[4 * max(n) - sum(n), 4 * max(n) ** 2 - sum(n) ** 2] for n, _, _ in measured], float)
    differences = numpy.array([padded - packed for _, packed, padded in measured])
    (per_token, per_pair), *_ = numpy.linalg.lstsq(design, differences, rcond=None)
    hidden, rows, right = MODEL["hidden_size"], [], 0
    for lengths, packed_s, padded_s in measured:
        faster, chosen = packed_s < padded_s, packing_pays(lengths, hidden, False)
        right += faster == chosen
        rows.append([" ".join(map(str, lengths)), f"{packed_s:.3f}", f"{padded_s:.3f}",
                     "packed" if faster else "padded", "packed" if chosen else "padded"])
    columns = ["lengths", "packed s", "padded s", "faster", "packing_pays picks"]
    return per_token / per_pair / hidden, right, table(rows, columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=14, help="random micro-batches of 4 samples")
    parser.add_argument("--repeats", type=int, default=3, help="timings per layout and micro-batch (median)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet_transformers()

    import torch

    from itersft.data.packing import TOKEN_COST_PER_WIDTH

    torch.set_num_threads(args.threads)
    generator = random.Random(0)
    batches = []
    for _ in range(args.batches):
        longest = generator.randint(64, 700)
        batches.append([longest] + [generator.randint(16, longest) for _ in range(3)])
    started = snapshot()
    reports = [(kv_heads, *fit(kv_heads, batches, args.repeats))
               for kv_heads in (MODEL["num_key_value_heads"], MODEL["num_attention_heads"])]
    print(header(f"packing_pays vs measured time, packed rows under the block-diagonal mask, forward + backward, "
                 f"hidden {MODEL['hidden_size']}, {args.batches} micro-batches x {args.repeats} timings, CPU "
                 "seconds", started=started))
    for kv_heads, fitted, right, text in reports:
        print(f"\n## {MODEL['num_attention_heads']} heads / {kv_heads} KV heads: fitted token cost {fitted:.1f} x "
              f"hidden (estimate: {TOKEN_COST_PER_WIDTH}); the estimate picks the faster layout for "
              f"{right} of {len(batches)}")
        print(text)


if __name__ == "__main__":
    main()
