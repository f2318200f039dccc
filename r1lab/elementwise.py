"""The packed walk's elementwise work as compiled C loops on the CPU (elementwise.c beside this
file): SwiGLU, RMSNorm and the rotary embedding, forward and backward. The native decoder
(r1lab/rollout/native.py) takes the norm's and the rotary embedding's forward passes too.

In PyTorch calls each of these is several passes over its tensors, each reading and writing
memory and most making a temporary: silu(gate) * up is 2 in the forward and 5 in the backward
(r1lab/forward/lean_ops.py), an RMSNorm 4 and 7, the rotary embedding of q and k 5 and ~8
(with its concatenations). On SmolLM2's micro-batches (1,352 tokens x 576, x 1,536 in the MLP)
those passes were ~6% of the forward and backward. Here each is one loop (two for a norm's
rows: its sum of squares, then the scaling). The PyTorch calls stay where the walk does not
multiply through oneDNN, or where this cannot be built (``R1LAB_ELEMENTWISE=torch`` asks for
them), and are the reference tests/test_elementwise.py checks these against.

    ops = elementwise.load()                           # None: PyTorch's calls (taking(fast, *xs): and checks xs)
    out = ops.swiglu(gate, up)
    grad_gate, grad_up, product = ops.swiglu_grads(gate, up, grad)
    out, rstd = ops.rms_norm(x, weight, eps)
    grad_x, grad_w = ops.rms_norm_grads(x, weight, rstd, grad, want_weight)
    q = ops.rope(q, cos, sin)                          # autograd through its own transpose
    q = ops.rotate(qkv[:, :H * D].view(T, H, D), cos, sin)   # no autograd; a token's heads together, tokens apart
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.autograd.function import once_differentiable

from r1lab import compiled

SOURCE = Path(__file__).with_suffix(".c")


@functools.cache
def load() -> SimpleNamespace | None:
    """The compiled passes, or None where they cannot be built (a warning says why) or
    ``R1LAB_ELEMENTWISE=torch``."""
    lib = compiled.library(SOURCE, "R1LAB_ELEMENTWISE", "elementwise passes")
    if lib is None:
        return None
    p, i, i64, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
    lib.swiglu_forward_f32.argtypes = [p, p, p, i64, i]
    lib.swiglu_backward_f32.argtypes = [p, p, p, p, p, p, i64, i]
    lib.rms_norm_forward_f32.argtypes = [p, p, p, p, i64, i, f, i]
    lib.rms_norm_backward_f32.argtypes = [p, p, p, p, p, p, i64, i, i]
    lib.rope_f32.argtypes = [p, i64, p, p, p, i64, i, i, i, i]
    lib.swiglu_forward_f32.restype = lib.swiglu_backward_f32.restype = lib.rope_f32.restype = None
    lib.rms_norm_forward_f32.restype = None
    lib.rms_norm_backward_f32.restype = ctypes.c_int
    return SimpleNamespace(swiglu=functools.partial(_swiglu, lib), swiglu_grads=functools.partial(_swiglu_grads, lib),
                           rms_norm=functools.partial(_rms_norm, lib),
                           rms_norm_grads=functools.partial(_rms_norm_grads, lib),
                           rope=functools.partial(_Rope.apply, lib),
                           rotate=functools.partial(_rope, lib, transpose=False))


def fits(*xs: torch.Tensor) -> bool:
    """Whether the compiled passes take these tensors: float32, on the CPU, contiguous."""
    return all(x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous() for x in xs)


def taking(fast: bool, *xs: torch.Tensor) -> SimpleNamespace | None:
    """The compiled passes where ``fast`` (the walk on oneDNN), they load and they take ``xs``;
    else None, and the caller keeps PyTorch's calls."""
    ops = load() if fast else None
    return ops if ops is not None and fits(*xs) else None


def _need(*xs: torch.Tensor) -> None:
    if not fits(*xs):
        raise ValueError("elementwise: float32, contiguous CPU tensors only")


def _threads() -> int:
    return torch.get_num_threads()


