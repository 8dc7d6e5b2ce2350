"""The word-problem task of `itersft demo-real`: answers, the leakage-free split, and the verifier on the
completions SmolLM2 typically writes."""

from __future__ import annotations

import re

import pytest

from itersft.demo import word_problems as wp
from itersft.scoring.scorers import numeric


def _numbers_in(question: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", question)]


def test_every_answer_is_the_operation_applied_to_the_stated_numbers():
    task = wp.make_task(seed=3, num_train=300, num_eval=90)
    expected = {"addition": lambda a, b: a + b, "subtraction": lambda a, b: a - b,
                "multiplication": lambda a, b: a * b}
    for problem in task.train + task.eval:
        a, b = problem.numbers
        assert sorted(_numbers_in(problem.question)) == sorted([a, b])
        assert problem.answer == expected[problem.operation](a, b)
        assert problem.meta() == {"answer": str(problem.answer)}
        assert problem.messages() == [{"role": "user", "content": problem.question}]
        if problem.operation == "subtraction":
            assert a > b  # answers stay positive, never 0


def test_seed_0_draws_the_questions_read_here_by_hand():
    task = wp.make_task(seed=0, num_train=2, num_eval=3)
    assert [(p.question, p.answer) for p in task.eval] == [
        ("There are 5 pencils in a box and 5 pencils on the table. How many pencils are there altogether?", 10),
        ("There were 6 apples on the table. Zoe took 5 of them. How many apples are still on the table?", 1),
        ("There are 3 rows of apples with 5 apples in each row. How many apples are there?", 15),
    ]
    assert sorted(sorted(p) for p in task.held_out_pairs) == [
        [2], [2, 7], [2, 9], [3, 5], [3, 8], [3, 9], [4, 6], [4, 8], [5], [5, 6], [7], [8]]
    assert [(p.numbers, p.answer) for p in task.train] == [((4, 3), 7), ((9, 6), 3)]


def test_no_held_out_pair_appears_in_training_in_any_order_operation_or_template():
    for seed in range(5):
        task = wp.make_task(seed=seed, num_train=600, num_eval=120)
        train_pairs = {frozenset(_numbers_in(p.question)) for p in task.train}
        eval_pairs = {frozenset(_numbers_in(p.question)) for p in task.eval}
        assert train_pairs.isdisjoint(eval_pairs)
        assert eval_pairs <= task.held_out_pairs
        assert not {p.question for p in task.train} & {p.question for p in task.eval}


def test_a_third_of_the_pairs_is_held_out_and_operations_are_balanced():
    task = wp.make_task(seed=0, num_train=90, num_eval=60)
    assert len(task.held_out_pairs) == 12  # 2..9: 36 unordered pairs, doubles included
    assert [p.operation for p in task.eval[:3]] == list(wp.OPERATIONS)
    assert {op: sum(p.operation == op for p in task.eval) for op in wp.OPERATIONS} == dict.fromkeys(wp.OPERATIONS, 20)


def test_same_seed_same_task_other_seed_other_split_and_eval_independent_of_train_size():
    first = wp.make_task(seed=7, num_train=50, num_eval=20)
    assert first == wp.make_task(seed=7, num_train=50, num_eval=20)
    assert first.held_out_pairs != wp.make_task(seed=8, num_train=50, num_eval=20).held_out_pairs
    larger = wp.make_task(seed=7, num_train=500, num_eval=20)
    assert larger.eval == first.eval and larger.train[:50] == first.train


def test_check_no_leakage_rejects_a_leaking_task():
    task = wp.make_task(seed=0, num_train=10, num_eval=10)
    task.train.append(task.eval[0])
    with pytest.raises(ValueError, match="1 training problems use a held-out pair .*1 repeat a held-out question"):
        wp.check_no_leakage(task)


def test_bad_arguments_are_all_reported_at_once():
    with pytest.raises(ValueError) as error:
        wp.make_task(seed="0", num_train=0, num_eval=True, operations=["division"], low=5, high=3, eval_share=1.0)
    for name in ("`seed`", "`num_train`", "`num_eval`", "`operations`", "`low` and `high`", "`eval_share`"):
        assert name in str(error.value)


def test_a_side_without_any_subtraction_problem_is_refused():
    # 1..2 has the pairs {1}, {1, 2} and {2}; a seed that holds out a double leaves nothing to subtract.
    seeds = [s for s in range(20) if {len(p) for p in wp.make_task(
        seed=s, num_train=1, num_eval=1, operations=["addition"], low=1, high=2).held_out_pairs} == {1}]
    with pytest.raises(ValueError, match="admit no subtraction problem"):
        wp.make_task(seed=seeds[0], num_train=5, num_eval=5, operations=["subtraction"], low=1, high=2)


@pytest.mark.parametrize(("completion", "score"), [
    ("3 x 7 = 21", 1.0),
    ("Mia has 3 * 7 = 21 coins in total.", 1.0),
    ("21", 1.0),
    ("To find the total, multiply 3 by 7: 3 x 7 = 21. So Mia has 21 coins.", 1.0),
    ("Mia has 21 coins in 3 bags.", 0.0),  # the last number is what counts
    ("3 + 7 = 10", 0.0),
    ("Mia has twenty-one coins.", None),  # no number: unscorable, counted apart from wrong
])
def test_the_verifier_reads_the_last_number_of_typical_completions(completion, score):
    assert numeric([""], [completion], answer=["21"]) == [score]
