"""The packed walk's norms and MLPs with what autograd keeps for backward cut to what it needs.

HF's ``LlamaRMSNorm`` (Qwen2's is the same formula) keeps its input and its normalised output
for backward, and ``LlamaMLP`` keeps gate, silu(gate), up and their product: 2 and 4 tensors
the size of the layer's tokens. Here the norm keeps its input and one scalar per token, and
the MLP keeps gate and up (and not silu(gate) * up, the down projection's input, unless an
adapter sits on it); what backward needs besides is recomputed there, elementwise, at no
matmul's cost. The forward computes what HF's does, in the same order; each falls back to
the module itself where it is not the plain HF one (another class, an activation other than
SiLU, a PEFT adapter on the norm). tests/test_packed.py checks log-probs and gradients
against the plain HF forward. Where the walk multiplies through oneDNN, the norms' and
SwiGLU's elementwise passes are compiled loops (r1lab/elementwise.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm

from r1lab import elementwise, onednn

NORMS = (LlamaRMSNorm, Qwen2RMSNorm)
MLPS = (LlamaMLP, Qwen2MLP)


def rms_norm(norm, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
    """The norm's forward; a plain HF RMSNorm through ``_RMSNorm``, its passes compiled where
    ``fast`` (r1lab/elementwise.py)."""
    if type(norm) not in NORMS:
        return norm(x)
    return _RMSNorm.apply(x, norm.weight, norm.variance_epsilon, elementwise.taking(fast, x, norm.weight))


def mlp(block_mlp, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)); the projections are the module's own (LoRA layers work),
    plain ones through oneDNN where ``fast`` (r1lab/onednn.py), and silu(gate) * up compiled."""
    if type(block_mlp) not in MLPS or block_mlp.config.hidden_act not in ("silu", "swish"):
        return block_mlp(x)
    gate, up = onednn.linear(block_mlp.gate_proj, x, fast), onednn.linear(block_mlp.up_proj, x, fast)
    ops = elementwise.taking(fast, gate, up)
    down = block_mlp.down_proj
    if type(down) is torch.nn.Linear:                       # not an adapter: its input need not be kept
        return _SwiGLUDown.apply(gate, up, down.weight, down.bias, fast, ops)
    return down(_SwiGLU.apply(gate, up, ops))


class _RMSNorm(torch.autograd.Function):
    """w * x * rsqrt(mean(x^2) + eps) over the last dimension, in float32 (the models here
    train in float32; HF casts to it and back); ``ops``: the compiled passes, or None."""

    @staticmethod
    def forward(ctx, x, weight, eps, ops):
        if ops is not None:
            out, rstd = ops.rms_norm(x, weight, eps)
        else:
            rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)          # [..., 1]
            out = weight * (x * rstd)
        ctx.save_for_backward(x, weight, rstd)
        ctx.ops = ops
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        if ctx.ops is not None and elementwise.fits(grad):
            grad_x, grad_weight = ctx.ops.rms_norm_grads(x, weight, rstd, grad, ctx.needs_input_grad[1])
            return grad_x, grad_weight, None, None
        normed = x * rstd
        grad_weight = (grad * normed).reshape(-1, x.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        gw = grad * weight
        # d(x * rstd)/dx applied to gw: rstd * (gw - normed * mean(gw * normed))
        grad_x = rstd * (gw - normed * (gw * normed).mean(-1, keepdim=True))
        return grad_x, grad_weight, None, None


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up, keeping gate and up only."""

    @staticmethod
    def forward(ctx, gate, up, ops):
        ctx.save_for_backward(gate, up)
        ctx.ops = ops
        return _swiglu(gate, up, ops)

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        return *_swiglu_grads(gate, up, grad, ctx.ops)[:2], None


class _SwiGLUDown(torch.autograd.Function):
    """F.linear(silu(gate) * up, weight, bias), keeping gate and up only: backward recomputes
    the product for the weight's gradient."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias, fast, ops):
        ctx.save_for_backward(gate, up, weight)
        ctx.has_bias, ctx.fast, ctx.ops = bias is not None, fast, ops
        return onednn.product(_swiglu(gate, up, ops), weight, fast, bias)

    @staticmethod
    def backward(ctx, grad):
        gate, up, weight = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        g = onednn.as_onednn(flat) if ctx.fast else flat                            # once for both products
        grad_gate, grad_up, product = _swiglu_grads(gate, up, onednn.grad_input(g, weight, ctx.fast).view(gate.shape),
                                                    ctx.ops)
        grad_weight = (onednn.grad_weight(g, product.reshape(-1, product.shape[-1]), ctx.fast)
                       if ctx.needs_input_grad[2] else None)
        grad_bias = flat.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_gate, grad_up, grad_weight, grad_bias, None, None


def _swiglu(gate, up, ops):
    return ops.swiglu(gate, up) if ops is not None else F.silu(gate).mul_(up)


def _swiglu_grads(gate, up, grad, ops):
    """The gradients to gate and up of silu(gate) * up given the product's gradient ``grad``,
    and the product itself; ``ops``: the compiled passes (one pass for all three), or None."""
    if ops is not None and elementwise.fits(grad):
        return ops.swiglu_grads(gate, up, grad)
    silu = F.silu(gate)
    # aten's silu_backward is grad * silu'(g) in one pass: 5 passes over [tokens, intermediate]
    # here, against 9 written out (sigmoid, silu, 1 - sig, ...); these are memory-bound
    grad_up = grad * silu
    return torch.ops.aten.silu_backward(grad * up, gate), grad_up, silu.mul_(up)