def _swiglu(lib, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up."""
    _need(gate, up)
    if gate.shape != up.shape:
        raise ValueError("elementwise: gate and up must have one shape")
    out = torch.empty_like(gate)
    lib.swiglu_forward_f32(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel(), _threads())
    return out


def _swiglu_grads(lib, gate: torch.Tensor, up: torch.Tensor, grad: torch.Tensor):
    """(d/d gate, d/d up) of silu(gate) * up given its gradient ``grad``, and the product itself."""
    _need(gate, up, grad)
    if not gate.shape == up.shape == grad.shape:
        raise ValueError("elementwise: gate, up and the gradient must have one shape")
    grad_gate, grad_up, product = (torch.empty_like(gate) for _ in range(3))
    lib.swiglu_backward_f32(gate.data_ptr(), up.data_ptr(), grad.data_ptr(), grad_gate.data_ptr(), grad_up.data_ptr(),
                            product.data_ptr(), gate.numel(), _threads())
    return grad_gate, grad_up, product


def _rows(x: torch.Tensor, weight: torch.Tensor) -> int:
    if x.shape[-1] != weight.shape[0] or weight.dim() != 1:
        raise ValueError("elementwise: a norm's weight must be [d] for rows [..., d]")
    return x.numel() // max(1, x.shape[-1])


def _rms_norm(lib, x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """weight * x * rstd over the last dimension, and rstd [..., 1] = rsqrt(mean(x^2) + eps)."""
    _need(x, weight)
    rows = _rows(x, weight)
    out, rstd = torch.empty_like(x), x.new_empty(*x.shape[:-1], 1)
    lib.rms_norm_forward_f32(x.data_ptr(), weight.data_ptr(), out.data_ptr(), rstd.data_ptr(), rows, x.shape[-1],
                             eps, _threads())
    return out, rstd


def _rms_norm_grads(lib, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, grad: torch.Tensor,
                    want_weight: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The input's and (where wanted) the weight's gradient of :func:`_rms_norm` given ``grad``."""
    _need(x, weight, rstd, grad)
    rows = _rows(x, weight)
    if grad.shape != x.shape or rstd.numel() != rows:
        raise ValueError("elementwise: the norm's gradient and rstd must match its input")
    grad_x = torch.empty_like(x)
    grad_w = torch.empty_like(weight) if want_weight else None
    if lib.rms_norm_backward_f32(x.data_ptr(), weight.data_ptr(), rstd.data_ptr(), grad.data_ptr(), grad_x.data_ptr(),
                                 None if grad_w is None else grad_w.data_ptr(), rows, x.shape[-1], _threads()):
        raise MemoryError("elementwise: no memory for the threads' sums of the norm's weight gradient")
    return grad_x, grad_w


def _rope(lib, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, transpose: bool) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin (or its transpose) for x [T, heads, D], cos and sin [T, D]
    -> a new contiguous [T, heads, D]. A token's heads must lie together (D apart), but tokens
    may lie further apart: q and k read straight out of a row of q, k and v, say."""
    T, heads, D = x.shape
    _need(cos, sin)
    if (x.dtype != torch.float32 or x.device.type != "cpu" or x.stride(2) != 1 or (heads > 1 and x.stride(1) != D)
            or (T > 1 and x.stride(0) < heads * D)):
        raise ValueError("elementwise: the rotary embedding takes float32 CPU x, each token's heads together")
    if cos.shape != (T, D) or sin.shape != (T, D) or D % 2:
        raise ValueError("elementwise: the rotary embedding takes x [T, heads, D] with cos, sin [T, D], D even")
    out = x.new_empty(T, heads, D)
    lib.rope_f32(x.data_ptr(), x.stride(0), cos.data_ptr(), sin.data_ptr(), out.data_ptr(), T, heads, D,
                 int(transpose), _threads())
    return out


class _Rope(torch.autograd.Function):
    """x * cos + rotate_half(x) * sin for x [T, heads, D], cos and sin [T, D]; the gradient
    of x through the map's transpose (cos and sin get none: they come from positions)."""

    @staticmethod
    def forward(ctx, lib, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.lib = lib
        return _rope(lib, x.contiguous(), cos, sin, transpose=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return None, _rope(ctx.lib, grad.contiguous(), cos, sin, transpose=True), None, None
