"""Float32 matrix products on the CPU through oneDNN instead of MKL, for the training forward
and backward.

PyTorch multiplies float32 matrices on the CPU with MKL's sgemm, and MKL picks its kernels by
the processor's vendor: on an AMD processor it runs its AVX2 code even where the processor has
AVX-512. oneDNN (PyTorch's bundled mkldnn) picks by instruction set. On the Zen 5 EPYC of
2026-12-07 (2 cores) a 1,024^3 product ran at 210 GFLOP/s through MKL and 489 through oneDNN,
and forward plus backward of SmolLM2-135M's projections (2,048 rows) 1.9x faster
(benchmarks/gemm.py prints both on the machine at hand). The native rollout multiplies by
oneDNN-prepacked weights already (r1lab/rollout/native.py).

Every product takes ``fast``: False is the plain ``torch`` product, the reference the oneDNN
one is tested against (tests/test_onednn.py: equal to float32 rounding, gradients included).
The packed training forward passes ``fast=r1lab.forward.packed.uses_onednn(model)``.

    y = onednn.linear(module.q_proj, h, fast)      # an nn.Linear's forward, backward through oneDNN too
    z = onednn.product(h, weight, fast)             # F.linear(h, weight), inside an autograd function
    dh = onednn.grad_input(dz, weight, fast)        # dz @ weight
    dw = onednn.grad_weight(dz, h, fast)            # dz.T @ h
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def available() -> bool:
    """Whether this PyTorch build can multiply through oneDNN."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T (+ bias) through oneDNN; a [..., K], b [N, K]."""
    return torch.ops.mkldnn._linear_pointwise(a, b.contiguous(), bias, "none", [], "")


def as_onednn(x: torch.Tensor) -> torch.Tensor:
    """``x`` [..., K] as a 2-D oneDNN tensor (a copy), to hand to several of the products below."""
    return x if x.is_mkldnn else x.reshape(-1, x.shape[-1]).contiguous().to_mkldnn()


def grad_input(grad: torch.Tensor, weight: torch.Tensor, fast: bool) -> torch.Tensor:
    """``grad @ weight``, a linear map's input gradient: grad [T, out] (or its :func:`as_onednn`
    where ``fast``), weight [out, in] -> [T, in]. Where ``fast``, oneDNN's backward-data product,
    which reads the weight as it is (no transposed copy)."""
    if not fast:
        return grad @ weight
    g = as_onednn(grad)
    return torch.ops.aten.mkldnn_linear_backward_input((g.shape[0], weight.shape[1]), g, weight.contiguous()).to_dense()


def grad_weight(grad: torch.Tensor, x: torch.Tensor, fast: bool) -> torch.Tensor:
    """``grad.T @ x``, a linear map's weight gradient: grad [T, out], x [T, in] (either as
    :func:`as_onednn` gave it where ``fast``) -> [out, in]. Where ``fast``, oneDNN's
    backward-weights product, which needs neither operand transposed: ~30% faster than a plain
    oneDNN product of the two transposed copies on SmolLM2-135M's shapes (1,352 rows, 2 cores)."""
    if not fast:
        return grad.t() @ x
    like = torch.empty(0, dtype=grad.dtype)    # the op reads only the weight's dtype and device from it
    return torch.ops.aten.mkldnn_linear_backward_weights(as_onednn(grad), as_onednn(x), like, False)[0]


def linear(module: torch.nn.Module, x: torch.Tensor, fast: bool) -> torch.Tensor:
    """``module(x)``; a plain ``nn.Linear`` without hooks through oneDNN where ``fast``, its
    backward too. Anything else (a PEFT adapter, a module a hook watches) is called as it is."""
    if not fast or type(module) is not torch.nn.Linear or module._forward_hooks or module._forward_pre_hooks:
        return module(x)
    return _Linear.apply(x, module.weight, module.bias)


def product(x: torch.Tensor, weight: torch.Tensor, fast: bool, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where ``fast``; no backward of its own (for
    the forwards of autograd functions that make their own)."""
    return _nt(x, weight, bias) if fast else F.linear(x, weight, bias)


class _Linear(torch.autograd.Function):
    """F.linear with all three products through oneDNN: y = x W^T + b, dx = dy W, dW = dy^T x."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _nt(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])                                    # [T, out]
        g = as_onednn(flat)                                                        # once for both products
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_input(g, weight, True).view(*grad.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            grad_w = grad_weight(g, x, True)                                       # [out, in]
        grad_b = flat.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b
