"""The compiled elementwise passes of the packed walk and the decoder (r1lab/elementwise.c) against the
PyTorch calls they replace, values and gradients, and what they refuse (the fallback:
tests/test_compiled.py)."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from r1lab import elementwise
from r1lab.forward import lean_ops
from r1lab.forward.packed import _rotate_half

from conftest import built, needs_compiler as needs_kernel

TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def ops():
    return built(elementwise)


def grads_of(fn, *xs, grad):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    out = fn(*xs)
    out.backward(grad)
    return [out.detach()] + [x.grad for x in xs]


@needs_kernel
def test_swiglu_and_its_gradients_equal_torchs(ops):
    g = torch.Generator().manual_seed(0)
    gate, up, grad = (torch.randn(37, 150, generator=g) * 4 for _ in range(3))
    torch.testing.assert_close(ops.swiglu(gate, up), F.silu(gate) * up, **TOL)
    want = grads_of(lambda a, b: F.silu(a) * b, gate, up, grad=grad)
    grad_gate, grad_up, product = ops.swiglu_grads(gate, up, grad)
    for got, exp in zip((product, grad_gate, grad_up), want):
        torch.testing.assert_close(got, exp, **TOL)
    with pytest.raises(ValueError, match="one shape"):
        ops.swiglu(gate, up[:, 1:].contiguous())
    with pytest.raises(ValueError, match="float32"):
        ops.swiglu(gate.double(), up.double())


@needs_kernel
@pytest.mark.parametrize("weight_grad", [True, False])
def test_rms_norm_and_its_gradients_equal_torchs(ops, weight_grad):
    """Against HF's LlamaRMSNorm itself; rows across the threads, an odd width."""
    g = torch.Generator().manual_seed(1)
    norm = LlamaRMSNorm(77, eps=1e-5)
    norm.weight.data = torch.randn(77, generator=g)
    norm.weight.requires_grad_(weight_grad)
    x, grad = torch.randn(3, 41, 77, generator=g) * 3, torch.randn(3, 41, 77, generator=g)
    norm_x = x.clone().requires_grad_()
    want = norm(norm_x)                                                 # HF's module itself
    want_grads = torch.autograd.grad(want, [norm_x, norm.weight] if weight_grad else [norm_x], grad)
    for fast in (True, False):                                          # compiled, and the PyTorch passes
        norm.weight.grad = None
        xs = x.clone().requires_grad_()
        out = lean_ops.rms_norm(norm, xs, fast)
        out.backward(grad)
        torch.testing.assert_close(out, want, **TOL)
        torch.testing.assert_close(xs.grad, want_grads[0], rtol=1e-5, atol=1e-5)
        if weight_grad:
            torch.testing.assert_close(norm.weight.grad, want_grads[1], rtol=1e-5, atol=1e-4)
        else:
            assert norm.weight.grad is None
    out, rstd = ops.rms_norm(x, norm.weight.detach(), 1e-5)
    with pytest.raises(ValueError, match="weight"):
        ops.rms_norm(x, torch.randn(76), 1e-5)
    with pytest.raises(ValueError, match="match"):
        ops.rms_norm_grads(x, norm.weight.detach(), rstd[1:], grad, True)


@needs_kernel
@pytest.mark.parametrize("duplicated", [True, False])
def test_rope_and_its_gradient_equal_torchs(ops, duplicated):
    """cos and sin as HF makes them (two equal halves), and any values (the formula per entry)."""
    g = torch.Generator().manual_seed(2)
    T, heads, D = 29, 3, 48
    if duplicated:
        angles = torch.rand(T, D // 2, generator=g) * 6
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    else:
        cos, sin = torch.randn(T, D, generator=g), torch.randn(T, D, generator=g)
    x, grad = torch.randn(T, heads, D, generator=g), torch.randn(T, heads, D, generator=g)
    want = grads_of(lambda a: a * cos[:, None] + _rotate_half(a) * sin[:, None], x, grad=grad)
    got = grads_of(lambda a: ops.rope(a, cos, sin), x, grad=grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)
    with pytest.raises(ValueError, match="rotary"):
        ops.rope(x, cos[1:], sin[1:])


@needs_kernel
def test_rotate_reads_q_and_k_out_of_qkv_rows(ops):
    """The decoder's rotation (no autograd) takes q's and k's heads straight out of rows of q, k
    and v: each token's heads together, tokens a row apart; one head may have any stride."""
    g = torch.Generator().manual_seed(3)
    T, H, K, D = 11, 4, 2, 32
    angles = torch.rand(T, D // 2, generator=g) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    qkv = torch.randn(T, (H + 2 * K) * D, generator=g)
    for heads in (H + K, 1):
        x = qkv[:, :heads * D].view(T, heads, D)
        want = x * cos[:, None] + _rotate_half(x) * sin[:, None]
        got = ops.rotate(x, cos, sin)
        assert got.is_contiguous()
        torch.testing.assert_close(got, want, **TOL)
    one = qkv[:, :D][:, None]                                              # [T, 1, D], stride(1) D * (H + 2K)
    torch.testing.assert_close(ops.rotate(one.as_strided(one.shape, (one.stride(0), 7, 1)), cos, sin),
                               one * cos[:, None] + _rotate_half(one) * sin[:, None], **TOL)
    with pytest.raises(ValueError, match="heads together"):
        ops.rotate(qkv[:, :2 * D].view(T, D, 2).transpose(1, 2), cos, sin)
