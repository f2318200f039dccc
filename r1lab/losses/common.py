"""Pure helpers shared by the losses."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is true; masked values (even NaN) never leak.

    masked_mean([1., 2., nan], [1, 1, 0]) == 1.5
    """
    mask = mask.bool()
    x = torch.where(mask, x, torch.zeros_like(x))
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1)
    return x.sum(dim) / mask.sum(dim).clamp(min=1)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids) under softmax(logits): logits [B, L, V], ids [B, L] -> [B, L].

    Computed as logit[id] - logsumexp(logits), which avoids keeping a full [B, L, V]
    log-softmax copy alive for backward.
    """
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)             # [B, L]
    return picked.float() - torch.logsumexp(logits.float(), dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: [B, L, V] -> [B, L]."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)
