"""The pre-training corpus: R1-template documents whose completions teach the skill imperfectly.

It stands in for the web text a base model like DeepSeek-V3-Base has seen. Each document is a
prompt (the template around a training question) followed by one of four kinds of completion:

- ``direct``: an empty think block and an answer that is right only with probability
  ``direct_correct`` (people guessing);
- ``worked``: the chain solved step by step, always right;
- ``slip``: a worked solution with one arithmetic slip carried to a wrong answer;
- ``malformed``: a worked solution whose answer is written outside the tags.

A fraction ``drill`` of the documents are bare worked exercises with no instruction and no
answer tags (``User: 4+6*3 mod 10`` then ``<think>4+6=0 2 left, 0+6=6 1 left, 6+6=2 0 left</think>``),
like the exercise lists a web crawl is full of. They teach the step skill densely; whether
to *use* it when the R1 instruction asks a question is left for RL to find.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from r1lab.data.arithmetic import sample_problems, worked_solution
from r1lab.data.templates import render


@dataclass(frozen=True)
class CorpusMix:
    """Fractions of each completion kind (they must sum to 1) and the direct-answer hit rate."""
    direct: float = 0.45
    worked: float = 0.35
    slip: float = 0.10
    malformed: float = 0.10
    direct_correct: float = 0.3
    drill: float = 0.6


def completion_text(problem: dict, kind: str, rng: random.Random, direct_correct: float) -> str:
    """The completion of one document; see the module docstring for the kinds.

    >>> p = {"question": "2-3*2 mod 10", "answer": "6", "steps": [(2, 2, "-", 3, 9), (1, 9, "-", 3, 6)]}
    >>> completion_text(p, "worked", random.Random(0), 0.3)
    ' <think>2-3=9 1 left, 9-3=6 0 left</think> <answer>6</answer>'
    """
    answer = int(problem["answer"])
    if kind == "direct":
        if rng.random() >= direct_correct:
            answer = (answer + rng.randint(1, 9)) % 10
        return f" <think></think> <answer>{answer}</answer>"
    steps = list(problem["steps"])
    if kind == "slip":
        i = rng.randrange(len(steps))
        for j in range(i, len(steps)):  # one fact off by 1 or 2, carried forward consistently
            r, a, op, k, _ = steps[j]
            a = a if j == i else steps[j - 1][4]
            c = (a + k if op == "+" else a - k) % 10
            if j == i:
                c = (c + rng.choice([-2, -1, 1, 2])) % 10
            steps[j] = (r, a, op, k, c)
        answer = steps[-1][4]
    work = worked_solution(steps)
    if kind == "malformed":
        return f" <think>{work}</think> The answer is {answer}."
    return f" <think>{work}</think> <answer>{answer}</answer>"


def drill(problem: dict) -> tuple[str, str]:
    """A bare worked exercise: ``('User: 4+6*3 mod 10\nAssistant:', ' <think>4+6=0 2 left, ...</think>')``."""
    return f"User: {problem['question']}\nAssistant:", f" <think>{worked_solution(problem['steps'])}</think>"


def documents(seed: int, n: int, mix: CorpusMix, template: str, **task_kw) -> list[tuple[str, str]]:
    """``n`` (prompt, completion) pairs; questions come from the train split only."""
    rng = random.Random(f"corpus-{seed}")
    kinds = ["direct", "worked", "slip", "malformed"]
    weights = [mix.direct, mix.worked, mix.slip, mix.malformed]
    out = []
    for p in sample_problems(seed, n, split="train", **task_kw):
        if rng.random() < mix.drill:
            out.append(drill(p))
            continue
        kind = rng.choices(kinds, weights)[0]
        out.append((render(template, p["question"]), completion_text(p, kind, rng, mix.direct_correct)))
    return out
