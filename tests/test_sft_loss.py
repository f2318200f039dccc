"""sft_loss against numbers worked out by hand, and masking properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab.losses.sft import sft_loss, sft_nll

from conftest import assert_masked_invariant

LN2 = math.log(2)
NAN = float("nan")
# Two rows, three positions, vocabulary 3. Row 0: a prompt position, then two response tokens.
# Row 1: one response token, then two padding positions (label -100, logits NaN).
#   [0, 0, ln 2] -> p = [0.25, 0.25, 0.5];  [ln 2, 0, 0] -> p = [0.5, 0.25, 0.25]
LOGITS = [[[5.0, 5.0, 5.0], [0.0, 0.0, LN2], [LN2, 0.0, 0.0]],
          [[LN2, 0.0, 0.0], [NAN, NAN, NAN], [NAN, NAN, NAN]]]
LABELS = [[-100, 2, 0], [1, -100, -100]]
MASK = [[0, 1, 1], [1, 0, 0]]
# per-token NLL: row 0: -ln 0.5 = ln 2, -ln 0.5 = ln 2 ; row 1: -ln 0.25 = 2 ln 2


def call(reduction):
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss, stats = sft_loss(logits, torch.tensor(LABELS), torch.tensor(MASK), reduction=reduction)
    return logits, loss, stats


def test_token_reduction_matches_hand_computation():
    # (ln 2 + ln 2 + 2 ln 2) / 3 = 4 ln 2 / 3 = 0.924196
    logits, loss, stats = call("token")
    assert loss.item() == pytest.approx(4 * LN2 / 3, abs=1e-6)
    assert stats["num_tokens"] == 3.0
    # argmax: row 0 pos 1 -> 2 (right), pos 2 -> 0 (right); row 1 pos 0 -> 0 (label 1, wrong)
    assert stats["token_accuracy"] == pytest.approx(2 / 3)
    # d loss / d logits = (softmax - onehot) / 3; masked positions (NaN logits) get exactly 0
    loss.backward()
    assert torch.allclose(logits.grad[0, 1], torch.tensor([0.25, 0.25, -0.5]) / 3)
    assert torch.allclose(logits.grad[1, 0], torch.tensor([0.5, -0.75, 0.25]) / 3)
    assert torch.all(logits.grad[0, 0] == 0) and torch.all(logits.grad[1, 1:] == 0)


def test_sequence_reduction_matches_hand_computation():
    # row 0 mean (ln 2 + ln 2) / 2 = ln 2 ; row 1 = 2 ln 2 -> (ln 2 + 2 ln 2) / 2 = 1.039721
    logits, loss, _ = call("sequence")
    assert loss.item() == pytest.approx(1.5 * LN2, abs=1e-6)
    loss.backward()
    # row 1's single token weighs 1/2, row 0's two tokens 1/4 each
    assert torch.allclose(logits.grad[1, 0], torch.tensor([0.5, -0.75, 0.25]) / 2)
    assert torch.allclose(logits.grad[0, 1], torch.tensor([0.25, 0.25, -0.5]) / 4)


def test_sequence_reduction_skips_rows_without_response():
    logits = torch.zeros(2, 2, 3)                         # uniform: every token costs ln 3
    mask = torch.tensor([[1, 1], [0, 0]])
    loss, _ = sft_loss(logits, torch.zeros(2, 2, dtype=torch.long), mask, reduction="sequence")
    assert loss.item() == pytest.approx(math.log(3), abs=1e-6)


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError):
        call("mean")


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 3), l=st.integers(1, 5),
       v=st.integers(2, 7), reduction=st.sampled_from(["token", "sequence"]))
def test_masked_positions_change_neither_loss_nor_gradient(seed, b, l, v, reduction):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, l, generator=g) < 0.6                                      # [B, L]
    logits = torch.randn(b, l, v, generator=g) * 3                                  # [B, L, V]
    labels = torch.randint(0, v, (b, l), generator=g)                               # [B, L]
    results = []
    for logit_fill, label_fill in ((None, None), (NAN, -100), (1e4, 0)):
        x = logits.clone()
        y = labels.clone()
        if logit_fill is not None:
            x[~mask] = logit_fill
            y[~mask] = label_fill
        x.requires_grad_(True)
        loss, _ = sft_loss(x, y, mask, reduction=reduction)
        loss.backward()
        results.append((loss.item(), x.grad))
    assert_masked_invariant(results, mask)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_sft_nll_on_logprobs_equals_sft_loss_on_logits(reduction):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (3, 5))
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    ref, _ = sft_loss(logits, labels, mask, reduction=reduction)
    ref_grad, = torch.autograd.grad(ref, logits)
    logp = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)  # [B, L]
    ours, stats = sft_nll(logp, mask, reduction=reduction)
    grad, = torch.autograd.grad(ours, logits)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6) and stats["num_tokens"] == 5
    assert torch.allclose(grad, ref_grad, atol=1e-6)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_sft_nll_micro_batches_add_up_to_the_batch(reduction):
    logp = -torch.rand(4, 6)
    mask = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0], [0] * 6, [1, 0, 0, 0, 0, 0]])
    full, _ = sft_nll(logp, mask, reduction=reduction)
    norm = mask.sum().item() if reduction == "token" else mask.any(-1).sum().item()
    parts = sum(sft_nll(logp[i:i + 1], mask[i:i + 1], reduction=reduction, normalizer=norm)[0] for i in range(4))
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)
