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

Questions come in English and Chinese, and a share ``mix_languages`` of worked solutions switch
to the other language after their first step (``4+6=0 2 left, 0+6=6 还剩1, ...``), as a base
model trained on mixed web text does: R1-Zero, rewarded for accuracy and format only, inherits
it. The switch sits at one place so that it is a habit the model keeps at any sampling
temperature (a switch at a random step is a rare event at each step, which T = 0.6 all but
removes: the base then mixed in 2% of its CoTs, against 30% of the corpus; docs/log.md). A
share ``general`` of documents are non-reasoning requests (r1lab/data/general.py) answered
directly, with an empty think block: number words always right, lists of mixed quality.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from r1lab.data.arithmetic import sample_problems, worked_solution
from r1lab.data.general import corpus_reply, general_examples
from r1lab.data.templates import SUMMARY, render


@dataclass(frozen=True)
class CorpusMix:
    """Fractions of each completion kind (they must sum to 1) and the direct-answer hit rate."""
    direct: float = 0.45
    worked: float = 0.35
    slip: float = 0.10
    malformed: float = 0.10
    direct_correct: float = 0.3
    drill: float = 0.6
    mix_languages: float = 0.5
    general: float = 0.08



def switch_step(problem: dict, rng: random.Random, mix_languages: float) -> int | None:
    """The step from which a worked solution switches language: the second, with chance
    ``mix_languages`` (None: it does not switch)."""
    return 1 if rng.random() < mix_languages else None


def completion_text(problem: dict, kind: str, rng: random.Random, direct_correct: float,
                    mix_languages: float = 0.0) -> str:
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
    lang = problem.get("lang", "en")
    work = worked_solution(steps, lang, switch_step(problem, rng, mix_languages))
    if kind == "malformed":
        return f" <think>{work}</think> " + SUMMARY[lang].format(answer=answer)
    return f" <think>{work}</think> <answer>{answer}</answer>"


def drill(problem: dict, switch_at: int | None = None) -> tuple[str, str]:
    """A bare worked exercise: ``('User: 4+6*3 mod 10\nAssistant:', ' <think>4+6=0 2 left, ...</think>')``."""
    work = worked_solution(problem["steps"], problem.get("lang", "en"), switch_at)
    return f"User: {problem['question']}\nAssistant:", f" <think>{work}</think>"


def documents(seed: int, n: int, mix: CorpusMix, template: str, **task_kw) -> list[tuple[str, str]]:
    """``n`` (prompt, completion) pairs; questions come from the train split only."""
    rng = random.Random(f"corpus-{seed}")
    kinds = ["direct", "worked", "slip", "malformed"]
    weights = [mix.direct, mix.worked, mix.slip, mix.malformed]
    n_general = round(n * mix.general)
    general = general_examples(seed, n_general, split="train", test_fraction=task_kw.get("test_fraction", 0.15),
                               languages=task_kw.get("languages", ("en",)))
    out = [(render(template, g["question"]), f" <think></think> <answer>{corpus_reply(g, rng)}</answer>")
           for g in general]
    for p in sample_problems(seed, n - n_general, split="train", **task_kw):
        if rng.random() < mix.drill:
            out.append(drill(p, switch_step(p, rng, mix.mix_languages)))
            continue
        kind = rng.choices(kinds, weights)[0]
        out.append((render(template, p["question"]), completion_text(p, kind, rng, mix.direct_correct, mix.mix_languages)))
    rng.shuffle(out)
    return out
