"""Supervised fine-tuning: next-token cross-entropy on response tokens only, the loss of the
SFT stages of InstructGPT (Ouyang et al., 2022) and of DeepSeek-R1's cold start and rejection-
sampling SFT (Guo et al., 2025).

    token:    L = sum_{b,t} m_bt * -log p(y_bt) / sum_{b,t} m_bt
    sequence: L = mean_b [ sum_t m_bt * -log p(y_bt) / sum_t m_bt ]

Where we depart: neither paper says how tokens are averaged. "token" (every response token of
the batch weighs the same, as Hugging Face models and TRL compute it) is the default a config
should pick; "sequence" weighs every response the same, so short answers count as much as long
ones. Rows with no response token are skipped by "sequence" and weigh nothing in "token".
"""

from __future__ import annotations

import torch

from r1lab.losses.common import masked_mean, token_logprobs


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *,
             reduction: str) -> tuple[torch.Tensor, dict[str, float]]:
    """logits [B, L, V], labels [B, L], mask [B, L] (1 on response tokens). Returns (loss, stats).

    ``labels[b, t]`` is the token that ``logits[b, t]`` predicts: shift by one before calling
    (labels = input_ids[:, 1:], logits = logits[:, :-1]). Masked labels may hold anything
    (e.g. -100) and masked logits even NaN: only the masked rows are gathered, so they get no
    value and zero gradient. ``reduction`` is "token" or "sequence" (see the module docstring).
    stats: ``num_tokens`` (response tokens) and ``token_accuracy`` (share whose argmax is the
    label).
    """
    if reduction not in ("token", "sequence"):
        raise ValueError(f"sft_loss: reduction must be 'token' or 'sequence', not {reduction!r}")
    mask = mask.bool()
    picked = logits[mask]                                                           # [T, V]
    targets = labels[mask]                                                          # [T]
    nll = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)        # [B, L]
    nll = nll.masked_scatter(mask, -token_logprobs(picked, targets))                # [B, L]
    if reduction == "token":
        loss = masked_mean(nll, mask)
    else:
        per_sequence = masked_mean(nll, mask, dim=-1)                               # [B]
        loss = masked_mean(per_sequence, mask.any(-1))

    with torch.no_grad():
        correct = (picked.argmax(-1) == targets).float()                            # [T]
        stats = {
            "loss": loss.item(),
            "num_tokens": float(targets.numel()),
            "token_accuracy": correct.sum().item() / max(targets.numel(), 1),
        }
    return loss, stats


def sft_nll(logp: torch.Tensor, mask: torch.Tensor, *, reduction: str,
            normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The same loss from the response tokens' log-probs: logp, mask [B, L] -> (loss, stats).

    ``logp`` is what the memory-lean training forward returns
    (:func:`r1lab.forward.completion_logprobs`), so no [B, L, V] logits reach the loss;
    :func:`sft_loss` on full logits is its slow reference. ``normalizer`` replaces the batch's
    own denominator (response tokens for "token", rows with a response token for "sequence")
    so that micro-batch losses of one batch add up to the full batch's loss:

    >>> lp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 1.0]]))
    >>> round(sft_nll(lp, torch.tensor([[1, 1], [1, 0]]), reduction="token")[0].item(), 4)  # 4 ln2 / 3
    0.9242
    >>> round(sft_nll(lp, torch.tensor([[1, 1], [1, 0]]), reduction="sequence")[0].item(), 4)  # (ln2 + 2 ln2) / 2
    1.0397
    """
    if reduction not in ("token", "sequence"):
        raise ValueError(f"sft_nll: reduction must be 'token' or 'sequence', not {reduction!r}")
    mask = mask.bool()
    nll = torch.where(mask, -logp, torch.zeros_like(logp))                          # [B, L]
    if reduction == "token":
        total, count = nll.sum(), mask.sum().item()
    else:
        per_row = nll.sum(-1) / mask.sum(-1).clamp(min=1)                           # [B]
        total, count = per_row.sum(), mask.any(-1).sum().item()
    loss = total / max(normalizer if normalizer is not None else count, 1)
    return loss, {"loss": loss.item(), "num_tokens": float(mask.sum().item())}
