"""Variants of the GRPO loss (r1lab/losses/grpo.py) proposed after DeepSeekMath, each a pure
function with grpo_loss's inputs and output:

    loss, stats = variant(logp, old_logp, ref_logp, advantages, mask, *, clip_eps, beta, ...)

logp, old_logp, ref_logp, mask are [N, L] (N completions, L token slots); advantages is [N].

- ``dapo_loss``: DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System
  at Scale"). Token-level mean over every unmasked token of the batch, so long completions weigh
  in proportion to their length; asymmetric clip [1 - clip_eps, 1 + clip_eps_high] ("clip-higher").
- ``dr_grpo_loss``: Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
  Perspective"). Per-token terms summed and divided by the constant N * max_len instead of each
  completion's length, which removes GRPO's length bias. Its other change, no division by the
  group's reward std, lives in r1lab/losses/advantages.py (``group_advantages(..., scale="none")``).
- ``gspo_loss``: GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"). One ratio per
  completion, s_i = exp(mean_t (logp - old_logp)), clipped per completion and multiplied by the
  completion's advantage.
- ``dual_clip_grpo_loss``: GRPO with dual-clip PPO (Ye et al. 2020, "Mastering Complex Control
  in MOBA Games with Deep Reinforcement Learning"). For A < 0 the clipped term is bounded below
  by c * A, so a token whose ratio has run far above 1 cannot produce an unbounded loss.

Where we depart from the papers: DAPO's dynamic sampling and overlong reward shaping are not
part of the loss and are not here. DAPO, Dr. GRPO and GSPO drop the KL penalty; here it is kept
as an option (``beta``, Schulman's k3 per token, added the way each loss adds its policy term;
GSPO averages it within each completion) and ``beta = 0`` gives the papers' losses. The dual
clip is applied on top of GRPO's per-completion mean, whereas Ye et al. use PPO's sample mean.

Shared contract: ``ref_logp`` may be None when ``beta == 0``; masked positions contribute neither
value nor gradient even if they hold inf or NaN (they are replaced by zeros before any
arithmetic). Stats are detached floats: ``loss``, ``clip_frac`` (share of tokens, or of
completions for GSPO, whose ratio term was clipped), ``clip_frac_low`` (ratio below the lower
bound with A < 0), ``clip_frac_high`` (ratio above the upper bound with A > 0), ``ratio`` (mean
ratio) and ``kl`` (mean k3 over unmasked tokens; 0 when beta = 0).

A stage picks one by name from r1lab/losses/registry.py, e.g. ``loss: dapo`` in its config.
"""

from __future__ import annotations

import torch

from r1lab.losses.common import masked_mean
from r1lab.losses.kl import k3_kl


def _zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask is true, 0 elsewhere, so inf/NaN in padding never reach the arithmetic."""
    return torch.where(mask, x, torch.zeros_like(x))


def _k3_or_none(logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor,
                beta: float, name: str) -> torch.Tensor | None:
    """Per-token k3 KL with masked positions at 0 ([N, L]), or None when beta is 0.

    ``logp`` must already have its masked positions zeroed."""
    if beta == 0:
        return None
    if ref_logp is None:
        raise ValueError(f"{name}: beta != 0 needs ref_logp")
    return k3_kl(logp, _zero_masked(ref_logp, mask))                                # [N, L]


def _clipped_objective(ratio: torch.Tensor, adv: torch.Tensor, low: float, high: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's min(r A, clip(r, low, high) A) and where each bound bit (same shape as ratio).

    A bound bites (and zeroes the gradient) only against the advantage's sign: the upper one
    when A > 0, the lower one when A < 0."""
    objective = torch.minimum(ratio * adv, ratio.clamp(low, high) * adv)
    is_low = (ratio < low) & (adv < 0)
    is_high = (ratio > high) & (adv > 0)
    return objective, is_low, is_high


def _token_terms(logp, old_logp, ref_logp, advantages, mask, *, low: float, high: float,
                 beta: float, name: str):
    """The per-token objective min(r A, clip(r, low, high) A) - beta * k3 shared by the
    token-level variants: (terms [N, L], ratio [N, L], is_low, is_high, kl or None)."""
    logp, old_logp = _zero_masked(logp, mask), _zero_masked(old_logp, mask)
    ratio = torch.exp(logp - old_logp)                                              # [N, L]
    adv = advantages[:, None].to(logp.dtype)                                        # [N, 1]
    terms, is_low, is_high = _clipped_objective(ratio, adv, low, high)              # [N, L]
    kl = _k3_or_none(logp, ref_logp, mask, beta, name)                              # [N, L]
    if kl is not None:
        terms = terms - beta * kl                                                   # [N, L]
    return terms, ratio, is_low & mask, is_high & mask, kl


def _stats(loss: torch.Tensor, ratio: torch.Tensor, is_low: torch.Tensor, is_high: torch.Tensor,
           where: torch.Tensor, kl: torch.Tensor | None, mask: torch.Tensor) -> dict[str, float]:
    """Detached stats; ratio and clip flags are averaged over ``where`` (tokens or completions)."""
    with torch.no_grad():
        return {
            "loss": loss.item(),
            "clip_frac": masked_mean((is_low | is_high).float(), where).item(),
            "clip_frac_low": masked_mean(is_low.float(), where).item(),
            "clip_frac_high": masked_mean(is_high.float(), where).item(),
            "ratio": masked_mean(ratio, where).item(),
            "kl": masked_mean(kl, mask).item() if kl is not None else 0.0,
        }


