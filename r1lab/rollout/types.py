"""What every generation backend returns, and the prompt padding they share."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    completion_ids: torch.Tensor   # [N, L] long, pad id after each row's end
    mask: torch.Tensor             # [N, L] bool, True on generated tokens
    logprobs: torch.Tensor         # [N, L] float, log-prob of each sampled token, 0 where masked
    finish_reasons: list[str]      # per row: "eos" | "stop" | "length"

    @property
    def lengths(self) -> torch.Tensor:  # [N]
        return self.mask.sum(-1)

    def texts(self, tokenizer) -> list[str]:
        """Each completion decoded, its ending token included (stop strings are kept)."""
        return tokenizer.batch_decode([ids[m] for ids, m in zip(self.completion_ids, self.mask)])


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (ids [B, P], attention mask [B, P]) with padding on the left."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask
