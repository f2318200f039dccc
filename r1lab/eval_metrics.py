"""Metrics over k sampled answers per question: pure functions of plain records.

- ``mean_pass_at_1``: DeepSeek-R1 (2025) reports pass@1 as the mean correctness of k samples
  per question, averaged over questions.
- ``cons_at_k``: the R1 paper's cons@64, majority voting: the most common answer is scored.
- ``mean_pass_at_k``: the unbiased pass@k of Codex (Chen et al. 2021), ``pass_at_k``, from n >= k
  samples of which c are correct.

A record is one sample, a dict with ``"correct"`` (0.0 or 1.0) and ``"answer"`` (the parsed answer
text, e.g. from ``extract_answer``, or None); a group is the list of records of one question.
Departure: the papers do not say how a vote tie is broken; here the answer seen first wins.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

from r1lab.rewards.accuracy import parse_number


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that k of n samples, c of them correct, drawn without replacement hold a correct one:
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k/i) (Chen et al. 2021).

    >>> pass_at_k(5, 2, 2)   # 1 - C(3,2)/C(5,2) = 1 - 3/10 = 1 - (1 - 2/4)(1 - 2/5)
    0.7
    >>> pass_at_k(4, 3, 2)   # n - c = 1 < k: every pair holds a correct sample
    1.0
    """
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"need 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _decimal(value: Fraction) -> str:
    """Exact shortest decimal of a terminating fraction (all that parse_number returns)."""
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    digits = str(abs(int(value * 10**places))).rjust(places + 1, "0")   # 7/2 -> "35", 1/4 -> "025"
    cut = len(digits) - places
    return ("-" if value < 0 else "") + digits[:cut] + ("." + digits[cut:] if places else "")


def answer_key(answer: str | None) -> str | None:
    """The vote key of a parsed answer: a number (as ``parse_number`` reads it) becomes its exact
    shortest decimal, so equal values vote together; other text is stripped with inner whitespace
    collapsed. None, or an answer that is only whitespace, gives None: it casts no vote. A text key
    never reads as a number, so text and numbers never share a key.

    >>> [answer_key(a) for a in ["15", " 15.0 ", "1,500", "3.50", "-0.25"]]
    ['15', '15', '1500', '3.5', '-0.25']
    >>> answer_key("  x =  3 "), answer_key("1/2"), answer_key("  "), answer_key(None)
    ('x = 3', '1/2', None, None)
    """
    if answer is None:
        return None
    value = parse_number(answer)
    if value is not None:
        return _decimal(value)
    return " ".join(answer.split()) or None


def majority_vote(keys: list[str | None]) -> int | None:
    """Index of the first sample holding the most frequent non-None key; a tie goes to the key
    that appears first in ``keys``. None when every key is None.

    >>> majority_vote(["7", "8", "8", None])
    1
    >>> majority_vote([None, "8", "7", "7", "8"])   # 2 votes each: "8" appears first
    1
    """
    counts = Counter(key for key in keys if key is not None)   # keeps first-appearance order
    if not counts:
        return None
    winner = max(counts, key=counts.__getitem__)   # max returns the first of equal maxima
    return keys.index(winner)


def _correct(record: dict) -> int:
    """A record's correctness as 0 or 1; anything else (a summed reward, say) is an error."""
    if record["correct"] not in (0, 1):
        raise ValueError(f"'correct' must be 0 or 1, got {record['correct']!r}")
    return int(record["correct"])


def _check(groups: list[list[dict]]) -> None:
    """Raise unless there is a question and every question has a sample."""
    if not groups or not all(groups):
        raise ValueError("need at least one question, and at least one sample per question")


def mean_pass_at_1(groups: list[list[dict]]) -> float:
    """Mean over questions of the share of that question's samples that are correct.

    >>> mean_pass_at_1([[{"correct": 1.0}, {"correct": 0.0}], [{"correct": 1.0}]])   # (1/2 + 1)/2
    0.75
    """
    _check(groups)
    return sum(sum(map(_correct, g)) / len(g) for g in groups) / len(groups)


def cons_at_k(groups: list[list[dict]]) -> float:
    """Share of questions whose majority-vote answer (``answer_key``, ``majority_vote``) is
    correct; a question where no sample has an answer counts as wrong.

    >>> r = lambda answer, correct: {"answer": answer, "correct": correct}
    >>> cons_at_k([[r("8", 0.0), r("7", 1.0), r("7.0", 1.0)],   # "7" wins 2-1: right
    ...            [r("5", 0.0), r("5", 0.0), r("7", 1.0)],     # "5" wins 2-1: wrong
    ...            [r(None, 0.0)]])                             # no vote: wrong
    0.3333333333333333
    """
    _check(groups)
    votes = [majority_vote([answer_key(r["answer"]) for r in g]) for g in groups]
    return sum(0 if i is None else _correct(g[i]) for g, i in zip(groups, votes)) / len(groups)


def mean_pass_at_k(groups: list[list[dict]], k: int) -> float:
    """Mean over questions of ``pass_at_k(len(group), correct samples, k)``.

    >>> c = lambda *bits: [{"correct": b} for b in bits]
    >>> mean_pass_at_k([c(1.0, 0.0, 0.0, 0.0), c(0.0, 0.0, 0.0, 0.0)], 2)   # (1 - 3/6 + 0) / 2
    0.25
    """
    _check(groups)
    return sum(pass_at_k(len(g), sum(map(_correct, g)), k) for g in groups) / len(groups)
