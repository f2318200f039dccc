"""Accuracy rewards: the answer inside the single ``<answer>`` block against the reference."""

from __future__ import annotations

import re
from fractions import Fraction

from r1lab.rewards.verify_worker import WORKER

_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
MAX_DIGITS = 1000   # longer numbers are no answer (Python parses at most 4,300 digits)


def extract_answer(completion: str) -> str | None:
    """Text inside the one ``<answer>...</answer>`` block; None when there are zero or several.

    >>> extract_answer("<think>..</think><answer> 42 </answer>")
    ' 42 '
    >>> extract_answer("<answer>1</answer><answer>2</answer>") is None
    True
    """
    if completion.count("<answer>") != 1:       # string scans: linear however many tags there are
        return None
    start = completion.index("<answer>") + len("<answer>")
    end = completion.find("</answer>", start)
    return None if end < 0 else completion[start:end]


def reference_answer(example: dict) -> str:
    """The reference: ``example['answer']``; a GSM8K-style ``'...#### 42'`` gives ``'42'``."""
    answer = str(example["answer"])
    return answer.split("####")[-1].strip()


def parse_number(text: str) -> Fraction | None:
    """``' 1,234 '`` -> 1234, ``'3.50'`` -> 7/2, ``'12.'`` -> 12; anything else, or over
    ``MAX_DIGITS`` characters, -> None.

    >>> parse_number("9" * 5000) is None
    True
    """
    text = text.strip().rstrip(".").replace(",", "")
    if len(text) > MAX_DIGITS or not _NUMBER.fullmatch(text):
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
    reference = reference_answer(example)
    if got is None or not reference:             # an empty reference pays nothing, even for an empty answer
        return 0.0
    want, value = parse_number(reference), parse_number(got)
    if want is None:  # a non-numeric reference is compared as text
        return 1.0 if got.strip() == reference else 0.0
    return 1.0 if value is not None and value == want else 0.0


def math_verify_reward(completion: str, example: dict) -> float:
    """Like :func:`accuracy_reward` but equivalence is decided by ``math-verify``
    (LaTeX, fractions, sets), as open-r1 does for GSM8K and MATH; in a worker process, within
    a time budget (r1lab/rewards/verify_worker.py).

    >>> math_verify_reward("<think>..</think> <answer>\\\\frac{1}{2}</answer>", {"answer": "0.5"})
    1.0
    """
    got = extract_answer(completion)
    reference = reference_answer(example)
    if got is None or not reference:
        return 0.0
    return 1.0 if WORKER.equivalent(reference, got) else 0.0
