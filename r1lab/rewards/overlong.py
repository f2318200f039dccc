"""DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): a completion longer than
``max_len - buffer`` tokens loses reward linearly, down to -1 at ``max_len`` and beyond.

The length is the completion's token count, which the RL stages put in each scored row
(``completion_tokens``); outside a rollout (no count) it is 0.
"""

from __future__ import annotations


def overlong_reward(completion: str, example: dict, max_len: int, buffer: int) -> float:
    """0 up to ``max_len - buffer`` tokens, then falling linearly to -1 at ``max_len``.

    >>> [overlong_reward("", {"completion_tokens": n}, max_len=100, buffer=20) for n in (80, 90, 100, 120)]
    [0.0, -0.5, -1.0, -1.0]
    """
    n = example.get("completion_tokens")
    if n is None:
        return 0.0
    start = max_len - buffer
    if n <= start:
        return 0.0
    return -min(1.0, (n - start) / buffer) if buffer > 0 else -1.0