def dapo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, clip_eps: float, beta: float,
              clip_eps_high: float, num_tokens: int | None = None
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """DAPO: -(sum over unmasked tokens of min(r A, clip(r, 1-clip_eps, 1+clip_eps_high) A)
    - beta * k3) / num_tokens.

    ``num_tokens`` defaults to the number of unmasked tokens in ``mask``. When one batch is
    split into micro-batches, pass the whole batch's count to each call; the micro-batch losses
    then sum to the whole batch's loss. The paper uses clip_eps 0.2, clip_eps_high 0.28.
    """
    mask = mask.bool()
    per_token, ratio, is_low, is_high, kl = _token_terms(
        logp, old_logp, ref_logp, advantages, mask, low=1 - clip_eps, high=1 + clip_eps_high,
        beta=beta, name="dapo_loss")                                                # [N, L]
    total = _zero_masked(per_token, mask).sum()                                     # []
    loss = -total / (mask.sum().clamp(min=1) if num_tokens is None else num_tokens)
    return loss, _stats(loss, ratio, is_low, is_high, mask, kl, mask)


def dr_grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                 advantages: torch.Tensor, mask: torch.Tensor, *, clip_eps: float, beta: float,
                 max_len: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Dr. GRPO: -(sum over unmasked tokens of min(r A, clip(r, 1 +- clip_eps) A) - beta * k3)
    / (N * max_len).

    ``max_len`` is the cap on completion length used when sampling (the same for every batch),
    so the divisor does not depend on how long the completions came out.
    """
    if mask.shape[-1] > max_len:
        raise ValueError(f"dr_grpo_loss: {mask.shape[-1]} token slots exceed max_len={max_len}")
    mask = mask.bool()
    per_token, ratio, is_low, is_high, kl = _token_terms(
        logp, old_logp, ref_logp, advantages, mask, low=1 - clip_eps, high=1 + clip_eps,
        beta=beta, name="dr_grpo_loss")                                             # [N, L]
    total = _zero_masked(per_token, mask).sum()                                     # []
    loss = -total / (mask.shape[0] * max_len)
    return loss, _stats(loss, ratio, is_low, is_high, mask, kl, mask)


def gspo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, clip_eps: float, beta: float,
              clip_eps_high: float) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO: -mean_i [ min(s_i A_i, clip(s_i, 1-clip_eps, 1+clip_eps_high) A_i)
    - beta * mean_t k3_it ], with s_i = exp(mean_t (logp_it - old_logp_it)).

    The gradient of s_i reaches each of the completion's tokens as s_i / |o_i|. A completion
    with no unmasked token contributes 0 (as in grpo_loss). The paper uses clip_eps 3e-4,
    clip_eps_high 4e-4: sequence ratios stay much closer to 1 than token ratios. Clip stats and
    ``ratio`` are over completions, not tokens.
    """
    mask = mask.bool()
    logp, old_logp = _zero_masked(logp, mask), _zero_masked(old_logp, mask)
    lengths = mask.sum(-1)                                                          # [N]
    seq_log_ratio = (logp - old_logp).sum(-1) / lengths.clamp(min=1)                # [N]
    ratio = torch.exp(seq_log_ratio)                                                # [N]
    adv = advantages.to(logp.dtype)                                                 # [N]
    per_seq, is_low, is_high = _clipped_objective(ratio, adv, 1 - clip_eps, 1 + clip_eps_high)
    kl = _k3_or_none(logp, ref_logp, mask, beta, "gspo_loss")                       # [N, L]
    if kl is not None:
        per_seq = per_seq - beta * masked_mean(kl, mask, dim=-1)                    # [N]
    has_tokens = lengths > 0                                                        # [N]
    loss = -_zero_masked(per_seq, has_tokens).mean()
    stats = _stats(loss, ratio, is_low & has_tokens, is_high & has_tokens, has_tokens, kl, mask)
    return loss, stats


def dual_clip_grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                        advantages: torch.Tensor, mask: torch.Tensor, *, clip_eps: float,
                        beta: float, dual_clip_c: float) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO whose per-token term, for A < 0, is max(min(r A, clip(r, 1 +- clip_eps) A), c A).

    Tokens with A < 0 and r > c get a constant term and no gradient; stats add
    ``clip_frac_dual`` (their share of tokens), counted in ``clip_frac`` too. Ye et al. use
    c = 3; c must be > 1 (with c <= 1 the bound would also flatten ordinary tokens).
    """
    if dual_clip_c <= 1:
        raise ValueError(f"dual_clip_grpo_loss: dual_clip_c must be > 1, got {dual_clip_c}")
    mask = mask.bool()
    logp, old_logp = _zero_masked(logp, mask), _zero_masked(old_logp, mask)
    ratio = torch.exp(logp - old_logp)                                              # [N, L]
    adv = advantages[:, None].to(logp.dtype)                                        # [N, 1]
    per_token, is_low, is_high = _clipped_objective(ratio, adv, 1 - clip_eps, 1 + clip_eps)
    bounded = torch.maximum(per_token, dual_clip_c * adv)                           # [N, L]
    per_token = torch.where(adv < 0, bounded, per_token)                            # [N, L]
    is_dual = (ratio > dual_clip_c) & (adv < 0) & mask                              # [N, L]
    kl = _k3_or_none(logp, ref_logp, mask, beta, "dual_clip_grpo_loss")             # [N, L]
    if kl is not None:
        per_token = per_token - beta * kl                                           # [N, L]
    loss = -masked_mean(per_token, mask, dim=-1).mean()
    stats = _stats(loss, ratio, is_low & mask, is_high & mask, mask, kl, mask)
    with torch.no_grad():
        stats["clip_frac_dual"] = masked_mean(is_dual.float(), mask).item()
        stats["clip_frac"] = masked_mean((is_low | is_high | is_dual).float(), mask).item()
    return loss, stats
