"""Rejection sampling: the readable pattern, the filters one by one, and the stage's data,
statistics and crash-safe resume (with a stub sampler)."""

import pytest
from pydantic import TypeAdapter

from r1lab.data.readable import direct_completion, has_summary, readable, repeat_ratio
from r1lab.rewards import RewardsSpec, build_rewards, score
from r1lab.rewards.format import format_reward
from r1lab.rewards.language import language_consistency

READABLE = " <think>7+8=15, 15-3=12</think> The answer is 12. <answer>12</answer>"


@pytest.mark.parametrize("completion,plain,with_summary", [
    (" <think>x</think> <answer>12</answer>", 1.0, 1.0),             # no summary: both accept it
    (READABLE, 0.0, 1.0),                                            # the readable pattern
    ("<think>x</think>So 12.\n<answer>12</answer>\n", 0.0, 1.0),     # summary without spaces, newline
    ("<think>x</think> so <think>y</think> <answer>12</answer>", 0.0, 0.0),  # a tag in the summary
    ("<think>x</think> 12 <answer>12</answer> more", 0.0, 0.0),      # text after the answer
    ("Sure. <think>x</think> <answer>12</answer>", 0.0, 0.0),        # text before the think block
    ("<think>x</think> The answer is 12.", 0.0, 0.0),                # no answer block
])
def test_format_reward_allow_summary(completion, plain, with_summary):
    assert format_reward(completion) == plain
    assert format_reward(completion, {"answer": "12"}, allow_summary=True) == with_summary


def test_a_rewards_spec_may_allow_the_summary():
    """An RL stage after a readable cold start: ``format: {weight, allow_summary: true}``."""
    spec = TypeAdapter(RewardsSpec).validate_python({"format": {"weight": 0.5, "allow_summary": True}})
    totals, _ = score(build_rewards(spec), ["q"], [READABLE], [{"answer": "12"}])
    assert totals == [0.5]
    totals, _ = score(build_rewards({"format": 0.5}), ["q"], [READABLE], [{"answer": "12"}])
    assert totals == [0.0]


def test_rewrite_into_the_readable_pattern_en_and_zh():
    raw = "<think>\n7+8=15, 15-3=12\n</think>\n<answer> 12 </answer>"
    assert readable(raw, {"question": "7+8-3", "lang": "en"}) == READABLE
    zh = readable("<think>七加八得十五，减三得十二</think><answer>12</answer>", {"question": "七加八减三是多少？"})
    assert zh == " <think>七加八得十五，减三得十二</think> 答案是12。 <answer>12</answer>"
    assert format_reward(zh, allow_summary=True) == 1.0 and has_summary(zh)
    assert language_consistency(zh, {"lang": "zh"}) == 1.0          # the summary is outside the CoT
    assert readable("<think>x</think> 12", {"question": "q"}) is None
    assert readable("<answer>12</answer>", {"question": "q"}) is None


def test_direct_completion_and_has_summary():
    direct = direct_completion({"question": "Capital of France?", "answer": "Paris"})
    assert direct == " <think></think> <answer>Paris</answer>"
    assert format_reward(direct) == 1.0 and not has_summary(direct)
    assert has_summary(READABLE)
    assert not has_summary("<think>x</think> <answer>12</answer>")
    assert not has_summary("<think>x</think> <think>y</think><answer>12</answer>")   # tags, not a summary


@pytest.mark.parametrize("text,n,expected", [
    ("a b c d a b c d a b c d", 4, 1 - 4 / 9),     # 9 4-grams: abcd bcda cdab dabc, 4 distinct
    ("a b c d e f", 4, 0.0),                        # 3 4-grams, all distinct
    ("a a a a a", 2, 1 - 1 / 4),                    # 4 2-grams, 1 distinct
    ("a b", 4, 0.0),                                # fewer words than n
    ("", 1, 0.0),
    ("one two one two", 1, 0.5),                    # 4 words, 2 distinct
    ("答案答案答案", 2, 1 - 2 / 5),                   # 6 ideographs, 5 2-grams: 答案 案答, 2 distinct
    ("x=1 答案 x=1 答案", 2, 1 - 3 / 5),              # words x=1 答 案 x=1 答 案: 5 2-grams, 3 distinct
])
def test_repeat_ratio(text, n, expected):
    assert repeat_ratio(text, n) == pytest.approx(expected)
