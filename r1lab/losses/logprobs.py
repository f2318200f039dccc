"""Token log-probabilities in chunks, so a long batch never holds a [B, L, V] float32 copy.

    log p(id_t) = logit_t[id_t] - logsumexp_v logit_t[v]
    d log p(id_t) / d logit_t = onehot(id_t) - softmax(logit_t)

No paper of its own: the chunking of Liger-Kernel's fused linear cross-entropy (Hsu et al.,
2024), without fusing the LM head, in plain PyTorch. ``r1lab.losses.common.token_logprobs`` is
the slow reference it is tested against. With bf16 logits of shape [B, L, V], token_logprobs
upcasts the whole tensor (4*B*L*V bytes) and autograd keeps that copy for backward; here
forward and backward each upcast ``chunk_size`` positions of the sequence at a time and only
the [B, L] logsumexp is saved. The gradient comes back in the logits' dtype, as autograd
would give it. Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """Autograd function behind ``chunked_token_logprobs``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, ids: torch.Tensor, chunk_size: int) -> torch.Tensor:
        out = torch.empty(ids.shape, dtype=torch.float32, device=logits.device)     # [B, L]
        lse = torch.empty(ids.shape, dtype=torch.float32, device=logits.device)     # [B, L]
        for start in range(0, logits.shape[1], chunk_size):
            cols = slice(start, start + chunk_size)
            chunk = logits[:, cols].float()                                         # [B, C, V]
            lse[:, cols] = torch.logsumexp(chunk, dim=-1)                           # [B, C]
            picked = chunk.gather(-1, ids[:, cols, None]).squeeze(-1)               # [B, C]
            out[:, cols] = picked - lse[:, cols]
        ctx.save_for_backward(logits, ids, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, ids, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)                                             # [B, L, V]
        for start in range(0, logits.shape[1], ctx.chunk_size):
            cols = slice(start, start + ctx.chunk_size)
            probs = torch.exp(logits[:, cols].float() - lse[:, cols, None])         # [B, C, V]
            g = grad_out[:, cols, None].float()                                     # [B, C, 1]
            chunk_grad = -probs * g                                                 # [B, C, V]
            chunk_grad.scatter_add_(-1, ids[:, cols, None], g)
            grad[:, cols] = chunk_grad.to(logits.dtype)
        return grad, None, None


def chunked_token_logprobs(logits: torch.Tensor, ids: torch.Tensor,
                           chunk_size: int) -> torch.Tensor:
    """log p(ids) under softmax(logits): logits [B, L, V], ids [B, L] -> [B, L] float32.

    Equal (to float32 rounding) to ``token_logprobs(logits, ids)`` in value and gradient, but
    upcasts only ``chunk_size`` sequence positions (of every row: [B, chunk_size, V]) at a
    time. ``logits`` may be a strided view such as ``logits[:, :-1]``; it is not copied. Every
    id must be a valid index into V: replace padding labels such as -100 before calling.
    """
    if chunk_size < 1:
        raise ValueError("chunked_token_logprobs needs chunk_size >= 1")
    return _ChunkedTokenLogprobs.apply(logits, ids, chunk_size)                     # [B, L]
