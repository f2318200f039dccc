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

from r1lab import onednn
from r1lab.losses import logit_tiles


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
    """Autograd function behind ``linear_token_logprobs``: the LM head's matmul inside a loop over
    tiles of ``rows`` positions x ``cols`` vocabulary entries, each kept for the backward
    (``keep``) or made again there, so no [C, V] tensor is made at once."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, rows: int, cols: int,
                temperature: float, with_entropy: bool, keep: bool, fast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty(ids.shape, dtype=torch.float32, device=hidden.device)      # [C]
        lse = torch.empty(ids.shape, dtype=torch.float32, device=hidden.device)      # [C]
        entropy = torch.empty(ids.shape if with_entropy else 0, dtype=torch.float32, device=hidden.device)
        ctx.tiles = [] if keep else None                                            # each tile's scaled logits
        for start in range(0, len(ids), rows):
            r = slice(start, start + rows)
            _rows_forward(hidden[r], weight, ids[r], cols, temperature, out[r], lse[r],
                          entropy[r] if with_entropy else None, ctx.tiles, fast)
        ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(hidden, weight, ids, lse)
        ctx.rows, ctx.cols, ctx.temperature, ctx.fast = rows, cols, temperature, fast
        return out, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor, _grad_entropy):
        hidden, weight, ids, lse = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[:2]
        kept, ctx.tiles = ctx.tiles, None                                           # each freed once used
        grad_h = torch.empty_like(hidden) if want_h else None                       # [C, d]
        new = torch.empty if len(ids) else torch.zeros                              # the first row block writes it
        grad_w = new(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        tiles = logit_tiles.load() if ctx.fast else None
        for start in range(0, len(ids), ctx.rows):
            r = slice(start, start + ctx.rows)
            h = hidden[r]
            h32 = h.float() if want_w else None                                     # once a row block, not a tile
            if want_w and ctx.fast:
                h32 = onednn.as_onednn(h32)                                         # converted once a row block
            if tiles is not None:
                g = _over_temperature(grad_out[r], ctx.temperature).contiguous()   # [r]
            for first in range(0, weight.shape[0], ctx.cols):
                v = slice(first, first + ctx.cols)
                if kept is None:
                    z = _scaled(onednn.product(h, weight[v], ctx.fast), ctx.temperature)  # [r, c]
                else:
                    z = kept.pop(0)
                if tiles is not None and logit_tiles.fits(z):
                    dz = tiles.grad_(z, lse[r], ids[r], first, g)                   # [r, c], in place
                else:
                    dz = _logit_grad(z, lse[r], ids[r], grad_out[r], ctx.temperature, first, overwrite=True)
                if ctx.fast:                                                        # converted once for both products
                    dz = onednn.as_onednn(dz)
                if want_h:
                    part = onednn.grad_input(dz.to(weight.dtype), weight[v], ctx.fast).to(hidden.dtype)
                    if first == 0:
                        grad_h[r] = part
                    else:
                        grad_h[r] += part
                if want_w and start == 0:                                           # written, not added to zeros
                    grad_w[v] = onednn.grad_weight(dz, h32, ctx.fast)
                elif want_w:
                    grad_w[v] += onednn.grad_weight(dz, h32, ctx.fast)
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None, None, None, None


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, chunk_size: int, *,
                          vocab_chunk: int | None = None, temperature: float = 1.0,
                          with_entropy: bool = False, keep_logits: bool = False,
                          fast: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(ids) [C] under softmax(hidden @ weight.T / temperature), and the entropy [C] if asked,
    for hidden [C, d] and an LM head's weight [V, d] (no bias): Liger-Kernel's fused linear
    log-softmax in plain PyTorch, tiled over the vocabulary too. Tiles of ``chunk_size`` rows x
    ``vocab_chunk`` vocabulary entries (None: all V) of logits are made one at a time; a row's
    log-sum-exp is combined over its tiles as flash attention combines its blocks. The backward
    makes each tile again (one more [C, d] x [d, V] matmul, a quarter of the head's), or, with
    ``keep_logits`` (while autograd records), reads the forward's own: [C, V] float32 kept
    from forward to backward, and the same numbers bit for bit. Narrow tiles keep each
    matmul's output in the CPU's caches at a large vocabulary (r1lab/forward/packed.py
    ``TILE_BYTES``). Equal to ``chunked_token_logprobs(hidden @ weight.T, ...)`` to float32
    rounding, gradients to ``hidden`` and ``weight`` included; a tile across all of V is the
    same arithmetic as ``chunked_token_logprobs`` on the chunk's logits. ``fast``: the products
    through oneDNN (r1lab/onednn.py)."""
    if chunk_size < 1 or temperature <= 0 or (vocab_chunk is not None and vocab_chunk < 1):
        raise ValueError("linear_token_logprobs needs chunk_size >= 1, vocab_chunk >= 1 and temperature > 0")
    cols = weight.shape[0] if vocab_chunk is None else vocab_chunk
    keep = keep_logits and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    logp, entropy = _LinearTokenLogprobs.apply(hidden, weight, ids, chunk_size, cols, float(temperature), with_entropy,
                                               keep, fast)
    return logp, (entropy if with_entropy else None)


