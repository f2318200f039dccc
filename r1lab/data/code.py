"""Code tasks: tiny Python programs judged by running them (r1lab/rewards/code.py).

The synthetic world: short specifications with one parameter ``k`` ("read n, print the sum of
the multiples of 3 up to n"), each with a reference solution and 4 tests, stdin/stdout or
assert-style. Questions are split by a hash of their text (as r1lab/data/arithmetic.py does), so
the test split holds (specification, k) pairs no training example has.

Real ones come from JSONL rows ``{"prompt": str, "tests": [...], "solution": str (optional)}``,
each test ``{"input": str, "output": str}`` or an assert statement (a string).
"""

from __future__ import annotations

import random
from pathlib import Path

from r1lab.data.arithmetic import is_test_question
from r1lab.errors import DataError
from r1lab.data.jsonl import read_rows, require

# (question with {k}, reference solution with {k}, input maker, output maker) for stdin/stdout
# tasks; an input maker returns the stdin text, an output maker the expected stdout from it.
STDIN_SPECS = [
    ("Read an integer n. Print the sum of the multiples of {k} from 1 to n.",
     "n = int(input())\nprint(sum(i for i in range(1, n + 1) if i % {k} == 0))",
     lambda r, k: f"{r.randint(0, 60)}\n", lambda s, k: str(sum(i for i in range(1, int(s) + 1) if i % k == 0))),
    ("Read two integers a and b on one line. Print (a + b) mod {k}.",
     "a, b = map(int, input().split())\nprint((a + b) % {k})",
     lambda r, k: f"{r.randint(-50, 50)} {r.randint(0, 50)}\n", lambda s, k: str(sum(map(int, s.split())) % k)),
    ("Read a word. Print it repeated {k} times, without spaces.",
     "print(input().strip() * {k})",
     lambda r, k: "".join(r.choice("abcxyz") for _ in range(r.randint(1, 4))) + "\n", lambda s, k: s.strip() * k),
    ("Read integers on one line. Print how many of them are greater than {k}.",
     "print(sum(int(x) > {k} for x in input().split()))",
     lambda r, k: " ".join(str(r.randint(0, 12)) for _ in range(r.randint(1, 6))) + "\n",
     lambda s, k: str(sum(int(x) > k for x in s.split()))),
]
# (question, solution, function name and its argument maker, the function itself) for assert tasks
ASSERT_SPECS = [
    ("Write a function f(x) that returns x times {k} minus 1.", "def f(x):\n    return x * {k} - 1",
     lambda r: (r.randint(-9, 9),), lambda k, x: x * k - 1),
    ("Write a function f(s) that returns the string s with its first {k} characters removed.",
     "def f(s):\n    return s[{k}:]", lambda r: ("".join(r.choice("abcdefghij") for _ in range(r.randint(0, 12))),),
     lambda k, s: s[k:]),
]
N_TESTS = 4


def _problem(spec_id: int, k: int, rng: random.Random) -> dict:
    if spec_id < len(STDIN_SPECS):
        question, solution, make_input, output = STDIN_SPECS[spec_id]
        inputs = [make_input(rng, k) for _ in range(N_TESTS)]
        tests = [{"input": s, "output": output(s, k)} for s in inputs]
    else:
        question, solution, make_args, fn = ASSERT_SPECS[spec_id - len(STDIN_SPECS)]
        calls = [make_args(rng) for _ in range(N_TESTS)]
        tests = [f"assert f({', '.join(map(repr, a))}) == {fn(k, *a)!r}" for a in calls]
    return {"question": question.format(k=k), "answer": solution.format(k=k), "tests": tests, "lang": "en"}


def _pool(test: bool, test_fraction: float) -> list[tuple[int, int]]:
    """The (specification, k) pairs of one split."""
    specs = STDIN_SPECS + ASSERT_SPECS
    return [(i, k) for i in range(len(specs)) for k in range(2, 10)
            if is_test_question(specs[i][0].format(k=k), test_fraction) == test]


def n_test_problems(test_fraction: float) -> int:
    return len(_pool(True, test_fraction))


def sample_code_problems(seed: int | str, n: int, *, split: str, test_fraction: float = 0.25) -> list[dict]:
    """``n`` problems of one split; test problems are distinct (there are only
    ``len(specs) x 8`` of them in all), train ones may repeat."""
    want_test = split == "test"
    pool = _pool(want_test, test_fraction)
    rng = random.Random(f"code-{split}-{seed}")
    if want_test:
        if n > len(pool):
            raise ValueError(f"cannot draw {n} distinct test code problems (there are {len(pool)})")
        chosen = rng.sample(pool, n)
    else:
        chosen = [rng.choice(pool) for _ in range(n)]
    return [_problem(i, k, rng) for i, k in chosen]


def _test(where: str, test, index: int):
    if isinstance(test, str) and test.strip():
        return test
    if isinstance(test, dict):
        for field in ("input", "output"):
            require(where, test, field, (str,), f"text (tests[{index}])")
        return {"input": test["input"], "output": test["output"]}
    raise DataError(f"{where}: field 'tests': item {index} must be an assert statement (text) or "
                    f"{{\"input\": ..., \"output\": ...}}, got {type(test).__name__}")


def read_code_jsonl(path: str | Path) -> list[dict]:
    """Rows ``{"question", "answer" (the solution or ""), "tests", ...other fields}``."""
    def convert(where: str, obj: dict) -> dict:
        prompt = require(where, obj, "prompt", (str,), "text")
        if not prompt.strip():
            raise DataError(f"{where}: field 'prompt': empty")
        tests = require(where, obj, "tests", (list,), "a list of tests")
        if not tests:
            raise DataError(f"{where}: field 'tests': empty (a program with no tests would score nothing)")
        solution = obj.get("solution", "")
        if not isinstance(solution, str):
            raise DataError(f"{where}: field 'solution': expected text, got {type(solution).__name__}")
        rest = {k: v for k, v in obj.items() if k not in ("prompt", "tests", "solution")}
        return {**rest, "question": prompt, "answer": solution, "tests": [_test(where, t, i) for i, t in enumerate(tests)]}
    return read_rows(path, convert, "examples")
