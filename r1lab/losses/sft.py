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
