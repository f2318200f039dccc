"""Losses and advantage estimators by the name a config picks them with (STYLE.md rule 5).

An entry names its function as ``"module:function"`` and imports it on first call, so reading a
config imports no torch; each entry calls like the function it names. A policy loss also says
which keywords it takes from the stage's config, so adding a variant is one entry here:

    loss_fn = GRPO_LOSSES["dapo"]
    loss, stats = loss_fn(logp, old_logp, ref_logp, adv, mask, clip_eps=0.2, beta=0.0,
                          **loss_fn.keywords(cfg, n_tokens))       # clip_eps_high, num_tokens
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any


@cache
def _resolve(function: str) -> Callable:
    module, name = function.split(":")
    return getattr(importlib.import_module(module), name)


def _none(*_) -> dict:
    return {}


@dataclass(frozen=True)
class Entry:
    """A function of r1lab's, named ``"module:function"``, imported when first called; with the
    keywords it takes from a stage's config besides the ones every entry of its registry takes."""
    function: str
    keywords: Callable[..., dict] = field(default=_none, compare=False)
    batch_normalized: bool = False    # a policy loss that divides by the whole batch's token count

    def __call__(self, *args, **kwargs) -> Any:
        return _resolve(self.function)(*args, **kwargs)


def _clip_high(cfg) -> float:
    return cfg.clip_eps_high or cfg.clip_eps


# Every entry takes (logp, old_logp, ref_logp, advantages, mask, *, clip_eps, beta) and returns
# (loss, stats); ``keywords(cfg, n_tokens)`` gives the rest from a grpo/ppo config and the
# batch's completion-token count. A batch_normalized loss already divides by the whole batch's
# token count, so the losses of its micro-batches simply add up.
GRPO_LOSSES = {
    "grpo": Entry("r1lab.losses.grpo:grpo_loss"),                                    # Shao et al. 2024
    "dapo": Entry("r1lab.losses.grpo_variants:dapo_loss", batch_normalized=True,     # Yu et al. 2025
                  keywords=lambda cfg, n_tokens: {"clip_eps_high": _clip_high(cfg), "num_tokens": n_tokens}),
    "dr_grpo": Entry("r1lab.losses.grpo_variants:dr_grpo_loss",                      # Liu et al. 2025
                     keywords=lambda cfg, n_tokens: {"max_len": cfg.sampling.max_new_tokens}),
    "gspo": Entry("r1lab.losses.grpo_variants:gspo_loss",                            # Zheng et al. 2025
                  keywords=lambda cfg, n_tokens: {"clip_eps_high": _clip_high(cfg)}),
    "dual_clip": Entry("r1lab.losses.grpo_variants:dual_clip_grpo_loss",             # Ye et al. 2020
                       keywords=lambda cfg, n_tokens: {"dual_clip_c": cfg.dual_clip_c}),
}

# Every entry takes the policy's and the reference's per-token log-probs of the chosen and the
# rejected responses, their masks, ``beta`` and ``average``; ``keywords(cfg)`` gives the rest
# from a dpo config:
#
#     loss, stats = DPO_LOSSES["cdpo"](pc, pr, rc, rr, mask_c, mask_r, beta=0.1, average=False, eps=0.1)
DPO_LOSSES = {
    "dpo": Entry("r1lab.losses.dpo:dpo_loss"),                                       # Rafailov et al. 2023
    "ipo": Entry("r1lab.losses.dpo:ipo_loss"),                                       # Azar et al. 2024
    "hinge": Entry("r1lab.losses.dpo:dpo_hinge_loss"),                               # SLiC-HF / RSO hinge-norm
    "cdpo": Entry("r1lab.losses.dpo:cdpo_loss", keywords=lambda cfg: {"eps": cfg.eps}),   # label smoothing
    "rdpo": Entry("r1lab.losses.dpo:rdpo_loss", keywords=lambda cfg: {"eps": cfg.eps}),   # robust DPO, eps < 1/2
}

# (rewards [N], group_size) -> advantages [N] (r1lab/losses/advantages.py)
ADVANTAGE_ESTIMATORS = {
    "group": Entry("r1lab.losses.advantages:group_std_advantages"),                  # R1's group-relative
    "batch": Entry("r1lab.losses.advantages:batch_std_advantages"),
    "none": Entry("r1lab.losses.advantages:mean_only_advantages"),                   # Dr. GRPO
    "rloo": Entry("r1lab.losses.advantages:rloo_advantages"),
    "reinforce_pp": Entry("r1lab.losses.advantages:reinforce_pp_estimator"),
}

# logit distillation's divergences: the keys of r1lab.losses.distill.DIVERGENCES
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
