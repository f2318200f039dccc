"""Losses by name, for a config to pick one (STYLE.md rule 5): policy losses, then preference losses.

Every entry takes ``(logp, old_logp, ref_logp, advantages, mask, *, clip_eps, beta)`` and returns
``(loss, stats)``; some need one more keyword (see each function):

    loss_fn = GRPO_LOSSES["dapo"]
    loss, stats = loss_fn(logp, old_logp, ref_logp, adv, mask, clip_eps=0.2, beta=0.0,
                          clip_eps_high=0.28)
"""

from __future__ import annotations

from r1lab.losses.dpo import cdpo_loss, dpo_hinge_loss, dpo_loss, ipo_loss, rdpo_loss
from r1lab.losses.grpo import grpo_loss
from r1lab.losses.grpo_variants import dapo_loss, dr_grpo_loss, dual_clip_grpo_loss, gspo_loss

GRPO_LOSSES = {
    "grpo": grpo_loss,                      # no extra keyword
    "dapo": dapo_loss,                      # clip_eps_high (and num_tokens for micro-batches)
    "dr_grpo": dr_grpo_loss,                # max_len
    "gspo": gspo_loss,                      # clip_eps_high
    "dual_clip": dual_clip_grpo_loss,       # dual_clip_c
}

# Every entry takes the policy's and the reference's per-token log-probs of the chosen and the
# rejected responses, their masks, and ``beta`` and ``average``; DPO_EXTRA_KEYWORDS lists what
# each takes besides, which the dpo stage reads from its config fields of the same names:
#
#     loss, stats = DPO_LOSSES["cdpo"](pc, pr, rc, rr, mask_c, mask_r, beta=0.1, average=False, eps=0.1)
DPO_LOSSES = {
    "dpo": dpo_loss,                        # Rafailov et al. 2023
    "ipo": ipo_loss,                        # Azar et al. 2024 (TRL averages: average=True)
    "hinge": dpo_hinge_loss,                # SLiC-HF / RSO hinge-norm
    "cdpo": cdpo_loss,                      # label-smoothed DPO: eps
    "rdpo": rdpo_loss,                      # robust DPO: eps < 1/2
}
DPO_EXTRA_KEYWORDS = {"cdpo": ("eps",), "rdpo": ("eps",)}
