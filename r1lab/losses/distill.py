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

These three take full logits and are the slow references of :func:`chunked_distill_loss`,
which a training stage calls: it upcasts, tempers and softmaxes ``chunk_size`` sequence
positions at a time and saves nothing of them for backward, which recomputes each chunk's
divergence and its gradient in turn (checkpointing per chunk, as r1lab/losses/logprobs.py
chunks log-probs). So besides the two models' logits and the student's gradient, no
[B, L, V] tensor is made.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Tempered log-softmax of the unmasked rows only: [B, L, V] -> two [T, V] float32."""
    mask = mask.bool()
    student = (student_logits[mask].float() / temperature).log_softmax(-1)          # [T, V]
    teacher = (teacher_logits[mask].float() / temperature).log_softmax(-1)          # [T, V]
    return student, teacher


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probs: [..., V] -> [...]."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def forward_kl(student: torch.Tensor, teacher: torch.Tensor, beta: float | None = None) -> torch.Tensor:
    """KL(T || S) per position from log-probs: [..., V] -> [...] (``beta`` unused)."""
    return _kl(teacher, student)


def reverse_kl(student: torch.Tensor, teacher: torch.Tensor, beta: float | None = None) -> torch.Tensor:
    """KL(S || T) per position from log-probs: [..., V] -> [...] (``beta`` unused)."""
    return _kl(student, teacher)


def jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """JSD(beta) per position from log-probs: [..., V] -> [...]. The mixture is formed in
    probability space (log M = logsumexp(log beta + log T, log(1 - beta) + log S))."""
    mixture = torch.logsumexp(torch.stack([teacher + math.log(beta),
                                           student + math.log(1 - beta)]), dim=0)   # [..., V]
    return beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)       # [...]


# Per-position divergences by the name a config picks: fn(student_logp, teacher_logp, beta).
DIVERGENCES = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "jsd": jsd}


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
    return _reduce(forward_kl(student, teacher), student, teacher, temperature)


def reverse_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    mask: torch.Tensor, *,
                    temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """tau^2 * mean over unmasked tokens of KL(S || T). Logits [B, L, V], mask [B, L]."""
    student, teacher = _log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(reverse_kl(student, teacher), student, teacher, temperature)


def generalized_jsd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         mask: torch.Tensor, *, beta: float,
                         temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """tau^2 * mean over unmasked tokens of JSD(beta), 0 < beta < 1. Logits [B, L, V], mask [B, L]."""
    if not 0 < beta < 1:
        raise ValueError("generalized_jsd_loss needs 0 < beta < 1; use forward_kl_loss "
                         "(beta = 0) or reverse_kl_loss (beta = 1)")
    student, teacher = _log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(jsd(student, teacher, beta), student, teacher, temperature)


def _chunk_divergence(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, divergence: str,
                      beta: float | None, temperature: float) -> torch.Tensor:
    """Per-position divergence of one chunk, [B, C, V] logits -> [B, C] float32; masked
    positions read as zero logits (their junk, even NaN, never reaches a sum)."""
    keep = mask[..., None]                                                          # [B, C, 1]
    s = (student.float().masked_fill(~keep, 0) / temperature).log_softmax(-1)       # [B, C, V]
    t = (teacher.float().masked_fill(~keep, 0) / temperature).log_softmax(-1)       # [B, C, V]
    return DIVERGENCES[divergence](s, t, beta).masked_fill(~mask, 0)                # [B, C]


class _ChunkedDivergence(torch.autograd.Function):
    """Per-position divergence [B, L] (0 where masked), differentiable in the student's logits."""

    @staticmethod
    def forward(ctx, student, teacher, mask, divergence, beta, temperature, chunk_size):
        out = torch.empty(mask.shape, dtype=torch.float32, device=student.device)   # [B, L]
        for start in range(0, student.shape[1], chunk_size):
            cols = slice(start, start + chunk_size)
            out[:, cols] = _chunk_divergence(student[:, cols], teacher[:, cols], mask[:, cols],
                                             divergence, beta, temperature)
        ctx.save_for_backward(student, teacher, mask)
        ctx.args = divergence, beta, temperature, chunk_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        student, teacher, mask = ctx.saved_tensors
        divergence, beta, temperature, chunk_size = ctx.args
        grad = torch.empty_like(student)                                            # [B, L, V]
        for start in range(0, student.shape[1], chunk_size):
            cols = slice(start, start + chunk_size)
            with torch.enable_grad():
                x = student[:, cols].detach().requires_grad_(True)                  # [B, C, V]
                d = _chunk_divergence(x, teacher[:, cols], mask[:, cols], divergence, beta, temperature)
                (g,) = torch.autograd.grad(d, x, grad_out[:, cols])
            grad[:, cols] = g.masked_fill(~mask[:, cols, None], 0)
        return grad, None, None, None, None, None, None


def chunked_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *,
                         divergence: str, temperature: float, beta: float | None = None, chunk_size: int = 64,
                         normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """tau^2 * mean over unmasked tokens of ``DIVERGENCES[divergence]``: equal (to float32
    rounding, in value and gradient) to forward_kl_loss, reverse_kl_loss or
    generalized_jsd_loss, ``chunk_size`` positions at a time. Logits [B, L, V] (strided views
    such as ``logits[:, :-1]`` are not copied), mask [B, L]. ``normalizer`` replaces the token
    count as denominator, so that micro-batch losses of one batch add up to the batch's loss.
    stats: ``loss``, ``top1_agreement`` (of this call's tokens), ``tokens``.
    """
    if divergence == "jsd" and not (beta is not None and 0 < beta < 1):
        raise ValueError("chunked_distill_loss: jsd needs 0 < beta < 1")
    if chunk_size < 1 or temperature <= 0:
        raise ValueError("chunked_distill_loss needs chunk_size >= 1 and temperature > 0")
    mask = mask.bool().to(student_logits.device)
    per_token = _ChunkedDivergence.apply(student_logits, teacher_logits, mask, divergence, beta,
                                         float(temperature), chunk_size)           # [B, L]
    n = mask.sum().item()
    loss = per_token.sum() / max(normalizer if normalizer is not None else n, 1) * temperature ** 2
    with torch.no_grad():
        agree = sum(((student_logits[:, c].argmax(-1) == teacher_logits[:, c].argmax(-1)) & mask[:, c]).sum().item()
                    for c in (slice(i, i + chunk_size) for i in range(0, mask.shape[1], chunk_size)))
    return loss, {"loss": loss.item(), "top1_agreement": agree / max(n, 1), "tokens": float(n)}
