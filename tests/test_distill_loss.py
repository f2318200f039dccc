"""Distillation losses against numbers worked out by hand, their properties, and TRL's GKD loss."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab.losses.distill import chunked_distill_loss, forward_kl_loss, generalized_jsd_loss, reverse_kl_loss

from conftest import assert_masked_invariant

LN4, LN9, NAN = math.log(4), math.log(9), float("nan")
# One row, three positions, vocabulary 2. Position 1 is masked (NaN logits).
#   position 0: teacher [ln 9, 0] -> T = [0.9, 0.1]; student [0, ln 4] -> S = [0.2, 0.8]
#   position 2: teacher == student, every divergence is 0
# Each loss is the mean over the 2 unmasked positions, so half of position 0's divergence.
STUDENT = [[[0.0, LN4], [NAN, NAN], [1.0, -1.0]]]
TEACHER = [[[LN9, 0.0], [NAN, NAN], [1.0, -1.0]]]
MASK = [[1, 0, 1]]


def call(loss_fn, **kw):
    student = torch.tensor(STUDENT, requires_grad=True)
    loss, stats = loss_fn(student, torch.tensor(TEACHER), torch.tensor(MASK), **kw)
    return student, loss, stats


def test_forward_kl_matches_hand_computation():
    # KL(T || S) = 0.9 ln(0.9/0.2) + 0.1 ln(0.1/0.8) = 1.353670 - 0.207944 = 1.145726 -> / 2
    student, loss, stats = call(forward_kl_loss, temperature=1.0)
    assert loss.item() == pytest.approx(1.145726 / 2, abs=1e-6)
    assert stats["top1_agreement"] == pytest.approx(0.5)   # position 0 disagrees, 2 agrees
    # d KL(T || S) / d student logits = S - T = [-0.7, 0.7], halved by the mean
    loss.backward()
    assert torch.allclose(student.grad[0, 0], torch.tensor([-0.35, 0.35]), atol=1e-6)
    assert torch.all(student.grad[0, 1] == 0)


def test_forward_kl_with_temperature_is_scaled_by_its_square():
    # tau 2: T = softmax([ln 9, 0] / 2) = [0.75, 0.25], S = softmax([0, ln 4] / 2) = [1/3, 2/3]
    # KL(T || S) = 0.75 ln 2.25 + 0.25 ln 0.375 = 0.608198 - 0.245207 = 0.362990
    # tau^2 * KL / 2 = 4 * 0.362990 / 2 = 0.725980
    _, loss, _ = call(forward_kl_loss, temperature=2.0)
    assert loss.item() == pytest.approx(0.725980, abs=1e-6)


def test_reverse_kl_matches_hand_computation():
    # KL(S || T) = 0.2 ln(0.2/0.9) + 0.8 ln(0.8/0.1) = -0.300815 + 1.663553 = 1.362738 -> / 2
    _, loss, _ = call(reverse_kl_loss, temperature=1.0)
    assert loss.item() == pytest.approx(1.362738 / 2, abs=1e-6)


def test_jsd_matches_hand_computation():
    # beta 0.5: M = [0.55, 0.45]
    #   KL(T || M) = 0.9 ln(0.9/0.55) + 0.1 ln(0.1/0.45) = 0.443229 - 0.150408 = 0.292821
    #   KL(S || M) = 0.2 ln(0.2/0.55) + 0.8 ln(0.8/0.45) = -0.202320 + 0.460291 = 0.257971
    #   JSD = 0.5 * 0.292821 + 0.5 * 0.257971 = 0.275396 -> / 2
    _, loss, _ = call(generalized_jsd_loss, beta=0.5, temperature=1.0)
    assert loss.item() == pytest.approx(0.275396 / 2, abs=1e-6)
    # beta 0.2 (beta weighs the teacher): M = 0.2 T + 0.8 S = [0.34, 0.66]
    #   KL(T || M) = 0.9 ln(0.9/0.34) + 0.1 ln(0.1/0.66) = 0.876104 - 0.188707 = 0.687397
    #   KL(S || M) = 0.2 ln(0.2/0.34) + 0.8 ln(0.8/0.66) = -0.106126 + 0.153898 = 0.047772
    #   JSD = 0.2 * 0.687397 + 0.8 * 0.047772 = 0.137479 + 0.038218 = 0.175697 -> / 2
    _, loss, _ = call(generalized_jsd_loss, beta=0.2, temperature=1.0)
    assert loss.item() == pytest.approx(0.175697 / 2, abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_endpoints_are_rejected(beta):
    with pytest.raises(ValueError):
        call(generalized_jsd_loss, beta=beta, temperature=1.0)


def random_logits(seed, b, l, v):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, l, generator=g) < 0.6                                      # [B, L]
    student, teacher = (torch.randn(b, l, v, generator=g) * 3 for _ in range(2))    # [B, L, V]
    return mask, student, teacher


SHAPES = dict(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 3), l=st.integers(1, 5),
              v=st.integers(2, 7), temperature=st.floats(0.5, 3.0))


@settings(max_examples=50, deadline=None)
@given(**SHAPES)
def test_kls_are_nonnegative_and_zero_when_teacher_is_student(seed, b, l, v, temperature):
    mask, student, teacher = random_logits(seed, b, l, v)
    for loss_fn in (forward_kl_loss, reverse_kl_loss):
        loss, _ = loss_fn(student, teacher, mask, temperature=temperature)
        assert loss.item() >= 0
        same, stats = loss_fn(student, student.clone(), mask, temperature=temperature)
        assert same.item() == pytest.approx(0.0, abs=1e-6)
        assert stats["top1_agreement"] == (1.0 if mask.any() else 0.0)


@settings(max_examples=50, deadline=None)
@given(**SHAPES)
def test_jsd_at_half_is_symmetric(seed, b, l, v, temperature):
    mask, student, teacher = random_logits(seed, b, l, v)
    loss, _ = generalized_jsd_loss(student, teacher, mask, beta=0.5, temperature=temperature)
    swapped, _ = generalized_jsd_loss(teacher, student, mask, beta=0.5, temperature=temperature)
    assert loss.item() >= 0
    assert loss.item() == pytest.approx(swapped.item(), abs=1e-6)


LOSSES = [(forward_kl_loss, {}), (reverse_kl_loss, {}), (generalized_jsd_loss, {"beta": 0.3})]


@settings(max_examples=50, deadline=None)
@given(**SHAPES, variant=st.sampled_from(LOSSES))
def test_masked_positions_change_neither_loss_nor_gradient(seed, b, l, v, temperature, variant):
    loss_fn, kw = variant
    mask, student, teacher = random_logits(seed, b, l, v)
    results = []
    for fill in (None, NAN, 1e4):
        s, t = student.clone(), teacher.clone()
        if fill is not None:
            s[~mask], t[~mask] = fill, fill
        s.requires_grad_(True)
        loss, _ = loss_fn(s, t, mask, temperature=temperature, **kw)
        loss.backward()
        results.append((loss.item(), s.grad))
    assert_masked_invariant(results, mask)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_agrees_with_trl_gkd(beta, temperature):
    gkd = pytest.importorskip("trl.experimental.gkd")
    mask, student, teacher = random_logits(7, 3, 5, 11)
    labels = torch.where(mask, 1, -100)                                             # [B, L]
    theirs = gkd.GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta,
                                                 temperature=temperature)
    if beta == 0.0:
        ours, _ = forward_kl_loss(student, teacher, mask, temperature=temperature)
    elif beta == 1.0:
        ours, _ = reverse_kl_loss(student, teacher, mask, temperature=temperature)
    else:
        ours, _ = generalized_jsd_loss(student, teacher, mask, beta=beta,
                                       temperature=temperature)
    # TRL does not scale by tau^2
    assert ours.item() / temperature ** 2 == pytest.approx(theirs.item(), abs=1e-6)


REFERENCES = {"forward_kl": (forward_kl_loss, {}), "reverse_kl": (reverse_kl_loss, {}),
              "jsd": (generalized_jsd_loss, {"beta": 0.3})}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 3), l=st.integers(1, 9), v=st.integers(2, 7),
       temperature=st.floats(0.5, 3.0), chunk=st.integers(1, 4),
       divergence=st.sampled_from(sorted(REFERENCES)))
def test_chunked_equals_the_full_logits_reference(seed, b, l, v, temperature, chunk, divergence):
    """Loss, gradient and agreement of the chunked path equal the reference's (1e-5), with junk
    (NaN) at masked positions, on a strided view of the logits as the stage passes them."""
    mask, student, teacher = random_logits(seed, b, l + 1, v)
    mask = mask[:, :-1]
    student[:, :-1][~mask], teacher[:, :-1][~mask] = NAN, NAN
    ref_fn, kw = REFERENCES[divergence]
    results = []
    for fn in (lambda s, t: ref_fn(s, t, mask, temperature=temperature, **kw),
               lambda s, t: chunked_distill_loss(s, t, mask, divergence=divergence, temperature=temperature,
                                                 chunk_size=chunk, **kw)):
        leaf = student.clone().requires_grad_(True)
        loss, stats = fn(leaf[:, :-1], teacher[:, :-1])                             # [B, L, V] views
        loss.backward()
        results.append((loss.item(), leaf.grad, stats["top1_agreement"]))
    (ref, ref_grad, ref_agree), (ours, grad, agree) = results
    assert ours == pytest.approx(ref, abs=1e-5)
    assert torch.allclose(grad, ref_grad, atol=1e-5) and torch.all(grad[:, -1] == 0)
    assert agree == pytest.approx(ref_agree)


def test_chunked_normalizer_lets_micro_batch_losses_add_up():
    mask, student, teacher = random_logits(3, 4, 6, 5)
    whole, _ = chunked_distill_loss(student, teacher, mask, divergence="forward_kl", temperature=1.0)
    n = mask.sum().item()
    parts = sum(chunked_distill_loss(student[i:i + 2], teacher[i:i + 2], mask[i:i + 2], divergence="forward_kl",
                                     temperature=1.0, normalizer=n)[0].item() for i in (0, 2))
    assert parts == pytest.approx(whole.item(), abs=1e-6)
