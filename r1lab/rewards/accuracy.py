"""Accuracy rewards: the completion's answer against the reference.

Where the answer is read from is the ``answer`` parameter (:data:`ANSWER_MODES`): the single
``<answer>`` block (``tag``, R1's contract), the last number of the reply (``last_number``), the
last ``\\boxed{...}`` (``boxed``), or the block when there is one and the last number otherwise
(``tag_or_last_number``): a base or small chat model that does not yet write the tags is paid for
being right, and the format reward still teaches it the tags.
"""

from __future__ import annotations

import re
from fractions import Fraction

from r1lab.rewards.verify_worker import WORKER

_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_NUMBER_IN_TEXT = re.compile(r"[+-]?\d[\d,]*(?:\.\d+)?")
ANSWER_MODES = ("tag", "last_number", "boxed", "tag_or_last_number")
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


def last_number(completion: str) -> str | None:
    """The last number written in the completion (thousands commas kept for ``parse_number``).

    >>> last_number("3 + 4 = 7, so the total is 1,234.")
    '1,234'
    >>> last_number("no digits") is None
    True
    """
    found = None
    for found in _NUMBER_IN_TEXT.finditer(completion):
        pass
    return found.group().rstrip(",") if found else None


def last_boxed(completion: str) -> str | None:
    """The content of the last ``\\boxed{...}``, braces balanced; None when there is none.

    >>> last_boxed(r"so \\boxed{1} or rather \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    """
    start = completion.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(completion)):
        depth += {"{": 1, "}": -1}.get(completion[j], 0)
        if depth == 0:
            return completion[i + 1:j]
    return None


def extract(completion: str, mode: str = "tag") -> str | None:
    """The answer of ``completion`` as ``mode`` (one of :data:`ANSWER_MODES`) reads it.

    >>> extract("The sum is 6.", "tag") is None, extract("The sum is 6.", "tag_or_last_number")
    (True, '6')
    >>> extract("<think>1+5 is 6</think> <answer>7</answer>", "tag_or_last_number")
    '7'
    """
    if mode == "tag":
        return extract_answer(completion)
    if mode == "last_number":
        return last_number(completion)
    if mode == "boxed":
        return last_boxed(completion)
    if mode == "tag_or_last_number":
        tagged = extract_answer(completion)
        return tagged if tagged is not None else last_number(completion)
    raise ValueError(f"unknown answer mode {mode!r}; known: {', '.join(ANSWER_MODES)}")


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


def accuracy_reward(completion: str, example: dict, answer: str = "tag") -> float:
    """1.0 when the answer (read as ``answer`` says: :func:`extract`) is the reference number
    (numerically), else 0.0.

    >>> accuracy_reward("<think>7+8=15</think> <answer>15</answer>", {"answer": "15"})
    1.0
    >>> accuracy_reward("<think>7+8=15</think> 15", {"answer": "15"})   # answer outside the tags
    0.0
    >>> accuracy_reward("<think>7+8=15</think> 15", {"answer": "15"}, answer="last_number")
    1.0
    >>> accuracy_reward("<answer>fifteen</answer>", {"answer": "15"})
    0.0
    """
    got = extract(completion, answer)
    reference = reference_answer(example)
    if got is None or not reference:             # an empty reference pays nothing, even for an empty answer
        return 0.0
    want, value = parse_number(reference), parse_number(got)
    if want is None:  # a non-numeric reference is compared as text
        return 1.0 if got.strip() == reference else 0.0
    return 1.0 if value is not None and value == want else 0.0


def math_verify_reward(completion: str, example: dict, answer: str = "tag") -> float:
    """Like :func:`accuracy_reward` but equivalence is decided by ``math-verify``
    (LaTeX, fractions, sets), as open-r1 does for GSM8K and MATH; in a worker process, within
    a time budget (r1lab/rewards/verify_worker.py).

    >>> math_verify_reward("<think>..</think> <answer>\\\\frac{1}{2}</answer>", {"answer": "0.5"})
    1.0
    """
    got = extract(completion, answer)
    reference = reference_answer(example)
    if got is None or not reference:
        return 0.0
    return 1.0 if WORKER.equivalent(reference, got) else 0.0


def reasoning_gym_reward(completion: str, example: dict, answer: str = "tag", partial_credit: bool = False) -> float:
    """The example's reasoning-gym dataset scores the answer (r1lab/data/reasoning_gym.py): 1.0
    only for a full score, unless ``partial_credit`` (then the score itself, which pays part for
    a right answer inside a longer one: a reply that lists many numbers earns some of it)."""
    from r1lab.data.reasoning_gym import score
    got = extract(completion, answer)
    if got is None:
        return 0.0
    value = score(got.strip(), example)
    return value if partial_credit else float(value == 1.0)
