"""The reasoning_gym task: weighted draws, disjoint splits, each row scored by its own dataset."""

import json

import pytest

pytest.importorskip("reasoning_gym")

from r1lab.data.tasks import ReasoningGymTask  # noqa: E402
from r1lab.rewards import REWARDS  # noqa: E402

CHAIN = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}   # a + b: only 100 questions exist


def task(**kw) -> ReasoningGymTask:
    datasets = kw.pop("datasets", {"chain_sum": {"weight": 3, "config": CHAIN}, "basic_arithmetic": {"weight": 1}})
    return ReasoningGymTask(kind="reasoning_gym", datasets=datasets, **kw)


def test_draws_follow_the_weights_and_the_seed():
    t = task(n_test=20)
    rows = t.sample_train(0, 5, 400)
    share = sum(r["rg_dataset"] == "chain_sum" for r in rows) / len(rows)
    assert 0.68 < share < 0.82                                                    # weight 3 of 4
    assert rows == t.sample_train(0, 5, 400)                                      # same (seed, step), same draw
    assert rows != t.sample_train(0, 6, 400) and rows != t.sample_train(1, 5, 400)
    test = t.test_examples(0)
    assert [r["rg_dataset"] for r in test].count("chain_sum") == 15 and len(test) == 20
    assert test == t.test_examples(0) and test != t.test_examples(1)
    assert task(n_test=20, seed=9).test_examples(0) == task(n_test=20, seed=9).test_examples(1)  # the task's own seed


def test_training_never_asks_a_held_out_question():
    t = task(datasets={"chain_sum": {"config": CHAIN}}, n_test=30)
    held_out = {r["question"] for r in t.test_examples(0)}
    seen = {r["question"] for step in range(20) for r in t.sample_train(0, step, 50)}
    assert len(held_out) > 10 and seen and not seen & held_out


def test_rows_are_scored_by_their_own_dataset_and_partial_credit_is_opt_in():
    row = task(n_test=4).test_examples(0)[0]
    right, answer = row["answer"], "tag_or_last_number"
    reward = REWARDS["reasoning_gym"]
    assert reward(f"<answer>{right}</answer>", row) == 1.0
    assert reward(f"it is {right}", row) == 0.0                                   # tags by default
    assert reward(f"it is {right}", row, answer=answer) == 1.0
    padded = f"<answer>{right} or 1000</answer>"                                  # the right answer inside a longer one
    assert reward(padded, row) == 0.0
    assert 0.0 < reward(padded, row, partial_credit=True) < 1.0
    assert reward(f"<answer>{right}</answer>", json.loads(json.dumps(row))) == 1.0   # a row written and read back


def test_the_task_checks_its_datasets_at_config_load():
    assert task().problem() is None
    where, message = task(datasets={"nope": {}}).problem()
    assert where == ["datasets", "nope"] and "not registered" in message
    where, message = task(datasets={"chain_sum": {"config": {"bogus": 1}}}).problem()
    assert where == ["datasets", "chain_sum"] and "bogus" in message
    assert task(partial_credit=True, answer="last_number").verifier_params() == {"answer": "last_number",
                                                                               "partial_credit": True}
