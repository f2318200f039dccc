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

    The plain reference: logit[id] - logsumexp(logits) on a float32 copy of the whole
    logits, which autograd keeps for backward. ``r1lab.losses.logprobs.chunked_token_logprobs``
    is the memory-lean version the training forward uses, tested equal to this one.
    """
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)             # [B, L]
    return picked.float() - torch.logsumexp(logits.float(), dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: [B, L, V] -> [B, L]."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)
