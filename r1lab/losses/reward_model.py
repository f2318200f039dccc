"""The Bradley-Terry pairwise loss for reward models (Bradley and Terry, 1952), as used to train
the reward models of Stiennon et al. (2020) and InstructGPT (Ouyang et al., 2022, Eq. 1):

    L = -mean_b log sigmoid(r(x, y_w) - r(x, y_l))

Where we depart: InstructGPT takes all K-choose-2 pairs of a prompt's K ranked responses as one
batch element; here each row is one pair, and the caller expands rankings into pairs. Llama 2's
margin term (Touvron et al., 2023) and any reward-centering penalty are left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_rewards: torch.Tensor,
                       rejected_rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """chosen_rewards, rejected_rewards: [B] scalar rewards of each pair. Returns (loss, stats).

    stats: ``accuracy`` (share of pairs with the chosen reward strictly larger) and ``margin``
    (mean chosen - rejected reward). Example: margins [1, 0, -2] -> loss
    (0.313262 + 0.693147 + 2.126928) / 3 = 1.044446, accuracy 1/3, margin -1/3.
    """
    margin = chosen_rewards - rejected_rewards                                      # [B]
    loss = -F.logsigmoid(margin).mean()

    with torch.no_grad():
        stats = {
            "loss": loss.item(),
            "accuracy": (margin > 0).float().mean().item(),
            "margin": margin.mean().item(),
        }
    return loss, stats
