"""Rewards: plain functions ``reward(completion: str, example: dict, **params) -> float``.

``REWARDS`` maps the names a config may use to the functions. A stage's ``rewards:`` spec
gives each a weight, and optionally parameters::

    rewards: {accuracy: 1.0, format: 0.5}
    rewards: {accuracy: 1.0, language: {weight: 0.5}}
    rewards: {accuracy: 1.0, reward_model: {weight: 1.0, model: rm, part: summary, last_steps: 20}}
    rewards: {accuracy: 1.0, "my_pkg.my_rewards:brevity": 0.2}     # the user's own (rewards/imported.py)

Each reward scores only the examples of its ``categories`` (an example's ``category``, default
``reasoning``): rules that need a reference answer judge reasoning prompts, the judge and a
learned reward model judge general ones (``DEFAULT_CATEGORIES``; a spec may set its own).
``last_steps: N`` switches a reward on only for a stage's last N steps, as R1 does with its
preference rewards (before that it is computed and logged, with weight 0).

:func:`build_rewards` turns a spec into batch scorers over ``(prompts, completions, examples)``
(plain functions are lifted; ``reward_model``, the learned one, scores a whole batch at once
with a model from r1lab/stages/reward_model.py), and :func:`score` routes, weights and sums them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from r1lab.rewards import imported
from r1lab.rewards.accuracy import ANSWER_MODES, accuracy_reward, math_verify_reward, reasoning_gym_reward
from r1lab.rewards.code import code_reward
from r1lab.rewards.format import format_reward
from r1lab.rewards.judge import judge
from r1lab.rewards.language import language_consistency
from r1lab.rewards.overlong import overlong_reward

RewardFn = Callable[..., float]
BatchFn = Callable[[list[str], list[str], list[dict]], list[float]]

REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "math_verify": math_verify_reward,
    "format": format_reward,
    "language": language_consistency,
    "judge": judge,
    "code": code_reward,
    "reasoning_gym": reasoning_gym_reward,
    "overlong": overlong_reward,
}

# learned rewards: name -> the keyword parameters their spec may set besides the common ones
LEARNED: dict[str, set[str]] = {"reward_model": {"model", "part", "batch_size"}}

# the categories each reward scores unless its spec says otherwise (None: every example)
DEFAULT_CATEGORIES: dict[str, tuple[str, ...] | None] = {
    "accuracy": ("reasoning",), "math_verify": ("reasoning",), "language": ("reasoning",), "code": ("reasoning",),
    "reasoning_gym": ("reasoning",), "format": None, "overlong": None, "judge": ("general",), "reward_model": ("general",)}


def category(example: dict) -> str:
    return example.get("category", "reasoning")


class RewardSpec(BaseModel):
    """``{weight: w, **params}``: a reward's weight, where it applies, and the keyword parameters
    it is called with."""
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    weight: float = Field(description="Weight of this reward in the total.")
    categories: list[str] | None = Field(None, description="Example categories it scores "
                                         "(default: DEFAULT_CATEGORIES of the reward).")
    last_steps: int = Field(0, ge=0, description="On only for the stage's last N steps (0: every step).")

    @property
    def params(self) -> dict:
        return dict(self.model_extra or {})


def check_rewards(spec: dict) -> dict:
    """Known names, and only parameters each function takes."""
    if not spec:
        raise ValueError("no rewards: name at least one (e.g. {accuracy: 1.0, format: 0.5})")
    for name, entry in spec.items():
        if imported.is_import_path(name):
            imported.check(name, entry.params if isinstance(entry, RewardSpec) else {})
            continue
        if name not in REWARDS and name not in LEARNED:
            raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARDS) + sorted(LEARNED)}, "
                             f"or your own function as 'module.path:function'")
        if name in LEARNED and not (isinstance(entry, RewardSpec) and isinstance(entry.params.get("model"), str)):
            raise ValueError(f"reward {name!r} needs {{weight: w, model: <an earlier stage or a path>}}")
        if name in LEARNED and entry.params.get("part", "summary") not in ("summary", "full"):
            raise ValueError(f"reward {name!r}: 'part' must be 'summary' or 'full'")
        params = entry.params if isinstance(entry, RewardSpec) else {}
        if name in REWARDS:
            signature = inspect.signature(REWARDS[name]).parameters
            accepted = set(signature) - {"completion", "example"}
            required = sorted(k for k in accepted if signature[k].default is inspect.Parameter.empty)
        else:
            accepted, required = LEARNED[name], []
        if unknown := sorted(set(params) - accepted):
            raise ValueError(f"reward {name!r} takes no parameter {unknown[0]!r}"
                             f" (it takes: {', '.join(sorted(accepted)) or 'none'})")
        if missing := [k for k in required if k not in params]:
            raise ValueError(f"reward {name!r} needs {{weight: w, {', '.join(f'{k}: ...' for k in missing)}}}")
        if params.get("answer", "tag") not in ANSWER_MODES:
            raise ValueError(f"reward {name!r}: answer must be one of {', '.join(ANSWER_MODES)}")
    return spec


RewardsSpec = Annotated[dict[str, RewardSpec | float], AfterValidator(check_rewards)]


def verifier_params(task) -> dict:
    """The task's settings for its verifier (``answer`` mode, ``partial_credit``) that the
    verifier takes (the code reward reads no answer)."""
    accepted = inspect.signature(REWARDS[task.verifier]).parameters
    return {k: v for k, v in task.verifier_params().items() if k in accepted}


def with_task(spec: dict, task) -> dict:
    """``spec`` with the task's verifier parameters (:func:`verifier_params`) given to the
    verifier's entry wherever the spec does not set them, so training pays what eval counts."""
    if task.verifier not in spec:
        return spec
    entry = spec[task.verifier]
    entry = entry if isinstance(entry, RewardSpec) else RewardSpec(weight=entry)
    params = {**verifier_params(task), **entry.params}
    return {**spec, task.verifier: RewardSpec(weight=entry.weight, categories=entry.categories,
                                              last_steps=entry.last_steps, **params)}


