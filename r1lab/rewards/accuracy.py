"""Accuracy rewards: the answer inside the single ``<answer>`` block against the reference."""

from __future__ import annotations

import re
from fractions import Fraction

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def extract_answer(completion: str) -> str | None:
    """Text inside the one ``<answer>...</answer>`` block; None when there are zero or several.

    >>> extract_answer("<think>..</think><answer> 42 </answer>")
    ' 42 '
    >>> extract_answer("<answer>1</answer><answer>2</answer>") is None
    True
    """
    found = _ANSWER.findall(completion)
    if len(found) != 1 or completion.count("<answer>") != 1:
        return None
    return found[0]


def reference_answer(example: dict) -> str:
    """The reference: ``example['answer']``; a GSM8K-style ``'...#### 42'`` gives ``'42'``."""
    answer = str(example["answer"])
    return answer.split("####")[-1].strip()


def parse_number(text: str) -> Fraction | None:
    """``' 1,234 '`` -> 1234, ``'3.50'`` -> 7/2, ``'12.'`` -> 12; anything else -> None."""
    text = text.strip().rstrip(".").replace(",", "")
    if not _NUMBER.fullmatch(text):
        return None
    return Fraction(text)


def accuracy_reward(completion: str, example: dict) -> float:
    """1.0 when the answer block holds the reference number (numerically), else 0.0.

    >>> accuracy_reward("<think>7+8=15</think> <answer>15</answer>", {"answer": "15"})
    1.0
    >>> accuracy_reward("<think>7+8=15</think> 15", {"answer": "15"})   # answer outside the tags
    0.0
    >>> accuracy_reward("<answer>fifteen</answer>", {"answer": "15"})
    0.0
    """
    got = extract_answer(completion)
    if got is None:
        return 0.0
    reference = reference_answer(example)
    want, value = parse_number(reference), parse_number(got)
    if want is None:  # a non-numeric reference is compared as text
        return 1.0 if got.strip() == reference else 0.0
    return 1.0 if value is not None and value == want else 0.0


def math_verify_reward(completion: str, example: dict) -> float:
    """Like :func:`accuracy_reward` but equivalence is decided by ``math-verify``
    (LaTeX, fractions, sets), as open-r1 does for GSM8K and MATH.

    >>> math_verify_reward("<think>..</think> <answer>\\\\frac{1}{2}</answer>", {"answer": "0.5"})
    1.0
    """
    from math_verify import parse, verify

    got = extract_answer(completion)
    if got is None:
        return 0.0
    gold = parse(reference_answer(example))
    pred = parse(got)
    return 1.0 if gold and pred and verify(gold, pred) else 0.0
