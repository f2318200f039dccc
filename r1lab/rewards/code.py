"""The code reward: the program in a completion's answer, run in the sandbox on the example's tests.

An example's ``tests`` are stdin/stdout pairs, ``{"input": "3 4\\n", "output": "7\\n"}`` (passed when
the program exits 0 and prints the expected lines, trailing spaces aside), or assert-style
statements, ``"assert add(2, 3) == 5"`` (run after the program; passed when they end without an
error: a line the program cannot know, printed after the asserts, must come out). Each test is
one sandboxed run (r1lab/rewards/sandbox.py). The program is the first fenced block of the
``<answer>`` (or the whole answer when it has none); with ``answer`` other than ``tag``, a
completion without an answer block is read whole the same way (for models that do not yet
write the tags). An example with ``prompt_code`` and ``entry_point`` (HumanEval,
r1lab/data/humaneval.py) has the problem's code put before the program: the code ahead of the
target function when the program defines it, else the whole of it (the program is its body).

A program that hits the wall-clock limit fails the tests left without running them, so a
hostile completion costs one wall-clock limit, not one per test.
"""

from __future__ import annotations

import os
import re
import secrets

from r1lab.rewards.accuracy import extract_answer
from r1lab.rewards.sandbox import Limits, run_program

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_program(completion: str, answer: str = "tag") -> str | None:
    """The first fenced block of the answer, else the whole answer; None without one answer
    (unless ``answer`` is not ``tag``: then the whole completion stands for it).

    >>> extract_program("<think>..</think><answer>```python\\nprint(1)\\n```</answer>")
    'print(1)\\n'
    >>> extract_program("Here:\\n```python\\nprint(2)\\n```", answer="tag_or_last_number")
    'print(2)\\n'
    """
    answer = extract_answer(completion) if answer == "tag" else (extract_answer(completion) or completion)
    if answer is None:
        return None
    fenced = _FENCE.search(answer)
    program = fenced.group(1) if fenced else answer.strip()
    return program or None


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip().splitlines()]


def run_test(program: str, test: dict | str, limits: Limits, strict: bool = False) -> tuple[bool, bool]:
    """(passed, timed out) of one test."""
    if isinstance(test, str):
        nonce = secrets.token_hex(16)
        out = run_program(f"{program}\n\n{test}\nprint({nonce!r})\n", "", limits, strict=strict)
        return out.returncode == 0 and _lines(out.stdout)[-1:] == [nonce], out.timed_out
    out = run_program(program, test["input"], limits, strict=strict)
    return out.returncode == 0 and _lines(out.stdout) == _lines(test["output"]), out.timed_out


def with_problem_code(program: str, example: dict) -> str:
    """The program with the problem's own code before it, where the example has some."""
    code, entry = example.get("prompt_code"), example.get("entry_point")
    if not code or not entry:
        return program
    target = re.search(rf"^def {re.escape(entry)}\s*\(", code, re.MULTILINE)
    if re.search(rf"^\s*def {re.escape(entry)}\s*\(", program, re.MULTILINE) and target:
        return code[:target.start()] + program               # imports and helpers, then the whole function
    return code + program                                    # the program is the function's body


def code_reward(completion: str, example: dict, binary: bool = False, strict: bool = False,
                cpu_s: int = 2, wall_s: float = 5.0, memory_mb: int = 512, answer: str = "tag") -> float:
    """Fraction of the example's tests the answer's program passes (``binary``: 1.0 only when it
    passes them all); 0.0 without a program or without tests. ``strict`` refuses to run without
    the bubblewrap layer; the other parameters are the sandbox's limits."""
    program, tests = extract_program(completion, answer), example.get("tests") or []
    if program is None or not tests:
        return 0.0
    program = with_problem_code(program, example)
    limits = Limits(cpu_s=cpu_s, wall_s=wall_s, memory_mb=memory_mb)
    passed = 0
    for test in tests:
        ok, timed_out = run_test(program, test, limits, strict)
        passed += ok
        if timed_out:
            break
    if binary:
        return float(passed == len(tests))
    return passed / len(tests)


code_reward.workers = os.cpu_count() or 1   # runs are processes: score a batch's completions at once
