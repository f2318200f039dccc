"""Tasks: where a stage's questions, reference answers and prompts come from.

``arithmetic`` is generated from the seed (no download); ``jsonl`` reads local files such as
GSM8K; ``code`` asks for programs, judged by running their tests (synthetic or JSONL). All give
plain dicts with ``question`` and ``answer`` that rewards check, plus ``lang`` where known (the
language reward detects it from the question otherwise) and ``category`` (``reasoning``, or
``general`` for the non-reasoning prompts of ``general_examples``).

Every task is a :class:`BaseTask`: a new kind is one subclass (``kind``, ``sample_train``,
``test_examples``, and whatever else it overrides) plus one entry in the ``Task`` union below.
"""

from __future__ import annotations

import random
from functools import cached_property
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from r1lab.data.arithmetic import LANGUAGES, n_test_questions, sample_problems
from r1lab.data.code import n_test_problems, read_code_jsonl, sample_code_problems
from r1lab.data.general import REQUESTS, general_examples
from r1lab.data.jsonl import read_qa_jsonl
from r1lab.data.templates import TEMPLATES, render

TemplateName = Literal[tuple(TEMPLATES)]


def _draw(rows: list[dict], seed: int, step: int | str, n: int) -> list[dict]:
    """``n`` rows of a file-backed task for one step, with replacement; the same (seed, step), the same draw."""
    rng = random.Random(f"{seed}-{step}")
    return [rng.choice(rows) for _ in range(n)]


