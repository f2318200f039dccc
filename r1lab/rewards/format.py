"""The R1 format reward: one think block, then one answer block, and nothing else.

``allow_summary`` also accepts R1's readable pattern (arXiv 2501.12948, sec. 2.3.1): a summary
of plain text between the think block and the answer block.
"""

from __future__ import annotations

import re

_BODY = r"(?:(?!</?think>|</?answer>).)*"   # text holding no tag at all
_PATTERN = re.compile(rf"\s*<think>{_BODY}</think>\s*<answer>{_BODY}</answer>\s*", re.DOTALL)
_WITH_SUMMARY = re.compile(rf"\s*<think>{_BODY}</think>{_BODY}<answer>{_BODY}</answer>\s*", re.DOTALL)


def format_reward(completion: str, example: dict | None = None, *, allow_summary: bool = False) -> float:
    """1.0 when the completion is exactly ``<think>...</think> <answer>...</answer>``; with
    ``allow_summary``, plain text (no tags) may also stand between the two blocks.

    >>> format_reward(" <think>2+3=5</think> <answer>5</answer>")
    1.0
    >>> format_reward("<think>x</think><answer>5</answer><answer>6</answer>")  # two answers
    0.0
    >>> format_reward("<think>x</think> The answer is 5")                         # no answer tags
    0.0
    >>> readable = " <think>2+3=5</think> The answer is 5. <answer>5</answer>"
    >>> format_reward(readable), format_reward(readable, allow_summary=True)
    (0.0, 1.0)
    >>> format_reward("<think>x</think> so <think>y</think> <answer>5</answer>", allow_summary=True)
    0.0
    """
    pattern = _WITH_SUMMARY if allow_summary else _PATTERN
    return 1.0 if pattern.fullmatch(completion) else 0.0
