"""Rule-based rewards on tricky strings."""

import pytest

from pydantic import TypeAdapter, ValidationError

from r1lab.rewards import REWARDS, RewardsSpec, build_rewards, score
from r1lab.rewards.accuracy import accuracy_reward, extract_answer, math_verify_reward
from r1lab.rewards.format import format_reward

EX = {"question": "7+8-3", "answer": "12"}

CASES = [
    # completion, format, accuracy
    (" <think>7+8-3=15-3=12</think> <answer>12</answer>", 1.0, 1.0),
    ("<think></think><answer>12</answer>", 1.0, 1.0),                    # empty think is still the format
    ("\n <think>x</think>\n\n<answer>  12 \n</answer>  \n", 1.0, 1.0),     # whitespace around and inside
    (" <think>x</think> <answer>13</answer>", 1.0, 0.0),                  # wrong number
    (" <think>x</think> <answer>12.0</answer>", 1.0, 1.0),                # same number, other spelling
    (" <think>x</think> <answer>twelve</answer>", 1.0, 0.0),              # non-numeric answer
    (" <think>x</think> <answer>12 or 13</answer>", 1.0, 0.0),            # hedged answer
    (" <think>x</think> <answer></answer>", 1.0, 0.0),                    # empty answer
    (" <think>x</think> The answer is 12.", 0.0, 0.0),                    # answer outside <answer>
    (" <think>the answer is <answer>12</answer></think>", 0.0, 1.0),      # answer tag inside think
    (" <think>x</think> <answer>12</answer><answer>13</answer>", 0.0, 0.0),  # two answers
    (" <think>x</think> <answer>12</answer><answer>12</answer>", 0.0, 0.0),  # repeated answer
    (" <think>x</think><think>y</think> <answer>12</answer>", 0.0, 1.0),  # repeated think
    (" <think>x <answer>12</answer>", 0.0, 1.0),                          # missing </think>
    (" <think>x</think> <answer>12", 0.0, 0.0),                           # missing </answer>
    ("<answer>12</answer>", 0.0, 1.0),                                    # no think at all
    (" <think>x</think> <answer>12</answer> trailing text", 0.0, 1.0),    # text after the answer
    ("12", 0.0, 0.0),                                                     # bare number
]


@pytest.mark.parametrize("completion,fmt,acc", CASES)
def test_format_and_accuracy(completion, fmt, acc):
    assert format_reward(completion, EX) == fmt
    assert accuracy_reward(completion, EX) == acc


def test_extract_answer_needs_exactly_one_block():
    assert extract_answer("<answer>1</answer>") == "1"
    assert extract_answer("no tags") is None
    assert extract_answer("<answer>1</answer> <answer>2</answer>") is None
    assert extract_answer("<answer><answer>1</answer>") is None


def test_accuracy_reference_forms():
    assert accuracy_reward("<answer>42</answer>", {"answer": "Some work.\n#### 42"}) == 1.0
    assert accuracy_reward("<answer>1,234</answer>", {"answer": "1234"}) == 1.0
    assert accuracy_reward("<answer>-3</answer>", {"answer": "-3"}) == 1.0
    assert accuracy_reward("<answer>3</answer>", {"answer": "-3"}) == 0.0
    assert accuracy_reward("<answer>yes</answer>", {"answer": "yes"}) == 1.0   # textual reference


def test_math_verify_equivalences():
    assert math_verify_reward("<think>.</think><answer>$\\frac{1}{2}$</answer>", {"answer": "0.5"}) == 1.0
    assert math_verify_reward("<answer>42</answer>", {"answer": "Janet has... #### 42"}) == 1.0
    assert math_verify_reward("<answer>41</answer>", {"answer": "#### 42"}) == 0.0
    assert math_verify_reward("The answer is 42", {"answer": "42"}) == 0.0


def test_score_weights_and_reports_each_reward():
    texts = [" <think>a</think> <answer>12</answer>", " <think>a</think> 12"]
    totals, per_fn = score(build_rewards({"accuracy": 1.0, "format": 0.5}), ["q", "q"], texts, [EX, EX])
    assert totals == [1.5, 0.0]
    assert per_fn == {"accuracy": [1.0, 0.0], "format": [1.0, 0.0]}


def test_a_reward_spec_carries_weight_and_parameters():
    def length_penalty(completion, example, *, per_char):
        return -per_char * len(completion)

    REWARDS["length_penalty"] = length_penalty
    try:
        spec = TypeAdapter(RewardsSpec).validate_python({"format": 1, "length_penalty": {"weight": 2.0, "per_char": 0.1}})
        totals, per_fn = score(build_rewards(spec), ["q"], ["<think>a</think> <answer>1</answer>"], [EX])
        assert per_fn["length_penalty"] == [pytest.approx(-3.5)]           # 7+1+8+1+8+1+9 = 35 characters * 0.1
        assert totals == [pytest.approx(1.0 - 7.0)]                         # 1 * format + 2 * penalty
        with pytest.raises(ValidationError, match="takes no parameter 'per_word'.*it takes: per_char"):
            TypeAdapter(RewardsSpec).validate_python({"length_penalty": {"weight": 1, "per_word": 1}})
        with pytest.raises(ValidationError, match="unknown reward 'lenght'"):
            TypeAdapter(RewardsSpec).validate_python({"lenght": 1.0})
    finally:
        del REWARDS["length_penalty"]