def _rows_forward(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, cols: int, temperature: float,
                  out: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor | None, kept: list | None,
                  fast: bool) -> None:
    """``_chunk_forward`` for the logits ``hidden @ weight.T / temperature`` of a block of rows,
    made ``cols`` vocabulary entries at a time: per tile its max m, sum of exp(z - m) and, for
    the entropy, sum of exp(z - m) * z, rescaled to the row's overall max at the end. Each
    tile's scaled logits are appended to ``kept`` where it is a list (for the backward)."""
    V = weight.shape[0]
    if cols >= V:                                                                   # one tile
        z = _scaled(onednn.product(hidden, weight, fast), temperature)
        _chunk_forward(z, ids, out, lse, entropy)
        if kept is not None:
            kept.append(z)
        return
    target = torch.empty_like(out)                                                  # [r]: z of each id
    maxes, sums, dots = [], [], []
    tiles = logit_tiles.load() if fast else None
    for first in range(0, V, cols):
        z = onednn.product(hidden, weight[first:first + cols], fast)                # [r, c], fresh
        if tiles is not None and logit_tiles.fits(z):                               # one compiled pass
            maxes.append(torch.empty_like(out))
            sums.append(torch.empty_like(out))
            if entropy is not None:
                dots.append(torch.empty_like(out))
            tiles.stats(z, ids, first, temperature, maxes[-1], sums[-1], dots[-1] if entropy is not None else None,
                        target)
            if kept is not None:
                kept.append(z)
            continue
        z = _scaled(z, temperature)
        local = ids - first
        inside = (local >= 0) & (local < z.shape[1])
        target = torch.where(inside, z.gather(1, local.clamp(0, z.shape[1] - 1)[:, None])[:, 0], target)
        m = z.amax(-1, keepdim=True)                                                # [r, 1]
        maxes.append(m[:, 0])
        if entropy is None and kept is None:
            sums.append(z.sub_(m).exp_().sum(-1))                                  # in place: z is not needed again
        else:
            e = (z - m).exp_()
            sums.append(e.sum(-1))
            if entropy is not None:
                dots.append(torch.linalg.vecdot(e, z))
            if kept is not None:
                kept.append(z)
    m = torch.stack(maxes)                                                          # [tiles, r]
    top = m.amax(0)                                                                 # [r]
    scale = (m - top).exp()
    total = (torch.stack(sums) * scale).sum(0)                                      # sum of exp(z - top)
    lse.copy_(total.log() + top)
    out.copy_(target - lse)
    if entropy is not None:                                                         # lse - E_p[z]
        entropy.copy_(lse - (torch.stack(dots) * scale).sum(0) / total)


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
                temperature: float, first: int = 0, overwrite: bool = False) -> torch.Tensor:
    """d loss / d logit of one chunk, float32 [..., V]: (onehot(ids) - softmax(z)) * grad_out / T,
    where z is the chunk's scaled logits and lse their logsumexp; with ``first``, z holds the
    vocabulary entries first, first + 1, ... only, and ids outside them add no onehot. With
    ``overwrite`` the result is made in z's own memory (the same numbers: -a * b is a * -b)."""
    g = _over_temperature(grad_out, temperature)[..., None]                         # [..., 1]
    if overwrite:
        grad = z.sub_(lse[..., None]).exp_().mul_(-g)                               # [..., V]
    else:
        grad = -torch.exp(z - lse[..., None]) * g
    local = ids[..., None] - first
    inside = (local >= 0) & (local < z.shape[-1])
    return grad.scatter_add_(-1, local.clamp(0, z.shape[-1] - 1), torch.where(inside, g, 0.0))


def _over_temperature(grad_out: torch.Tensor, temperature: float) -> torch.Tensor:
    """The log-probs' gradient in float32, times the 1/T of d(logit / T) / d logit."""
    g = grad_out.float()
    return g if temperature == 1.0 else g / temperature


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
