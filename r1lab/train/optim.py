"""Optimizer, learning-rate schedule (linear warmup, then cosine decay to a floor), and the
one optimizer step every stage takes (clip by global norm, step, schedule, zero)."""

from __future__ import annotations

import math

import torch

from r1lab.settings import Optim


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step ``step`` (0-based).

    Warmup rises linearly from 1/warmup at step 0 to 1 at step ``warmup_steps - 1``;
    then cosine from 1 at ``warmup_steps`` down to ``min_ratio`` at ``total_steps``.
    E.g. warmup 10, total 110, min 0.1: step 0 -> 0.1, step 10 -> 1.0, step 60 -> 0.55, step 110 -> 0.1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def build_scheduler(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                    min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(
        s, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio))


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float) -> float:
    """Clip gradients to global norm ``grad_clip``, step, advance the schedule, zero the grads.

    Returns the global gradient norm before clipping. A non-finite norm (a NaN or inf loss, an
    overflow) skips the step: the grads are dropped, and weights, optimizer state and schedule
    stay as they were.
    """
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    value = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()   # FSDP2: a DTensor
    if math.isfinite(value):
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return value
