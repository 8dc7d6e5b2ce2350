"""The loop runs the export tests read, on the toy models (see tests/conftest.py; fixtures in conftest.py).

`standard_run`: 2 rounds on "q<i>:" string prompts fed as raw text (`chat_template=False`) to the
answering toy model. `chat_run`: 2 rounds on the same questions as chat conversations, with a system
prompt, to a toy model taught to answer them in the toy chat template. Both score with `graded`, whose
scores both differ and tie within a prompt's samples, and keep the right answers (`Threshold(1.0)`).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.filters import Threshold
from itersft.loop import ExpertIteration, LoopConfig, SamplingConfig

PROMPTS = [f"q{i}:" for i in range(12)]
ANSWERS = ["x" if i % 2 else "y" for i in range(12)]
META = [{"answer": a} for a in ANSWERS]
SYSTEM_PROMPT = "Answer with one letter."


def graded(prompts, completions, answer, **_):
    """1.0 for the right letter, 0.5 for the other one, 0.0 for anything else."""
    return [1.0 if c.strip() == a else 0.5 if c.strip() in ("x", "y") else 0.0 for c, a in zip(completions, answer)]


def conversations(prompts):
    return [[{"role": "user", "content": p}] for p in prompts]


def run_loop(model_dir: Path, run_dir: Path, chat: bool = False, scorer=graded, rounds: int = 2,
             **loop_options) -> ExpertIteration:
    """Run the loop (or resume it) into `run_dir`; returns it, run."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = IterativeSFTConfig(output_dir=str(run_dir.parent / f"{run_dir.name}-trainer"), report_to="none",
                              learning_rate=1e-2, per_device_train_batch_size=4, save_strategy="no", seed=3)
    sampling = SamplingConfig(num_samples=3, max_new_tokens=4, temperature=1.0, seed=3, chat_template=chat,
                              system_prompt=SYSTEM_PROMPT if chat else None)
    config = LoopConfig(output_dir=str(run_dir), rounds=rounds, prompts_per_round=6, step_size=8, seed=3,
                        score_in_process=True, score_timeout=None, **loop_options)
    loop = ExpertIteration(IterativeSFTTrainer(model, args, tokenizer), sampling, scorer, Threshold(1.0), config)
    loop.run(conversations(PROMPTS) if chat else PROMPTS, META)
    return loop
