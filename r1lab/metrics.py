"""Every metric of sampled completions, one meaning per name: pure functions of per-sample records.

Eval (r1lab/stages/eval.py) and the RL stages' rollouts (r1lab/train/rl_step.py) both score each
completion into a record and compute their metrics here, so a name such as ``format_rate`` means
the same thing wherever it is logged (docs/metrics.md defines each).

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
from collections.abc import Callable
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


# ---- per-sample metrics shared by eval and the RL rollouts ---------------------------------------
# A record: "formatted" (R1's format, a summary between the think and answer blocks allowed),
# "length" (tokens), and in a rollout "truncated" (cut at max_new_tokens).

def mean(values) -> float:
    """Mean of ``values``; 0.0 when there are none."""
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _flat(groups: list[list[dict]]) -> list[dict]:
    return [r for g in groups for r in g]


def _languages(groups: list[list[dict]]) -> list[float]:
    return [r["language"] for r in _flat(groups) if r["language"] is not None]


def format_rate(records: list[dict]) -> float:
    """Share of completions in R1's format, ``<think>..</think> [summary] <answer>..</answer>``."""
    return mean(r["formatted"] for r in records)


def mean_length(records: list[dict]) -> float:
    return mean(r["length"] for r in records)


# name -> metric of a rollout step's records (GRPO, PPO), beside reward/<fn> and accuracy
ROLLOUT_METRICS: dict[str, Callable[[list[dict]], float]] = {
    "format_rate": format_rate,
    "completion_len/mean": mean_length,
    "truncated_rate": lambda records: mean(r["truncated"] for r in records),
}


# name -> metric of the k sampled records of every question (one list per question)
EVAL_METRICS: dict[str, Callable[[list[list[dict]]], float]] = {
    "pass@1": mean_pass_at_1,
    "cons@k": cons_at_k,
    "pass@k": lambda groups: mean_pass_at_k(groups, len(groups[0])),
    "format_rate": lambda groups: format_rate(_flat(groups)),
    "accuracy_if_formatted": lambda groups: mean(r["correct"] for r in _flat(groups) if r["formatted"]),
    "completion_len/mean": lambda groups: mean_length(_flat(groups)),
    "language_consistency": lambda groups: mean(_languages(groups)),
    "language_consistent_rate": lambda groups: mean(v == 1.0 for v in _languages(groups)),
    "readability": lambda groups: mean(r["readable"] for r in _flat(groups)),
}

# name -> metric of the non-reasoning prompts' sampled records, logged as general/<name>
GENERAL_METRICS: dict[str, Callable[[list[list[dict]]], float]] = {
    "judge": lambda groups: mean(r["judge"] for r in _flat(groups)),
    "judge_list": lambda groups: mean(r["judge"] for r in _flat(groups) if r["request"] == "list"),
    "accuracy": lambda groups: mean(r["judge"] == 1.0 for r in _flat(groups)),
    "direct_rate": lambda groups: mean(r["direct"] for r in _flat(groups)),
}


def win_rate(ours: list[dict], theirs: list[dict]) -> float:
    """The judge's win rate of one model's general samples over another's on the same prompts:
    every sample of ours against every sample of theirs for the same question, a tie counting
    half, averaged over questions.

    >>> a = [{"question": "q", "judge": 1.0}, {"question": "q", "judge": 0.5}]
    >>> win_rate(a, [{"question": "q", "judge": 0.5}])    # (1 + 0.5) / 2
    0.75
    """
    by_question: dict[str, list[float]] = {}
    for r in theirs:
        by_question.setdefault(r["question"], []).append(r["judge"])
    rates = []
    for q in dict.fromkeys(r["question"] for r in ours):
        mine = [r["judge"] for r in ours if r["question"] == q]
        other = by_question.get(q, [])
        if other:
            rates.append(mean((a > b) + 0.5 * (a == b) for a in mine for b in other))
    return mean(rates)


def paired_bootstrap_gain(ours: list[dict], theirs: list[dict], resamples: int = 10_000,
                          seed: int = 0) -> tuple[float, float, float]:
    """(gain, low, high): the pass@1 gain of ours over theirs on the questions both answered
    (the same ``question_id`` and ``question``; each question's pass@1 over its samples), and its paired bootstrap 95%
    interval (questions resampled with replacement, the same draw for both sides).

    >>> a = [{"question_id": q, "correct": 1} for q in range(50)]
    >>> b = [{"question_id": q, "correct": q % 2} for q in range(50)]
    >>> gain, low, high = paired_bootstrap_gain(a, b)
    >>> gain, 0.3 < low < 0.5 < high < 0.7
    (0.5, True)
    """
    import random

    def per_question(records):
        found: dict[tuple, list[int]] = {}
        for r in records:
            found.setdefault((r["question_id"], r.get("question")), []).append(_correct(r))
        return {q: sum(v) / len(v) for q, v in found.items()}
    mine, other = per_question(ours), per_question(theirs)
    diffs = [mine[q] - other[q] for q in mine if q in other]
    if not diffs:
        raise ValueError("no question in common")
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    return sum(diffs) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
