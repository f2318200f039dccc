"""The R1 format reward: one think block, then one answer block, and nothing else."""

from __future__ import annotations

import re

_BODY = r"(?:(?!</?think>|</?answer>).)*"   # text holding no tag at all
_PATTERN = re.compile(rf"\s*<think>{_BODY}</think>\s*<answer>{_BODY}</answer>\s*", re.DOTALL)


def format_reward(completion: str, example: dict | None = None) -> float:
    """1.0 when the completion is exactly ``<think>...</think> <answer>...</answer>``.

    >>> format_reward(" <think>2+3=5</think> <answer>5</answer>")
    1.0
    >>> format_reward("<think>x</think><answer>5</answer><answer>6</answer>")  # two answers
    0.0
    >>> format_reward("<think>x</think> The answer is 5")                         # no answer tags
    0.0
    """
    return 1.0 if _PATTERN.fullmatch(completion) else 0.0
