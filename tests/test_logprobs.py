"""chunked_token_logprobs (and its entropy) against hand values, the naive log-softmax,
token_logprobs and entropy_from_logits; linear_token_logprobs's compiled tile passes
(r1lab/losses/logit_tiles.c) against the PyTorch calls they replace."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab import onednn
from r1lab.losses import logit_tiles, logprobs
from r1lab.losses.common import entropy_from_logits, token_logprobs
from r1lab.losses.logprobs import chunked_token_logprobs, chunked_token_logprobs_and_entropy, linear_token_logprobs

from conftest import built, needs_compiler


def naive(logits, ids):
    return logits.float().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def test_hand_computed_values_and_gradient():
    # Three positions over a vocabulary of 3, chunk_size 2 (chunks of 2 positions, then 1):
    #   [0, 0, 0]     id 1: p = 1/3           log p = -ln 3 = -1.098612
    #   [ln 2, 0, 0]  id 0: p = 2/4 = 0.5     log p = -ln 2 = -0.693147
    #   [ln 2, 0, 0]  id 2: p = 1/4           log p = -ln 4 = -1.386294
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0],
                            [math.log(2), 0.0, 0.0]]], requires_grad=True)
    ids = torch.tensor([[1, 0, 2]])
    out = chunked_token_logprobs(logits, ids, chunk_size=2)
    assert out.tolist()[0] == pytest.approx([-1.098612, -0.693147, -1.386294], abs=1e-6)
    # d sum(log p) / d logits = onehot(id) - softmax: [-1/3, 2/3, -1/3], [0.5, -0.25, -0.25],
    # [-0.5, -0.25, 0.75]
    out.sum().backward()
    expected = [[-1 / 3, 2 / 3, -1 / 3], [0.5, -0.25, -0.25], [-0.5, -0.25, 0.75]]
    assert torch.allclose(logits.grad[0], torch.tensor(expected), atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 3), l=st.integers(1, 9),
       v=st.integers(2, 11), chunk_size=st.integers(1, 10))
def test_equals_naive_and_token_logprobs_with_gradients(seed, b, l, v, chunk_size):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, l, v, generator=g) * 4                                    # [B, L, V]
    ids = torch.randint(0, v, (b, l), generator=g)                                  # [B, L]
    weights = torch.randn(b, l, generator=g)                                        # [B, L]
    results = []
    for fn in (lambda x: chunked_token_logprobs(x, ids, chunk_size),
               lambda x: naive(x, ids), lambda x: token_logprobs(x, ids)):
        logits = base.clone().requires_grad_(True)
        out = fn(logits)                                                            # [B, L]
        (out * weights).sum().backward()
        results.append((out.detach(), logits.grad))
    (out, grad), *references = results
    for ref_out, ref_grad in references:
        assert torch.allclose(out, ref_out, atol=1e-5)
        assert torch.allclose(grad, ref_grad, atol=1e-5)


def test_hand_computed_temperature_and_entropy():
    # The positions above at temperature 0.5, so the logits double:
    #   [0, 0, 0]       id 1: p = [1/3, 1/3, 1/3]   log p = -ln 3 = -1.098612   H = ln 3 = 1.098612
    #   [ln 4, 0, 0]    id 0: p = [2/3, 1/6, 1/6]   log p = ln(2/3) = -0.405465
    #   [ln 4, 0, 0]    id 2:                       log p = ln(1/6) = -1.791759
    #   H = -(2/3 ln(2/3) + 2 * 1/6 ln(1/6)) = 0.270310 + 0.597253 = 0.867563 for the last two.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0],
                            [math.log(2), 0.0, 0.0]]], requires_grad=True)
    ids = torch.tensor([[1, 0, 2]])
    out, entropy = chunked_token_logprobs_and_entropy(logits, ids, chunk_size=2, temperature=0.5)
    assert out.tolist()[0] == pytest.approx([-1.098612, -0.405465, -1.791759], abs=1e-6)
    assert entropy.tolist()[0] == pytest.approx([1.098612, 0.867563, 0.867563], abs=1e-6)
    assert not entropy.requires_grad
    # d log p / d logits = (onehot(id) - p) / T = 2 (onehot(id) - p):
    #   [-2/3, 4/3, -2/3], [2/3, -1/3, -1/3], [-4/3, -1/3, 5/3]
    out.sum().backward()
    expected = [[-2 / 3, 4 / 3, -2 / 3], [2 / 3, -1 / 3, -1 / 3], [-4 / 3, -1 / 3, 5 / 3]]
    assert torch.allclose(logits.grad[0], torch.tensor(expected), atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 3), l=st.integers(1, 9),
       v=st.integers(2, 11), chunk_size=st.integers(1, 10), temperature=st.sampled_from([0.7, 1.0, 1.3]))
def test_temperature_and_entropy_equal_the_references_on_scaled_logits(seed, b, l, v, chunk_size,
                                                                       temperature):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, l, v, generator=g) * 4                                    # [B, L, V]
    ids = torch.randint(0, v, (b, l), generator=g)                                  # [B, L]
    weights = torch.randn(b, l, generator=g)                                        # [B, L]
    fast, slow = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    out, entropy = chunked_token_logprobs_and_entropy(fast, ids, chunk_size, temperature=temperature)
    only_logp = chunked_token_logprobs(base, ids, chunk_size, temperature=temperature)
    ref = token_logprobs(slow / temperature, ids)                                   # [B, L]
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(fast.grad, slow.grad, atol=1e-5)
    assert torch.allclose(entropy, entropy_from_logits(base / temperature), atol=1e-5)
    assert torch.equal(only_logp, out.detach())


def test_bf16_logits_match_token_logprobs_and_keep_their_dtype():
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(2, 5, 16, generator=g) * 3).bfloat16()                      # [B, L, V]
    ids = torch.randint(0, 16, (2, 5), generator=g)                                 # [B, L]
    fast, slow = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    out = chunked_token_logprobs(fast, ids, chunk_size=3)
    ref = token_logprobs(slow, ids)
    out.sum().backward()
    ref.sum().backward()
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)
    assert fast.grad.dtype == torch.bfloat16
    # both compute the gradient in float32 and round it to bf16 once (8 bits of mantissa)
    assert torch.allclose(fast.grad.float(), slow.grad.float(), atol=1e-2)


def new_bytes_saved(fn, logits):
    """Bytes autograd saves for backward while ``fn(logits)`` runs, beyond views of ``logits``."""
    base = logits.untyped_storage().data_ptr()
    sizes = []

    def pack(t):
        if t.untyped_storage().data_ptr() != base:
            sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(logits)
    return sum(sizes)


def test_no_full_float32_copy_is_kept_for_backward():
    b, l, v = 2, 6, 32
    full = torch.randn(b, l + 1, v).bfloat16().requires_grad_(True)                # [B, L+1, V]
    logits = full[:, :-1]                         # [B, L, V], a strided view as in a real step
    ids = torch.randint(0, v, (b, l))                                               # [B, L]
    chunked = new_bytes_saved(lambda x: chunked_token_logprobs(x, ids, 4), logits)
    reference = new_bytes_saved(lambda x: token_logprobs(x, ids), logits)
    assert chunked <= b * l * (4 + 8)             # the float32 logsumexp and the int64 ids
    assert reference >= b * l * v * 4             # the slow path keeps the upcast copy


def test_temperature_and_entropy_keep_no_full_copy_for_backward():
    b, l, v = 2, 6, 32
    logits = torch.randn(b, l + 1, v).bfloat16().requires_grad_(True)[:, :-1]     # [B, L, V]
    ids = torch.randint(0, v, (b, l))                                               # [B, L]
    fn = lambda x: chunked_token_logprobs_and_entropy(x, ids, 4, temperature=0.7)  # noqa: E731
    assert new_bytes_saved(fn, logits) <= b * l * (4 + 8)


def test_strided_view_matches_token_logprobs():
    full = torch.randn(2, 7, 5, requires_grad=True)                                 # [B, L+1, V]
    ids = torch.randint(0, 5, (2, 6))                                               # [B, L]
    out = chunked_token_logprobs(full[:, :-1], ids, chunk_size=4)
    (grad,) = torch.autograd.grad(out.sum(), full)
    ref = token_logprobs(full[:, :-1], ids)
    (ref_grad,) = torch.autograd.grad(ref.sum(), full)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(grad, ref_grad, atol=1e-5)


def test_chunk_size_and_temperature_must_be_positive():
    logits, ids = torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError):
        chunked_token_logprobs(logits, ids, 0)
    with pytest.raises(ValueError):
        chunked_token_logprobs(logits, ids, 2, temperature=0.0)


FAST = [False, pytest.param(True, marks=pytest.mark.skipif(not onednn.available(), reason="no oneDNN"))]


@pytest.mark.parametrize("fast", FAST)
@pytest.mark.parametrize("keep_logits", [False, True])
@pytest.mark.parametrize("vocab_chunk", [None, 16, 7])
@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("temperature", [0.6, 1.0])
def test_linear_token_logprobs_equal_the_head_then_chunks(temperature, with_entropy, vocab_chunk, keep_logits, fast):
    """Also ``fast``: the products through oneDNN and each tile's passes compiled (logit_tiles.c)."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    ids = torch.randint(0, 50, (23,), generator=g)
    weights = torch.randn(23, generator=g)
    fused, entropy = linear_token_logprobs(hidden, weight, ids, 5, vocab_chunk=vocab_chunk, temperature=temperature,
                                           with_entropy=with_entropy, keep_logits=keep_logits,
                                           fast=fast)  # tiles of 5 rows x 16 or 7 ids
    (fused * weights).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logits = (hidden @ weight.T)[None]
    slow = token_logprobs(logits / temperature, ids[None])[0]
    (slow * weights).sum().backward()
    torch.testing.assert_close(fused, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], weight.grad, atol=1e-5, rtol=1e-5)
    if with_entropy:
        torch.testing.assert_close(entropy, entropy_from_logits(logits.detach() / temperature)[0], atol=1e-5, rtol=1e-5)
    else:
        assert entropy is None


