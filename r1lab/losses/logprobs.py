"""Token log-probabilities (and entropy) in chunks, so a long batch never holds a [B, L, V]
float32 copy.

    z_t = logit_t / T                                           (T: sampling temperature)
    log p(id_t) = z_t[id_t] - logsumexp_v z_t[v]
    d log p(id_t) / d logit_t = (onehot(id_t) - softmax(z_t)) / T
    H_t = -sum_v p_v log p_v                                    with p = softmax(z_t)

No paper of its own: the chunking of Liger-Kernel's fused linear cross-entropy (Hsu et al.,
2024), without fusing the LM head, in plain PyTorch. ``r1lab.losses.common.token_logprobs`` and
``entropy_from_logits`` (applied to ``logits / T``) are the slow references it is tested
against. With bf16 logits of shape [B, L, V], ``token_logprobs(logits / T, ids)`` makes a scaled
copy and an upcast copy of the whole tensor (4*B*L*V bytes), and autograd keeps one for
backward; here forward and backward each upcast and scale ``chunk_size`` positions of the
sequence at a time and only the [B, L] logsumexp is saved. The temperature is applied inside
the chunk loop, so dividing by T costs no full copy either; at T = 1 no scaling is done at all.
Entropy is for logging: it is computed in the same loop, without gradient. The gradient comes
back in the logits' dtype, as autograd would give it. Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """Autograd function behind ``chunked_token_logprobs``: returns (log p [B, L], entropy [B, L]
    or an empty tensor), the entropy without gradient."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, ids: torch.Tensor, chunk_size: int, temperature: float,
                with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty(ids.shape, dtype=torch.float32, device=logits.device)     # [B, L]
        lse = torch.empty(ids.shape, dtype=torch.float32, device=logits.device)     # [B, L]
        entropy = torch.empty(ids.shape if with_entropy else 0, dtype=torch.float32,
                              device=logits.device)                                 # [B, L] or [0]
        for start in range(0, logits.shape[1], chunk_size):
            cols = slice(start, start + chunk_size)
            chunk = _scaled(logits[:, cols], temperature)                           # [B, C, V]
            _chunk_forward(chunk, ids[:, cols], out[:, cols], lse[:, cols], entropy[:, cols] if with_entropy else None)
        ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(logits, ids, lse)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return out, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor, _grad_entropy) -> tuple[torch.Tensor, None, None, None, None]:
        logits, ids, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)                                             # [B, L, V]
        for start in range(0, logits.shape[1], ctx.chunk_size):
            cols = slice(start, start + ctx.chunk_size)
            grad[:, cols] = _logit_grad(_scaled(logits[:, cols], ctx.temperature), lse[:, cols], ids[:, cols],
                                        grad_out[:, cols], ctx.temperature).to(logits.dtype)
        return grad, None, None, None, None


class _LinearTokenLogprobs(torch.autograd.Function):
    """Autograd function behind ``linear_token_logprobs``: the LM head's matmul inside the chunk
    loop, recomputed in backward, so no [C, V] tensor outlives a chunk."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, chunk_size: int,
                temperature: float, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty(ids.shape, dtype=torch.float32, device=hidden.device)      # [C]
        lse = torch.empty(ids.shape, dtype=torch.float32, device=hidden.device)      # [C]
        entropy = torch.empty(ids.shape if with_entropy else 0, dtype=torch.float32, device=hidden.device)
        for start in range(0, len(ids), chunk_size):
            rows = slice(start, start + chunk_size)
            chunk = _scaled(torch.nn.functional.linear(hidden[rows], weight), temperature)  # [c, V]
            _chunk_forward(chunk, ids[rows], out[rows], lse[rows], entropy[rows] if with_entropy else None)
        ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(hidden, weight, ids, lse)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return out, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor, _grad_entropy):
        hidden, weight, ids, lse = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[:2]
        grad_h = torch.empty_like(hidden) if want_h else None                       # [C, d]
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        for start in range(0, len(ids), ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            z = _scaled(torch.nn.functional.linear(hidden[rows], weight), ctx.temperature)     # [c, V]
            dz = _logit_grad(z, lse[rows], ids[rows], grad_out[rows], ctx.temperature)        # [c, V]
            if want_h:
                grad_h[rows] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
            if want_w:
                grad_w += dz.t() @ hidden[rows].float()
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, chunk_size: int, *,
                          temperature: float = 1.0, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(ids) [C] under softmax(hidden @ weight.T / temperature), and the entropy [C] if asked,
    for hidden [C, d] and an LM head's weight [V, d] (no bias): Liger-Kernel's fused linear
    log-softmax in plain PyTorch. ``chunk_size`` rows of logits exist at a time, in forward and
    backward (which recomputes them: one more [C, d] x [d, V] matmul). Equal to
    ``chunked_token_logprobs(hidden @ weight.T, ...)`` to float32 rounding, gradients to
    ``hidden`` and ``weight`` included."""
    if chunk_size < 1 or temperature <= 0:
        raise ValueError("linear_token_logprobs needs chunk_size >= 1 and temperature > 0")
    logp, entropy = _LinearTokenLogprobs.apply(hidden, weight, ids, chunk_size, float(temperature), with_entropy)
    return logp, (entropy if with_entropy else None)


