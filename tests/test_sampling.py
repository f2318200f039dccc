"""The sampler: top-k/top-p filtering and inverse-CDF sampling from one uniform per row."""

import pytest
import torch

from r1lab.rollout import sampling
from r1lab.rollout.sampling import (BLOCK, LARGE_VOCAB, ROWS, filter_logits, sample_candidates, sample_from,
                                    sample_next, top_candidates)

from conftest import built, needs_compiler, pytorch_calls


def test_top_p_and_top_k_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False]                           # 0.5 < 0.7 <= 0.8
    kept = torch.isfinite(filter_logits(logits, top_k=3))[0].tolist()
    assert kept == [True, True, True, False]
    assert torch.isfinite(filter_logits(logits, top_p=0.01))[0].tolist() == [True, False, False, False]


def test_inversion_by_hand():
    probs = torch.tensor([[0.0, 0.5, 0.5]]).expand(4, 3)
    u = torch.tensor([0.4, 0.6, 0.0, 1 - 1e-16], dtype=torch.float64)
    # cdf [0, .5, 1]: .4 -> token 1, .6 -> token 2; 0 skips the empty token 0; ~1 -> token 2
    assert sample_from(probs, u).tolist() == [1, 2, 1, 2]


def test_never_a_token_of_probability_zero_at_block_edges():
    V = 3 * BLOCK - 7                                                   # last block padded
    probs = torch.zeros(3, V)
    probs[0, BLOCK] = 1.0                                               # first token of block 1
    probs[1, BLOCK - 1] = probs[1, 2 * BLOCK] = 0.5                     # last of block 0, first of block 2
    probs[2, 5] = 1.0                                                   # all mass early, trailing blocks empty
    for u in (0.0, 0.25, 0.5, 0.75, 1 - 1e-16):
        tok = sample_from(probs, torch.full((3,), u, dtype=torch.float64))
        assert (probs.gather(1, tok[:, None]) > 0).all(), (u, tok)


@pytest.mark.parametrize("V", [BLOCK - 50, 2 * BLOCK + 100])           # one level, two levels
def test_token_frequencies_match_the_probabilities(V):
    # A fine grid of uniforms stands in for random draws: token i must get p_i * M of the M grid
    # points, up to one at each end of its interval. Probabilities have zeros
    # and values far below 1 / M, unnormalised (the sampler divides by the total).
    g = torch.Generator().manual_seed(0)
    M = 20_000
    probs = torch.rand(V, generator=g) ** 4
    probs[torch.rand(V, generator=g) < 0.3] = 0.0
    probs[7] = 1e-9
    grid = (torch.arange(M, dtype=torch.float64) + 0.5) / M
    tokens = sample_from(probs.expand(M, V), grid)
    counts = torch.bincount(tokens, minlength=V).double()
    expected = probs.double() / probs.double().sum() * M
    assert (counts[probs == 0] == 0).all()
    assert (counts - expected).abs().max() <= 1.0 + 1e-6


def test_sample_next_greedy_temperature_and_logprob():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]])
    u = torch.tensor([0.5, 0.5], dtype=torch.float64)
    tok, lp = sample_next(logits, temperature=0, top_k=0, top_p=1.0, uniform=u)
    assert tok.tolist() == [1, 2]
    assert torch.allclose(lp, logits.log_softmax(-1).gather(1, tok[:, None]).squeeze(1))
    # T = 2: probs of row 0 are softmax([.5, 1.5, 1]) = [.186, .506, .307]; u .5 lands in token 1
    tok, lp = sample_next(logits, temperature=2.0, top_k=0, top_p=1.0, uniform=u)
    assert tok[0] == 1
    assert torch.allclose(lp, (logits / 2).log_softmax(-1).gather(1, tok[:, None]).squeeze(1))
    # top_k=1 leaves only the argmax, whatever the draw; the log-prob stays unfiltered
    tok, lp = sample_next(logits, temperature=1.0, top_k=1, top_p=1.0,
                          uniform=torch.tensor([0.999, 0.001], dtype=torch.float64))
    assert tok.tolist() == [1, 2]
    assert torch.allclose(lp, logits.log_softmax(-1).gather(1, tok[:, None]).squeeze(1))


@pytest.mark.parametrize("top_k, top_p", [(0, 0.95), (0, 0.5), (40, 1.0), (40, 0.9), (300, 0.95)])
@pytest.mark.parametrize("spread", [0.1, 2.0, 6.0])
def test_candidates_draw_the_reference_token(top_k, top_p, spread):
    """sample_candidates against the full sort of filter_logits: the same token for each uniform,
    on flat rows (the nucleus runs past the candidates: the fallback) and peaked ones."""
    g = torch.Generator().manual_seed(int(spread * 10) + top_k)
    logits = torch.randn(48, 8192, generator=g) * spread
    uniform = torch.rand(48, generator=g, dtype=torch.float64)
    ref = sample_from(filter_logits(logits, top_k, top_p).softmax(-1), uniform)
    assert torch.equal(sample_candidates(logits, top_k, top_p, uniform), ref)


