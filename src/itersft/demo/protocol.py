"""The addition demo's protocol: expert iteration from scratch against a same-compute control.

1. Build a tiny Llama-style model and a byte-level tokenizer offline, save them, load them back by
   path (the same `from_pretrained` path a hub id takes).
2. Seed SFT on a few hundred labelled examples, so the model starts partly competent.
3. Expert iteration: sample k answers for fresh unlabelled prompts, keep the exactly correct ones,
   train on them.
4. Two controls, each from the seed model *and its optimizer state* (the loop continues both), for the
   same number of optimizer updates as the loop:
   * `control`: SFT on the labelled data alone (what more training on the data you have gives);
   * `control_unfiltered`: the same loop with the verifier's filter replaced by a random pick of as
     many finished samples as the loop kept in that round (what self-training gives without the
     verifier).
5. Held-out accuracy of all three, and `summary.json` beside the loop's artefacts.

`run_demo` returns the summary and reports each phase through a `DemoCallback` (the CLI prints them).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from itersft.demo.controls import RandomPick
from itersft.loop.callbacks import LoopCallback


class DemoCallback(LoopCallback):
    """`LoopCallback` hooks plus one for the demo's own phases."""

    def on_phase_end(self, phase: str, info: dict[str, Any]) -> None:
        """`phase` ("seed_sft") finished; `info` holds its numbers (updates, accuracy, seconds)."""


