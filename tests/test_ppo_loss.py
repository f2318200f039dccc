"""ppo_policy_loss, ppo_value_loss and kl_penalized_rewards against numbers worked by hand."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab.losses.ppo import kl_penalized_rewards, ppo_policy_loss, ppo_value_loss

from conftest import assert_masked_invariant

# Two completions, three token slots; the last slot of completion 1 is padding.
MASK = [[1, 1, 1], [1, 1, 0]]
LOGP = [[-1.0, -2.0, -0.5], [-1.5, -0.3, 0.0]]
OLD = [[-1.2, -1.5, -0.5], [-1.0, -0.3, 0.0]]
REF = [[-1.1, -2.0, -0.6], [-1.5, -0.5, 0.0]]
ADV = [[1.0, 1.0, -1.0], [-2.0, 0.5, 9.0]]


def test_policy_loss_matches_hand_computation():
    # (0,0): r = e^0.2 = 1.221403, A = 1: min(1.221403, 1.2) = 1.2            (clipped)
    # (0,1): r = e^-0.5 = 0.606531, A = 1: min(0.606531, 0.8) = 0.606531
    # (0,2): r = 1, A = -1: -1
    # (1,0): r = 0.606531, A = -2: min(-1.213061, 0.8 * -2 = -1.6) = -1.6     (clipped)
    # (1,1): r = 1, A = 0.5: 0.5 ;  (1,2) is padding
    # mean over 5 tokens = (1.2 + 0.606531 - 1 - 1.6 + 0.5) / 5 = -0.0586938 -> loss 0.0586938
    logp = torch.tensor(LOGP, requires_grad=True)
    loss, stats = ppo_policy_loss(logp, torch.tensor(OLD), torch.tensor(ADV), torch.tensor(MASK),
                                  clip_eps=0.2)
    assert loss.item() == pytest.approx(0.0586938, abs=1e-6)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    # ratio: (1.221403 + 0.606531 + 1 + 0.606531 + 1) / 5 = 0.8868930
    assert stats["ratio"] == pytest.approx(0.8868930, abs=1e-6)
    # (r - 1) - log r: 0.221403 - 0.2 = 0.021403 ; -0.393469 + 0.5 = 0.106531 (twice) ; 0 ; 0
    # mean = 0.234465 / 5 = 0.046893
    assert stats["approx_kl"] == pytest.approx(0.046893, abs=1e-6)
    # d loss / d logp = -r A / 5 on unclipped tokens, 0 on clipped ones:
    # (0,1): -0.606531 / 5 = -0.1213061 ; (0,2): 1/5 = 0.2 ; (1,1): -0.5/5 = -0.1
    loss.backward()
    expected = [[0.0, -0.1213061, 0.2], [0.0, -0.1, 0.0]]
    assert torch.allclose(logp.grad, torch.tensor(expected), atol=1e-6)


def test_value_loss_matches_hand_computation():
    values = torch.tensor([[1.0, 0.5, 2.0], [0.0, -1.0, 5.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 1.0], [0.3, -1.0, 0.0]])
    returns = torch.tensor([[1.5, 0.0, 1.0], [0.0, -0.5, 7.0]])
    # clip_range 0.2, clipped value = old + clip(v - old, -0.2, 0.2):
    # (0,0): v 1.0, clipped 0.7, R 1.5: max(0.25, 0.64) = 0.64   (clipped error larger)
    # (0,1): v 0.5, clipped 0.5, R 0.0: 0.25
    # (0,2): v 2.0, clipped 1.2, R 1.0: max(1.0, 0.04) = 1.0
    # (1,0): v 0.0, clipped 0.1, R 0.0: max(0.0, 0.01) = 0.01    (clipped error larger)
    # (1,1): v -1.0, clipped -1.0, R -0.5: 0.25 ;  (1,2) is padding
    # loss = 0.5 * (0.64 + 0.25 + 1.0 + 0.01 + 0.25) / 5 = 0.5 * 0.43 = 0.215
    loss, stats = ppo_value_loss(values, old, returns, torch.tensor(MASK), clip_range=0.2)
    assert loss.item() == pytest.approx(0.215, abs=1e-6)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    assert stats["value"] == pytest.approx((1.0 + 0.5 + 2.0 + 0.0 - 1.0) / 5)
    assert stats["return"] == pytest.approx((1.5 + 0.0 + 1.0 + 0.0 - 0.5) / 5)
    # gradient 0.5 * 2 (v - R) / 5 where the unclipped error wins, 0 where the clipped one does:
    # (0,1): 0.5/5 = 0.1 ; (0,2): 1.0/5 = 0.2 ; (1,1): -0.5/5 = -0.1
    loss.backward()
    expected = [[0.0, 0.1, 0.2], [0.0, -0.1, 0.0]]
    assert torch.allclose(values.grad, torch.tensor(expected), atol=1e-6)


def test_kl_penalized_rewards_hand_computed():
    # kl_coef 0.1. Row 0: logp - ref = [0.1, 0.0, 0.1] -> [-0.01, 0, -0.01]; score 1.0 on
    # slot 2 -> [-0.01, 0, 0.99]. Row 1: logp - ref = [0.0, 0.2, pad] -> [0, -0.02, 0]; score
    # -0.5 on slot 1 (its last unmasked token) -> [0, -0.52, 0].
    rewards = kl_penalized_rewards(torch.tensor([1.0, -0.5]), torch.tensor(LOGP),
                                   torch.tensor(REF), torch.tensor(MASK), kl_coef=0.1)
    expected = [[-0.01, 0.0, 0.99], [0.0, -0.52, 0.0]]
    assert torch.allclose(rewards, torch.tensor(expected), atol=1e-6)


def test_kl_penalized_rewards_finds_the_last_token_after_a_masked_prefix():
    # mask [0, 1, 1, 0]: a prompt slot, two completion tokens, padding -> score lands on slot 2
    rewards = kl_penalized_rewards(torch.tensor([3.0]), torch.zeros(1, 4), torch.zeros(1, 4),
                                   torch.tensor([[0, 1, 1, 0]]), kl_coef=0.1)
    assert rewards.tolist() == [[0.0, 0.0, 3.0, 0.0]]


def test_kl_penalized_rewards_rejects_an_empty_row():
    with pytest.raises(ValueError):
        kl_penalized_rewards(torch.tensor([1.0]), torch.zeros(1, 2), torch.zeros(1, 2),
                             torch.tensor([[0, 0]]), kl_coef=0.1)


def random_case(seed, n, l):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, l, generator=g) < 0.6                                       # [N, L]
    mask[:, 0] = True                                          # every row keeps one token
    a, b, c = (torch.randn(n, l, generator=g) for _ in range(3))                    # [N, L]
    junk = torch.randn(n, l, generator=g) * 100                                     # [N, L]
    return mask, a, b, c, junk


def masked_invariance(loss_fn, seed, n, l):
    """loss_fn(x, b, c, mask) gives the same loss and gradient after masked slots are rewritten."""
    mask, a, b, c, junk = random_case(seed, n, l)
    results = []
    for fill in (None, junk, torch.full_like(a, float("nan"))):
        x, y, z = ((t if fill is None else torch.where(mask, t, fill)) for t in (a, b, c))
        x = x.clone().requires_grad_(True)
        loss, _ = loss_fn(x, y, z, mask)
        loss.backward()
        results.append((loss.item(), x.grad))
    assert_masked_invariant(results, mask)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4), l=st.integers(1, 6))
def test_policy_loss_ignores_masked_positions(seed, n, l):
    masked_invariance(lambda x, y, z, m: ppo_policy_loss(x, y, z, m, clip_eps=0.2), seed, n, l)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4), l=st.integers(1, 6))
def test_value_loss_ignores_masked_positions(seed, n, l):
    masked_invariance(lambda x, y, z, m: ppo_value_loss(x, y, z, m, clip_range=0.2), seed, n, l)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4), l=st.integers(1, 6),
       kl_coef=st.floats(0.0, 1.0))
def test_rewards_sum_to_score_minus_kl_and_ignore_masked_positions(seed, n, l, kl_coef):
    mask, logp, ref, score, junk = random_case(seed, n, l)
    score = score[:, 0]                                                             # [N]
    rewards = kl_penalized_rewards(score, logp, ref, mask, kl_coef=kl_coef)         # [N, L]
    expected = score - kl_coef * ((logp - ref) * mask).sum(-1)                      # [N]
    assert torch.allclose(rewards.sum(-1), expected, atol=1e-5)
    assert torch.all(rewards[~mask] == 0)
    poisoned = kl_penalized_rewards(score, torch.where(mask, logp, junk), ref, mask,
                                    kl_coef=kl_coef)
    assert torch.equal(poisoned, rewards)
