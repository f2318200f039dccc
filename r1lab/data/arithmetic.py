"""Synthetic verifiable task: repeated addition or subtraction modulo 10, in English or Chinese.

A question ``7+8*4 mod 10`` (Chinese: ``7+8*4 模 10``) asks for (7 + 8 + 8 + 8 + 8) mod 10: a start
digit ``s``, a step ``k`` added or subtracted ``n`` times, on a clock of ten. Worked step by step
it is a count-down of one-digit facts, each needing only the line before it::

    7+8=5 3 left, 5+8=3 2 left, 3+8=1 1 left, 1+8=9 0 left
    7+8=5 还剩3, 5+8=3 还剩2, 3+8=1 还剩1, 1+8=9 还剩0

while a direct answer needs ``(s + k*n) mod 10`` in one go. Questions are split by a hash of
their English text, so the test split holds (s, op, k, n) combinations no training example
shows, in either language: a model that memorised direct answers has nothing to recall there;
one that learned the steps does. Each example carries its language (``lang``).

The non-reasoning prompts (``category: general``) are in r1lab/data/general.py.

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
    return {"question": english_question(s, op, k, n), "answer": str(value), "steps": steps}


def english_question(s: int, op: str, k: int, n: int) -> str:
    """The English wording, which decides a question's split: ``7+8*4 mod 10``."""
    return f"{s}{op}{k}*{n} mod 10"


LANGUAGES = ("en", "zh")
_MOD = {"en": "mod", "zh": "模"}


def question_text(problem: dict, lang: str) -> str:
    """``7+8*4 mod 10`` in English, ``7+8*4 模 10`` in Chinese."""
    n, s, op, k, _ = problem["steps"][0]
    return f"{s}{op}{k}*{n} {_MOD[lang]} 10"


def n_test_questions(test_fraction: float, min_count: int, max_count: int) -> int:
    """How many distinct questions the test split holds (each start, op, k and count)."""
    return sum(is_test_question(english_question(s, op, k, n), test_fraction)       # make_problem's ranges
               for s in range(10) for op in "+-" for k in range(1, 10) for n in range(min_count, max_count + 1))


def is_test_question(question: str, test_fraction: float) -> bool:
    """True when the question belongs to the test split (a stable hash, not a random draw)."""
    digest = hashlib.blake2b(question.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < test_fraction


def sample_problems(seed: int | str, n: int, *, split: str, test_fraction: float = 0.15,
                    min_count: int = 2, max_count: int = 6, languages: tuple[str, ...] = ("en",)) -> list[dict]:
    """Draw ``n`` problems of one split; test problems are distinct, train ones may repeat.

    Each is worded in a language drawn uniformly from ``languages`` (a stream of its own, so the
    problems drawn do not depend on the languages); ``question`` is in that language and the
    split is decided on the English wording."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    want_test = split == "test"
    rng = random.Random(f"arithmetic-{split}-{seed}")
    lang_rng = random.Random(f"arithmetic-lang-{split}-{seed}")
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
        lang = languages[0] if len(languages) == 1 else lang_rng.choice(languages)
        out.append({**p, "question": question_text(p, lang), "lang": lang, "category": "reasoning"})
    return out


_LEFT = {"en": "{r} left", "zh": "还剩{r}"}


def worked_step(step: tuple, lang: str) -> str:
    """``(2, 2, '-', 3, 9)`` -> ``'2-3=9 1 left'`` (en) or ``'2-3=9 还剩1'`` (zh)."""
    r, a, op, k, c = step
    return f"{a}{op}{k}={c} " + _LEFT[lang].format(r=r - 1)


def worked_solution(steps: list[tuple], lang: str = "en", switch_at: int | None = None) -> str:
    """``[(2, 2, '-', 3, 9), (1, 9, '-', 3, 6)]`` -> ``'2-3=9 1 left, 9-3=6 0 left'``.

    The first step copies the question's opening verbatim; every later one reads only the
    step before it (its result, the same op and k, one fewer left). From step ``switch_at`` on
    the wording switches to the other language, as a base model trained on mixed text does:

    >>> worked_solution([(2, 2, '-', 3, 9), (1, 9, '-', 3, 6)], "en", switch_at=1)
    '2-3=9 1 left, 9-3=6 还剩0'
    """
    other = LANGUAGES[1 - LANGUAGES.index(lang)]
    return ", ".join(worked_step(s, lang if switch_at is None or i < switch_at else other)
                     for i, s in enumerate(steps))
