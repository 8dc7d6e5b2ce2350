"""Run by `torch.distributed.run` with 2 CPU processes (gloo) from test_two_processes.py.

Each rank trains on its own, deliberately uneven, samples: rank 0 gets three times as many as rank 1,
and longer ones. Writes each rank's parameters and step() statistics to the output folder.

Usage: worker_step.py MODEL_DIR OUT_DIR MODE   (MODE: train | save | resume)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft import IterativeSFTConfig, IterativeSFTTrainer

CALLS = 3


def rank_samples(rank: int, call: int, vocab: int) -> list[torch.Tensor]:
    """Rank 0: 6 samples of 9-20 tokens; rank 1: 2 samples of 3-6 tokens (different every call)."""
    generator = torch.Generator().manual_seed(100 * call + rank)
    count, (low, high) = (6, (9, 21)) if rank == 0 else (2, (3, 7))
    lengths = torch.randint(low, high, (count,), generator=generator).tolist()
    return [torch.randint(4, vocab, (n,), generator=generator) for n in lengths]


def config(out: Path, batch_size: int = 2, accumulation: int = 2) -> IterativeSFTConfig:
    return IterativeSFTConfig(output_dir=str(out / "trainer"), report_to="none", save_strategy="no",
                              per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                              learning_rate=1e-2, use_cpu=True,
                              max_grad_norm=0.0, shuffle_samples=False, seed=0)


def main(model_dir: str, out: Path, mode: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = IterativeSFTTrainer(model, config(out), tokenizer=tokenizer)
    rank = trainer.accelerator.process_index
    first = 0
    if mode == "resume":
        trainer.resume_from_checkpoint(str(out / "checkpoint"))
        first = 2
    stats = []
    for call in range(first, CALLS):
        stats.append(trainer.step(input_ids=rank_samples(rank, call, len(tokenizer))))
        if mode == "save" and call == 1:
            trainer.save_checkpoint(out / "checkpoint")
    torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, out / f"{mode}-rank{rank}.pt")
    (out / f"{mode}-stats-rank{rank}.json").write_text(json.dumps(stats))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
    # Every output is written and both ranks are past their last collective. Skip the process-group
    # teardown: destroying a gloo group intermittently hangs one rank on CPU here (about one run in
    # four, with torch 2.13), which says nothing about training.
    sys.stdout.flush()
    os._exit(0)