def test_rewards_are_routed_by_category():
    """Rules that need a reference score reasoning prompts; the judge scores general ones; format
    scores both. A reward that does not apply adds nothing to an example's total."""
    from r1lab.data.general import make_list
    from r1lab.rewards import RewardSpec, build_rewards, mean_where_scored, score
    reasoning = {"question": "1+1*2 mod 10", "answer": "3"}                  # no category: reasoning
    general = make_list(2, "even", 1, "en")                                  # 2 even numbers in 10..19
    texts = ["<think>x</think> <answer>3</answer>", "<think></think> <answer>12, 13</answer>"]
    scorers = build_rewards({"accuracy": 1.0, "format": 0.5, "judge": 2.0})
    totals, per = score(scorers, ["p", "q"], texts, [reasoning, general])
    assert per == {"accuracy": [1.0, None], "format": [1.0, 1.0], "judge": [None, 0.5]}
    assert totals == [1.0 + 0.5, 0.5 + 2.0 * 0.5]
    assert mean_where_scored(per["judge"]) == 0.5 and mean_where_scored([None]) is None
    # a spec may route a reward elsewhere: the judge on every example (it reads no reasoning)
    everywhere = build_rewards({"judge": RewardSpec(weight=1.0, categories=["general", "other"])})
    assert everywhere[0].categories == ("general", "other")
    assert score(everywhere, ["q"], texts[1:], [general])[0] == [0.5]


def test_last_steps_switches_a_reward_on_at_the_end():
    from r1lab.rewards import RewardSpec, build_rewards
    late, always = build_rewards({"judge": RewardSpec(weight=1.0, last_steps=3), "format": 1.0})
    assert [late.on_at(s, 10) for s in range(10)] == [False] * 7 + [True] * 3
    assert all(always.on_at(s, 10) for s in range(10))


HOSTILE_COMPLETIONS = {
    "10k answer tags": "<answer>" * 10_000,
    "10k think tags": "<think>" * 10_000 + "</think>",
    "100k-character answer": "<think>" + "a" * 100_000 + "</think> <answer>" + "9" * 100_000 + "</answer>",
    "5,000 digits": "<think>x</think> <answer>" + "9" * 5_000 + "</answer>",
    "exponent tower": "<think>x</think> <answer>10**10**10**10</answer>",
    "LaTeX exponent tower": "<think>x</think> <answer>9^{9^{9^{9}}}</answer>",
    "huge factorial": "<think>x</think> <answer>(10^{9})!</answer>",
    "nested fractions": "<think>x</think> <answer>" + "\\frac{1}{" * 500 + "1" + "}" * 500 + "</answer>",
    "summary without an answer": "<think>x</think>" + " a" * 50_000 + "<answer>",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_COMPLETIONS))
def test_a_hostile_completion_earns_no_accuracy_and_costs_at_most_the_budget(name):
    import time
    from r1lab.rewards.verify_worker import BUDGET_S
    text = HOSTILE_COMPLETIONS[name]
    for reward in ("accuracy", "math_verify", "format", "language"):
        start = time.monotonic()
        value = REWARDS[reward](text, {"question": "7+8", "answer": "15"})
        elapsed = time.monotonic() - start
        assert value == 0.0 or reward in ("format", "language"), (reward, value)   # those two pay for form
        # math_verify: the budget, plus (after a kill) the start of the next worker
        assert elapsed < (BUDGET_S + 0.5 if reward == "math_verify" else 0.5), (reward, elapsed)
    start = time.monotonic()
    format_reward(text, allow_summary=True)
    assert time.monotonic() - start < 0.5


def test_an_empty_reference_pays_nothing_even_for_an_empty_answer():
    for reward in (accuracy_reward, math_verify_reward):
        assert reward("<think>x</think> <answer></answer>", {"answer": ""}) == 0.0
        assert reward("<think>x</think> <answer> </answer>", {"answer": "#### "}) == 0.0


def test_math_verify_works_from_any_thread_after_a_worker_was_killed():
    from concurrent.futures import ThreadPoolExecutor
    assert math_verify_reward(HOSTILE_COMPLETIONS["exponent tower"], EX) == 0.0    # kills the worker
    texts = ["<think>x</think> <answer>12</answer>", "<think>x</think> <answer>\\frac{24}{2}</answer>",
             "<think>x</think> <answer>13</answer>"]
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda t: math_verify_reward(t, EX), texts)) == [1.0, 1.0, 0.0]
