"""Run with 2 CPU processes from test_two_processes.py: a user's collator and `compute_loss` override.

Each rank steps on its own uneven samples (`worker_step.rank_samples`: rank 0 many and long, rank 1
few and short, none in the last call) with `prompt_masking_collator` as `data_collator` and
`WeightedLoss.compute_loss`. The loss divides by `num_items_in_batch` (the window's label tokens over
both ranks), so the ranks must train as one process on the union: that holds only if the trainer
counts the collator's labels over all ranks and multiplies by the world size before DDP averages.
Writes each rank's full parameters and step() statistics to the output folder.

Usage: worker_hooks.py MODEL_DIR OUT_DIR ENGINE   (ENGINE: ddp | fsdp2 | zero2, as in worker_step.py)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
from worker_step import CALLS, CpuFSDP2Trainer, config, full_parameters, rank_samples, use_gloo_process_group

from itersft import IterativeSFTTrainer

# Tokens at the start of each sample that carry no loss (the collator's "prompt").
PROMPT_TOKENS = 2


def prompt_masking_collator(features: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pads; labels are the ids, except padding and each sample's first `PROMPT_TOKENS` tokens."""
    width = max(f["input_ids"].size(0) for f in features)
    ids = torch.stack([torch.nn.functional.pad(f["input_ids"], (0, width - f["input_ids"].size(0))) for f in features])
    mask = torch.stack([torch.nn.functional.pad(f["attention_mask"], (0, width - f["attention_mask"].size(0)))
                        for f in features])
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :PROMPT_TOKENS] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def label_weights(labels: torch.Tensor) -> torch.Tensor:
    """2 for a label divisible by 3, 1 otherwise."""
    return torch.where(labels % 3 == 0, 2.0, 1.0)


class WeightedLoss:
    """`compute_loss`: token cross-entropy weighted by `label_weights`, summed, divided by `num_items_in_batch`."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        targets = inputs["labels"][:, 1:]
        losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
        return (losses * label_weights(targets)).sum() / num_items_in_batch


def trainer_class(engine: str) -> type:
    base = CpuFSDP2Trainer if engine.startswith("fsdp2") else IterativeSFTTrainer
    return type("WeightedTrainer", (WeightedLoss, base), {})


def main(model_dir: str, out: Path, engine: str) -> None:
    use_gloo_process_group(engine)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = trainer_class(engine)(model, config(out, engine=engine), tokenizer=tokenizer,
                                    data_collator=prompt_masking_collator)
    rank = trainer.accelerator.process_index
    stats = [trainer.step(input_ids=rank_samples(rank, call, len(tokenizer))) for call in range(CALLS)]
    torch.save(full_parameters(trainer), out / f"hooks-{engine}-rank{rank}.pt")
    (out / f"hooks-{engine}-stats-rank{rank}.json").write_text(json.dumps(stats))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
    sys.stdout.flush()
    os._exit(0)  # skip the gloo teardown, as worker_step.py explains
