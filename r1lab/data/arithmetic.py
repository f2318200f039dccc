"""Synthetic verifiable task: repeated addition or subtraction modulo 10.

A question ``7+8*4 mod 10`` asks for (7 + 8 + 8 + 8 + 8) mod 10: a start digit ``s``, a
step ``k`` added or subtracted ``n`` times, on a clock of ten. Worked step by step it is a
count-down of one-digit facts, each needing only the line before it::

    7+8=5 3 left, 5+8=3 2 left, 3+8=1 1 left, 1+8=9 0 left

while a direct answer needs ``(s + k*n) mod 10`` in one go. Questions are split by a hash
of their text, so the test split holds (s, op, k, n) combinations no training example
shows: a model that memorised direct answers has nothing to recall there; one that learned
the steps does.

    >>> sample_problems(0, 1, split="test")[0]["question"]
    '4-7*5 mod 10'
"""

from __future__ import annotations

import hashlib
import random


def make_problem(rng: random.Random, min_count: int = 2, max_count: int = 6) -> dict:
    """One problem: question text, answer (a string), and its worked steps.

    Steps are ``(remaining, left, op, k, result)``; ``2-3*2 mod 10`` gives
    ``[(2, 2, '-', 3, 9), (1, 9, '-', 3, 6)]`` and answer ``"6"``.
    """
    n = rng.randint(min_count, max_count)
    k = rng.randint(1, 9)
    op = rng.choice("+-")
    s = rng.randint(0, 9)
    steps, value = [], s
    for i in range(n):
        result = (value + k if op == "+" else value - k) % 10
        steps.append((n - i, value, op, k, result))
        value = result
    return {"question": f"{s}{op}{k}*{n} mod 10", "answer": str(value), "steps": steps}


def is_test_question(question: str, test_fraction: float) -> bool:
    """True when the question belongs to the test split (a stable hash, not a random draw)."""
    digest = hashlib.blake2b(question.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < test_fraction


def sample_problems(seed: int | str, n: int, *, split: str, test_fraction: float = 0.15,
                    min_count: int = 2, max_count: int = 6) -> list[dict]:
    """Draw ``n`` problems of one split; test problems are distinct, train ones may repeat."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    want_test = split == "test"
    rng = random.Random(f"arithmetic-{split}-{seed}")
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * (n + 10):
            raise ValueError(f"cannot draw {n} distinct {split} problems; lower n_test or raise test_fraction")
        p = make_problem(rng, min_count, max_count)
        if is_test_question(p["question"], test_fraction) != want_test:
            continue
        if want_test and p["question"] in seen:
            continue
        seen.add(p["question"])
        out.append(p)
    return out


def worked_solution(steps: list[tuple]) -> str:
    """``[(2, 2, '-', 3, 9), (1, 9, '-', 3, 6)]`` -> ``'2-3=9 1 left, 9-3=6 0 left'``.

    The first step copies the question's opening verbatim; every later one reads only the
    step before it (its result, the same op and k, one fewer left).
    """
    return ", ".join(f"{a}{op}{k}={c} {r - 1} left" for r, a, op, k, c in steps)
