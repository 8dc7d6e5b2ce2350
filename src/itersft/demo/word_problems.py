"""Arithmetic word problems asked as chat questions: the task behind `itersft demo-real`.

A problem is one user turn such as "Mia has 3 bags with 7 coins in each bag. How many coins does Mia
have in total?" and its answer is an integer (21), given to the verifier as meta `answer`. The loop's
built-in `numeric` scorer reads the last number the model writes, so "3 x 7 = 21 coins." and "21" both
pass and "21 coins, or 3 bags" does not. Three operations on two numbers from `low` to `high` (2-9 by
default): addition, subtraction (the larger number first, so answers stay positive; equal numbers are
left out, their answer 0 reads oddly in a story) and multiplication, each with three story templates,
ten names and ten objects.

**The split is by the unordered pair of numbers, not by question.** Every pair {a, b} belongs to
exactly one side, and every question built from it (either order, any operation, any template, name
or object) lands on that side. So no held-out question, nor any trivial variant of it (the operands
swapped, the same numbers in another story or operation), is ever sampled or trained on: held-out
accuracy measures what the model learned about the *task* (read the story, choose the operation,
answer briefly), not recall of a question it saw. `check_no_leakage` verifies this on every built task.
Answers may coincide across the split (3 + 4 and 2 + 5 are both 7); that is not a variant of a question.

Deliberately left out: multi-step problems, numbers above one digit and distractor numbers (the
135M-parameter demo model gets fewer than one in five of those right, leaving little to select from),
and labelled completions: the loop sees questions and, through the verifier only, their answers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from itersft.checks import Problems

OPERATIONS = ("addition", "subtraction", "multiplication")
"""The operations a task may mix, in the order `make_task` cycles through them."""

# Story templates per operation. `{a}` and `{b}` are the numbers in the order the story states them,
# `{name}` a person, `{things}` a plural object. The answer is `a + b`, `a - b` or `a * b`.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "addition": (
        "{name} has {a} {things}. {name} gets {b} more {things}. How many {things} does {name} have now?",
        "There are {a} {things} in a box and {b} {things} on the table. How many {things} are there altogether?",
        "{name} found {a} {things} in the morning and {b} {things} in the afternoon. How many {things} did "
        "{name} find in all?",
    ),
    "subtraction": (
        "{name} had {a} {things} and gave {b} of them away. How many {things} does {name} have left?",
        "There were {a} {things} on the table. {name} took {b} of them. How many {things} are still on the table?",
        "{name} has {a} {things} and loses {b} of them. How many {things} does {name} have now?",
    ),
    "multiplication": (
        "{name} has {a} bags with {b} {things} in each bag. How many {things} does {name} have in total?",
        "There are {a} rows of {things} with {b} {things} in each row. How many {things} are there?",
        "Each box holds {b} {things}. How many {things} are in {a} boxes?",
    ),
}

NAMES = ("Tom", "Sara", "Ali", "Mia", "Ben", "Lena", "Omar", "Zoe", "Raj", "Ana")
THINGS = ("apples", "pencils", "marbles", "stickers", "books", "cookies", "coins", "stamps", "shells", "cards")


@dataclass(frozen=True)
class WordProblem:
    """One question and its answer.

    Attributes:
        question: the user turn.
        answer: the integer the verifier expects.
        operation: one of `OPERATIONS`.
        numbers: the two numbers in the order the question states them.
        template: index into `TEMPLATES[operation]`.
    """

    question: str
    answer: int
    operation: str
    numbers: tuple[int, int]
    template: int

    @property
    def pair(self) -> frozenset[int]:
        """The unordered pair of numbers: the unit the split assigns to one side."""
        return frozenset(self.numbers)

    def messages(self) -> list[dict[str, str]]:
        """The chat prompt: one user turn (the loop adds its `system_prompt` in front)."""
        return [{"role": "user", "content": self.question}]

    def meta(self) -> dict[str, str]:
        """What the loop hands the verifier with this prompt, e.g. `{"answer": "21"}`."""
        return {"answer": str(self.answer)}


@dataclass
class WordProblemTask:
    """The two sides of one task (see the module docstring).

    Attributes:
        train: problems the loop samples on, in the order it consumes them; their answers reach only
            the verifier.
        eval: held-out problems for greedy accuracy; none shares a pair of numbers with `train`.
        held_out_pairs: the pairs reserved for `eval`.
    """

    train: list[WordProblem]
    eval: list[WordProblem]
    held_out_pairs: frozenset[frozenset[int]]


def apply_operation(operation: str, a: int, b: int) -> int:
    """The answer to `operation` on the numbers as stated: `a + b`, `a - b` or `a * b`."""
    return {"addition": a + b, "subtraction": a - b, "multiplication": a * b}[operation]


def orders_for_pair(pair: frozenset[int], operation: str) -> list[tuple[int, int]]:
    """The ordered numbers (a, b) that ask `operation` of `pair`: both orders, except subtraction,
    which states the larger first and has none for a pair of equal numbers."""
    low, high = min(pair), max(pair)
    if operation == "subtraction":
        return [] if low == high else [(high, low)]
    return [(low, high)] if low == high else [(low, high), (high, low)]


def make_task(seed: int, num_train: int, num_eval: int, operations: Sequence[str] = OPERATIONS,
              low: int = 2, high: int = 9, eval_share: float = 1 / 3) -> WordProblemTask:
    """Build a task deterministically from `seed`.

    The unordered pairs of numbers in [`low`, `high`] are shuffled with `random.Random(seed)` and the
    first `eval_share` of them (at least one) is held out. Each problem then takes an operation (they
    cycle, so each gets an equal share), one of the (pair, order) choices that operation admits on its
    side, a template, a name and an object. The two sides draw from separate random streams, so the
    held-out set depends only on `seed` and `num_eval` (changing `num_train` never changes what is
    evaluated) and a longer `num_train` extends a shorter one. A question repeats only when every draw
    happens to coincide; the loop treats repeats as separate prompts.
    """
    problems = Problems("make_task arguments")
    problems.integer("seed", seed)
    problems.integer("num_train", num_train, minimum=1)
    problems.integer("num_eval", num_eval, minimum=1)
    if isinstance(operations, str) or not operations or any(op not in OPERATIONS for op in operations):
        problems.add(f"`operations` must be a non-empty list drawn from {list(OPERATIONS)}, got {operations!r}.")
    bounds_ok = [problems.integer("low", low, minimum=1), problems.integer("high", high)]
    if all(bounds_ok) and not low < high <= 99:
        problems.add(f"`low` and `high` must satisfy 1 <= low < high <= 99, got low={low}, high={high}.")
    problems.number("eval_share", eval_share, minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True)
    problems.raise_if_any()

    rng = random.Random(seed)
    pairs = [frozenset((a, b)) for a in range(low, high + 1) for b in range(a, high + 1)]
    rng.shuffle(pairs)
    cut = max(1, round(eval_share * len(pairs)))
    held_out, trained = pairs[:cut], pairs[cut:]
    for side_name, side in (("held-out", held_out), ("training", trained)):
        for operation in operations:
            if not any(orders_for_pair(pair, operation) for pair in side):
                raise ValueError(f"The {side_name} pairs {sorted(map(sorted, side))} admit no {operation} problem; "
                                 "widen [`low`, `high`] or change `eval_share`.")

    def draw(side: list[frozenset[int]], count: int, stream: str) -> list[WordProblem]:
        choices = {op: [order for pair in side for order in orders_for_pair(pair, op)] for op in operations}
        side_rng = random.Random(f"{seed}:{stream}")  # a str seed hashes with SHA-512: the same in every process
        drawn = []
        for index in range(count):
            operation = operations[index % len(operations)]
            a, b = side_rng.choice(choices[operation])
            template = side_rng.randrange(len(TEMPLATES[operation]))
            question = TEMPLATES[operation][template].format(a=a, b=b, name=side_rng.choice(NAMES),
                                                             things=side_rng.choice(THINGS))
            drawn.append(WordProblem(question, apply_operation(operation, a, b), operation, (a, b), template))
        return drawn

    task = WordProblemTask(train=draw(trained, num_train, "train"), eval=draw(held_out, num_eval, "eval"),
                           held_out_pairs=frozenset(held_out))
    check_no_leakage(task)
    return task


def check_no_leakage(task: WordProblemTask) -> None:
    """Raise ValueError if a training problem uses a held-out pair or repeats a held-out question, or a
    held-out problem uses a pair that is not held out."""
    leaked = [p.question for p in task.train if p.pair in task.held_out_pairs]
    eval_questions = {p.question for p in task.eval}
    repeated = [p.question for p in task.train if p.question in eval_questions]
    outside = [p.question for p in task.eval if p.pair not in task.held_out_pairs]
    if leaked or repeated or outside:
        raise ValueError(f"The split leaks: {len(leaked)} training problems use a held-out pair (e.g. "
                         f"{leaked[:1]}), {len(repeated)} repeat a held-out question, {len(outside)} held-out "
                         "problems use a training pair.")
