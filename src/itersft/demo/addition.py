"""Two-digit addition with the answer written backwards: the task behind `itersft demo`.

A prompt is "37+48=" and its completion is the sum with its digits reversed, least-significant digit
first: 85 is written "58". Reversed, every digit the model writes depends only on the digits of the
operands at that position and on the carry out of the digit it has just written, so a
0.36M-parameter model can learn the algorithm digit by digit. Written the usual way, the first
digit depends on a carry that has not been computed yet, and a model that small mostly guesses.

The data is split three ways, disjoint and fixed by the seed:

* `labelled`: 200 (prompt, completion) pairs for the seed SFT, run until the model has memorised
  them. The seed model must end up partly competent (10-25% greedy accuracy over seeds): too weak
  and it rarely samples a correct answer, too strong and there is nothing left to show. 200 is
  small on purpose: SFT on it plateaus there, so the control cannot catch up by training longer
  (with 300-400 pairs SFT alone sometimes generalises to 55-90%).
* `unlabelled`: prompts with their answers for the *scorer* only. Expert iteration samples k
  completions per prompt, keeps those `exact_match` scores 1.0 and trains on them. Each round takes a
  fresh slice of these prompts; re-using prompts the model already solves teaches it little.
* `eval`: held-out prompts for greedy accuracy.

The control is the seed model trained for the same number of optimizer updates on the labelled data
alone; the demo's point is the gap between the two. `DEMO_HYPERPARAMETERS` holds every setting,
tuned so the whole demo (seed SFT, loop, control and evaluations) takes about 30 s on two CPU cores
with one torch thread, well inside its three-minute budget. Deliberately left out: operands of other
lengths (three digits did not train in that budget), and any use of the unlabelled answers other
than scoring.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from itersft.checks import Problems
from itersft.demo.toy import build_causal_lm

# Operands are exactly two digits, so every prompt has the same length ("ab+cd=", six tokens) and
# the sampler's batches need no padding.
_LOW, _HIGH = 10, 99
_NUM_PROBLEMS = (_HIGH - _LOW + 1) ** 2
_NUM_SPLITS = 3


@dataclass(frozen=True)
class DemoHyperparameters:
    """Every setting of the addition demo.

    Attributes:
        hidden_size: model width; attention heads are `hidden_size // 16` (set by `build_causal_lm`).
        num_layers: decoder layers.
        learning_rate: AdamW learning rate, constant (the trainer has no horizon), for every phase.
        batch_size: samples per optimizer update (`per_device_train_batch_size`, no accumulation).
        max_grad_norm: gradient clipping.
        num_labelled: labelled pairs for the seed SFT (and the control's training data).
        num_eval: held-out prompts for greedy accuracy.
        seed_epochs: passes over the labelled pairs in the seed SFT (one `step()` call each).
        rounds: expert-iteration rounds.
        prompts_per_round: unlabelled prompts sampled in each round, capped at the unlabelled pool
            (`num_unlabelled`). The default exceeds the pool, so every round samples every unlabelled
            prompt once more, as ReST-EM does: a prompt the model missed in one round gets another
            chance in the next, from a better model.
        samples_per_prompt: completions drawn per prompt (k). One per prompt over many prompts beat more
            per prompt over fewer at the same sampling cost (seed 1, 4 rounds: k = 1 over 4,000 prompts
            reached 69% held-out, k = 2 over 2,000 reached 39%).
        temperature: sampling temperature in the loop (evaluation is greedy).
        max_new_tokens: the longest completion: three digits and EOS, plus one token of slack.
        epochs_per_round: passes over each round's kept samples (one `step()` call each).
        dedup: keep one copy of identical correct completions per prompt, so prompts the model
            already solves k times out of k do not outweigh the ones it just learned.
        sampler_batch_size: prompts per `generate` call.
    """

    hidden_size: int = 128
    num_layers: int = 2
    learning_rate: float = 1e-3
    batch_size: int = 32
    max_grad_norm: float = 1.0
    num_labelled: int = 250
    num_eval: int = 250
    seed_epochs: int = 60
    rounds: int = 3
    prompts_per_round: int = 8000
    samples_per_prompt: int = 1
    temperature: float = 1.0
    max_new_tokens: int = 5
    epochs_per_round: int = 3
    dedup: bool = True
    sampler_batch_size: int = 256

    @property
    def num_unlabelled(self) -> int:
        """Unlabelled prompts: one fresh slice per round, or every problem left if that is fewer (the
        loop's slices then wrap around, and later rounds meet earlier prompts again)."""
        return min(self.rounds * self.prompts_per_round, max_unlabelled(self.num_labelled, self.num_eval))


DEMO_HYPERPARAMETERS = DemoHyperparameters()
"""The settings `itersft demo` runs with."""


@dataclass
class AdditionTask:
    """The three disjoint splits of one addition task (see the module docstring).

    Attributes:
        labelled_prompts, labelled_completions: seed-SFT pairs, e.g. "37+48=" and "58".
        unlabelled_prompts: prompts the loop samples on, in the order it consumes them.
        unlabelled_answers: their reversed sums, given to the scorer as meta `answer` and never trained on.
        eval_prompts, eval_answers: held-out prompts and their reversed sums.
    """

    labelled_prompts: list[str]
    labelled_completions: list[str]
    unlabelled_prompts: list[str]
    unlabelled_answers: list[str]
    eval_prompts: list[str]
    eval_answers: list[str]


def reversed_sum(a: int, b: int) -> str:
    """The completion for "a+b=": the digits of a + b, least-significant first (37 + 48 -> "58")."""
    return str(a + b)[::-1]


def max_unlabelled(num_labelled: int, num_eval: int) -> int:
    """The most unlabelled prompts `make_task` can deal beside `num_labelled` and `num_eval` others.

    Each split may drop the other order of its last pair (see `make_task`), hence one problem per split.
    """
    return _NUM_PROBLEMS - _NUM_SPLITS - num_labelled - num_eval


def make_task(seed: int, num_labelled: int = DEMO_HYPERPARAMETERS.num_labelled,
              num_unlabelled: int = DEMO_HYPERPARAMETERS.num_unlabelled,
              num_eval: int = DEMO_HYPERPARAMETERS.num_eval) -> AdditionTask:
    """Draw the task's splits from the two-digit problems, deterministically, split by *unordered* pair.

    "12+34=" and "34+12=" have the same answer, and a model that learns one has as good as learned the
    other, so both orders of a pair always land in the same split: no held-out prompt has its commuted
    twin among the labelled or unlabelled ones. The 4,095 unordered pairs are shuffled with
    `random.Random(seed)` and dealt, both orders at a time, to eval, then labelled, then unlabelled, each
    taking prompts until it has its size (the other order of the pair that tips a split over is dropped,
    never given to another split).
    """
    sizes = {"num_eval": num_eval, "num_labelled": num_labelled, "num_unlabelled": num_unlabelled}
    problems = Problems("make_task arguments")
    valid = all([problems.integer(name, value, minimum=0) for name, value in sizes.items()])
    pairs = [(a, b) for a in range(_LOW, _HIGH + 1) for b in range(a, _HIGH + 1)]
    if valid and num_unlabelled > max_unlabelled(num_labelled, num_eval):
        problems.add(f"`num_labelled` + `num_unlabelled` + `num_eval` = {sum(sizes.values())} exceeds the "
                     f"{_NUM_PROBLEMS - _NUM_SPLITS} two-digit problems this split can give out; ask for fewer.")
    problems.raise_if_any()
    random.Random(seed).shuffle(pairs)
    dealt = iter(pairs)
    splits: dict[str, list[tuple[int, int]]] = {}
    for name, size in sizes.items():
        split: list[tuple[int, int]] = []
        while len(split) < size:
            a, b = next(dealt)
            split += [(a, b)] if a == b else [(a, b), (b, a)]
        splits[name] = split[:size]

    def prompts(split: list[tuple[int, int]]) -> list[str]:
        return [f"{a}+{b}=" for a, b in split]

    def answers(split: list[tuple[int, int]]) -> list[str]:
        return [reversed_sum(a, b) for a, b in split]

    return AdditionTask(
        labelled_prompts=prompts(splits["num_labelled"]),
        labelled_completions=answers(splits["num_labelled"]),
        unlabelled_prompts=prompts(splits["num_unlabelled"]),
        unlabelled_answers=answers(splits["num_unlabelled"]),
        eval_prompts=prompts(splits["num_eval"]),
        eval_answers=answers(splits["num_eval"]),
    )


def build_demo_model(tokenizer, seed: int, hyperparameters: DemoHyperparameters = DEMO_HYPERPARAMETERS):
    """The demo's Llama-style model with random weights drawn from `seed`, sized by `hyperparameters`."""
    return build_causal_lm(tokenizer, hidden_size=hyperparameters.hidden_size,
                           num_layers=hyperparameters.num_layers, seed=seed)
