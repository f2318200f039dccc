"""PPO for language models: the clipped surrogate of Schulman et al. (2017), the clipped value
loss of OpenAI baselines' ppo2, and the KL-penalised token rewards of InstructGPT
(Ouyang et al., 2022; after Ziegler et al., 2019 and Stiennon et al., 2020).

    policy:  L = -mean_t min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t),  r_t = exp(logp_t - old_logp_t)
    value:   L = 0.5 * mean_t max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -c, c) - R_t)^2)
    rewards: rew_t = -kl_coef * (logp_t - ref_logp_t) + [t == last completion token] * score

Where we depart: the paper's expectation over timesteps becomes a mean over every unmasked
token of the batch (as TRL's PPO trainer did), not a per-completion mean as in ``grpo.py``.
Value clipping is not in the paper; it is baselines' ppo2 (studied by Engstrom et al., 2020).
The per-token KL uses the plain k1 estimate logp - ref_logp, as InstructGPT's objective
writes it, and InstructGPT's pretraining-mix term (PPO-ptx) is left to the stage loop.
"""

from __future__ import annotations

import torch

from r1lab.losses.common import masked_mean


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, *,
                    clip_eps: float) -> tuple[torch.Tensor, dict[str, float]]:
    """logp, old_logp, advantages, mask: [N, L] (per-token advantages, e.g. from GAE).

    Returns (loss, stats); stats: ``clip_frac`` (share of tokens whose clipped term was the
    minimum), ``ratio`` (mean r_t), ``approx_kl`` (mean of (r - 1) - log r, an estimate of
    KL(old || new) as cleanrl logs it). Masked positions contribute neither value nor
    gradient, even if they hold inf or NaN.
    """
    mask = mask.bool()
    zero = torch.zeros_like(logp)
    logp = torch.where(mask, logp, zero)                                            # [N, L]
    old_logp = torch.where(mask, old_logp, zero)                                    # [N, L]
    adv = torch.where(mask, advantages, zero)                                       # [N, L]
    log_ratio = logp - old_logp                                                     # [N, L]
    ratio = torch.exp(log_ratio)                                                    # [N, L]
    unclipped = ratio * adv                                                         # [N, L]
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv                         # [N, L]
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask)

    with torch.no_grad():
        stats = {
            "loss": loss.item(),
            "clip_frac": masked_mean((clipped < unclipped).float(), mask).item(),
            "ratio": masked_mean(ratio, mask).item(),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, mask).item(),
        }
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, *,
                   clip_range: float) -> tuple[torch.Tensor, dict[str, float]]:
    """values, old_values, returns, mask: [N, L]. Returns (loss, stats).

    The new value may move at most ``clip_range`` from the rollout's value before its error
    stops shrinking the loss; the max keeps the pessimistic of the two errors. stats:
    ``clip_frac`` (share of tokens where the clipped error was the larger), ``value`` and
    ``return`` (their means over unmasked tokens).
    """
    mask = mask.bool()
    zero = torch.zeros_like(values)
    values = torch.where(mask, values, zero)                                        # [N, L]
    old_values = torch.where(mask, old_values, zero)                                # [N, L]
    returns = torch.where(mask, returns, zero)                                      # [N, L]
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)  # [N, L]
    unclipped_err = (values - returns) ** 2                                         # [N, L]
    clipped_err = (clipped_values - returns) ** 2                                   # [N, L]
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)

    with torch.no_grad():
        stats = {
            "loss": loss.item(),
            "clip_frac": masked_mean((clipped_err > unclipped_err).float(), mask).item(),
            "value": masked_mean(values, mask).item(),
            "return": masked_mean(returns, mask).item(),
        }
    return loss, stats


def kl_penalized_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                         mask: torch.Tensor, *, kl_coef: float) -> torch.Tensor:
    """score: [N]; logp, ref_logp, mask: [N, L] -> token rewards [N, L].

    Each completion token is charged -kl_coef * (logp - ref_logp); the sequence-level score
    (reward model or verifier) is added on the last unmasked token of its row. Masked
    positions get 0. Pass the rollout's log-probs (no gradient): these are rewards, not a loss.
    Example: score 1, logp - ref_logp = [0.1, 0, 0.1], mask [1, 1, 1], kl_coef 0.1
    -> [-0.01, 0, 0.99].
    """
    mask = mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)    # [N, L]
    last = torch.where(mask, positions, -1).amax(-1)                                # [N]
    if (last < 0).any():
        raise ValueError("kl_penalized_rewards: every row needs at least one unmasked token")
    kl = torch.where(mask, logp - ref_logp, torch.zeros_like(logp))                 # [N, L]
    rewards = -kl_coef * kl                                                         # [N, L]
    return rewards.scatter_add(1, last[:, None], score[:, None].to(rewards.dtype))  # [N, L]