def _chunk_forward(chunk: torch.Tensor, ids: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   entropy: torch.Tensor | None) -> None:
    """Fill ``out`` (log p of ``ids``), ``lse`` and, if given, ``entropy`` [...] from one chunk's
    float32 scaled logits [..., V]."""
    lse.copy_(torch.logsumexp(chunk, dim=-1))
    out.copy_(chunk.gather(-1, ids[..., None]).squeeze(-1) - lse)
    if entropy is not None:
        logp = chunk - lse[..., None]               # [..., V]: the log-softmax, from the lse above
        entropy.copy_(-torch.linalg.vecdot(logp.exp(), logp))


def _logit_grad(z: torch.Tensor, lse: torch.Tensor, ids: torch.Tensor, grad_out: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """d loss / d logit of one chunk, float32 [..., V]: (onehot(ids) - softmax(z)) * grad_out / T,
    where z is the chunk's scaled logits and lse their logsumexp."""
    g = grad_out[..., None].float()                                                 # [..., 1]
    if temperature != 1.0:
        g = g / temperature                                   # the 1/T of d(logit / T) / d logit
    grad = -torch.exp(z - lse[..., None]) * g                                       # [..., V]
    return grad.scatter_add_(-1, ids[..., None], g)


def _scaled(chunk: torch.Tensor, temperature: float) -> torch.Tensor:
    """A float32 ``chunk / temperature``; at T = 1 only the upcast, so the bits are unchanged."""
    chunk = chunk.float()                                                           # [B, C, V]
    return chunk if temperature == 1.0 else chunk / temperature


def chunked_token_logprobs(logits: torch.Tensor, ids: torch.Tensor, chunk_size: int, *,
                           temperature: float = 1.0) -> torch.Tensor:
    """log p(ids) under softmax(logits / temperature): logits [B, L, V], ids [B, L] -> [B, L] float32.

    Equal (to float32 rounding) to ``token_logprobs(logits / temperature, ids)`` in value and
    gradient, but upcasts and scales only ``chunk_size`` sequence positions (of every row:
    [B, chunk_size, V]) at a time. ``logits`` may be a strided view such as ``logits[:, :-1]``;
    it is not copied. Every id must be a valid index into V: replace padding labels such as
    -100 before calling.
    """
    return _apply(logits, ids, chunk_size, temperature, with_entropy=False)[0]


def chunked_logprobs(logits: torch.Tensor, ids: torch.Tensor, chunk_size: int, *, temperature: float = 1.0,
                     with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``chunked_token_logprobs``, and the entropy as ``chunked_token_logprobs_and_entropy``
    gives it where ``with_entropy`` (else None): the shape ``linear_token_logprobs`` returns."""
    logp, entropy = _apply(logits, ids, chunk_size, temperature, with_entropy)
    return logp, (entropy if with_entropy else None)


def chunked_token_logprobs_and_entropy(logits: torch.Tensor, ids: torch.Tensor, chunk_size: int, *,
                                       temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``chunked_token_logprobs`` and, from the same chunks, the entropy of softmax(logits /
    temperature) per position: both [B, L] float32.

    The entropy equals ``entropy_from_logits(logits / temperature)`` and carries no gradient
    (it is for logging); the log-probs are differentiable as in ``chunked_token_logprobs``.
    """
    return _apply(logits, ids, chunk_size, temperature, with_entropy=True)


def _apply(logits: torch.Tensor, ids: torch.Tensor, chunk_size: int, temperature: float,
           with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if chunk_size < 1:
        raise ValueError("chunked_token_logprobs needs chunk_size >= 1")
    if temperature <= 0:
        raise ValueError("chunked_token_logprobs needs temperature > 0")
    return _ChunkedTokenLogprobs.apply(logits, ids, chunk_size, float(temperature), with_entropy)
