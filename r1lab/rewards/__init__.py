"""Rewards: plain functions ``reward(completion: str, example: dict) -> float``.

``REWARDS`` maps the names a config may use to the functions; :func:`combine` weights them.
"""

from __future__ import annotations

from collections.abc import Callable

from r1lab.rewards.accuracy import accuracy_reward, math_verify_reward
from r1lab.rewards.format import format_reward

RewardFn = Callable[[str, dict], float]

REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "math_verify": math_verify_reward,
    "format": format_reward,
}


def score(completions: list[str], examples: list[dict], weights: dict[str, float]) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted total reward per completion, and each named reward's raw values."""
    per_fn = {name: [REWARDS[name](c, e) for c, e in zip(completions, examples)] for name in weights}
    totals = [sum(weights[name] * per_fn[name][i] for name in weights) for i in range(len(completions))]
    return totals, per_fn
