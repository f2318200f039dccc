"""KL estimators and the GRPO variants against hand-worked numbers, then properties every
loss in the registry must have."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab.losses.grpo import grpo_loss
from r1lab.losses.grpo_variants import dapo_loss, dr_grpo_loss, dual_clip_grpo_loss, gspo_loss
from r1lab.losses.kl import k1_kl, k2_kl, k3_kl
from r1lab.losses.registry import GRPO_LOSSES
from r1lab.stages.grpo import GrpoConfig

# Two completions, three token slots; the last slot of completion 1 is padding.
# log ratios logp - old:  completion 0: 0.25, 0.22, -0.5     completion 1: -0.5, 1.2
# ratios:                 1.284025, 1.246077, 0.606531       0.606531, 3.320117
# k3 (d = ref - logp):    d = -0.1, 0, -0.1 -> 0.0048374, 0, 0.0048374
#                         d = 0, -0.2       -> 0, 0.0187308            (sum of all five 0.0284056)
LOGP = [[-1.0, -2.0, -0.5], [-1.5, -0.3, 0.0]]
OLD = [[-1.25, -2.22, 0.0], [-1.0, -1.5, 0.0]]
REF = [[-1.1, -2.0, -0.6], [-1.5, -0.5, 0.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.0, -2.0]

# The keywords each registry entry takes beyond clip_eps and beta, from a stage config.
CFG = GrpoConfig(kind="grpo", name="rl", init="m", clip_eps_high=0.28, sampling={"max_new_tokens": 8})
EXTRA = {name: entry.keywords(CFG, sum(map(sum, MASK))) for name, entry in GRPO_LOSSES.items()}


def call(fn, adv=ADV, beta=0.1, **kw):
    logp = torch.tensor(LOGP, requires_grad=True)
    loss, stats = fn(logp, torch.tensor(OLD), torch.tensor(REF), torch.tensor(adv),
                     torch.tensor(MASK), beta=beta, **kw)
    loss.backward()
    return loss.item(), stats, logp.grad


# ---- KL estimators ----------------------------------------------------------------------------

def test_kl_estimators_hand_computed():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -2.0, 0.5])
    # logp - ref = 0.5, 0, -1
    assert k1_kl(logp, ref).tolist() == pytest.approx([0.5, 0.0, -1.0])
    # (logp - ref)^2 / 2 = 0.125, 0, 0.5
    assert k2_kl(logp, ref).tolist() == pytest.approx([0.125, 0.0, 0.5])
    # d = ref - logp = -0.5, 0, 1:  e^-0.5 + 0.5 - 1 = 0.1065307 ; 0 ; e - 1 - 1 = 0.7182818
    assert k3_kl(logp, ref).tolist() == pytest.approx([0.1065307, 0.0, 0.7182818], abs=1e-6)


def test_k1_and_k3_average_to_the_exact_kl():
    # Over a 4-outcome distribution, E_p[k1] = E_p[k3] = KL(p || q) exactly (E_p[q/p] = 1);
    # k2 is only close. p = [0.1, 0.2, 0.3, 0.4], q = [0.25] * 4:
    # KL = sum p log(p / 0.25) = 0.1*ln0.4 + 0.2*ln0.8 + 0.3*ln1.2 + 0.4*ln1.6 = 0.1064401
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    q = torch.full((4,), 0.25, dtype=torch.float64)
    assert (p * k1_kl(p.log(), q.log())).sum().item() == pytest.approx(0.1064401, abs=1e-7)
    assert (p * k3_kl(p.log(), q.log())).sum().item() == pytest.approx(0.1064401, abs=1e-7)
    # k2: sum p (ln(p/q))^2 / 2 with (ln 0.4)^2 / 2 = 0.4197944, (ln 0.8)^2 / 2 = 0.0248965,
    #     (ln 1.2)^2 / 2 = 0.0166206, (ln 1.6)^2 / 2 = 0.1104517 -> 0.0961256, not the KL
    assert (p * k2_kl(p.log(), q.log())).sum().item() == pytest.approx(0.0961256, abs=1e-7)


def test_k3_stays_accurate_near_zero_in_float32():
    # d = 1e-3: e^d - d - 1 = d^2/2 + d^3/6 = 5.001667e-7; computing it as exp(d) - d - 1 in
    # float32 gives 4.77e-7 (5% off), and at d = 1e-4 it gives 0 instead of 5.0e-9.
    d = torch.tensor([1e-3, 1e-4])
    k = k3_kl(torch.zeros(2), d)
    assert k[0].item() == pytest.approx(5.001667e-7, rel=1e-3)
    assert k[1].item() == pytest.approx(5.0002e-9, rel=1e-2)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-30, 0, width=32), st.floats(-30, 0, width=32)),
                min_size=1, max_size=4))
def test_k3_is_nonnegative_and_zero_at_equality(pairs):
    logp = torch.tensor([a for a, _ in pairs])
    ref = torch.tensor([b for _, b in pairs])
    assert torch.all(k3_kl(logp, ref) >= 0)
    assert torch.all(k3_kl(logp, logp) == 0)


# ---- each variant by hand ---------------------------------------------------------------------

def test_dapo_hand_computed():
    # clip range [0.8, 1.28], A = +1 then -2; per-token policy terms min(rA, clip(r)A):
    #   c0: 1.284025 > 1.28 -> 1.28 (high-clipped); 1.246077 (inside: GRPO would clip it); 0.606531
    #   c1: 0.606531 < 0.8, A < 0 -> min(-1.213061, -1.6) = -1.6 (low-clipped);
    #       3.320117 -> min(-6.640234, -2.56) = -6.640234 (above the range with A < 0: not clipped)
    #   sum = 1.28 + 1.246077 + 0.606531 - 1.6 - 6.640234 = -5.107626
    # minus beta * sum(k3) = 0.1 * 0.0284056 -> -5.110467; over 5 tokens -> loss 1.0220934
    loss, stats, grad = call(dapo_loss, clip_eps=0.2, clip_eps_high=0.28)
    assert loss == pytest.approx(1.0220934, abs=1e-6)
    assert stats["clip_frac_low"] == pytest.approx(1 / 5)
    assert stats["clip_frac_high"] == pytest.approx(1 / 5)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    # (1.284025 + 1.246077 + 0.606531 + 0.606531 + 3.320117) / 5 = 1.4126561
    assert stats["ratio"] == pytest.approx(1.4126561, abs=1e-6)
    assert stats["kl"] == pytest.approx(0.0284056 / 5, abs=1e-7)
    # c0 t1 unclipped, k3' = 1 - e^d = 0 there: d/dlogp of -(r * 1)/5 = -1.246077/5 = -0.2492153
    assert grad[0, 1].item() == pytest.approx(-0.2492153, abs=1e-6)
    # c0 t0 clipped: only the KL, beta * (1 - e^-0.1) / 5 = 0.1 * 0.0951626 / 5 = 0.0019033
    assert grad[0, 0].item() == pytest.approx(0.0019033, abs=1e-6)
    assert grad[1, 2].item() == 0.0


def test_dapo_micro_batches_sum_to_the_whole_batch():
    # 5 unmasked tokens in all: each micro-batch divides by 5, so the parts add up.
    loss, _, grad = call(dapo_loss, clip_eps=0.2, clip_eps_high=0.28)
    logp = torch.tensor(LOGP, requires_grad=True)
    parts = [dapo_loss(logp[i:i + 1], torch.tensor(OLD)[i:i + 1], torch.tensor(REF)[i:i + 1],
                       torch.tensor(ADV)[i:i + 1], torch.tensor(MASK)[i:i + 1], clip_eps=0.2,
                       beta=0.1, clip_eps_high=0.28, num_tokens=5)[0] for i in range(2)]
    total = parts[0] + parts[1]
    total.backward()
    assert total.item() == pytest.approx(loss, abs=1e-6)
    assert torch.allclose(logp.grad, grad, atol=1e-7)


def test_dr_grpo_hand_computed():
    # clip range [0.8, 1.2], beta = 0:
    #   c0: min(1.284025, 1.2) = 1.2; min(1.246077, 1.2) = 1.2; 0.606531 -> 3.006531
    #   c1: -1.6; -6.640234 -> -8.240234
    #   sum -5.233703, divided by N * max_len = 2 * 4 -> loss 0.6542129
    loss, stats, grad = call(dr_grpo_loss, beta=0.0, clip_eps=0.2, max_len=4)
    assert loss == pytest.approx(0.6542129, abs=1e-6)
    assert stats["clip_frac_high"] == pytest.approx(2 / 5)
    assert stats["clip_frac_low"] == pytest.approx(1 / 5)
    assert stats["kl"] == 0.0
    # every token weighs 1/8 whatever its completion's length:
    #   c1 t1: -(-2 * 3.320117) / 8 = 0.8300292 ;  c0 t2: -0.606531 / 8 = -0.0758163
    assert grad[1, 1].item() == pytest.approx(0.8300292, abs=1e-6)
    assert grad[0, 2].item() == pytest.approx(-0.0758163, abs=1e-6)


def test_dr_grpo_rejects_more_slots_than_max_len():
    with pytest.raises(ValueError):
        call(dr_grpo_loss, clip_eps=0.2, max_len=2)


def test_gspo_hand_computed():
    # advantages [-1, 2], clip range [0.997, 1.5]:
    #   c0: s = exp((0.25 + 0.22 - 0.5) / 3) = e^-0.01 = 0.9900498 < 0.997 with A < 0
    #       -> min(-0.9900498, -0.997) = -0.997 (low-clipped); k3 mean 0.0096748 / 3 = 0.0032249
    #   c1: s = exp((-0.5 + 1.2) / 2) = e^0.35 = 1.4190675 -> 2.8381351 (inside); k3 mean 0.0093654
    #   loss = -((-0.997 - 0.00032249) + (2.8381351 - 0.00093654)) / 2 = -0.9199380
    loss, stats, _ = call(gspo_loss, adv=[-1.0, 2.0], clip_eps=0.003, clip_eps_high=0.5)
    assert loss == pytest.approx(-0.9199380, abs=1e-6)
    assert stats["clip_frac_low"] == pytest.approx(1 / 2)     # shares of completions
    assert stats["clip_frac_high"] == 0.0
    assert stats["ratio"] == pytest.approx((0.9900498 + 1.4190675) / 2, abs=1e-6)
    assert stats["kl"] == pytest.approx(0.0284056 / 5, abs=1e-7)   # over tokens


def test_gspo_gradient_is_shared_by_the_completions_tokens():
    # beta = 0: c0 is clipped, so no gradient; c1's ratio reaches each of its 2 tokens as s/2:
    #   d/dlogp of -(s * 2) / N = -(2 * 1.4190675 / 2) / 2 = -0.7095338
    _, _, grad = call(gspo_loss, adv=[-1.0, 2.0], beta=0.0, clip_eps=0.003, clip_eps_high=0.5)
    assert grad[0].tolist() == [0.0, 0.0, 0.0]
    assert grad[1, :2].tolist() == pytest.approx([-0.7095338] * 2, abs=1e-6)
    assert grad[1, 2].item() == 0.0


def test_dual_clip_hand_computed():
    # clip range [0.8, 1.2], c = 3, beta = 0:
    #   c0 (A = 1): 1.2, 1.2, 0.606531 -> mean 1.0021769
    #   c1 (A = -2): -1.6 (low-clipped); min(-6.640234, -2.4) = -6.640234 is below c*A = -6 -> -6
    #                -> mean -3.8
    #   loss = -(1.0021769 - 3.8) / 2 = 1.3989116
    loss, stats, grad = call(dual_clip_grpo_loss, beta=0.0, clip_eps=0.2, dual_clip_c=3.0)
    assert loss == pytest.approx(1.3989116, abs=1e-6)
    assert stats["clip_frac_dual"] == pytest.approx(1 / 5)
    assert stats["clip_frac"] == pytest.approx(4 / 5)        # 2 high + 1 low + 1 dual
    assert grad[1, 1].item() == 0.0                          # the dual-clipped token
    # c0 t2: -0.606531 / 3 tokens / 2 completions = -0.1010884
    assert grad[0, 2].item() == pytest.approx(-0.1010884, abs=1e-6)


def test_dual_clip_needs_c_above_one():
    with pytest.raises(ValueError):
        call(dual_clip_grpo_loss, clip_eps=0.2, dual_clip_c=1.0)


@pytest.mark.parametrize("name", ["dapo", "dr_grpo", "gspo", "dual_clip"])
def test_kl_needs_a_reference_and_none_without_it(name):
    logp, old, adv, mask = (torch.tensor(LOGP), torch.tensor(OLD), torch.tensor(ADV),
                            torch.tensor(MASK))
    with pytest.raises(ValueError):
        GRPO_LOSSES[name](logp, old, None, adv, mask, clip_eps=0.2, beta=0.1, **EXTRA[name])
    _, stats = GRPO_LOSSES[name](logp, old, None, adv, mask, clip_eps=0.2, beta=0.0, **EXTRA[name])
    assert stats["kl"] == 0.0


# ---- how the variants relate to GRPO ----------------------------------------------------------

FULL = [[1, 1, 1], [1, 1, 1]]


def grpo_and(fn, mask, **kw):
    args = (torch.tensor(LOGP), torch.tensor(OLD), torch.tensor(REF), torch.tensor(ADV),
            torch.tensor(mask))
    return grpo_loss(*args, clip_eps=0.2, beta=0.1)[0].item(), fn(*args, beta=0.1, **kw)[0].item()


def test_variants_reduce_to_grpo_where_their_change_does_not_apply():
    # Equal lengths: a token mean is a mean of completion means, and dividing by L = max_len
    # is dividing by each length.
    a, b = grpo_and(dapo_loss, FULL, clip_eps=0.2, clip_eps_high=0.2)
    assert b == pytest.approx(a, abs=1e-6)
    a, b = grpo_and(dr_grpo_loss, FULL, clip_eps=0.2, max_len=3)
    assert b == pytest.approx(a, abs=1e-6)
    # A dual clip too high to bite changes nothing, even with padding.
    a, b = grpo_and(dual_clip_grpo_loss, MASK, clip_eps=0.2, dual_clip_c=100.0)
    assert b == pytest.approx(a, abs=1e-6)
    # ... and the real ones do differ from GRPO on the padded batch.
    for fn, kw in [(dapo_loss, {"clip_eps_high": 0.2}), (dr_grpo_loss, {"max_len": 3}),
                   (dual_clip_grpo_loss, {"dual_clip_c": 3.0})]:
        a, b = grpo_and(fn, MASK, clip_eps=0.2, **kw)
        assert abs(a - b) > 1e-3


# ---- properties of every registered loss ------------------------------------------------------

@st.composite
def batches(draw, one_token=False):
    """Random (logp, old_logp, ref_logp, advantages, mask) with N <= 4 completions, L <= 5 slots."""
    n, l = draw(st.integers(1, 4)), draw(st.integers(1, 5))

    def grid(lo, hi):
        return torch.tensor(draw(st.lists(st.floats(lo, hi, width=32), min_size=n * l,
                                          max_size=n * l))).view(n, l)             # [N, L]
    logp = grid(-5.0, 0.0)
    old = logp + grid(-0.5, 0.5)
    ref = logp + grid(-1.0, 1.0)
    adv = torch.tensor(draw(st.lists(st.floats(-2.0, 2.0, width=32), min_size=n, max_size=n)))
    if one_token:
        cols = draw(st.lists(st.integers(0, l - 1), min_size=n, max_size=n))
        mask = torch.nn.functional.one_hot(torch.tensor(cols), l).bool()            # [N, L]
    else:
        mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n * l,
                                          max_size=n * l))).view(n, l)             # [N, L]
    return logp, old, ref, adv, mask


def loss_and_grad(name, logp, old, ref, adv, mask, beta=0.1):
    logp = logp.clone().requires_grad_(True)
    loss, _ = GRPO_LOSSES[name](logp, old, ref, adv, mask, clip_eps=0.2, beta=beta, **EXTRA[name])
    loss.backward()
    return loss.item(), logp.grad


@pytest.mark.parametrize("name", sorted(GRPO_LOSSES))
@settings(max_examples=50, deadline=None)
@given(batch=batches(), junk=st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e6]))
def test_masked_positions_change_neither_loss_nor_gradient(name, batch, junk):
    logp, old, ref, adv, mask = batch
    loss, grad = loss_and_grad(name, logp, old, ref, adv, mask)
    poison = [torch.where(mask, x, torch.full_like(x, junk)) for x in (logp, old, ref)]
    loss_p, grad_p = loss_and_grad(name, *poison, adv, mask)
    assert loss_p == pytest.approx(loss, abs=1e-6)
    assert torch.allclose(grad_p, grad, atol=1e-7)
    assert torch.all(grad_p[~mask] == 0)


@pytest.mark.parametrize("name", sorted(GRPO_LOSSES))
@settings(max_examples=50, deadline=None)
@given(batch=batches())
def test_zero_advantages_without_kl_give_zero_gradient(name, batch):
    logp, old, _, adv, mask = batch
    loss, grad = loss_and_grad(name, logp, old, None, torch.zeros_like(adv), mask, beta=0.0)
    assert loss == 0.0
    assert torch.all(grad == 0)


@settings(max_examples=50, deadline=None)
@given(batch=batches(one_token=True), beta=st.sampled_from([0.0, 0.1]))
def test_gspo_equals_grpo_when_every_completion_has_one_token(batch, beta):
    logp, old, ref, adv, mask = batch
    loss_g, grad_g = loss_and_grad("grpo", logp, old, ref, adv, mask, beta=beta)
    logp_s = logp.clone().requires_grad_(True)
    loss_s, _ = gspo_loss(logp_s, old, ref, adv, mask, clip_eps=0.2, beta=beta, clip_eps_high=0.2)
    loss_s.backward()
    assert loss_s.item() == pytest.approx(loss_g, abs=1e-6)
    assert torch.allclose(logp_s.grad, grad_g, atol=1e-6)


def test_each_registry_entry_calls_its_loss_with_the_keywords_it_reads_from_the_config():
    assert EXTRA == {"grpo": {}, "dapo": {"clip_eps_high": 0.28, "num_tokens": 5}, "dr_grpo": {"max_len": 8},
                     "gspo": {"clip_eps_high": 0.28}, "dual_clip": {"dual_clip_c": 3.0}}
    args = (torch.tensor(LOGP), torch.tensor(OLD), torch.tensor(REF), torch.tensor(ADV), torch.tensor(MASK))
    for name, fn in {"grpo": grpo_loss, "dapo": dapo_loss, "dr_grpo": dr_grpo_loss, "gspo": gspo_loss,
                     "dual_clip": dual_clip_grpo_loss}.items():
        got, _ = GRPO_LOSSES[name](*args, clip_eps=0.2, beta=0.1, **EXTRA[name])
        want, _ = fn(*args, clip_eps=0.2, beta=0.1, **EXTRA[name])
        assert got.item() == want.item(), name
    assert [e.batch_normalized for e in GRPO_LOSSES.values()] == [False, True, False, False, False]
