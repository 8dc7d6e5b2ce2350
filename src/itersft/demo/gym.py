"""`itersft demo-gym`: the real-model demo's protocol on a reasoning-gym task, a task nobody here wrote.

The protocol is `itersft.demo.real`'s, unchanged: SmolLM2-135M-Instruct's greedy held-out accuracy,
expert iteration, and a same-compute control (the base weights and a fresh optimizer, trained round by
round on as many *unverified* finished samples from the same rounds, for the same updates), each scored
on the same held-out questions. Only the task differs:

* The questions come from reasoning-gym (`itersft.tasks.reasoning_gym`), the configuration `TASKS[task]`.
  Training questions are drawn at reasoning-gym seed `SEED_STRIDE * seed`, held-out ones at
  `SEED_STRIDE * seed + HELD_OUT_OFFSET`: most tasks draw entry i at seed s from `Random(s + i)`, so the two
  windows never overlap, and a held-out question that is a training question as well (a small
  configuration repeats questions by chance) is dropped; `summary.json` says how many.
* SmolLM2-135M-Instruct wrote reasoning-gym's `<answer>` tags in none of 192 greedy answers with its
  default system prompt, so this demo asks for the number at the end instead, and both the verifier and
  held-out accuracy are `reasoning_gym_fallback` (the tag, else the last number, scored by the task's own
  `score_answer`, full credit only). The strict accuracy (tags only, `reasoning_gym`) of the same greedy
  answers is reported beside it as `accuracy_strict`. `few_shot` puts worked examples in the format
  (`<answer>gold</answer>`) in front of every question instead; `--set verifier=strict` keeps only tagged
  answers.

Precision is `itersft demo-real`'s `precision` setting, "auto" by default (bfloat16 autocast only where
the device runs it fast, float32 elsewhere: `itersft.precision`); `summary.json` records which ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from itersft.checks import Problems
from itersft.demo.real import DemoTask, RealDemoHyperparameters

TASKS: dict[str, dict[str, Any]] = {
    # "Calculate -3 * 7.": two one-digit terms (negative ones too), + - *.
    "arithmetic": {"name": "basic_arithmetic",
                   "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                              "operators": ["+", "-", "*"], "allow_parentheses": False}},
    # "State the final answer to the following arithmetic problem: 12 + 7 =": two terms of one or two digits.
    "chain_sum": {"name": "chain_sum",
                  "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                             "allow_negation": False}},
}
"""reasoning-gym configurations by `GymDemoHyperparameters.task`, as `itersft.tasks.reasoning_gym` specs
(without size and seed)."""

SEED_STRIDE = 10_000
HELD_OUT_OFFSET = 5_000
"""reasoning-gym seeds: training at `SEED_STRIDE * seed`, held-out at that plus `HELD_OUT_OFFSET`."""

GYM_VERIFIERS = {"fallback": "reasoning_gym_fallback", "strict": "reasoning_gym"}
"""The loop's verifier by `GymDemoHyperparameters.verifier`, as built-in scorer names."""


@dataclass(frozen=True)
class GymDemoHyperparameters(RealDemoHyperparameters):
    """The settings of `itersft demo-gym`: those of `RealDemoHyperparameters`, other defaults, and the task.

    Attributes (besides the inherited ones):
        task: the reasoning-gym configuration, a key of `TASKS`: `chain_sum` by default, where the base
            model's held-out accuracy (16.8% at seed 0) leaves room to learn; on `arithmetic` it is 65.7%.
        few_shot: worked examples shown before every question (0: none; see `itersft.tasks.reasoning_gym`).
        verifier: what the loop keeps: "fallback" (the tag, else the last number) or "strict" (the tag).
            Held-out accuracy is always the fallback's, with the strict one beside it.
    """

    system_prompt: str = "Answer the question. End with the final answer as a number."
    verifier: str = "fallback"
    task: str = "chain_sum"
    few_shot: int = 0

    verifiers: ClassVar[dict[str, str]] = GYM_VERIFIERS

    def add_task_problems(self, problems: Problems) -> None:
        problems.choice("task", self.task, TASKS)
        problems.integer("few_shot", self.few_shot, minimum=0)

    def make_task(self, seed: int) -> DemoTask:
        """Training and held-out questions of `TASKS[task]` at their own reasoning-gym seeds (module docstring)."""
        from itersft.tasks.reasoning_gym import gym_prompts

        spec = {**TASKS[self.task], "system_prompt": None, "few_shot": self.few_shot}
        train_seed = SEED_STRIDE * seed
        train = gym_prompts({**spec, "size": self.rounds * self.prompts_per_round, "seed": train_seed},
                            section="training questions")
        held_out = gym_prompts({**spec, "size": self.num_eval, "seed": train_seed + HELD_OUT_OFFSET},
                               held_out_from=train.prompts, section="held-out questions")
        facts = {"task": TASKS[self.task], "train_seed": train_seed, "held_out_seed": train_seed + HELD_OUT_OFFSET,
                 "held_out_questions": len(held_out.prompts),
                 "held_out_dropped": {"training_questions": held_out.dropped_as_seen,
                                      "few_shot_examples": held_out.dropped_as_examples}}
        return DemoTask(train.prompts, train.meta, held_out.prompts, held_out.meta,
                        verifier=self.verifiers[self.verifier], eval_scorer=GYM_VERIFIERS["fallback"],
                        also_evaluated={"strict": GYM_VERIFIERS["strict"]}, facts=facts)


GYM_DEMO_HYPERPARAMETERS = GymDemoHyperparameters()
"""The settings `itersft demo-gym` runs with."""
