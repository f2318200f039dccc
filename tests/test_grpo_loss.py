"""grpo_loss and group_advantages against numbers worked out by hand."""

import math

import pytest
import torch

from r1lab.losses.advantages import group_advantages
from r1lab.losses.grpo import grpo_loss
from r1lab.losses.kl import k3_kl

# Two completions, three token slots; the last slot of completion 1 is padding.
LOGP = [[-1.0, -2.0, -0.5], [-1.5, -0.3, 0.0]]
OLD = [[-1.2, -1.5, -0.5], [-1.0, -0.3, 0.0]]
REF = [[-1.1, -2.0, -0.6], [-1.5, -0.5, 0.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.0, -2.0]


def call(logp=LOGP, beta=0.1, **kw):
    logp = torch.tensor(logp, requires_grad=True)
    loss, stats = grpo_loss(logp, torch.tensor(OLD), torch.tensor(REF), torch.tensor(ADV),
                            torch.tensor(MASK), clip_eps=0.2, beta=beta, **kw)
    return logp, loss, stats


def test_loss_matches_hand_computation():
    # completion 0 (A = +1):
    #   t0: ratio e^0.2 = 1.221403 > 1.2 -> clipped term 1.2 is the min   (clipped, positive A)
    #   t1: ratio e^-0.5 = 0.606531 -> unclipped 0.606531 is the min      (below 1-eps, positive A: not clipped)
    #   t2: ratio 1 -> 1
    #   k3: t0 d=-0.1 -> e^-0.1 + 0.1 - 1 = 0.0048374; t1 d=0 -> 0; t2 d=-0.1 -> 0.0048374
    #   mean = (1.2 - 0.00048374 + 0.606531 + 1 - 0.00048374) / 3 = 0.9351879
    # completion 1 (A = -2), slot 2 is padding:
    #   t0: ratio 0.606531: unclipped -1.213061, clipped 0.8 * -2 = -1.6 -> min -1.6  (clipped, negative A)
    #   t1: ratio 1 -> -2; k3 d=-0.2 -> e^-0.2 + 0.2 - 1 = 0.0187308
    #   mean = (-1.6 + -2 - 0.00187308) / 2 = -1.8009365
    # loss = -(0.9351879 - 1.8009365) / 2 = 0.4328743
    _, loss, stats = call()
    assert loss.item() == pytest.approx(0.4328743, abs=1e-6)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    assert stats["clip_frac_high"] == pytest.approx(1 / 5)                 # completion 0, t0
    assert stats["clip_frac_low"] == pytest.approx(1 / 5)                  # completion 1, t0
    assert stats["kl"] == pytest.approx((0.0048374 * 2 + 0.0187308) / 5, abs=1e-6)


def test_without_kl_the_reference_is_not_needed():
    logp = torch.tensor(LOGP)
    loss, stats = grpo_loss(logp, torch.tensor(OLD), None, torch.tensor(ADV), torch.tensor(MASK),
                            clip_eps=0.2, beta=0.0)
    # (1.2 + 0.606531 + 1) / 3 = 0.9355103 ; (-1.6 - 2) / 2 = -1.8 ; loss = 0.4322448
    assert loss.item() == pytest.approx(0.4322448, abs=1e-6)
    assert stats["kl"] == 0.0


def test_padding_masked_out_of_value_and_gradient():
    _, loss, _ = call()
    poisoned = [row[:] for row in LOGP]
    poisoned[1][2] = float("nan")
    logp, loss_nan, _ = call(poisoned)
    loss_nan.backward()
    assert loss_nan.item() == pytest.approx(loss.item(), abs=1e-7)
    assert logp.grad[1, 2].item() == 0.0
    assert torch.isfinite(logp.grad).all()


def test_gradient_signs_follow_advantages():
    logp, loss, _ = call(beta=0.0)
    loss.backward()
    g = logp.grad
    # Clipped tokens carry no policy gradient; unclipped ones push logp up for A>0, down for A<0.
    assert g[0, 0].item() == 0.0 and g[1, 0].item() == 0.0
    assert g[0, 1].item() < 0          # minimising -J raises logp where A > 0
    assert g[1, 1].item() > 0          # ... and lowers it where A < 0
    # d/dlogp of -(ratio * A)/|o| / N at ratio 1: completion 1, t1: -(-2)/2/2 = 0.5
    assert g[1, 1].item() == pytest.approx(0.5)


def test_k3_is_zero_at_equality_and_positive_elsewhere():
    x = torch.tensor([-1.0, -2.0, -0.1])
    assert torch.all(k3_kl(x, x) == 0)
    assert torch.all(k3_kl(x, x + torch.tensor([0.5, -0.5, 1.0])) > 0)


def test_group_advantages_hand_computed():
    # group [1, 0, 0, 1]: mean 0.5, sample std sqrt(1/3) = 0.57735 -> +-0.5 / (0.57735 + 1e-4)
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0]), group_size=4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert adv[:4].tolist() == pytest.approx([a, -a, -a, a], abs=1e-6)
    # group [2, 2, 2, 5]: mean 2.75, std sqrt(((0.75^2)*3 + 2.25^2)/3) = 1.5
    assert adv[4:].tolist() == pytest.approx([-0.75 / 1.5001] * 3 + [2.25 / 1.5001], abs=1e-6)


def test_group_advantages_equal_rewards_are_zero_not_nan():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), group_size=3)
    assert torch.all(adv == 0)
    assert not torch.isnan(adv).any()


def test_group_of_one_is_rejected():
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, 0.0]), group_size=1)
