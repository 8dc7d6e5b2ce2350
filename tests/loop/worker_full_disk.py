"""Run by test_loop_faults.py inside a user + mount namespace, with a small tmpfs mounted on RUN_DIR: a
loop whose disk fills up while round 1's checkpoint is written, then the same run again once space is
freed.

After round 0 a callback fills the tmpfs with a ballast file, leaving room for round 1's model files
but not for its optimizer state, so the write fails inside torch's own writer (which says
"[enforce fail at inline_container.cc...]", not "No space left on device"). The ballast is then
deleted and a fresh loop resumes. What happened is written to OUT_DIR/result.json, with the final
weights and metrics copied out of the tmpfs, which vanishes with the namespace.

Usage: worker_full_disk.py MODEL_DIR RUN_DIR OUT_DIR
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.filters import Threshold
from itersft.loop.callbacks import LoopCallback
from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
from itersft.sampling.sampler import SamplingConfig

PROMPTS = [f"q{i}:" for i in range(12)]
META = [{"answer": "x" if i % 2 else "y"} for i in range(12)]


def build(model_dir: str | Path, run_dir: str | Path, trainer_dir: str | Path) -> ExpertIteration:
    """The run: two rounds on the answering toy model (the test's reference run builds the same)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = IterativeSFTConfig(output_dir=str(trainer_dir), report_to="none", learning_rate=1e-2,
                              per_device_train_batch_size=4, save_strategy="no", seed=3)
    sampling = SamplingConfig(num_samples=3, max_new_tokens=4, temperature=1.0, seed=3, chat_template=False)
    config = LoopConfig(output_dir=str(run_dir), rounds=2, prompts_per_round=6, step_size=8, seed=3, score_workers=1)
    return ExpertIteration(IterativeSFTTrainer(model, args, tokenizer), sampling, "exact_match", Threshold(1.0), config)


class FillTheDiskAfterRound0(LoopCallback):
    """Leave room for round 1's model files (the size of round 0's plus 96 KiB) and no more."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.ballast = run_dir / "ballast"

    def on_round_end(self, metrics):
        if metrics["round"] != 0:
            return
        model_bytes = (self.run_dir / "rounds" / "round-0000" / "model.safetensors").stat().st_size
        room = shutil.disk_usage(self.run_dir).free - (model_bytes + (96 << 10))
        with open(self.ballast, "wb") as ballast:
            ballast.write(b"\0" * room)


def main(model_dir: str, run_dir: Path, out: Path) -> None:
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("itersft").addHandler(handler)
    logging.getLogger("itersft").setLevel(logging.INFO)
    result = {}

    filling = FillTheDiskAfterRound0(run_dir)
    loop = build(model_dir, run_dir, out / "trainer-1")
    loop.callbacks.append(filling)
    try:
        loop.run(PROMPTS, META)
        result["failure"] = None
    except OSError as failure:
        result["failure"] = {"type": type(failure).__name__, "errno": failure.errno, "message": str(failure),
                             "cause": type(failure.__cause__).__name__}
    result["rounds_after_failure"] = sorted(p.name for p in (run_dir / "rounds").iterdir())
    filling.ballast.unlink()

    messages.clear()
    history = build(model_dir, run_dir, out / "trainer-2").run(PROMPTS, META)
    result["resumed_log"] = [m for m in messages if m.startswith("Resuming")]
    result["rounds_at_the_end"] = sorted(p.name for p in (run_dir / "rounds").iterdir())
    result["history"] = history
    shutil.copytree(run_dir / "final", out / "final")
    shutil.copy(run_dir / "metrics.jsonl", out / "metrics.jsonl")
    (out / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
