"""Advantage estimators: pure functions from rewards to per-completion advantages."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's group-relative advantage: (r - mean(group)) / (std(group) + eps).

    rewards: [N] with N = prompts * group_size, rows grouped by prompt. std is the sample
    standard deviation (Bessel-corrected, as TRL computes it). A group whose rewards are all
    equal gets advantage 0. Example: rewards [1, 0, 0, 1] in one group -> mean 0.5,
    std 0.5774 -> advantages [0.866, -0.866, -0.866, 0.866].
    """
    if group_size < 2:
        raise ValueError("group_advantages needs group_size >= 2")
    grouped = rewards.float().view(-1, group_size)                        # [P, G]
    mean = grouped.mean(-1, keepdim=True)
    std = grouped.std(-1, keepdim=True)
    return ((grouped - mean) / (std + eps)).view(-1)                      # [N]
