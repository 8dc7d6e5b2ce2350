"""Run with 2 CPU processes from test_two_processes.py: a T5-style model on uneven per-rank text pairs.

Each rank passes its own (source, target) texts to `step(texts=..., texts_labels=...)`: rank 0 three
times as many as rank 1, and longer ones. Writes each rank's full parameters to the output folder.

Usage: worker_seq2seq.py MODEL_DIR OUT_DIR ENGINE   (ENGINE: ddp | zero3, as in worker_step.py)

Not FSDP2: T5 shares one embedding between its encoder, decoder and head, and torch's `fully_shard`,
as accelerate applies it, refuses that at the first forward ("shared with a parameter already
managed by another FSDP group"), whatever the wrap policy.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from worker_step import config, full_parameters, use_gloo_process_group

from itersft import IterativeSFTTrainer

CALLS = 2


def rank_pairs(rank: int, call: int) -> list[tuple[str, str]]:
    """Rank 0: 6 pairs of 8-20 letters; rank 1: 2 pairs of 2-5 letters (different every call)."""
    draw = random.Random(100 * call + rank)
    count, (low, high) = (6, (8, 20)) if rank == 0 else (2, (2, 5))

    def text() -> str:
        return "".join(draw.choice("abcdefghij ") for _ in range(draw.randint(low, high)))

    return [(text(), text()) for _ in range(count)]


def main(model_dir: str, out: Path, engine: str) -> None:
    use_gloo_process_group(engine)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    trainer = IterativeSFTTrainer(model, config(out, engine=engine), tokenizer=tokenizer)
    assert trainer.is_encoder_decoder and trainer.shards_parameters == (engine != "ddp")
    rank = trainer.accelerator.process_index
    for call in range(CALLS):
        pairs = rank_pairs(rank, call)
        trainer.step(texts=[source for source, _ in pairs], texts_labels=[target for _, target in pairs])
    torch.save(full_parameters(trainer), out / f"seq2seq-{engine}-rank{rank}.pt")
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
    sys.stdout.flush()
    os._exit(0)  # skip the gloo teardown, as worker_step.py explains
