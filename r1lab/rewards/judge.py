"""The hidden judge of general (non-reasoning) replies: a rule that scores how helpful a reply
is, standing in for DeepSeek-V3 as R1's preference labeller (Guo et al. 2025, sec. 2.3.4).

It labels the preference pairs the reward model and DPO learn from, and it stays the held-out
measure of true helpfulness in eval: a policy that games the *learned* reward model shows as a
rising RM score with a flat or falling judge score. Like the paper's helpfulness reward, it
reads only the final part of a reply (the ``<answer>`` block), never the reasoning.

- ``words`` requests (one right answer): 1 when the answer is exactly the reference, else 0.
- ``list`` requests ("List 3 even numbers between 40 and 49"): the distinct numbers that fit
  (parity and range), counted up to the ``count`` asked for, over the larger of ``count`` and
  the number of items given: wrong, repeated, missing and extra items all cost.

    >>> ex = {"category": "general", "request": "list", "count": 3, "parity": "even", "low": 40, "high": 49}
    >>> [judge(f"<think></think> <answer>{a}</answer>", ex)
    ...  for a in ("40, 44, 48", "48, 40", "40, 40, 42", "41, 44, 48", "40, 42, 44, 46", "forty")]
    [1.0, 0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 0.75, 0.0]
"""

from __future__ import annotations

import re

from r1lab.rewards.accuracy import extract_answer

_ITEM = re.compile(r"\d{1,2}")


def list_items(answer: str) -> list[int] | None:
    """``'40, 44,48'`` -> ``[40, 44, 48]``; None unless every comma-separated item is a 1-2 digit
    number (also with the Chinese comma)."""
    items = [s.strip() for s in answer.replace("，", ",").replace("、", ",").split(",")]
    if not all(_ITEM.fullmatch(s) for s in items):
        return None
    return [int(s) for s in items]


def judge(completion: str, example: dict) -> float:
    """Helpfulness of a reply to a general request, in [0, 1] (see the module docstring)."""
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    if example["request"] == "words":
        return float(answer.strip() == example["answer"])
    items = list_items(answer.strip())
    if not items:
        return 0.0
    fits = {x for x in items if example["low"] <= x <= example["high"] and x % 2 == (example["parity"] == "odd")}
    return min(len(fits), example["count"]) / max(example["count"], len(items))