@pytest.mark.parametrize("top_k, top_p", [(0, 0.95), (0, 0.5), (40, 0.9)])
@pytest.mark.parametrize("spread", [0.1, 2.0, 6.0])
def test_candidates_draw_the_reference_token_at_a_real_vocabulary(top_k, top_p, spread):
    """The same at SmolLM2's 49,152 ids, where the first candidates are looked for among the
    blocks with the largest maxima; rows past them (flat ones) take the wider look, then the sort."""
    g = torch.Generator().manual_seed(int(spread * 10) + top_k)
    logits = torch.randn(24, 49152, generator=g) * spread
    uniform = torch.rand(24, generator=g, dtype=torch.float64)
    ref = sample_from(filter_logits(logits, top_k, top_p).softmax(-1), uniform)
    assert torch.equal(sample_candidates(logits, top_k, top_p, uniform), ref)


@pytest.mark.parametrize("k", [1, 32, 100, 192, 300])
def test_top_candidates_are_topk(k):
    """The k largest of each row, as torch.topk finds them, whether or not they share blocks."""
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(6, 49152, generator=g)
    logits[0, :BLOCK] += 10                                             # all in one block
    logits[1, ::BLOCK] += 10                                            # one a block
    vals, idx = top_candidates(logits, k)
    ref = logits.topk(k, -1)
    assert torch.equal(vals, ref.values) and torch.equal(idx, ref.indices)


def test_a_batch_is_sampled_in_row_blocks():
    """More rows than ROWS: the tokens and log-probs of each row alone, bit for bit."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2 * ROWS + 5, LARGE_VOCAB, generator=g) * 3
    u = torch.rand(len(logits), generator=g, dtype=torch.float64)
    for kw in (dict(temperature=0.6, top_k=0, top_p=0.95), dict(temperature=1.0, top_k=0, top_p=1.0),
               dict(temperature=0, top_k=0, top_p=1.0)):
        tokens, logp = sample_next(logits, uniform=u, **kw)
        alone = [sample_next(logits[i:i + 1], uniform=u[i:i + 1], **kw) for i in range(len(logits))]
        assert torch.equal(tokens, torch.cat([t for t, _ in alone])) and torch.equal(logp, torch.cat([lp for _, lp in alone]))


def test_large_vocabularies_take_the_candidates():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, LARGE_VOCAB, generator=g) * 3
    u = torch.rand(4, generator=g, dtype=torch.float64)
    tokens, logp = sample_next(logits, temperature=0.6, top_k=0, top_p=0.95, uniform=u)
    assert torch.equal(tokens, sample_candidates(logits / 0.6, 0, 0.95, u))
    assert torch.allclose(logp, (logits / 0.6).log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1), atol=1e-5)
    tokens, logp = sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, uniform=u)  # no filter: one exp pass
    assert torch.equal(tokens, sample_from(logits.log_softmax(-1).exp(), u))
    assert torch.allclose(logp, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1), atol=1e-5)


def test_without_a_filter_the_pytorch_calls_take_one_exponential_pass(monkeypatch):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, LARGE_VOCAB, generator=g) * 3
    u = torch.rand(4, generator=g, dtype=torch.float64)
    with pytorch_calls(sampling, "R1LAB_SAMPLING", monkeypatch):
        tokens, logp = sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, uniform=u)
    assert torch.equal(tokens, sample_from(logits.log_softmax(-1).exp(), u))
    assert torch.equal(logp, logits.gather(-1, tokens[:, None]).squeeze(-1) - logits.logsumexp(-1))  # its lse bit for bit


@needs_compiler
@pytest.mark.parametrize("V", [BLOCK - 50, LARGE_VOCAB, 49_152 + 100])      # one level; two, the last block partial
@pytest.mark.parametrize("spread", [0.1, 3.0, 12.0])
def test_the_compiled_draw_is_the_reference_draw(V, spread):
    """Tokens as sample_from draws them from exp(logits - max), log-probs as log_softmax gives
    them: rows of unit stride inside wider ones, masked (-inf) entries at block edges, a row
    with one token left, and uniforms at 0 and just under 1."""
    draw = built(sampling)
    g = torch.Generator().manual_seed(V)
    wide = torch.randn(9, V + 11, generator=g) * spread
    logits = wide[:, :V]
    logits[0, BLOCK - 1:BLOCK + 1] = float("-inf")
    logits[1, :] = float("-inf")
    logits[1, V - 1] = 0.0
    u = torch.rand(9, generator=g, dtype=torch.float64)
    u[2], u[3] = 0.0, 1 - 1e-16
    tokens, logp = draw(logits, u)
    edge = 3                                                            # u just under 1: its token is
    top = logits.amax(-1, keepdim=True)                                 # a rounding matter, but has mass
    assert torch.equal(tokens[:edge], sample_from((logits - top).exp(), u)[:edge])
    assert torch.equal(tokens[edge + 1:], sample_from((logits - top).exp(), u)[edge + 1:])
    assert (logits[edge, tokens[edge]] - top[edge, 0]).exp() > 0
    torch.testing.assert_close(logp, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1), rtol=2e-6, atol=2e-6)
    assert tokens[1] == V - 1
    with pytest.raises(ValueError, match="float32"):
        draw(logits.bfloat16(), u)
    with pytest.raises(ValueError, match="uniform"):
        draw(logits, u[1:])