class BaseTask(BaseModel):
    """What every task offers the stages: training draws, the held-out split, prompts, and the
    reward that decides correctness (``verifier``, a name in r1lab.rewards.REWARDS, checked when
    a run config is loaded: r1lab/config.py)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    data_fields: ClassVar[tuple[str, ...]] = ()   # fields naming files that must exist
    kind: str
    template: TemplateName = Field("r1", description="Prompt template name.")
    verifier: str = Field("accuracy", description="Reward that decides correctness (a name in r1lab.rewards.REWARDS).")

    def sample_train(self, seed: int, step: int | str, n: int) -> list[dict]:
        """``n`` training examples for one step; the same (seed, step) gives the same draw."""
        raise NotImplementedError

    def test_examples(self, seed: int) -> list[dict]:
        """The held-out examples eval stages score."""
        raise NotImplementedError

    def test_problem(self) -> str | None:
        """Why ``test_examples`` cannot be drawn, or None."""
        return None

    def general_examples(self, seed: int | str, n: int | None, *, split: str,
                         requests: tuple[str, ...] = REQUESTS) -> list[dict]:
        """Non-reasoning requests, to answer directly (``category`` "general"): none by default."""
        return []

    @property
    def has_general(self) -> bool:
        """Whether it has non-reasoning requests (all-scenario RL, preference pairs, non_reasoning rows need them)."""
        return bool(self.general_examples(0, 1, split="train"))

    def prompt(self, example: dict) -> str:
        return render(self.template, example["question"])


class ArithmeticTask(BaseTask):
    """Synthetic repeated addition/subtraction mod 10, e.g. 7+8*4 mod 10 (r1lab/data/arithmetic.py)."""
    kind: Literal["arithmetic"]
    template: TemplateName = Field("r1-compact", description="Prompt template name.")
    n_test: int = Field(120, gt=0, description="Held-out problems used by eval stages.")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="Share of all questions reserved for test.")
    min_count: int = Field(2, ge=1, description="Fewest repetitions (steps) in a question.")
    max_count: int = Field(6, ge=1, le=9, description="Most repetitions (steps) in a question.")
    languages: list[Literal[LANGUAGES]] = Field(["en", "zh"], min_length=1,
                                                description="Languages questions are worded in, drawn uniformly.")

    @model_validator(mode="after")
    def _counts_in_order(self):
        if self.min_count > self.max_count:
            raise ValueError(f"min_count ({self.min_count}) exceeds max_count ({self.max_count})")
        return self

    def test_problem(self) -> str | None:
        available = n_test_questions(self.test_fraction, self.min_count, self.max_count)
        if self.n_test > available:
            return (f"n_test ({self.n_test}) exceeds the {available} distinct test questions of this task "
                    f"(test_fraction {self.test_fraction}, counts {self.min_count}-{self.max_count})")
        return None

    def problem_kw(self) -> dict:
        """The keywords of :func:`r1lab.data.arithmetic.sample_problems` this task fixes."""
        return {"test_fraction": self.test_fraction, "min_count": self.min_count,
                "max_count": self.max_count, "languages": tuple(self.languages)}

    def sample_train(self, seed: int, step: int | str, n: int) -> list[dict]:
        return sample_problems(f"{seed}-{step}", n, split="train", **self.problem_kw())

    def test_examples(self, seed: int) -> list[dict]:
        return sample_problems(seed, self.n_test, split="test", **self.problem_kw())

    def general_examples(self, seed: int, n: int | None, *, split: str,
                         requests: tuple[str, ...] = REQUESTS) -> list[dict]:
        """Non-reasoning requests (r1lab/data/general.py), to answer directly: ``n`` drawn from the
        train split, or every test one; only the kinds in ``requests``."""
        return general_examples(seed, n, split=split, test_fraction=self.test_fraction,
                                languages=tuple(self.languages), requests=requests)


class JsonlTask(BaseTask):
    """Question/answer pairs from local JSONL files (e.g. GSM8K: answers ending '#### 42')."""
    data_fields: ClassVar[tuple[str, ...]] = ("train_path", "test_path")
    kind: Literal["jsonl"]
    train_path: str = Field(description="JSONL file of training questions.")
    test_path: str = Field(description="JSONL file of held-out questions.")
    question_field: str = Field("question", description="Key holding the question text.")
    answer_field: str = Field("answer", description="Key holding the reference answer.")
    n_test: int | None = Field(None, gt=0, description="Use only the first n test rows (all when unset).")
    verifier: str = Field("math_verify", description="Reward that decides correctness (a name in r1lab.rewards.REWARDS).")

    @cached_property
    def _train(self) -> list[dict]:
        return read_qa_jsonl(self.train_path, self.question_field, self.answer_field)

    def sample_train(self, seed: int, step: int | str, n: int) -> list[dict]:
        return _draw(self._train, seed, step, n)

    def test_examples(self, seed: int) -> list[dict]:
        rows = read_qa_jsonl(self.test_path, self.question_field, self.answer_field)
        return rows[: self.n_test] if self.n_test else rows   # n_test past the file's end takes every row


class CodeTask(BaseTask):
    """Programs judged by running them in the sandbox (the ``code`` reward): the synthetic tiny
    Python tasks of r1lab/data/code.py, or local JSONL files of ``{"prompt", "tests", "solution"}``
    rows when ``train_path`` and ``test_path`` are set."""
    data_fields: ClassVar[tuple[str, ...]] = ("train_path", "test_path")
    kind: Literal["code"]
    train_path: str | None = Field(None, description="JSONL file of training tasks (unset: synthetic).")
    test_path: str | None = Field(None, description="JSONL file of held-out tasks (unset: synthetic).")
    n_test: int | None = Field(None, gt=0, description="Held-out tasks used by eval stages (synthetic: 12 "
                               "when unset; JSONL: the first n, all when unset).")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="Synthetic: share of tasks reserved for test.")
    verifier: str = Field("code", description="Reward that decides correctness (a name in r1lab.rewards.REWARDS).")

    @model_validator(mode="after")
    def _paths_together(self):
        if (self.train_path is None) != (self.test_path is None):
            raise ValueError("set both train_path and test_path (JSONL tasks), or neither (synthetic tasks)")
        return self

    def test_problem(self) -> str | None:
        if self.train_path is None and self._synthetic_n_test > (available := n_test_problems(self.test_fraction)):
            return (f"n_test ({self._synthetic_n_test}) exceeds the {available} synthetic test tasks "
                    f"(test_fraction {self.test_fraction})")
        return None

    @property
    def _synthetic_n_test(self) -> int:
        return self.n_test or 12

    @cached_property
    def _train(self) -> list[dict]:
        return read_code_jsonl(self.train_path)

    def sample_train(self, seed: int, step: int | str, n: int) -> list[dict]:
        if self.train_path is None:
            return sample_code_problems(f"{seed}-{step}", n, split="train", test_fraction=self.test_fraction)
        return _draw(self._train, seed, step, n)

    def test_examples(self, seed: int) -> list[dict]:
        if self.train_path is None:
            return sample_code_problems(seed, self._synthetic_n_test, split="test", test_fraction=self.test_fraction)
        rows = read_code_jsonl(self.test_path)
        return rows[: self.n_test] if self.n_test else rows


Task = Annotated[Union[ArithmeticTask, JsonlTask, CodeTask], Field(discriminator="kind")]
