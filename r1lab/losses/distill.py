"""Logit distillation from a teacher to a student: forward KL (Hinton et al., 2015), reverse KL
(MiniLLM, Gu et al., 2024) and the generalized Jensen-Shannon divergence of GKD (Agarwal et al.,
2024, "On-Policy Distillation of Language Models", Eq. 1), per token over the vocabulary:

    forward KL   KL(T || S) = sum_v T_v (log T_v - log S_v)                 (mode covering)
    reverse KL   KL(S || T) = sum_v S_v (log S_v - log T_v)                 (mode seeking)
    JSD(beta)    beta KL(T || M) + (1 - beta) KL(S || M),  M = beta T + (1 - beta) S

with T = softmax(teacher_logits / tau), S = softmax(student_logits / tau). beta weighs the
teacher, as in the GKD paper and in TRL's GKDTrainer.generalized_jsd_loss since TRL PR #3043;
beta = 0.5 is the symmetric JSD. As beta -> 0 or 1 the formula itself tends to 0 (M tends to
S or T), so the endpoints are not JSD(beta): TRL special-cases beta = 0 as KL(T || S) and
beta = 1 as KL(S || T); here those are forward_kl_loss and reverse_kl_loss, and
generalized_jsd_loss needs 0 < beta < 1.

Each loss is the mean over unmasked tokens of the batch, like TRL's "batchmean" with labels.
Reverse KL is computed exactly over the vocabulary at each token, as GKD and TRL do; MiniLLM
itself optimises the sequence-level reverse KL with a policy gradient. Where we depart from
TRL: the loss is multiplied by tau^2, as Hinton et al. advise, so that gradient magnitudes stay
comparable when tau changes (the soft targets' gradients scale as 1/tau^2); at tau = 1 the two
agree. Gradients flow into whichever logits require them: compute the teacher under no_grad.
stats: ``top1_agreement`` (share of tokens where the student's argmax is the teacher's).
"""

from __future__ import annotations

import math

import torch


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Tempered log-softmax of the unmasked rows only: [B, L, V] -> two [T, V] float32."""
    mask = mask.bool()
    student = (student_logits[mask].float() / temperature).log_softmax(-1)          # [T, V]
    teacher = (teacher_logits[mask].float() / temperature).log_softmax(-1)          # [T, V]
    return student, teacher


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probs: [T, V] -> [T]."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _reduce(per_token: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor,
            temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """tau^2 * mean of the per-token divergence [T] (0 when no token is unmasked), and stats."""
    n = max(per_token.numel(), 1)
    loss = per_token.sum() / n * temperature ** 2
    with torch.no_grad():
        agree = (student.argmax(-1) == teacher.argmax(-1)).float()                  # [T]
        stats = {"loss": loss.item(), "top1_agreement": agree.sum().item() / n}
    return loss, stats


def forward_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    mask: torch.Tensor, *,
                    temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """tau^2 * mean over unmasked tokens of KL(T || S). Logits [B, L, V], mask [B, L]."""
    student, teacher = _log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(_kl(teacher, student), student, teacher, temperature)


def reverse_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    mask: torch.Tensor, *,
                    temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """tau^2 * mean over unmasked tokens of KL(S || T). Logits [B, L, V], mask [B, L]."""
    student, teacher = _log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(_kl(student, teacher), student, teacher, temperature)


def generalized_jsd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         mask: torch.Tensor, *, beta: float,
                         temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """tau^2 * mean over unmasked tokens of JSD(beta), 0 < beta < 1. Logits [B, L, V], mask [B, L].

    The mixture is formed in probability space (log M = logsumexp(log beta + log T,
    log(1 - beta) + log S)), never by mixing log-probs.
    """
    if not 0 < beta < 1:
        raise ValueError("generalized_jsd_loss needs 0 < beta < 1; use forward_kl_loss "
                         "(beta = 0) or reverse_kl_loss (beta = 1)")
    student, teacher = _log_probs(student_logits, teacher_logits, mask, temperature)
    mixture = torch.logsumexp(torch.stack([teacher + math.log(beta),
                                           student + math.log(1 - beta)]), dim=0)   # [T, V]
    per_token = beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)  # [T]
    return _reduce(per_token, student, teacher, temperature)
