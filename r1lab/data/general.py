"""The toy world's non-reasoning ("general") requests, in English and Chinese, answered directly
with an empty think block. They stand in for the writing, factual-QA and other prompts of R1's
all-scenario stage (Guo et al. 2025, sec. 2.3.4), in two kinds:

- ``words``: one right answer. "Write 37 in words" -> "thirty-seven"; "用汉字写37" -> "三十七".
- ``list``: many acceptable answers, of graded quality. "List 3 even numbers between 40 and 49"
  ("列出3个40到49之间的偶数") is answered by any three distinct even numbers in the forties;
  a reply with an odd one, a repeat, one outside the range or a wrong count is worse, not wrong.

How good a reply is, is decided by the rule-based judge of r1lab/rewards/judge.py, which stands
in for DeepSeek-V3 as the paper's preference labeller and is kept as the held-out measure of
true helpfulness. Prompts split into train and test by a hash of their English wording (each
test prompt is asked in every language).

    >>> make_list(3, "even", 4, "en")["question"]
    'List 3 even numbers between 40 and 49'
"""

from __future__ import annotations

import random

from r1lab.data.arithmetic import is_test_question

REQUESTS = ("words", "list")

_ONES = {"en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen"],
         "zh": list("零一二三四五六七八九")}
_TENS_EN = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORDS_QUESTION = {"en": "Write {n} in words", "zh": "用汉字写{n}"}
_LIST_QUESTION = {"en": "List {k} {parity} numbers between {low} and {high}",
                  "zh": "列出{k}个{low}到{high}之间的{parity}"}
_PARITY = {"en": {"even": "even", "odd": "odd"}, "zh": {"even": "偶数", "odd": "奇数"}}


def number_words(n: int, lang: str) -> str:
    """0 <= n < 100 in words: ``37`` -> ``'thirty-seven'`` (en), ``'三十七'`` (zh).

    >>> [number_words(n, "zh") for n in (0, 10, 14, 40, 99)]
    ['零', '十', '十四', '四十', '九十九']
    """
    tens, ones = divmod(n, 10)
    if lang == "en":
        return _ONES["en"][n] if n < 20 else _TENS_EN[tens] + (f"-{_ONES['en'][ones]}" if ones else "")
    digits = _ONES["zh"]
    head = "" if tens == 0 else "十" if tens == 1 else digits[tens] + "十"
    return (head + (digits[ones] if ones or not head else "")) or digits[0]


def make_words(n: int, lang: str) -> dict:
    return {"question": _WORDS_QUESTION[lang].format(n=n), "answer": number_words(n, lang),
            "lang": lang, "category": "general", "request": "words"}


def make_list(k: int, parity: str, decade: int, lang: str) -> dict:
    """A list request: ``k`` distinct numbers of ``parity`` in ``[10 * decade, 10 * decade + 9]``.
    Its ``answer`` is one acceptable reply (the smallest such numbers); the judge accepts any."""
    low = 10 * decade
    numbers = [x for x in range(low, low + 10) if x % 2 == (parity == "odd")][:k]
    return {"question": _LIST_QUESTION[lang].format(k=k, parity=_PARITY[lang][parity], low=low, high=low + 9),
            "answer": ", ".join(map(str, numbers)), "lang": lang, "category": "general", "request": "list",
            "count": k, "parity": parity, "low": low, "high": low + 9}


def _english_keys(request: str) -> list[tuple]:
    """Every prompt of a kind, as the arguments of its maker without the language."""
    if request == "words":
        return [(n,) for n in range(100)]
    return [(k, parity, decade) for k in (2, 3, 4) for parity in ("even", "odd") for decade in range(10)]


def _maker(request: str):
    return make_words if request == "words" else make_list


def general_examples(seed: int | str, n: int | None, *, split: str, test_fraction: float = 0.15,
                     languages: tuple[str, ...] = ("en",), requests: tuple[str, ...] = REQUESTS) -> list[dict]:
    """General prompts of the ``requests`` kinds and of one split: the test split is every test
    prompt in every language (``n`` is ignored); ``n`` train ones are drawn with replacement,
    kind, prompt and language uniformly."""
    keys = {r: [key for key in _english_keys(r)
                if is_test_question(_maker(r)(*key, "en")["question"], test_fraction) == (split == "test")]
            for r in requests}
    if split == "test":
        return [_maker(r)(*key, lang) for r in requests for key in keys[r] for lang in languages]
    rng = random.Random(f"general-{seed}")
    out = []
    for _ in range(n):
        r = rng.choice(requests)
        out.append(_maker(r)(*rng.choice(keys[r]), rng.choice(languages)))
    return out


def corpus_reply(example: dict, rng: random.Random, fit: float = 0.6) -> str:
    """The answer a web document gives to a general request: the reference for ``words``; for
    ``list``, a reply of mixed quality (each item fits with chance ``fit``, the count is off by
    one a third of the time, items may repeat), so a base model learns the form, not the rule.

    >>> corpus_reply(make_list(3, "even", 4, "en"), random.Random(1))
    '40, 46, 60'
    """
    if example["request"] == "words":
        return example["answer"]
    k = max(1, example["count"] + rng.choice([0, 0, 0, 0, -1, 1]))
    good = [x for x in range(example["low"], example["high"] + 1) if x % 2 == (example["parity"] == "odd")]
    return ", ".join(str(rng.choice(good) if rng.random() < fit else rng.randrange(100)) for _ in range(k))
