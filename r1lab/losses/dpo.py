"""Direct preference losses on a chosen (y_w) and a rejected (y_l) response per prompt.

    h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)]      (log-ratio margin)
    s(z) = -log sigmoid(z)

    dpo_loss        s(beta h)                                    Rafailov et al., 2023, Eq. 7
    ipo_loss        (h - 1 / (2 beta))^2                         Azar et al., 2024, Eq. 17 (tau)
    dpo_hinge_loss  max(0, 1 - beta h)                           Liu et al., 2024 (RSO)
    cdpo_loss       (1 - eps) s(beta h) + eps s(-beta h)         Mitchell, 2023
    rdpo_loss       [(1 - eps) s(beta h) - eps s(-beta h)] / (1 - 2 eps)   Chowdhury et al., 2024

The hinge is SLiC-HF's (Zhao et al., 2023) on reference-normalised log-probs, which RSO names
"hinge-norm"; 1/beta is its margin. Of the two "robust" DPOs, cDPO ("A note on DPO with noisy
preferences and relationship to IPO") is the expected DPO loss when each label is flipped with
probability eps, i.e. label smoothing: it is >= 0 and each pair's optimum is finite
(sigmoid(beta h) = 1 - eps). rDPO ("Provably Robust DPO") is the unbiased estimate of the clean
DPO loss under that noise: it can be negative and, like DPO, pushes h up without bound. TRL
names rDPO "robust" and offered cDPO as ``label_smoothing`` on its "sigmoid" loss; both are here
under their papers' names.

Inputs are per-token log-probs, [B, Lw] for the chosen and [B, Ll] for the rejected responses,
under the policy and the reference, with masks that are 1 on response tokens only (prompt and
padding 0). A sequence's log-prob is the masked SUM, as in the papers; ``average=True`` takes
the masked mean instead (as some tutorials do, and as TRL does for IPO, a choice it confirmed
with the IPO authors). Each loss is the mean over pairs and comes with stats:
``chosen_reward`` and ``rejected_reward`` (batch means of the implicit reward
beta * (log pi(y) - log ref(y)), DPO's Sec. 5, up to the prompt's beta * log Z(x)),
``reward_margin`` (mean chosen - rejected reward) and ``reward_accuracy`` (share of pairs whose
chosen reward is strictly larger). Where we depart: nowhere in the formulas.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logp(logp: torch.Tensor, mask: torch.Tensor, *, average: bool) -> torch.Tensor:
    """Masked sum (or mean) of per-token log-probs: [B, L] -> [B]. Masked NaN never leaks."""
    mask = mask.bool()
    total = torch.where(mask, logp, torch.zeros_like(logp)).sum(-1)                 # [B]
    if average:
        return total / mask.sum(-1).clamp(min=1)                                    # [B]
    return total


def preference_logratios(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                         ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                         chosen_mask: torch.Tensor, rejected_mask: torch.Tensor, *,
                         average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y) - log ref(y) of the chosen and of the rejected responses: each [B]."""
    chosen = (sequence_logp(policy_chosen, chosen_mask, average=average)
              - sequence_logp(ref_chosen, chosen_mask, average=average))             # [B]
    rejected = (sequence_logp(policy_rejected, rejected_mask, average=average)
                - sequence_logp(ref_rejected, rejected_mask, average=average))       # [B]
    return chosen, rejected


def _stats(loss: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
           beta: float) -> dict[str, float]:
    with torch.no_grad():
        chosen_reward = beta * chosen                                               # [B]
        rejected_reward = beta * rejected                                           # [B]
        return {
            "loss": loss.item(),
            "chosen_reward": chosen_reward.mean().item(),
            "rejected_reward": rejected_reward.mean().item(),
            "reward_margin": (chosen_reward - rejected_reward).mean().item(),
            "reward_accuracy": (chosen_reward > rejected_reward).float().mean().item(),
        }


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, chosen_mask: torch.Tensor,
             rejected_mask: torch.Tensor, *, beta: float,
             average: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO's sigmoid loss, mean_b -log sigmoid(beta h_b). Equals log 2 when policy == reference."""
    chosen, rejected = preference_logratios(policy_chosen, policy_rejected, ref_chosen,
                                            ref_rejected, chosen_mask, rejected_mask,
                                            average=average)
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, _stats(loss, chosen, rejected, beta)


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, chosen_mask: torch.Tensor,
             rejected_mask: torch.Tensor, *, beta: float,
             average: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """IPO, mean_b (h_b - 1/(2 beta))^2: regresses the margin onto 1/(2 beta) instead of +inf."""
    chosen, rejected = preference_logratios(policy_chosen, policy_rejected, ref_chosen,
                                            ref_rejected, chosen_mask, rejected_mask,
                                            average=average)
    loss = ((chosen - rejected - 1 / (2 * beta)) ** 2).mean()
    return loss, _stats(loss, chosen, rejected, beta)


def dpo_hinge_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                   ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                   chosen_mask: torch.Tensor, rejected_mask: torch.Tensor, *, beta: float,
                   average: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge on the margin, mean_b max(0, 1 - beta h_b): pairs with h >= 1/beta stop pulling."""
    chosen, rejected = preference_logratios(policy_chosen, policy_rejected, ref_chosen,
                                            ref_rejected, chosen_mask, rejected_mask,
                                            average=average)
    loss = torch.relu(1 - beta * (chosen - rejected)).mean()
    return loss, _stats(loss, chosen, rejected, beta)


def cdpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
              ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, chosen_mask: torch.Tensor,
              rejected_mask: torch.Tensor, *, beta: float, eps: float,
              average: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Conservative (label-smoothed) DPO: the DPO loss against a target of 1 - eps, not 1."""
    chosen, rejected = preference_logratios(policy_chosen, policy_rejected, ref_chosen,
                                            ref_rejected, chosen_mask, rejected_mask,
                                            average=average)
    z = beta * (chosen - rejected)                                                  # [B]
    loss = (-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)).mean()
    return loss, _stats(loss, chosen, rejected, beta)


def rdpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
              ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, chosen_mask: torch.Tensor,
              rejected_mask: torch.Tensor, *, beta: float, eps: float,
              average: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Robust DPO: the DPO loss de-biased for labels flipped with probability eps < 1/2."""
    if not 0 <= eps < 0.5:
        raise ValueError("rdpo_loss needs 0 <= eps < 0.5")
    chosen, rejected = preference_logratios(policy_chosen, policy_rejected, ref_chosen,
                                            ref_rejected, chosen_mask, rejected_mask,
                                            average=average)
    z = beta * (chosen - rejected)                                                  # [B]
    per_pair = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)  # [B]
    loss = per_pair.mean()
    return loss, _stats(loss, chosen, rejected, beta)