@pytest.mark.parametrize("fast", FAST)
@pytest.mark.parametrize("vocab_chunk", [None, 16])
@pytest.mark.parametrize("temperature", [0.6, 1.0])
def test_kept_logits_give_the_recomputed_ones_gradients_bit_for_bit(temperature, vocab_chunk, fast):
    # keep_logits only spares the backward's matmul: the tiles it reads are the forward's own
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(23, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    ids = torch.randint(0, 50, (23,), generator=g)
    weights = torch.randn(23, generator=g)
    runs = []
    for keep in (False, True):
        hidden.grad = weight.grad = None
        logp, entropy = linear_token_logprobs(hidden, weight, ids, 5, vocab_chunk=vocab_chunk,
                                              temperature=temperature, with_entropy=True, keep_logits=keep, fast=fast)
        (logp * weights).sum().backward()
        runs.append((logp, entropy, hidden.grad, weight.grad))
    for recomputed, kept in zip(*runs):
        assert torch.equal(recomputed, kept)


@needs_compiler
@pytest.mark.parametrize("temperature", [0.6, 1.0])
def test_the_compiled_tile_passes_equal_pytorchs(temperature):
    """A tile that is a column slice of wider logits (rows not adjacent), ids inside and outside
    it: the statistics and the in-place gradient against the PyTorch calls they replace."""
    tiles = built(logit_tiles)
    g = torch.Generator().manual_seed(2)
    wide = torch.randn(37, 300, generator=g) * 4
    first, ids = 100, torch.randint(0, 400, (37,), generator=g)
    ids[:3] = torch.tensor([100, 299, 99])                               # the tile's ends, and just before it
    z = wide[:, first:first + 199]
    want_z = z / temperature
    m, s, dot, target = (torch.full((37,), 7.0) for _ in range(4))
    tiles.stats(z, ids, first, temperature, m, s, dot, target)
    torch.testing.assert_close(z, want_z, rtol=0, atol=0)                # divided in place, as torch divides
    e = (want_z - want_z.amax(-1, keepdim=True)).exp()
    torch.testing.assert_close(m, want_z.amax(-1), rtol=0, atol=0)
    torch.testing.assert_close(s, e.sum(-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(dot, torch.linalg.vecdot(e, want_z), rtol=1e-5, atol=1e-5)
    inside = (ids >= first) & (ids < first + 199)
    assert inside.any() and not inside.all()
    torch.testing.assert_close(target[inside], want_z[inside, (ids - first)[inside]], rtol=0, atol=0)
    assert (target[~inside] == 7.0).all()
    lse, grad_out = torch.logsumexp(want_z, -1) + 0.5, torch.randn(37, generator=g)
    want = logprobs._logit_grad(want_z.clone(), lse, ids, grad_out, temperature, first)
    got = tiles.grad_(z, lse, ids, first, grad_out / temperature)
    assert got.data_ptr() == z.data_ptr()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert not logit_tiles.fits(torch.randn(1, 8).expand(3, 8))          # rows on one another
    with pytest.raises(ValueError, match="float32"):
        tiles.grad_(z.double(), lse, ids, first, grad_out)
    with pytest.raises(ValueError, match="per-row"):
        tiles.grad_(z, lse[1:], ids, first, grad_out)