def run_demo(seed: int, output_dir: str | Path, hyperparameters, callbacks: list[DemoCallback] | None = None
             ) -> dict[str, Any]:
    """Run the whole demo (see the module docstring) and return what `summary.json` holds.

    `hyperparameters` is a `DemoHyperparameters`. Rerunning with the same `output_dir` resumes the loop
    after its last complete round; the controls always run whole. The caller chooses torch's thread
    count (the CLI pins it to 1).
    """
    import torch

    from itersft import IterativeSFTConfig, IterativeSFTTrainer
    from itersft.demo.addition import build_demo_model, make_task
    from itersft.demo.toy import build_tokenizer
    from itersft.filters import Compose, Dedup, Threshold
    from itersft.loop.evaluation import evaluate_prompts
    from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
    from itersft.sampling.sampler import SamplingConfig

    started = time.perf_counter()
    callbacks = list(callbacks or [])
    hp = hyperparameters
    torch.manual_seed(seed)
    out = Path(output_dir)
    task = make_task(seed, num_labelled=hp.num_labelled, num_unlabelled=hp.num_unlabelled, num_eval=hp.num_eval)
    base = out / "base"
    tokenizer = build_tokenizer()
    build_demo_model(tokenizer, seed, hp).save_pretrained(base)
    tokenizer.save_pretrained(base)

    def trainer_config(name: str) -> IterativeSFTConfig:
        return IterativeSFTConfig(output_dir=str(out / name), report_to="none", save_strategy="no",
                                  learning_rate=hp.learning_rate, per_device_train_batch_size=hp.batch_size,
                                  max_grad_norm=hp.max_grad_norm, logging_steps=10_000, seed=seed)

    trainer = IterativeSFTTrainer(str(base), trainer_config("trainer"))
    sampling = SamplingConfig(num_samples=hp.samples_per_prompt, max_new_tokens=hp.max_new_tokens,
                              temperature=hp.temperature, batch_size=hp.sampler_batch_size, seed=seed,
                              chat_template=False)  # "a+b=" is raw text: the toy model has never seen a chat turn
    eval_meta = [{"answer": a} for a in task.eval_answers]

    def accuracy(model) -> float:
        return evaluate_prompts(model, tokenizer, sampling, "exact_match", task.eval_prompts, eval_meta,
                                pass_score=1.0, num_samples=0, round_index=0)["eval_accuracy"]

    phase = time.perf_counter()
    for _ in range(hp.seed_epochs):
        trainer.step(prompts=task.labelled_prompts, completions=task.labelled_completions)
    seed_updates = trainer.state.global_step
    seed_state = copy.deepcopy(trainer.model.state_dict())
    seed_optimizer = copy.deepcopy(trainer.optimizer.state_dict())
    seed_schedule = copy.deepcopy(trainer.lr_scheduler.state_dict())
    seed_accuracy = accuracy(trainer.model)
    seed_seconds = time.perf_counter() - phase
    for callback in callbacks:
        callback.on_phase_end("seed_sft", {"updates": seed_updates, "labelled": hp.num_labelled,
                                           "accuracy": seed_accuracy, "seconds": seed_seconds})

    phase = time.perf_counter()
    filters = Compose(Threshold(1.0), Dedup()) if hp.dedup else Threshold(1.0)

    def loop_config(directory: Path) -> LoopConfig:
        return LoopConfig(output_dir=str(directory), rounds=hp.rounds, prompts_per_round=hp.prompts_per_round,
                          train_epochs=hp.epochs_per_round, step_size=10**9, seed=seed)

    unlabelled_meta = [{"answer": a} for a in task.unlabelled_answers]
    loop = ExpertIteration(trainer, sampling, "exact_match", filters, loop_config(out), callbacks=callbacks)
    history = loop.run(task.unlabelled_prompts, unlabelled_meta, eval_prompts=task.eval_prompts, eval_meta=eval_meta)
    loop_updates = trainer.state.global_step - seed_updates
    loop_accuracy = history[-1]["eval_accuracy"]
    loop_seconds = time.perf_counter() - phase

    def from_seed(name: str) -> IterativeSFTTrainer:
        control = IterativeSFTTrainer(str(base), trainer_config(f"{name}/trainer"))
        control.model.load_state_dict(seed_state)
        control.optimizer.load_state_dict(seed_optimizer)
        control.lr_scheduler.load_state_dict(seed_schedule)
        control.state.global_step = seed_updates
        return control

    phase = time.perf_counter()
    control = from_seed("control")
    while control.state.global_step < seed_updates + loop_updates:
        start = (control.state.global_step * hp.batch_size) % hp.num_labelled
        chunk = [(start + i) % hp.num_labelled for i in range(hp.batch_size)]
        control.step(prompts=[task.labelled_prompts[i] for i in chunk],
                     completions=[task.labelled_completions[i] for i in chunk])
    control_accuracy = accuracy(control.model)
    control_seconds = time.perf_counter() - phase

    phase = time.perf_counter()
    shutil.rmtree(out / "control_unfiltered", ignore_errors=True)  # always run whole: RandomPick counts rounds
    unfiltered = from_seed("control_unfiltered")
    ExpertIteration(unfiltered, sampling, "exact_match", RandomPick([m["train_samples"] for m in history], seed),
                    loop_config(out / "control_unfiltered")).run(task.unlabelled_prompts, unlabelled_meta)
    unfiltered_accuracy = accuracy(unfiltered.model)
    unfiltered_seconds = time.perf_counter() - phase

    summary = {
        "seed": seed, "accuracy_before_loop": seed_accuracy, "accuracy_after_loop": loop_accuracy,
        "accuracy_control": control_accuracy, "accuracy_control_unfiltered": unfiltered_accuracy,
        "lift_over_control_points": 100 * (loop_accuracy - control_accuracy),
        "lift_over_unfiltered_points": 100 * (loop_accuracy - unfiltered_accuracy),
        "seed_updates": seed_updates, "loop_updates": loop_updates,
        "control_updates": control.state.global_step - seed_updates,
        "control_unfiltered_updates": unfiltered.state.global_step - seed_updates,
        "seconds": {"seed_sft": seed_seconds, "loop": loop_seconds, "control": control_seconds,
                    "control_unfiltered": unfiltered_seconds, "total": time.perf_counter() - started},
        "hyperparameters": dataclasses.asdict(hp),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

