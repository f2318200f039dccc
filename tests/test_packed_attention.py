"""The compiled attention of the packed walk (r1lab/forward/packed_attention.c) against its
reference, the grids through F.scaled_dot_product_attention: outputs and the gradients of q,
k and v; and its checks of what it is given (the fallback: tests/test_compiled.py)."""

import platform
import subprocess

import pytest
import torch

from r1lab import compiled, elementwise
from r1lab.forward import packed, packed_attention, prompt_completion_batch
from r1lab.losses import logit_tiles
from r1lab.rollout import decode_attention, sampling

from conftest import built, needs_compiler as needs_kernel

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def attend():
    return built(packed_attention)


def layout(prompt_lengths, samples: int, width: int, seed: int = 0) -> packed._Layout:
    """A packed layout of prompts of the given lengths, each shared by ``samples`` rows in scattered
    order, with completions of 0..width tokens (one empty, one full)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [p for n in prompt_lengths for p in [torch.randint(1, 50, (n,), generator=g).tolist()] * samples]
    perm = torch.randperm(len(prompts), generator=g)
    prompts = [prompts[i] for i in perm]
    lengths = torch.randint(0, width + 1, (len(prompts),), generator=g)
    lengths[0], lengths[1] = 0, width
    mask = torch.arange(width) < lengths[:, None]
    batch = prompt_completion_batch(prompts, torch.randint(1, 50, (len(prompts), width), generator=g), mask, 0)
    return packed._Layout(batch, batch["completion_mask"], torch.device("cpu"))


def outputs_and_grads(fn, q, k, v, dout):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    (out * dout).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


@needs_kernel
@pytest.mark.parametrize("H, K, D", [(4, 4, 16), (4, 2, 16), (9, 3, 64), (14, 2, 64), (2, 1, 128), (3, 3, 48)])
@pytest.mark.parametrize("prompts, samples, width", [((5, 37, 12), 4, 23), ((1, 70), 8, 40), ((9,), 2, 3)])
def test_compiled_attention_equals_the_reference(attend, H, K, D, prompts, samples, width):
    """Prompts shorter and longer than a block, one of one token; rows with no completion, one
    token and the full width; MHA and groups of 2-7 query heads; head sizes 16-128."""
    lay = layout(prompts, samples, width)
    T = len(lay.ids)
    g = torch.Generator().manual_seed(T + H)
    q, k, v = torch.randn(T, H, D, generator=g), torch.randn(T, K, D, generator=g), torch.randn(T, K, D, generator=g)
    dout = torch.randn(T, H * D, generator=g)
    want = outputs_and_grads(lambda *a: packed.grid_attention(*a, lay), q, k, v, dout)
    got = outputs_and_grads(lambda *a: attend(*a, lay.blocks).view(T, H * D), q, k, v, dout)
    for a, b, name in zip(got, want, ("out", "dq", "dk", "dv")):
        torch.testing.assert_close(a, b, **TOL, msg=name)


@needs_kernel
def test_the_blocks_cover_each_run_in_pieces(attend):
    spans = torch.tensor([[0, 3, 0, 0], [3, 20, 0, 0], [20, 29, 0, 3], [29, 30, 3, 20]])
    assert packed_attention.blocks(spans).tolist() == [
        [0, 3, 0, 0, 0], [3, 11, 0, 0, 3], [11, 19, 0, 0, 3], [19, 20, 0, 0, 3],
        [20, 28, 0, 3, 20], [28, 29, 0, 3, 20], [29, 30, 3, 20, 29]]


@needs_kernel
def test_what_does_not_fit_is_refused(attend):
    q, k = torch.randn(10, 4, 16), torch.randn(10, 2, 16)
    good = packed_attention.blocks(torch.tensor([[0, 10, 0, 0]]))
    assert attend(q, k, k, good).shape == (10, 4, 16)
    strided = torch.zeros(4, 5, dtype=torch.long)
    strided[::2] = packed_attention.blocks(torch.tensor([[0, 5, 0, 0], [5, 10, 0, 5]]))
    bad_blocks = [good[1:], good.int(), torch.tensor([[0, 10, 0, 11, 0]]), torch.tensor([[0, 10, 0, 0, 1]]),
                  torch.tensor([[0, 4, 0, 0, 0], [5, 10, 0, 0, 5]]),
                  strided[::2],                                         # the loop reads rows of 5 int64s
                  torch.tensor([[0, 5, 0, 0, 0], [5, 10, 0, 6, 5]])]   # the whole span runs into its own
    for blocks in bad_blocks:
        with pytest.raises(ValueError, match="blocks"):
            attend(q, k, k, blocks)
    for q_, k_ in [(q.double(), k.double()), (torch.randn(10, 4, 8), torch.randn(10, 2, 8)), (torch.randn(10, 3, 16), k)]:
        with pytest.raises(ValueError, match="do not fit"):
            attend(q_, k_, k_, good)


@needs_kernel
@pytest.mark.skipif(platform.machine() != "x86_64", reason="an x86-64 build check")
def test_every_loop_builds_without_avx512(tmp_path):
    """The loops compile for an AVX2 processor too (where a 64-byte vector is no one register):
    -march=x86-64-v3 in place of the build's -march=native."""
    flags = [f if f != "-march=native" else "-march=x86-64-v3" for f in compiled.FLAGS]
    for source in (packed_attention.SOURCE, elementwise.SOURCE, logit_tiles.SOURCE, decode_attention.SOURCE,
                   sampling.SOURCE):
        build = subprocess.run([*compiled.compiler(), *flags, "-o", str(tmp_path / "x.so"), str(source), "-lm"],
                               capture_output=True, text=True)
        assert build.returncode == 0, (source.name, build.stderr)
