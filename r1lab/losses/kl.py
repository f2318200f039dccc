"""Per-token estimators of KL(pi || pi_ref) from tokens sampled by pi (Schulman, "Approximating
KL Divergence", 2020, http://joschu.net/blog/kl-approx.html).

With d = ref_logp - logp, the log of the ratio pi_ref / pi at a sampled token:

    k1 = -d                  unbiased, high variance, negative on some tokens
    k2 = d^2 / 2             biased (low for nearby policies), always >= 0, low variance
    k3 = e^d - d - 1         unbiased and always >= 0; used by GRPO (DeepSeekMath) and R1

Each takes two tensors of the same shape and returns a tensor of that shape; masking and
averaging are left to the loss that uses it. We follow the blog post, except that k3 is
computed as expm1(d) - d: the same value, but e^d - d - 1 in float32 cancels badly near
d = 0, where a policy close to its reference lives (5% off at d = 1e-3, 0 instead of 5e-9 at
d = 1e-4) and can even come out slightly negative (-6e-8 at d = 3e-8).
"""

from __future__ import annotations

import torch


def k1_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """logp - ref_logp per token. k1_kl([-1.0], [-1.5]) == [0.5]."""
    return logp - ref_logp


def k2_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(logp - ref_logp)^2 / 2 per token. k2_kl([-1.0], [-1.5]) == [0.125]."""
    return 0.5 * (logp - ref_logp) ** 2


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """e^d - d - 1 per token, d = ref_logp - logp. k3_kl([-1.0], [-1.5]) == [0.1065]
    (d = -0.5: 0.60653 + 0.5 - 1)."""
    d = ref_logp - logp
    return torch.expm1(d) - d
