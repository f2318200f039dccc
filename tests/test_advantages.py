"""Advantage estimators against hand-worked numbers, and the vectorized GAE against its loop."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab.losses.advantages import (gae, gae_reference, group_advantages, masked_whiten, reinforce_pp_advantages,
                              rloo_advantages)

# ---- group-relative, RLOO, REINFORCE++ --------------------------------------------------------


def test_group_scale_is_the_default():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    assert torch.equal(group_advantages(rewards, 4, scale="group"), group_advantages(rewards, 4))


def test_group_advantages_batch_and_no_scale_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # group means 0.5 and 1 -> centered [0.5, -0.5, 0, 0]
    # scale "none" (Dr. GRPO): the centered rewards themselves
    assert group_advantages(rewards, 2, scale="none").tolist() == [0.5, -0.5, 0.0, 0.0]
    # scale "batch": batch mean 0.75, squared deviations 0.0625 + 0.5625 + 0.0625 + 0.0625 = 0.75,
    # sample std sqrt(0.75 / 3) = 0.5 -> centered / 0.5001
    a = 0.5 / 0.5001
    assert group_advantages(rewards, 2, scale="batch").tolist() == pytest.approx([a, -a, 0, 0])
    # scale "group" divides each group by its own std: sqrt(0.5) for [1, 0], 0 for [1, 1]
    g = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert group_advantages(rewards, 2).tolist() == pytest.approx([g, -g, 0, 0])


def test_group_advantages_rejects_unknown_scale():
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, 0.0]), 2, scale="std")


def test_rloo_hand_computed():
    # group [1, 0, 0, 1]: others' means 1/3, 2/3, 2/3, 1/3 -> [2/3, -2/3, -2/3, 2/3]
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    assert adv.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # groups [3, 0, 0] and [1, 2, 3]: 3 - 0 = 3, 0 - 1.5 = -1.5 (twice); 1 - 2.5, 2 - 2, 3 - 1.5
    adv = rloo_advantages(torch.tensor([3.0, 0.0, 0.0, 1.0, 2.0, 3.0]), group_size=3)
    assert adv.tolist() == pytest.approx([3.0, -1.5, -1.5, -1.5, 0.0, 1.5])
    with pytest.raises(ValueError):
        rloo_advantages(torch.tensor([1.0, 0.0]), group_size=1)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 4).flatmap(lambda g: st.tuples(
    st.just(g), st.lists(st.floats(-3, 3, width=32), min_size=g, max_size=3 * g)
    .filter(lambda r: len(r) % g == 0))))
def test_rloo_is_rescaled_mean_baseline(case):
    # r_i - (sum - r_i) / (G - 1) = G / (G - 1) * (r_i - mean)
    g, rewards = case
    rewards = torch.tensor(rewards)
    expected = g / (g - 1) * group_advantages(rewards, g, scale="none")
    assert torch.allclose(rloo_advantages(rewards, g), expected, atol=1e-5)


def test_reinforce_pp_hand_computed():
    # rewards [0, 1, 2, 5]: mean 2, deviations -2, -1, 0, 3, squares sum 14,
    # sample std sqrt(14 / 3) = 2.1602469 -> deviations / 2.1603469
    adv = reinforce_pp_advantages(torch.tensor([0.0, 1.0, 2.0, 5.0]))
    s = 2.1603469
    assert adv.tolist() == pytest.approx([-2 / s, -1 / s, 0.0, 3 / s], abs=1e-6)
    with pytest.raises(ValueError):
        reinforce_pp_advantages(torch.tensor([1.0]))


def test_reinforce_pp_ignores_groups():
    # groups [1, 0] and [3, 2]: the batch mean is 1.5, so reward 3 gets a larger advantage than
    # reward 1; each group's own mean makes 1 and 3 both "the better of two", with equal advantage.
    rewards = torch.tensor([1.0, 0.0, 3.0, 2.0])
    assert reinforce_pp_advantages(rewards)[2] > reinforce_pp_advantages(rewards)[0]
    grouped = group_advantages(rewards, 2)
    assert grouped[2].item() == pytest.approx(grouped[0].item())


# ---- GAE ----------------------------------------------------------------------------------------

NAN = float("nan")


def test_gae_hand_computed():
    # gamma 0.9, lam 0.5 (gamma * lam = 0.45). Masked entries hold junk that must not matter.
    # row 0: steps t0, t1 (t2 padding). r = [0, 1], V = [0.5, 0.2]
    #   t1: delta = 1 + 0 - 0.2 = 0.8              A = 0.8                         return 1.0
    #   t0: delta = 0 + 0.9 * 0.2 - 0.5 = -0.32    A = -0.32 + 0.45 * 0.8 = 0.04   return 0.54
    # row 1: steps t0, t2 (t1 is a hole). r = [0.5, 1], V = [0.4, 0.6]
    #   t2: delta = 1 - 0.6 = 0.4                  A = 0.4                         return 1.0
    #   t0: delta = 0.5 + 0.9 * 0.6 - 0.4 = 0.64   A = 0.64 + 0.45 * 0.4 = 0.82    return 1.22
    rewards = torch.tensor([[0.0, 1.0, NAN], [0.5, 7.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, NAN], [0.4, 9.0, 0.6]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.04, 0.8, 0.0], [0.82, 0.0, 0.4]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.54, 1.0, 0.0], [1.22, 0.0, 1.0]]), atol=1e-6)


@st.composite
def episodes(draw):
    """Random (rewards, values, mask, gamma, lam) with B <= 4 rows of T <= 6 steps."""
    b, t = draw(st.integers(1, 4)), draw(st.integers(1, 6))

    def grid(elements):
        return draw(st.lists(elements, min_size=b * t, max_size=b * t))
    rewards = torch.tensor(grid(st.floats(-2, 2, width=32))).view(b, t)              # [B, T]
    values = torch.tensor(grid(st.floats(-2, 2, width=32))).view(b, t)               # [B, T]
    mask = torch.tensor(grid(st.booleans())).view(b, t)                               # [B, T]
    gamma, lam = draw(st.floats(0, 1)), draw(st.floats(0, 1))
    return rewards, values, mask, gamma, lam


@settings(max_examples=50, deadline=None)
@given(episodes())
def test_gae_equals_the_loop(case):
    rewards, values, mask, gamma, lam = case
    adv, ret = gae(rewards, values, mask, gamma, lam)
    adv_ref, ret_ref = gae_reference(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, adv_ref, atol=1e-5)
    assert torch.allclose(ret, ret_ref, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(episodes())
def test_gae_with_lambda_one_returns_reward_to_go(case):
    # With lam = 1 the values telescope away: return_t = sum over later steps k of
    # gamma^(steps from t to k) * r_k, whatever the values are.
    rewards, values, mask, gamma, _ = case
    _, ret = gae(rewards, values, mask, gamma, 1.0)
    for b in range(mask.shape[0]):
        steps = [t for t in range(mask.shape[1]) if mask[b, t]]
        for i, t in enumerate(steps):
            to_go = sum(gamma ** j * float(rewards[b, k]) for j, k in enumerate(steps[i:]))
            assert ret[b, t].item() == pytest.approx(to_go, abs=1e-5)


@settings(max_examples=50, deadline=None)
@given(episodes(), st.sampled_from([NAN, float("inf"), 1e6]))
def test_gae_ignores_masked_entries(case, junk):
    rewards, values, mask, gamma, lam = case
    adv, ret = gae(rewards, values, mask, gamma, lam)
    adv_p, ret_p = gae(torch.where(mask, rewards, junk), torch.where(mask, values, junk), mask,
                       gamma, lam)
    assert torch.equal(adv_p, adv) and torch.equal(ret_p, ret)
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)


def test_masked_whiten_hand_computed():
    x = torch.tensor([[1.0, 2.0], [3.0, 99.0]])
    mask = torch.tensor([[1, 1], [1, 0]]).bool()
    # unmasked 1, 2, 3: mean 2, Bessel variance ((-1)^2 + 0 + 1^2) / 2 = 1; the 99 neither counts nor stays
    assert torch.allclose(masked_whiten(x, mask), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), atol=1e-6)


def test_masked_whiten_over_ranks_equals_one_process_over_all_rows():
    """Two "ranks" holding halves of a batch, their counts and sums added (what ``dist.sum``
    does), whiten as one process does over the whole batch."""
    torch.manual_seed(0)
    x, mask = torch.randn(4, 5), torch.rand(4, 5) > 0.3
    halves = [(x[:2], mask[:2]), (x[2:], mask[2:])]
    stats = [(int(m.sum()), h[m].sum().item(), h[m].square().sum().item()) for h, m in halves]
    totals = [sum(s[i] for s in stats) for i in range(3)]       # count, sum, sum of squares
    parts = []
    for h, m in halves:
        summed = iter(totals)
        parts.append(masked_whiten(h, m, total=lambda v: next(summed)))
    assert torch.allclose(torch.cat(parts), masked_whiten(x, mask), atol=1e-5)


def test_every_estimator_a_config_names_resolves_to_its_function():
    from r1lab.losses import advantages as adv
    from r1lab.losses.registry import ADVANTAGE_ESTIMATORS
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    want = {"group": adv.group_advantages(rewards, 3), "batch": adv.group_advantages(rewards, 3, scale="batch"),
            "none": adv.group_advantages(rewards, 3, scale="none"), "rloo": adv.rloo_advantages(rewards, 3),
            "reinforce_pp": adv.reinforce_pp_advantages(rewards)}
    assert set(ADVANTAGE_ESTIMATORS) == set(want)
    for name, estimator in ADVANTAGE_ESTIMATORS.items():
        assert torch.equal(estimator(rewards, 3), want[name]), name


def test_the_distillation_divergences_a_config_names_are_the_ones_the_loss_has():
    from r1lab.losses import distill
    from r1lab.losses.registry import DIVERGENCES
    assert set(DIVERGENCES) == set(distill.DIVERGENCES)
