"""The compiled decode attention (r1lab/rollout/decode_attention.c) against native.attend, its
PyTorch reference, and its fallback where it cannot be built."""

import pytest
import torch

from r1lab.rollout import decode_attention, hf, native

from conftest import built, needs_compiler as needs_kernel
from test_native_rollout import assert_same_rollout, kw, prompts_of, tiny_qwen2



@pytest.fixture(scope="module")
def kernel():
    return built(decode_attention)


@needs_kernel
@pytest.mark.parametrize("G, D", [(1, 8), (3, 64), (4, 80), (2, 128)])
@pytest.mark.parametrize("B, n, P", [(3, 4, 6), (3, 11, 37)])
def test_compiled_attention_equals_the_reference(kernel, G, D, B, n, P):
    """Every row, and rows missing after compaction (in any order); padding and window columns
    masked (one prompt's all of them: a window past the prompt); the completion cache longer
    than its used slots; prompts shorter than a tile and longer than two with a partial one,
    and more samples of a prompt than the loop takes at a time."""
    g = torch.Generator().manual_seed(0)
    K, S = 2, 12
    N = B * n
    pk, pv = torch.randn(B, K, P, D, generator=g), torch.randn(B, K, P, D, generator=g)
    bias = torch.zeros(B, P)
    bias[0, :2] = float("-inf")                                         # left padding
    bias[1, :] = float("-inf")                                          # the window is past the prompt
    bias[2, :P - 1] = float("-inf")                                     # padding and the window
    for rows in (None, torch.randperm(N, generator=g)[:N * 2 // 3]):
        R = N if rows is None else len(rows)
        q = torch.randn(R, K, G, D, generator=g) * D ** -0.5
        kc, vc = torch.randn(N, K, S, D, generator=g), torch.randn(N, K, S, D, generator=g)
        for used in (1, 7, S):
            ref = native.attend(q, pk, pv, bias, kc[:R, :, :used], vc[:R, :, :used], rows, n)
            got = kernel(q, decode_attention.key_tiles(pk), pv, bias, kc, vc, used, rows, n)
            assert torch.allclose(got, ref, atol=1e-5), (rows, used, (got - ref).abs().max())


def test_key_tiles():
    """A prompt's keys in tiles of TILE positions, each key a column, zeros past the prompt."""
    k = torch.randn(2, 3, 37, 5)
    tiles = decode_attention.key_tiles(k)
    T = decode_attention.TILE
    assert tiles.shape == (2, 3, 3, 5, T) and tiles.is_contiguous()
    for p in (0, 15, 16, 36):
        assert torch.equal(tiles[:, :, p // T, :, p % T], k[:, :, p])
    assert not tiles[:, :, 2, :, 37 - 2 * T:].any()
    out = torch.full_like(tiles, float("nan"))
    assert decode_attention.key_tiles(k, out=out) is out and torch.equal(out, tiles)


@needs_kernel
def test_rollout_with_it_equals_the_reference(kernel, tokenizer, monkeypatch):
    """Prepacked weights take the compiled attention: the same tokens as the hf backend and as the
    plain decoder, with a sliding window (a ring of slots, prompt columns leaving) and rows ending
    at different steps."""
    monkeypatch.setattr(native, "PACK_MIN_BYTES", 0)
    calls = []
    monkeypatch.setattr(decode_attention, "load", lambda: lambda *a: calls.append(1) or kernel(*a))
    prompts = prompts_of(tokenizer)
    windowed = dict(use_sliding_window=True, sliding_window=6, max_window_layers=0)
    for model in (tiny_qwen2(tokenizer), tiny_qwen2(tokenizer, **windowed)):
        args = dict(n=3, max_new_tokens=16, temperature=1.0, seed=3)
        first = native.generate(model, prompts, pack=False, **args, **kw(tokenizer))
        eos = int(first.completion_ids[0, 3])                           # a token some row samples early
        args.update(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        packed = native.generate(model, prompts, **args)
        assert len(set(packed.mask.sum(1).tolist())) > 1                # rows left the batch at different steps
        assert calls, "the prepacked decoder did not take the compiled attention"
        calls.clear()
        assert_same_rollout(packed, native.generate(model, prompts, pack=False, **args))
        assert not calls
        assert_same_rollout(packed, hf.generate(model, prompts, **args))


def test_without_a_compiler_the_decoder_keeps_pytorch(tokenizer, monkeypatch, tmp_path):
    """No compiler, or one that fails: one warning, no library, and the prepacked decoder still
    decodes, through native.attend. ``R1LAB_DECODE_ATTENTION=torch`` asks for the same without a
    warning."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(native, "PACK_MIN_BYTES", 0)
    decode_attention.load.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no C compiler"):
            assert decode_attention.load() is None
        model = tiny_qwen2(tokenizer)
        args = dict(n=2, max_new_tokens=6, temperature=1.0, seed=1, **kw(tokenizer))
        prompts = prompts_of(tokenizer)
        assert_same_rollout(native.generate(model, prompts, **args), native.generate(model, prompts, pack=False, **args))
        decode_attention.load.cache_clear()
        monkeypatch.setenv("CC", "false --and-arguments")                  # found, and fails
        with pytest.warns(UserWarning, match="compiled loop is not available"):
            assert decode_attention.load() is None
        decode_attention.load.cache_clear()
        monkeypatch.setenv("R1LAB_DECODE_ATTENTION", "torch")
        monkeypatch.delenv("CC")
        assert decode_attention.load() is None
        assert not list(tmp_path.rglob("*.so"))
    finally:
        decode_attention.load.cache_clear()


@needs_kernel
def test_the_build_is_cached_per_source_and_machine(monkeypatch, tmp_path):
    """Built once into the cache directory; a second load reuses the file."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    decode_attention.load.cache_clear()
    try:
        assert decode_attention.load() is not None
        (built,) = tmp_path.glob("r1lab/decode_attention-*.so")
        stamp = built.stat().st_mtime_ns
        decode_attention.load.cache_clear()
        assert decode_attention.load() is not None
        assert built.stat().st_mtime_ns == stamp and len(list(tmp_path.rglob("*.so"))) == 1
    finally:
        decode_attention.load.cache_clear()


@needs_kernel
def test_it_refuses_tensors_it_cannot_read(kernel):
    """A bfloat16 or strided tensor, int32 rows, or shapes that do not fit together (keys not in
    tiles, values of other heads or head sizes, rows out of range among them) are refused, not
    read past their memory."""
    q, pv, bias, kc = torch.randn(2, 1, 1, 8), torch.randn(1, 1, 3, 8), torch.zeros(1, 3), torch.randn(2, 1, 4, 8)
    pk = decode_attention.key_tiles(pv)
    assert kernel(q, pk, pv, bias, kc, kc, 2, None, 2).shape == q.shape
    with pytest.raises(ValueError, match="contiguous CPU tensors, float32"):
        kernel(q.bfloat16(), pk, pv, bias, kc, kc, 2, None, 2)
    with pytest.raises(ValueError, match="contiguous CPU tensors, float32"):
        kernel(q, pk, pv, bias, kc.transpose(2, 3), kc, 2, None, 2)
    with pytest.raises(ValueError, match="contiguous CPU tensors, float32"):
        kernel(q, pk, pv, bias, kc, kc, 2, torch.tensor([0, 1], dtype=torch.int32), 2)
    for bad in [dict(used=5), dict(used=0), dict(rows=torch.tensor([0, 2])), dict(rows=torch.tensor([-1, 0])),
                dict(kc=kc[:1]), dict(bias=bias[:, :2]), dict(pk=pv), dict(pv=torch.randn(1, 2, 3, 8)),
                dict(pv=torch.randn(1, 1, 3, 4))]:
        a = dict(used=2, rows=None, kc=kc, bias=bias, pk=pk, pv=pv) | bad
        with pytest.raises(ValueError, match="shapes do not fit"):
            kernel(q, a["pk"], a["pv"], a["bias"], a["kc"], a["kc"], a["used"], a["rows"], 2)
