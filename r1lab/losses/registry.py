"""Policy losses by name, for a config to pick one (STYLE.md rule 5).

Every entry takes ``(logp, old_logp, ref_logp, advantages, mask, *, clip_eps, beta)`` and returns
``(loss, stats)``; some need one more keyword (see each function):

    loss_fn = GRPO_LOSSES["dapo"]
    loss, stats = loss_fn(logp, old_logp, ref_logp, adv, mask, clip_eps=0.2, beta=0.0,
                          clip_eps_high=0.28)
"""

from __future__ import annotations

from r1lab.losses.grpo import grpo_loss
from r1lab.losses.grpo_variants import dapo_loss, dr_grpo_loss, dual_clip_grpo_loss, gspo_loss

GRPO_LOSSES = {
    "grpo": grpo_loss,                      # no extra keyword
    "dapo": dapo_loss,                      # clip_eps_high (and num_tokens for micro-batches)
    "dr_grpo": dr_grpo_loss,                # max_len
    "gspo": gspo_loss,                      # clip_eps_high
    "dual_clip": dual_clip_grpo_loss,       # dual_clip_c
}
