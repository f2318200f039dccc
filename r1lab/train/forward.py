"""The forward rung shared by RL stages: per-token log-probs of completions after prompts."""

from __future__ import annotations

import torch

from r1lab.losses.common import entropy_from_logits
from r1lab.losses.logprobs import chunked_token_logprobs
from r1lab.rollout.types import left_pad


def prompt_completion_batch(prompts: list[list[int]], completion_ids: torch.Tensor,
                            completion_mask: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by right-padded completions, as one model input.

    prompts: one id list per row (already repeated per sample); completion_ids/mask: [N, L].
    Returns input_ids, attention_mask, position_ids [N, P+L] and completion_mask [N, L].
    """
    p_ids, p_mask = left_pad(prompts, pad_id)                               # [N, P]
    c_mask = completion_mask.long()
    ids = torch.cat([p_ids, completion_ids.masked_fill(~completion_mask.bool(), pad_id)], 1)  # [N, P+L]
    attn = torch.cat([p_mask, c_mask], 1)                                   # [N, P+L]
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": attn, "position_ids": pos,
            "completion_mask": completion_mask.bool()}


def completion_logprobs(model, batch: dict[str, torch.Tensor], *, temperature: float = 1.0,
                        with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(completion token) for each completion position: [N, L], and optionally entropy [N, L].

    Logits are divided by the sampling temperature so the numbers match the sampler's.
    """
    device = next(model.parameters()).device
    n_completion = batch["completion_mask"].shape[1]
    logits = model(input_ids=batch["input_ids"].to(device),
                   attention_mask=batch["attention_mask"].to(device),
                   position_ids=batch["position_ids"].to(device)).logits  # [N, P+L, V]
    logits = logits[:, -n_completion - 1:-1] / temperature                  # [N, L, V] predicts completion
    ids = batch["input_ids"][:, -n_completion:].to(device)                  # [N, L]
    logp = chunked_token_logprobs(logits, ids, chunk_size=64)                # [N, L], no [N, L, V] fp32 copy
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logp, entropy
