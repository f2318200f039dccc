"""The R1 language-consistency reward: the share of the CoT's words in the target language.

DeepSeek-R1 (arXiv 2501.12948, sec. 2.3.2) adds to the RL reward "the proportion of target
language words in the CoT", Num(Words_target) / Num(Words), to stop the reasoning from mixing
languages. The paper does not say how words are counted or how a language is recognised; here
**a language is judged by its script** (``LANGUAGE_SCRIPTS``). That is our departure: any
Latin-script word counts as English (French, or a variable ``x``, counts as English too), and
kanji count for Japanese as well as for Chinese.

Counting rule (:func:`word_scripts`): each Han ideograph or kana character is one word (Chinese
and Japanese are written without spaces); each maximal run of Latin, Cyrillic or Hangul letters
is one word, an inner apostrophe or hyphen allowed ("don't", "step-by-step"). Everything else is
neutral, not a word at all: digits (ASCII and full-width), punctuation (ASCII and ，。：),
math symbols, Greek letters, whitespace and the tags ``<think></think><answer></answer>``.
"""

from __future__ import annotations

import re
from collections import Counter

_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff\uff21-\uff3a\uff41-\uff5a"
_CYRILLIC = "\u0400-\u052f"
_HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"  # ext. A-G, compat.
_KANA = "\u3041-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9f"
_MARKS = "\u0300-\u036f"                 # combining accents, as in a decomposed "é"
_JOIN = "'\u2019-"                       # ' ’ - inside a word: "don't", "step-by-step"


def _run(letters: str) -> str:
    """Regex for a maximal run of ``letters``, joined inside by an apostrophe or hyphen."""
    word = f"[{letters}][{letters}{_MARKS}]*"
    return f"{word}(?:[{_JOIN}]{word})*"


_WORD = re.compile(
    rf"(?=[<{_LATIN}{_CYRILLIC}{_HANGUL}{_HAN}{_KANA}])"     # skips neutral chars ~30% faster
    r"(?:(?P<tag></?(?:think|answer)>)"                     # a tag: matched, then dropped
    rf"|(?P<latin>{_run(_LATIN)})|(?P<cyrillic>{_run(_CYRILLIC)})"
    rf"|(?P<hangul>[{_HANGUL}]+)|(?P<han>[{_HAN}])|(?P<kana>[{_KANA}]))"  # Han, kana: 1 per char
)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)

# language -> the scripts its words may be written in; small on purpose (see the module doc)
LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    "en": ("latin",), "zh": ("han",), "ja": ("kana", "han"), "ko": ("hangul",), "ru": ("cyrillic",),
}


def extract_think(completion: str) -> str | None:
    """Text inside the first ``<think>...</think>`` block; None when no think block is closed.

    >>> extract_think("<think> 7+8=15 </think><answer>15</answer>")
    ' 7+8=15 '
    >>> extract_think("<think>unfinished <answer>15</answer>") is None
    True
    """
    found = _THINK.search(completion)
    return None if found is None else found.group(1)


def word_scripts(text: str) -> list[str]:
    """The script of each word of ``text``, in order (the counting rule is in the module doc).

    >>> word_scripts("Don't guess: step-by-step, 7+8=15。")
    ['latin', 'latin', 'latin']
    >>> word_scripts("7+8=15，还剩3 <answer>15</answer>")    # 2 Han chars; digits, ，, tags neutral
    ['han', 'han']
    >>> word_scripts("café Привет 안녕 하세요 です")
    ['latin', 'cyrillic', 'hangul', 'hangul', 'kana', 'kana']
    """
    return [m.lastgroup for m in _WORD.finditer(text) if m.lastgroup != "tag"]


def detect_language(text: str) -> str:
    """The language whose scripts hold the most words of ``text``; "en" on a tie or no words.

    A language with more scripts wins only by covering more words, so Chinese text (Han only)
    is "zh" although Japanese also accepts Han.

    >>> detect_language("小明有7个苹果，吃了2个，还剩几个？")   # 13 Han words
    'zh'
    >>> detect_language("Tom has 7 apples")
    'en'
    >>> detect_language("Tom 有 apples 苹果")                   # 2 Latin, 3 Han
    'zh'
    >>> detect_language("7+8=?")                                 # no words at all
    'en'
    """
    counts = Counter(word_scripts(text))
    keys = {lang: (sum(counts[s] for s in scripts), -len(scripts))
            for lang, scripts in LANGUAGE_SCRIPTS.items()}
    best = max(keys.values())
    winners = [lang for lang, key in keys.items() if key == best]
    return winners[0] if best[0] > 0 and len(winners) == 1 else "en"


def language_consistency(completion: str, example: dict) -> float:
    """Share of the think block's words written in the example's language, in [0, 1].

    The language is ``example["lang"]`` when given, else detected from ``example["question"]``.
    A missing think block, or one with no words (empty, numbers or symbols only), scores 0.0:
    the reward is for reasoning written in the target language, and an empty CoT must not be
    a free way to collect it.

    >>> en, zh = {"lang": "en"}, {"question": "小明有几个苹果？"}
    >>> language_consistency("<think>So 7+8 is 15.</think><answer>15</answer>", en)
    1.0
    >>> language_consistency("<think>7+8=15，还剩3</think>", zh)          # 2 Han of 2 words
    1.0
    >>> language_consistency("<think>first 7+8=15，所以 answer is 15</think>", en)  # 3 of 5
    0.6
    >>> language_consistency("<think>7+8=15</think>", en), language_consistency("<think></think>", en)
    (0.0, 0.0)
    >>> language_consistency("<think>so <answer>15</answer> 好</think>", zh)  # 1 Han of 2
    0.5
    """
    lang = example.get("lang") or detect_language(example["question"])
    if lang not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown lang {lang!r}; known: {sorted(LANGUAGE_SCRIPTS)}")
    think = extract_think(completion)
    words = word_scripts(think) if think is not None else []
    if not words:
        return 0.0
    target = LANGUAGE_SCRIPTS[lang]
    return sum(script in target for script in words) / len(words)
