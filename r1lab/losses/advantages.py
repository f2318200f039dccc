"""Advantage estimators: pure functions from rewards (and values) to advantages.

- ``group_advantages``: GRPO's group-relative advantage (Shao et al. 2024, DeepSeekMath), with
  the group std replaced by the batch std (``scale="batch"``, Liu et al. 2025 "Part I: Tricks
  or Traps? A Deep Dive into RL for LLM Reasoning") or dropped (``scale="none"``, Dr. GRPO,
  Liu et al. 2025 "Understanding R1-Zero-Like Training").
- ``rloo_advantages``: REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024 "Back to
  Basics"): each completion's baseline is the mean reward of the other G - 1 in its group.
- ``reinforce_pp_advantages``: REINFORCE++ (Hu 2025): rewards normalized over the whole batch.
- ``gae``: generalized advantage estimation for PPO (Schulman et al. 2016), per token, with
  ``gae_reference`` the plain double loop it is tested against; ``masked_whiten`` normalizes
  its output over a batch's tokens.

Departures: REINFORCE++ folds a per-token KL penalty into the reward and whitens per-token
returns; here ``reinforce_pp_advantages`` takes one reward per completion and the KL stays in
the loss. ``gae`` does not whiten its output; a caller that wants whitened advantages does that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, *,
                     scale: Literal["group", "batch", "none"] = "group") -> torch.Tensor:
    """GRPO's group-relative advantage: (r - mean(group)) / (std(group) + eps).

    rewards: [N] with N = prompts * group_size, rows grouped by prompt. std is the sample
    standard deviation (Bessel-corrected, as TRL computes it). A group whose rewards are all
    equal gets advantage 0. Example: rewards [1, 0, 0, 1] in one group -> mean 0.5,
    std 0.5774 -> advantages [0.866, -0.866, -0.866, 0.866].

    ``scale`` picks the divisor: "group" (above), "batch" (the std of all N rewards + eps,
    the same for every group) or "none" (no division: Dr. GRPO's r - mean(group)).
    Example, groups [1, 0] and [1, 1] with scale="none" -> [0.5, -0.5, 0, 0].
    """
    if group_size < 2:
        raise ValueError("group_advantages needs group_size >= 2")
    grouped = rewards.float().view(-1, group_size)                        # [P, G]
    centered = grouped - grouped.mean(-1, keepdim=True)                   # [P, G]
    if scale == "group":
        centered = centered / (grouped.std(-1, keepdim=True) + eps)      # [P, G]
    elif scale == "batch":
        centered = centered / (grouped.std() + eps)                      # [P, G]
    elif scale != "none":
        raise ValueError(f"group_advantages: scale must be group, batch or none, not {scale!r}")
    return centered.view(-1)                                              # [N]


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """r_i minus the mean reward of the other G - 1 completions of its group.

    rewards: [N], rows grouped by prompt as in ``group_advantages``. Equals
    G / (G - 1) * (r_i - mean(group)). Example, group [1, 0, 0, 1]: 1 - 1/3 = 0.667 and
    0 - 2/3 = -0.667 -> [0.667, -0.667, -0.667, 0.667].
    """
    if group_size < 2:
        raise ValueError("rloo_advantages needs group_size >= 2")
    grouped = rewards.float().view(-1, group_size)                        # [P, G]
    others = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)  # [P, G]
    return (grouped - others).view(-1)                                    # [N]


def reinforce_pp_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """REINFORCE++: (r - mean(batch)) / (std(batch) + eps), ignoring groups.

    rewards: [N], N >= 2; std is Bessel-corrected as in ``group_advantages``. Example,
    rewards [1, 0, 0, 1] -> mean 0.5, std 0.5774 -> [0.866, -0.866, -0.866, 0.866]; for one
    group this is ``group_advantages``, for several it differs.
    """
    if rewards.numel() < 2:
        raise ValueError("reinforce_pp_advantages needs at least 2 rewards")
    r = rewards.float()                                                   # [N]
    return (r - r.mean()) / (r.std() + eps)                               # [N]


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and lambda-returns per token; all tensors [B, T].

    The steps of row b are its unmasked positions, in order (padding, or holes such as tool
    output, are skipped); after the last one the episode ends and the next value is 0:

        delta_t = r_t + gamma * V_next - V_t
        A_t     = delta_t + gamma * lam * A_next
        return_t = A_t + V_t

    Masked positions get advantage and return 0, whatever rewards/values hold there. Outputs
    are detached float32. One reverse pass over T, each step on all B rows at once.
    Example, one row r = [0, 1], V = [0.5, 0.2], gamma = 1, lam = 0.5:
        t=1: delta = 1 + 0 - 0.2 = 0.8, A = 0.8
        t=0: delta = 0 + 0.2 - 0.5 = -0.3, A = -0.3 + 0.5 * 0.8 = 0.1
        advantages [0.1, 0.8], returns [0.6, 1.0].
    """
    mask = mask.bool()
    zero = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)      # [B, T]
    rewards = torch.where(mask, rewards.detach().float(), zero)                  # [B, T]
    values = torch.where(mask, values.detach().float(), zero)                    # [B, T]
    next_value = zero[:, 0]                  # [B] value of the next unmasked step (0 past the end)
    next_adv = zero[:, 0]                    # [B] advantage of the next unmasked step
    columns = []
    for t in reversed(range(mask.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]                # [B]
        adv_t = delta + gamma * lam * next_adv                                   # [B]
        step = mask[:, t]                                                        # [B]
        columns.append(torch.where(step, adv_t, zero[:, 0]))
        next_adv = torch.where(step, adv_t, next_adv)
        next_value = torch.where(step, values[:, t], next_value)
    advantages = torch.stack(columns[::-1], dim=1)                               # [B, T]
    returns = torch.where(mask, advantages + values, zero)                       # [B, T]
    return advantages, returns


def gae_reference(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                  lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as ``gae``, one row and one step at a time in Python floats. For tests."""
    advantages = torch.zeros(mask.shape, dtype=torch.float32)                    # [B, T]
    returns = torch.zeros(mask.shape, dtype=torch.float32)                       # [B, T]
    for b in range(mask.shape[0]):
        steps = [t for t in range(mask.shape[1]) if mask[b, t]]
        next_value, next_adv = 0.0, 0.0
        for t in reversed(steps):
            r, v = float(rewards[b, t]), float(values[b, t])
            next_adv = r + gamma * next_value - v + gamma * lam * next_adv
            next_value = v
            advantages[b, t] = next_adv
            returns[b, t] = next_adv + v
    return advantages, returns


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8,
                  total: Callable[[float], float] | None = None) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the unmasked entries of ``x`` [B, T]; masked get 0.

    var is Bessel-corrected (as TRL's ``masked_whiten``). Example: x [[1, 2], [3, 99]] with
    mask [[1, 1], [1, 0]] -> mean 2, var 1 -> [[-1, 0], [1, 0]]. ``total`` sums a number over
    every rank (torchrun): the mean and variance are then those of every rank's unmasked entries.
    """
    mask = mask.bool()
    values = x.float()[mask]                                                     # [n]
    if total is None:
        out = (x.float() - values.mean()) * torch.rsqrt(values.var() + eps)      # [B, T]
    else:
        count, s, squares = (total(v) for v in (len(values), values.sum().item(), values.square().sum().item()))
        mean = s / count
        out = (x.float() - mean) / math.sqrt((squares - count * mean ** 2) / (count - 1) + eps)
    return torch.where(mask, out, torch.zeros_like(out))


# The estimators a grpo config names (r1lab/losses/registry.py: ADVANTAGE_ESTIMATORS), each
# (rewards [N], group_size) -> advantages [N]; rloo_advantages is one as it is.

def group_std_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """R1's: (r - group mean) / group std."""
    return group_advantages(rewards, group_size)


def batch_std_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r - group mean) / the whole batch's std."""
    return group_advantages(rewards, group_size, scale="batch")


def mean_only_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr. GRPO's: r - group mean, not scaled."""
    return group_advantages(rewards, group_size, scale="none")


def reinforce_pp_estimator(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE++'s batch-normalized rewards (the group plays no part)."""
    return reinforce_pp_advantages(rewards)
