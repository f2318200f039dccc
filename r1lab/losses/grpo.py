"""The GRPO loss of DeepSeekMath (Shao et al., 2024) as used for DeepSeek-R1 (Guo et al., 2025).

    J = mean_i [ 1/|o_i| sum_t ( min(r_it A_i, clip(r_it, 1-eps, 1+eps) A_i) - beta * KL_it ) ]
    r_it  = exp(logp_it - old_logp_it)
    KL_it = exp(ref_logp_it - logp_it) - (ref_logp_it - logp_it) - 1     (Schulman's k3, >= 0)

The loss is -J. Tokens are averaged within each completion, then over completions (the
paper's form; DAPO and Dr. GRPO change this and come as separate functions).
"""

from __future__ import annotations

import torch

from r1lab.losses.common import masked_mean
from r1lab.losses.kl import k3_kl


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, clip_eps: float,
              beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """logp, old_logp, ref_logp, mask: [N, L]; advantages: [N]. Returns (loss, stats).

    ``ref_logp`` may be None when ``beta == 0``. Masked positions contribute neither value
    nor gradient, even if they hold inf or NaN.
    """
    mask = mask.bool()
    zero = torch.zeros_like(logp)
    logp = torch.where(mask, logp, zero)           # masked entries become finite constants,
    old_logp = torch.where(mask, old_logp, zero)   # so nothing downstream sees inf/NaN there
    ratio = torch.exp(logp - old_logp)                                              # [N, L]
    adv = advantages[:, None].to(logp.dtype)                                        # [N, 1]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    per_token = torch.minimum(unclipped, clipped)                                   # [N, L]
    kl = None
    if beta != 0:
        if ref_logp is None:
            raise ValueError("grpo_loss: beta != 0 needs ref_logp")
        kl = k3_kl(logp, torch.where(mask, ref_logp, zero))                         # [N, L]
        per_token = per_token - beta * kl
    per_completion = masked_mean(per_token, mask, dim=-1)                           # [N]
    loss = -per_completion.mean()

    with torch.no_grad():
        is_clipped = (clipped < unclipped) & mask      # the bound bit: r > 1+eps with A > 0, or r < 1-eps with A < 0
        stats = {
            "loss": loss.item(),
            "clip_frac": masked_mean(is_clipped.float(), mask).item(),
            "clip_frac_low": masked_mean((is_clipped & (adv < 0)).float(), mask).item(),
            "clip_frac_high": masked_mean((is_clipped & (adv > 0)).float(), mask).item(),
            "ratio": masked_mean(ratio, mask).item(),
            "kl": masked_mean(kl, mask).item() if kl is not None else 0.0,
        }
    return loss, stats
