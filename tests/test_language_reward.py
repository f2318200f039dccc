"""The language-consistency reward: word counting by script, on hand-worked strings."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab.rewards.language import (LANGUAGE_SCRIPTS, detect_language, extract_think,
                                    language_consistency, word_scripts)

EN, ZH = {"lang": "en"}, {"lang": "zh"}


def think(text: str) -> str:
    return f"<think>{text}</think> <answer>15</answer>"


def test_english_in_english_example():
    assert language_consistency(think("Add seven and eight to get fifteen."), EN) == 1.0


def test_chinese_in_chinese_example():
    assert language_consistency(think("七加八等于十五。"), ZH) == 1.0


def test_mixed_fraction():
    # Latin: First, add, then, done = 4; Han: 先 加 然 后 减 去 = 6; digits, + and , neutral
    text = "First add 7 + 8, 先加然后减去 then done."
    assert word_scripts(text) == ["latin"] * 2 + ["han"] * 6 + ["latin"] * 2
    assert language_consistency(think(text), EN) == pytest.approx(4 / 10)
    assert language_consistency(think(text), ZH) == pytest.approx(6 / 10)


def test_no_words_scores_zero():
    assert language_consistency(think("7+8=15, 15-3=12."), EN) == 0.0    # numbers only
    assert language_consistency(think("７＋８＝１５。"), ZH) == 0.0        # full-width digits only
    assert language_consistency(think(""), EN) == 0.0                     # empty think
    assert language_consistency(think("  \n "), EN) == 0.0                # whitespace only


def test_no_think_block_scores_zero():
    assert language_consistency("Seven plus eight is fifteen. <answer>15</answer>", EN) == 0.0
    assert language_consistency("<think>Seven plus eight", EN) == 0.0     # never closed
    assert extract_think("<think>a</think><think>b</think>") == "a"       # first block only


def test_tags_and_punctuation_are_neutral():
    assert word_scripts("<think></think><answer></answer>") == []
    assert word_scripts("!?.,;:()[]{}\"'-+=*/<>%$#@^&|~`") == []
    assert word_scripts("，。：；！？、（）《》“”「」…—") == []
    # 2 Latin words and 2 Han words, whatever the tags and punctuation between them
    assert word_scripts("yes, <answer>好</answer>。no：对！") == ["latin", "han", "latin", "han"]
    assert language_consistency(think("好，<answer>对</answer>。"), ZH) == 1.0


def test_apostrophe_and_hyphen_join_one_word():
    assert word_scripts("don't") == ["latin"]
    assert word_scripts("don\u2019t step-by-step") == ["latin", "latin"]
    assert word_scripts("'quoted' - dash") == ["latin", "latin"]     # outer ' and a spaced - split
    assert word_scripts("naïve café Ёлка") == ["latin", "latin", "cyrillic"]


def test_chinese_worked_step():
    # 还, 剩 are the only words: digits and + = are neutral
    assert word_scripts("7+8=5 还剩3") == ["han", "han"]
    assert language_consistency(think("7+8=5 还剩3"), ZH) == 1.0
    assert language_consistency(think("7+8=5 还剩3"), EN) == 0.0


def test_language_detected_from_question():
    question = {"question": "小明有7个苹果，又买了8个，一共有几个？"}
    assert language_consistency(think("一共有十五个"), question) == 1.0
    assert language_consistency(think("fifteen apples"), question) == 0.0
    assert language_consistency(think("fifteen apples"), {"question": "Tom has 7 apples."}) == 1.0
    # an explicit lang wins over the question's language
    assert language_consistency(think("fifteen"), {"lang": "en", "question": "几个？"}) == 1.0


def test_unknown_lang_raises():
    with pytest.raises(ValueError, match=r"'xx'.*'en'"):
        language_consistency(think("hello"), {"lang": "xx"})


def test_detect_language():
    assert detect_language("Tom has 7 apples. How many?") == "en"
    assert detect_language("小明有7个苹果，还剩几个？") == "zh"
    assert detect_language("Tom 有 7 个苹果") == "zh"           # 1 Latin < 4 Han
    assert detect_language("Tom and Ann 有 apples 吗") == "en"  # 4 Latin > 2 Han
    assert detect_language("one 一") == "en"                    # 1 Latin = 1 Han: tie -> en
    assert detect_language("12 + 7 = ?") == "en"                # no words -> en
    assert detect_language("りんごが3個あります") == "ja"         # 8 kana + 1 Han (個)
    assert detect_language("Сколько яблок?") == "ru"
    assert detect_language("사과가 몇 개 있나요?") == "ko"


NEUTRAL = st.text(alphabet="0123456789０１２３４５６７８９ \n.,;:!?()+-*/=%<'，。：；！？、（）", max_size=20)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60), extra=NEUTRAL, lang=st.sampled_from(sorted(LANGUAGE_SCRIPTS)))
def test_bounded_and_neutral_characters_change_nothing(text, extra, lang):
    # ">" is left out of NEUTRAL: it could close a tag begun in `text` ("<answer" + ">"), and
    # a tag is meant to vanish. Any other digit or punctuation appended must change nothing.
    example = {"lang": lang}
    value = language_consistency(think(text), example)
    assert 0.0 <= value <= 1.0
    assert language_consistency(think(text + extra), example) == value
    assert 0.0 <= language_consistency(text, example) <= 1.0   # raw random completion
