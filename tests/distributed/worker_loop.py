"""Run by `torch.distributed.run` with 2 CPU processes from test_two_process_loop.py: two loop rounds.

The shares are uneven on purpose: 9 prompts and sampling batches of 2 give the ranks different
numbers of `generate` calls, round 1's prompt slice wraps around, so one rank samples two runs of
prompts and the other one, and the single held-out prompt leaves rank 1 nothing to evaluate. Under
FSDP2 and ZeRO-3 every forward is a collective, so any of these would hang or fail if the ranks were
not kept in step. Each round starts with a fresh optimizer state (`reset_optimizer`), which the
engines' optimizer wrappers must allow, and (except under DeepSpeed) from the base weights
(`restart_from_base`), which FSDP2 holds as shards.

Usage: worker_loop.py MODEL_DIR OUT_DIR ENGINE   (ENGINE: as in worker_step.py; `single` runs in-process)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft import IterativeSFTTrainer
from itersft.filters import Threshold
from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
from itersft.sampling.sampler import SamplingConfig

PROMPTS = [f"q{i}:" for i in range(9)]
META = [{"answer": ("x", "y")[i % 3 == 0]} for i in range(9)]


def run(model_dir: str, out: Path, engine: str) -> None:
    from worker_step import CpuFSDP2Trainer, config, use_gloo_process_group  # the worker folder is on sys.path

    use_gloo_process_group(engine)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer_class = CpuFSDP2Trainer if engine == "fsdp2" else IterativeSFTTrainer
    trainer = trainer_class(model, config(out, engine=engine, shuffle_samples=True), tokenizer=tokenizer)
    assert trainer.shards_parameters == (engine in ("fsdp2", "zero3"))
    loop = ExpertIteration(trainer, SamplingConfig(num_samples=3, max_new_tokens=4, batch_size=2, seed=1,
                                                  chat_template=False),
                           "exact_match", Threshold(1.0),
                           LoopConfig(output_dir=str(out / engine), rounds=2, prompts_per_round=7, step_size=4,
                                      eval_samples=2, reset_optimizer=True, seed=1,
                                      restart_from_base=not engine.startswith("zero")))  # refused under DeepSpeed
    loop.run(PROMPTS, META, eval_prompts=PROMPTS[:1], eval_meta=META[:1])  # rank 1 has no eval prompt
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    run(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
    sys.stdout.flush()
    os._exit(0)  # skip the gloo teardown, as worker_step.py explains
