"""Rewards: plain functions ``reward(completion: str, example: dict, **params) -> float``.

``REWARDS`` maps the names a config may use to the functions. A stage's ``rewards:`` spec
gives each a weight, and optionally parameters::

    rewards: {accuracy: 1.0, format: 0.5}
    rewards: {accuracy: 1.0, language: {weight: 0.5}}

:func:`build_rewards` turns a spec into batch scorers over ``(prompts, completions, examples)``
(plain functions are lifted; a learned reward model scores a whole batch at once), and
:func:`score` weights and sums them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from r1lab.rewards.accuracy import accuracy_reward, math_verify_reward
from r1lab.rewards.format import format_reward
from r1lab.rewards.language import language_consistency

RewardFn = Callable[..., float]
BatchFn = Callable[[list[str], list[str], list[dict]], list[float]]

REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "math_verify": math_verify_reward,
    "format": format_reward,
    "language": language_consistency,
}


class RewardSpec(BaseModel):
    """``{weight: w, **params}``: a reward's weight and the keyword parameters it is called with."""
    model_config = ConfigDict(extra="allow")
    weight: float = Field(description="Weight of this reward in the total.")

    @property
    def params(self) -> dict:
        return dict(self.model_extra or {})


def check_rewards(spec: dict) -> dict:
    """Known names, and only parameters each function takes."""
    for name, entry in spec.items():
        if name not in REWARDS:
            raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARDS)}")
        if isinstance(entry, RewardSpec):
            accepted = set(inspect.signature(REWARDS[name]).parameters) - {"completion", "example"}
            unknown = sorted(set(entry.params) - accepted)
            if unknown:
                raise ValueError(f"reward {name!r} takes no parameter {unknown[0]!r}"
                                 f" (it takes: {', '.join(sorted(accepted)) or 'none'})")
    return spec


RewardsSpec = Annotated[dict[str, float | RewardSpec], AfterValidator(check_rewards)]


@dataclass(frozen=True)
class Scorer:
    """One weighted reward over a batch: ``fn(prompts, completions, examples) -> values``."""
    name: str
    weight: float
    fn: BatchFn


def lift(fn: RewardFn, **params) -> BatchFn:
    """A per-completion reward as a batch scorer."""
    return lambda prompts, completions, examples: [fn(c, e, **params) for c, e in zip(completions, examples)]


def build_rewards(spec: RewardsSpec) -> list[Scorer]:
    """Scorers for a (validated) ``rewards:`` spec, in its order."""
    out = []
    for name, entry in spec.items():
        weight, params = (entry.weight, entry.params) if isinstance(entry, RewardSpec) else (entry, {})
        out.append(Scorer(name, weight, lift(REWARDS[name], **params)))
    return out


def score(scorers: list[Scorer], prompts: list[str], completions: list[str],
          examples: list[dict]) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted total reward per completion, and each reward's raw values by name."""
    per_name = {s.name: s.fn(prompts, completions, examples) for s in scorers}
    totals = [sum(s.weight * per_name[s.name][i] for s in scorers) for i in range(len(completions))]
    return totals, per_name
