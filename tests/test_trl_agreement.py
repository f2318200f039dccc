"""Our GRPO-family losses against TRL's own implementation, on identical random inputs.

TRL computes these losses inside ``GRPOTrainer._compute_loss`` rather than in standalone
functions, so the test calls that method with a minimal stand-in for the trainer (the fields
it reads) and per-token log-probs injected in place of a model forward. TRL is pinned in the
test extras because this reaches into its internals.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from r1lab.losses.grpo import grpo_loss
from r1lab.losses.grpo_variants import dapo_loss, dr_grpo_loss, gspo_loss

trl = pytest.importorskip("trl")


class _SingleProcess:
    num_processes = 1

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def trl_loss(logp, old, ref, adv, mask, loss_type, eps_low, eps_high, beta, level, max_len):
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level,
        beta=beta, args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=max_len, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        accelerator=_SingleProcess(), _metrics={"train": defaultdict(list)})
    n, length = mask.shape
    inputs = {"prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1),
              "completion_ids": torch.zeros(n, length, dtype=torch.long), "completion_mask": mask.float(),
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum().float()}
    return trl.GRPOTrainer._compute_loss(trainer, None, inputs), trainer._metrics["train"]


CASES = {  # TRL loss_type, our function, eps low/high, TRL importance level, max_len
    "grpo": ("grpo", lambda *a, beta: grpo_loss(*a, clip_eps=0.2, beta=beta), 0.2, 0.2, "token", None),
    "dapo": ("dapo", lambda *a, beta: dapo_loss(*a, clip_eps=0.2, beta=beta, clip_eps_high=0.28),
             0.2, 0.28, "token", None),
    "dr_grpo": ("dr_grpo", lambda *a, beta: dr_grpo_loss(*a, clip_eps=0.2, beta=beta, max_len=16),
                0.2, 0.2, "token", 16),
    "gspo": ("grpo", lambda *a, beta: gspo_loss(*a, clip_eps=0.05, beta=beta, clip_eps_high=0.08),
             0.05, 0.08, "sequence", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_gradient_agree_with_trl(name, beta):
    loss_type, ours, lo, hi, level, max_len = CASES[name]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n, length = 8, 12
        logp = -torch.rand(n, length, generator=gen) * 3                     # [N, L]
        old = logp + 0.3 * torch.randn(n, length, generator=gen)              # ratios both sides of the clip
        ref = logp + 0.3 * torch.randn(n, length, generator=gen)
        adv = torch.randn(n, generator=gen)                                   # [N]
        lengths = torch.randint(1, length + 1, (n,), generator=gen)
        mask = torch.arange(length)[None] < lengths[:, None]                  # [N, L]

        x1 = logp.clone().requires_grad_(True)
        a, stats = ours(x1, old, ref, adv, mask, beta=beta)
        a.backward()
        x2 = logp.clone().requires_grad_(True)
        b, metrics = trl_loss(x2, old, ref, adv, mask, loss_type, lo, hi, beta, level, max_len)
        b.backward()
        assert a.item() == pytest.approx(b.item(), abs=1e-6)
        assert torch.allclose(x1.grad * mask, x2.grad * mask, atol=1e-6)
        for ours_key, trl_key in [("clip_frac_low", "clip_ratio/low_mean"),
                                  ("clip_frac_high", "clip_ratio/high_mean"),
                                  ("clip_frac", "clip_ratio/region_mean")]:
            assert stats[ours_key] == pytest.approx(metrics[trl_key][-1], abs=1e-6)
        if beta:
            assert stats["kl"] == pytest.approx(metrics["kl"][-1], abs=1e-6)
