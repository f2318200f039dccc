"""The packed training walk's attention as one compiled C loop on the CPU, forward and backward
(packed_attention.c beside this file).

The walk's reference attention (:func:`r1lab.forward.packed.grid_attention`) lays the packed
tokens out on padded grids (the distinct prompts, then completion rows of like length), copies
each row's prompt keys and values beside its own, and calls ``F.scaled_dot_product_attention``
with a mask per grid: padding and masked positions are computed and thrown away, and the
copies, the mask and the grids' scatter and gather each pass through memory, forward and
backward. Here every token attends straight from the packed list: a block of up to ``BLOCK``
consecutive tokens of one prompt or one completion row attends to a whole span (the row's
prompt) and, causally, to its own span, so nothing is padded or copied. For each block and KV
head, the block's queries of that head's group are scored together against the keys held
transposed (a score per vector lane), softmaxed, and weigh the values; the backward recomputes
the weights from each query's log-sum-exp (as FlashAttention does) and sums the keys' and
values' gradients per thread.

It is compiled on first use (r1lab/compiled.py). Where it cannot be built, or
``R1LAB_PACKED_ATTENTION=torch``, :func:`load` returns None and the walk keeps the reference,
which the loop is tested against (tests/test_packed_attention.py). Float32, head sizes that are
a multiple of 16 up to 128.

    attend = packed_attention.load()                    # None: use the reference
    out = attend(q, k, v, blocks)                       # q [T, H, D], k, v [T, K, D] -> [T, H, D]
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from r1lab import compiled

SOURCE = Path(__file__).with_suffix(".c")
BLOCK = 8                                   # query tokens a block: the keys' reads shared by 8 x G queries
PAD = 32                                    # packed_attention.c's PAD: floats read past a transposed matrix's last token


@functools.cache
def load():
    """The compiled attention as a function ``(q, k, v, blocks) -> out`` with its backward, or
    None where it cannot be built (a warning says why) or ``R1LAB_PACKED_ATTENTION=torch``."""
    lib = compiled.library(SOURCE, "R1LAB_PACKED_ATTENTION", "packed attention")
    if lib is None:
        return None
    fns = lib.attention_forward_f32, lib.attention_backward_f32
    fns[0].argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int] * 5 + [ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    fns[1].argtypes = [ctypes.c_void_p] * 11 + [ctypes.c_int] * 5 + [ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    for fn in fns:
        fn.restype = ctypes.c_int
    return functools.partial(_Attention.apply, fns)


def fits(dtype: torch.dtype, device: torch.device, head_dim: int) -> bool:
    """Whether the loop takes a model's attention: float32 on the CPU, D a multiple of 16 up to 128."""
    return dtype == torch.float32 and device.type == "cpu" and head_dim % 16 == 0 and head_dim <= 128


def blocks(spans: torch.Tensor) -> torch.Tensor:
    """The loop's blocks [B, 5] (i0, i1, a0, a1, b0) from ``spans`` [S, 4] (start, stop, a0, a1):
    each span a run of consecutive packed tokens [start, stop) that attend to all of [a0, a1)
    and causally to the run itself (a prompt: a0 == a1; a completion row: its prompt's run),
    cut into blocks of at most BLOCK tokens."""
    start, stop = spans[:, 0], spans[:, 1]
    count = (stop - start + BLOCK - 1) // BLOCK                                 # [S] blocks a span
    span = torch.repeat_interleave(torch.arange(len(spans), device=spans.device), count)   # [B]
    first = torch.cumsum(count, 0) - count
    i0 = start[span] + (torch.arange(len(span), device=spans.device) - first[span]) * BLOCK
    i1 = torch.minimum(i0 + BLOCK, stop[span])
    return torch.stack([i0, i1, spans[span, 2], spans[span, 3], start[span]], 1).contiguous()


def _transposed(x: torch.Tensor) -> torch.Tensor:
    """x [T, K, D] as [K, D, T + PAD], zeros past T: each head's keys (or values) a column."""
    T, K, D = x.shape
    out = x.new_zeros(K, D, T + PAD)
    out[:, :, :T] = x.permute(1, 2, 0)
    return out


def _check(q, k, v, blocks):
    T, H, D = q.shape
    if (k.shape != v.shape or k.shape[0] != T or k.shape[2] != D or H % k.shape[1]
            or not fits(q.dtype, q.device, D) or k.dtype != q.dtype or v.dtype != q.dtype):
        raise ValueError(f"packed attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         f"({q.dtype}) do not fit: float32 CPU tensors [T, H, D], [T, K, D], H a multiple of K")
    if (blocks.dtype != torch.int64 or blocks.dim() != 2 or blocks.shape[1] != 5 or not blocks.is_contiguous()
            or blocks.device.type != "cpu"):
        raise ValueError("packed attention: blocks must be a contiguous int64 CPU tensor [B, 5]")
    i0, i1, a0, a1, b0 = blocks.unbind(1)
    covered = len(blocks) and int(i0[0]) == 0 and int(i1[-1]) == T and bool((i0[1:] == i1[:-1]).all())
    overlap = (a0 < a1) & (a1 > b0)                                         # the whole span must end before the own one
    if not covered or bool(((i0 >= i1) | (b0 > i0) | (b0 < 0) | (a0 > a1) | (a0 < 0) | (a1 > T) | overlap).any()):
        raise ValueError("packed attention: the blocks must cover the tokens in order, each within them, "
                         "its whole span before its own")


class _Attention(torch.autograd.Function):
    """out = softmax(q k^T / sqrt(D) over each query's keys) v, for each query head with its
    group's KV head; keeps q, k, v, out and the log-sum-exps for backward."""

    @staticmethod
    def forward(ctx, fns, q, k, v, blocks):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        _check(q, k, v, blocks)
        T, H, D = q.shape
        K = k.shape[1]
        out, lse = q.new_empty(T, H, D), q.new_empty(T, H)
        kt = _transposed(k)
        scale = D ** -0.5
        if fns[0](q.data_ptr(), kt.data_ptr(), v.data_ptr(), blocks.data_ptr(), out.data_ptr(), lse.data_ptr(),
                  len(blocks), T, H, K, D, kt.shape[2], scale, torch.get_num_threads()):
            raise MemoryError("packed attention: no memory for a block's scores")          # (blocks checked above)
        ctx.save_for_backward(q, k, v, out, lse, blocks)
        ctx.fns, ctx.scale = fns, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, out, lse, blocks = ctx.saved_tensors
        grad = grad.contiguous()
        T, H, D = q.shape
        K = k.shape[1]
        delta = (grad * out).sum(-1)                                            # [T, H]
        kt, vt = _transposed(k), _transposed(v)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        if ctx.fns[1](q.data_ptr(), k.data_ptr(), kt.data_ptr(), vt.data_ptr(), grad.data_ptr(), lse.data_ptr(),
                      delta.data_ptr(), blocks.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), len(blocks),
                      T, H, K, D, kt.shape[2], ctx.scale, torch.get_num_threads()):
            raise MemoryError("packed attention: no memory for a block's scores or the threads' gradients")
        return None, dq, dk, dv, None
