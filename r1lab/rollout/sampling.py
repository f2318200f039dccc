"""Pure helpers that turn last-position logits into a sampled token and its log-prob."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus.

    logits: [B, V]. The most likely token always survives. Example: logits log([.5, .3, .2])
    with top_p=0.7 keeps the first two (0.5 < 0.7, 0.5 + 0.3 >= 0.7).
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]            # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs                                   # mass strictly before each token
        drop_sorted = before >= top_p                                       # [B, V]
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; returns (tokens [B], logprobs [B]).

    The log-prob is that of the token under softmax(logits / T) before top-k/top-p, i.e.
    what a full forward pass with the same temperature gives; T = 0 means greedy, scored at T = 1.
    """
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(-1)                                          # [B]
        scaled = logits
    else:
        scaled = logits / temperature
        probs = filter_logits(scaled, top_k, top_p).softmax(-1)             # [B, V]
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    logprobs = scaled.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)  # [B]
    return tokens, logprobs
