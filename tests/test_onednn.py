"""The oneDNN products of the training forward (r1lab/onednn.py) against plain torch, their
slow reference: values and gradients to float32 rounding, alone and in the packed walk (at
SmolLM2's vocabulary too, with the compiled attention the walk takes beside them); and the toy
models keep MKL, so the default run's figures stay."""

import pytest
import torch

from r1lab import compiled, onednn
from r1lab.forward import packed, packed_attention
from r1lab.forward import plain_completion_logprobs
from r1lab.rollout import native

from conftest import tiny_llama
from test_native_rollout import smollm2_shape
from test_shared_prefix import MODELS, assert_agree, group_batch, logp_and_grads

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this PyTorch has no oneDNN")
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_linear_and_its_gradients_equal_torchs(bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 48, generator=g, requires_grad=True)
    layer = torch.nn.Linear(48, 80, bias=bias)
    dy = torch.randn(37, 80, generator=g)
    grads = []
    for fast in (True, False):
        x.grad = None
        layer.zero_grad()
        (onednn.linear(layer, x, fast) * dy).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL)


def test_gradient_products_equal_the_plain_ones():
    g = torch.Generator().manual_seed(1)
    dy, x, w = torch.randn(40, 50, generator=g), torch.randn(40, 30, generator=g), torch.randn(50, 30, generator=g)
    for fast in (False, True):
        torch.testing.assert_close(onednn.grad_input(dy, w, fast), dy @ w, **TOL)
        torch.testing.assert_close(onednn.grad_weight(dy, x, fast), dy.t() @ x, **TOL)
    # transposed views, a weight that is a row slice, operands converted once for several products
    xt = torch.randn(30, 40, generator=g).t()
    torch.testing.assert_close(onednn.grad_weight(onednn.as_onednn(dy), xt, True), dy.t() @ xt, **TOL)
    torch.testing.assert_close(onednn.grad_weight(dy, onednn.as_onednn(xt), True), dy.t() @ xt, **TOL)
    big = torch.randn(80, 30, generator=g)
    torch.testing.assert_close(onednn.grad_input(onednn.as_onednn(dy), big[10:60], True), dy @ big[10:60], **TOL)


def test_a_hooked_layer_is_called_as_it_is():
    layer, seen = torch.nn.Linear(4, 4), []
    layer.register_forward_hook(lambda *a: seen.append(1))
    onednn.linear(layer, torch.randn(2, 4), True)
    assert seen == [1]


@pytest.mark.parametrize("arch", MODELS)
def test_the_packed_walk_through_onednn_equals_the_plain_forward(tokenizer, arch, monkeypatch):
    model = MODELS[arch](tokenizer)
    batch = group_batch(tokenizer, "adjacent")
    want = logp_and_grads(plain_completion_logprobs, model, batch)
    monkeypatch.setattr(native, "PACK_MIN_BYTES", 0)
    assert packed.uses_onednn(model)
    calls = []
    for name in ("_nt", "grad_input", "grad_weight"):              # forward, backward's two products
        real = getattr(onednn, name)
        monkeypatch.setattr(onednn, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    attends, real_load = [], packed_attention.load
    if compiled.compiler() is not None:                             # and the attention through its compiled loop
        monkeypatch.setattr(packed_attention, "load", lambda: lambda *a: attends.append(1) or real_load()(*a))
    got = logp_and_grads(lambda *a, **kw: packed.packed_logprobs(*a, chunk_size=4, **kw), model, batch)
    assert_agree(got, want)
    layers = model.config.num_hidden_layers
    assert len(attends) == (layers if compiled.compiler() is not None else 0)
    for name in ("_nt", "grad_input", "grad_weight"):              # 7 projections a layer
        assert calls.count(name) >= layers * 7, name


def test_only_models_the_rollout_prepacks_go_through_onednn(tokenizer):
    """The toy models stay on MKL (their figures do not move); SmolLM2's shape does not."""
    assert not packed.uses_onednn(tiny_llama(tokenizer))
    assert packed.uses_onednn(smollm2_shape(tokenizer))
    assert not packed.uses_onednn(smollm2_shape(tokenizer).to(torch.bfloat16))
