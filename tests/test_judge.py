"""The hidden judge of general replies, on hand-worked cases, and the general requests it judges."""

import pytest

from r1lab.data.general import general_examples, make_list, make_words
from r1lab.rewards.judge import judge, list_items

LIST = make_list(3, "odd", 2, "zh")                    # 列出3个20到29之间的奇数: 21 23 25 27 29
reply = lambda answer: f"<think></think> <answer>{answer}</answer>"


@pytest.mark.parametrize("answer, score", [
    ("21, 23, 25", 1.0),
    ("29，27，21", 1.0),                                # Chinese commas, any order
    ("21, 23", 2 / 3),                                  # one missing
    ("21, 23, 25, 27", 3 / 4),                          # one extra: 3 counted of 4 given
    ("21, 21, 23", 2 / 3),                              # a repeat
    ("21, 22, 23", 2 / 3),                              # an even one
    ("21, 31, 23", 2 / 3),                              # outside the range
    ("11, 13", 0.0),
    ("twenty-one, 23, 25", 0.0),                        # not a list of numbers
    ("", 0.0),
])
def test_list_replies(answer, score):
    assert judge(reply(answer), LIST) == pytest.approx(score)


def test_the_judge_reads_only_the_answer_block():
    assert judge("<think>21, 22, 22</think> The answer is below. " + "<answer>21, 23, 25</answer>", LIST) == 1.0
    assert judge("<think></think> 21, 23, 25", LIST) == 0.0                   # no answer block
    assert judge(reply("21") + reply("23"), LIST) == 0.0                     # two answer blocks


def test_words_replies_need_the_exact_words():
    ex = make_words(37, "en")
    assert ex["question"] == "Write 37 in words"
    assert judge(reply("thirty-seven"), ex) == 1.0
    assert judge(reply(" thirty-seven "), ex) == 1.0
    assert judge(reply("thirty seven"), ex) == 0.0
    assert judge(reply("三十七"), make_words(37, "zh")) == 1.0


def test_list_items():
    assert list_items("1, 22,3") == [1, 22, 3]
    assert list_items("1, 223") is None and list_items("a") is None


def test_reference_answers_score_one_and_splits_are_disjoint():
    test = general_examples(0, None, split="test", languages=("en", "zh"))
    train = general_examples(0, 3000, split="train", languages=("en", "zh"))
    assert {e["request"] for e in test} == {e["request"] for e in train} == {"words", "list"}
    assert {e["lang"] for e in test} == {"en", "zh"}
    assert not {e["question"] for e in test} & {e["question"] for e in train}
    assert all(judge(reply(e["answer"]), e) == 1.0 for e in test + train)
    assert [e["request"] for e in general_examples(0, 20, split="train", requests=("words",))] == ["words"] * 20
