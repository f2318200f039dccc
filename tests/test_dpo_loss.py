"""DPO and its variants against numbers worked out by hand, plus masking and identity properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab.losses.dpo import cdpo_loss, dpo_hinge_loss, dpo_loss, ipo_loss, rdpo_loss

# Two pairs, three token slots. -9 marks masked slots (a prompt token in chosen row 0, padding
# elsewhere); it must not count.
#   pair 0: chosen   policy -0.5 - 1.0 = -1.5, ref -1.0 - 1.5 = -2.5 -> log-ratio  1.0
#           rejected policy -1.0 - 2.0 = -3.0, ref -1.5 - 1.0 = -2.5 -> log-ratio -0.5  => h = 1.5
#   pair 1: chosen   policy -1.2, ref -1.5 -> 0.3 ; rejected policy -0.3, ref -0.6 -> 0.3 => h = 0
POLICY_CHOSEN = [[-9.0, -0.5, -1.0], [-0.4, -0.6, -0.2]]
REF_CHOSEN = [[-9.0, -1.0, -1.5], [-0.5, -0.5, -0.5]]
CHOSEN_MASK = [[0, 1, 1], [1, 1, 1]]
POLICY_REJECTED = [[-1.0, -2.0, -9.0], [-0.3, -9.0, -9.0]]
REF_REJECTED = [[-1.5, -1.0, -9.0], [-0.6, -9.0, -9.0]]
REJECTED_MASK = [[1, 1, 0], [1, 0, 0]]


def call(loss_fn, **kw):
    policy_chosen = torch.tensor(POLICY_CHOSEN, requires_grad=True)
    loss, stats = loss_fn(policy_chosen, torch.tensor(POLICY_REJECTED), torch.tensor(REF_CHOSEN),
                          torch.tensor(REF_REJECTED), torch.tensor(CHOSEN_MASK),
                          torch.tensor(REJECTED_MASK), **kw)
    return policy_chosen, loss, stats


def test_dpo_matches_hand_computation():
    # beta 0.1: pair 0 -log sig(0.15) = ln(1 + e^-0.15) = 0.620957 ; pair 1 -log sig(0) = ln 2
    # loss = (0.620957 + 0.693147) / 2 = 0.657052
    policy_chosen, loss, stats = call(dpo_loss, beta=0.1)
    assert loss.item() == pytest.approx(0.657052, abs=1e-6)
    # rewards beta * log-ratio: chosen [0.1, 0.03], rejected [-0.05, 0.03]
    assert stats["chosen_reward"] == pytest.approx(0.065, abs=1e-6)
    assert stats["rejected_reward"] == pytest.approx(-0.01, abs=1e-6)
    assert stats["reward_margin"] == pytest.approx(0.075, abs=1e-6)
    assert stats["reward_accuracy"] == pytest.approx(0.5)     # pair 1 is a tie: not counted
    # d loss / d chosen token = -beta * sig(-beta h) / B on every unmasked chosen token:
    # pair 0: -0.1 * sig(-0.15) / 2 = -0.1 * 0.462570 / 2 = -0.0231285 ; pair 1: -0.1 * 0.5 / 2
    loss.backward()
    expected = [[0.0, -0.0231285, -0.0231285], [-0.025, -0.025, -0.025]]
    assert torch.allclose(policy_chosen.grad, torch.tensor(expected), atol=1e-6)


def test_dpo_average_uses_masked_means():
    # pair 0: chosen (-1.5 - -2.5) / 2 = 0.5, rejected (-3.0 - -2.5) / 2 = -0.25 -> h = 0.75
    # pair 1: chosen 0.3 / 3 = 0.1, rejected 0.3 / 1 = 0.3 -> h = -0.2
    # loss = (ln(1 + e^-0.075) + ln(1 + e^0.02)) / 2 = (0.656350 + 0.703197) / 2 = 0.679774
    _, loss, stats = call(dpo_loss, beta=0.1, average=True)
    assert loss.item() == pytest.approx(0.679774, abs=1e-6)
    # chosen rewards [0.05, 0.01], rejected [-0.025, 0.03]
    assert stats["chosen_reward"] == pytest.approx(0.03, abs=1e-6)
    assert stats["rejected_reward"] == pytest.approx(0.0025, abs=1e-6)
    assert stats["reward_margin"] == pytest.approx(0.0275, abs=1e-6)
    assert stats["reward_accuracy"] == pytest.approx(0.5)


def test_ipo_matches_hand_computation():
    # beta 0.1 -> target margin 1 / (2 * 0.1) = 5: ((1.5 - 5)^2 + (0 - 5)^2) / 2 = (12.25 + 25) / 2
    _, loss, _ = call(ipo_loss, beta=0.1)
    assert loss.item() == pytest.approx(18.625, abs=1e-5)


def test_hinge_matches_hand_computation():
    # beta 1: max(0, 1 - 1.5) = 0 (pair 0 is past the margin), max(0, 1 - 0) = 1 -> 0.5
    policy_chosen, loss, stats = call(dpo_hinge_loss, beta=1.0)
    assert loss.item() == pytest.approx(0.5, abs=1e-6)
    assert stats["reward_margin"] == pytest.approx(0.75, abs=1e-6)
    loss.backward()
    # only pair 1 pulls: d/d chosen token = -beta / B = -0.5 ; pair 0 gets no gradient
    assert torch.allclose(policy_chosen.grad, torch.tensor([[0.0, 0.0, 0.0], [-0.5] * 3]))


def test_cdpo_matches_hand_computation():
    # eps 0.1, beta 0.1: pair 0: 0.9 * ln(1 + e^-0.15) + 0.1 * ln(1 + e^0.15)
    #   = 0.9 * 0.620957 + 0.1 * 0.770957 = 0.635957 ; pair 1: (0.9 + 0.1) ln 2 = 0.693147
    # loss = (0.635957 + 0.693147) / 2 = 0.664552
    _, loss, _ = call(cdpo_loss, beta=0.1, eps=0.1)
    assert loss.item() == pytest.approx(0.664552, abs=1e-6)


def test_rdpo_matches_hand_computation():
    # eps 0.1, beta 0.1: pair 0: (0.9 * 0.620957 - 0.1 * 0.770957) / 0.8 = 0.602207
    #   pair 1: (0.9 - 0.1) ln 2 / 0.8 = ln 2 ; loss = (0.602207 + 0.693147) / 2 = 0.647677
    _, loss, _ = call(rdpo_loss, beta=0.1, eps=0.1)
    assert loss.item() == pytest.approx(0.647677, abs=1e-6)
    with pytest.raises(ValueError):
        call(rdpo_loss, beta=0.1, eps=0.5)


def test_label_noise_variants_reduce_to_dpo_at_eps_zero():
    _, dpo, _ = call(dpo_loss, beta=0.3)
    for loss_fn in (cdpo_loss, rdpo_loss):
        _, loss, _ = call(loss_fn, beta=0.3, eps=0.0)
        assert loss.item() == pytest.approx(dpo.item(), abs=1e-7)


VARIANTS = [(dpo_loss, {}), (ipo_loss, {}), (dpo_hinge_loss, {}), (cdpo_loss, {"eps": 0.2}),
            (rdpo_loss, {"eps": 0.2})]


def random_pair_batch(seed, b, lw, ll):
    g = torch.Generator().manual_seed(seed)
    masks = [torch.rand(b, n, generator=g) < 0.6 for n in (lw, ll)]       # [B, Lw], [B, Ll]
    logps = [-torch.rand(b, n, generator=g) * 3 for n in (lw, lw, ll, ll)]          # policy/ref
    return masks, logps


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 4), lw=st.integers(1, 5),
       ll=st.integers(1, 5), variant=st.sampled_from(VARIANTS), average=st.booleans())
def test_masked_positions_change_neither_loss_nor_gradient(seed, b, lw, ll, variant, average):
    loss_fn, kw = variant
    (chosen_mask, rejected_mask), (pc, rc, pr, rr) = random_pair_batch(seed, b, lw, ll)
    results = []
    for fill in (None, float("nan"), -1e4):
        def fix(x, mask):
            return x.clone() if fill is None else torch.where(mask, x, torch.full_like(x, fill))

        chosen = fix(pc, chosen_mask).requires_grad_(True)                          # [B, Lw]
        rejected = fix(pr, rejected_mask).requires_grad_(True)                      # [B, Ll]
        loss, _ = loss_fn(chosen, rejected, fix(rc, chosen_mask), fix(rr, rejected_mask),
                          chosen_mask, rejected_mask, beta=0.5, average=average, **kw)
        loss.backward()
        results.append((loss.item(), chosen.grad, rejected.grad))
    (loss, grad_c, grad_r), *others = results
    for other_loss, other_c, other_r in others:
        assert other_loss == pytest.approx(loss, abs=1e-6)
        assert torch.allclose(other_c, grad_c, atol=1e-6)
        assert torch.allclose(other_r, grad_r, atol=1e-6)
    assert torch.all(grad_c[~chosen_mask] == 0) and torch.all(grad_r[~rejected_mask] == 0)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 4), lw=st.integers(1, 5),
       ll=st.integers(1, 5), beta=st.floats(0.01, 5.0), average=st.booleans())
def test_policy_equal_to_reference_gives_log2_and_zero_rewards(seed, b, lw, ll, beta, average):
    (chosen_mask, rejected_mask), (pc, _, pr, _) = random_pair_batch(seed, b, lw, ll)
    loss, stats = dpo_loss(pc, pr, pc.clone(), pr.clone(), chosen_mask, rejected_mask,
                           beta=beta, average=average)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert stats["chosen_reward"] == 0.0 and stats["rejected_reward"] == 0.0
    assert stats["reward_margin"] == 0.0 and stats["reward_accuracy"] == 0.0