def learned_models(spec: dict) -> list[tuple[tuple, str]]:
    """(location inside the spec, reference) of each learned reward's model: the stage checks
    them at config load like any other reference."""
    return [((name, "model"), entry.params["model"]) for name, entry in spec.items() if name in LEARNED]


@dataclass(frozen=True)
class Scorer:
    """One weighted reward over a batch: ``fn(prompts, completions, examples) -> values``, for
    the examples of ``categories`` only (None: all), switched on for the last ``last_steps``."""
    name: str
    weight: float
    fn: BatchFn
    categories: tuple[str, ...] | None = None
    last_steps: int = 0

    def applies(self, example: dict) -> bool:
        return self.categories is None or category(example) in self.categories

    def on_at(self, step: int, total_steps: int) -> bool:
        """Whether it counts at 0-based ``step`` of ``total_steps``."""
        return self.last_steps == 0 or step >= total_steps - self.last_steps


def lift(fn: RewardFn, **params) -> BatchFn:
    """A per-completion reward as a batch scorer; one that runs processes (``fn.workers``, the
    code reward) scores that many completions at once."""
    workers = getattr(fn, "workers", 1)

    def batch(prompts, completions, examples):
        if workers > 1 and len(completions) > 1:
            with ThreadPoolExecutor(min(workers, len(completions))) as pool:
                return list(pool.map(lambda c, e: fn(c, e, **params), completions, examples))
        return [fn(c, e, **params) for c, e in zip(completions, examples)]
    return batch


def build_rewards(spec: RewardsSpec, model_path: Callable[[str], Path] = Path, device: str = "cpu") -> list[Scorer]:
    """Scorers for a (validated) ``rewards:`` spec, in its order; a learned reward's ``model``
    reference is resolved with ``model_path``."""
    out = []
    for name, entry in spec.items():
        if not isinstance(entry, RewardSpec):
            entry = RewardSpec(weight=entry)
        params = entry.params
        if name == "reward_model":
            from r1lab.rewards.learned import RewardModelScorer
            fn = RewardModelScorer(model_path(params["model"]), device, part=params.get("part", "summary"),
                                   batch_size=params.get("batch_size", 64))
        elif imported.is_import_path(name):
            fn = imported.batch_scorer(name, params)
        else:
            fn = lift(REWARDS[name], **params)
        categories = tuple(entry.categories) if entry.categories is not None else DEFAULT_CATEGORIES.get(name)
        out.append(Scorer(name, entry.weight, fn, categories, entry.last_steps))
    return out


def score(scorers: list[Scorer], prompts: list[str], completions: list[str],
          examples: list[dict]) -> tuple[list[float], dict[str, list[float | None]]]:
    """Weighted total reward per completion, and each reward's raw values by name (None for an
    example outside the reward's categories: it adds nothing to that example's total)."""
    per_name = {}
    for s in scorers:
        rows = [i for i, e in enumerate(examples) if s.applies(e)]
        values = s.fn([prompts[i] for i in rows], [completions[i] for i in rows], [examples[i] for i in rows]) if rows else []
        per_name[s.name] = [None] * len(completions)
        for i, v in zip(rows, values):
            per_name[s.name][i] = v
    totals = [sum(s.weight * per_name[s.name][i] for s in scorers if per_name[s.name][i] is not None)
              for i in range(len(completions))]
    return totals, per_name


def mean_where_scored(values: list[float | None]) -> float | None:
    """Mean of the values a reward gave (None where it did not apply); None if it gave none."""
    scored = [v for v in values if v is not None]
    return sum(scored) / len(scored) if scored else None
