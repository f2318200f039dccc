"""bradley_terry_loss against numbers worked out by hand, and its antisymmetry."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab.losses.reward_model import bradley_terry_loss


def test_loss_matches_hand_computation():
    # margins r_w - r_l = [2 - 1, 0.5 - 0.5, -1 - 1] = [1, 0, -2]
    # -log sigmoid(m) = ln(1 + e^-m): ln(1 + e^-1) = 0.313262, ln 2 = 0.693147,
    # ln(1 + e^2) = 2.126928 -> loss = 3.133337 / 3 = 1.044446
    chosen = torch.tensor([2.0, 0.5, -1.0], requires_grad=True)
    loss, stats = bradley_terry_loss(chosen, torch.tensor([1.0, 0.5, 1.0]))
    assert loss.item() == pytest.approx(1.044446, abs=1e-6)
    assert stats["accuracy"] == pytest.approx(1 / 3)      # the tie (margin 0) is not a win
    assert stats["margin"] == pytest.approx(-1 / 3)
    # d loss / d r_w = -sigmoid(-m) / B: -0.268941 / 3, -0.5 / 3, -0.880797 / 3
    loss.backward()
    expected = [-0.0896471, -0.1666667, -0.2935991]
    assert chosen.grad.tolist() == pytest.approx(expected, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 6))
def test_swapping_the_pair_shifts_the_loss_by_the_mean_margin(seed, b):
    # -log sig(m) - (-log sig(-m)) = -m, since log sig(m) - log sig(-m) = m
    g = torch.Generator().manual_seed(seed)
    chosen, rejected = torch.randn(b, generator=g) * 3, torch.randn(b, generator=g) * 3  # [B]
    loss, stats = bradley_terry_loss(chosen, rejected)
    swapped, swapped_stats = bradley_terry_loss(rejected, chosen)
    assert loss.item() - swapped.item() == pytest.approx(-(chosen - rejected).mean().item(),
                                                         abs=1e-5)
    assert stats["accuracy"] + swapped_stats["accuracy"] == pytest.approx(1.0)  # no ties
    assert loss.item() > 0
