"""A fast training forward of completions through HF's own forward: each distinct prompt once,
no padding columns. ``completion_logprobs`` (r1lab/forward/__init__.py) takes it where the packed
walk (r1lab/forward/packed.py, faster: no padding through any weight) does not: under DDP, whose
gradient hooks need the forward to run through its wrapper, and for other model families.

A GRPO batch holds G completions of each prompt, laid out as the model input of
``prompt_completion_batch``: [N, P + L], prompts left-padded to the longest, completions
right-padded to the longest. The plain forward (``plain_completion_logprobs`` in
r1lab/forward/__init__.py, the slow reference) runs all N * (P + L) positions. Here:

1. the distinct prompts (U of them, U = N / G in GRPO; the chosen/rejected pairs of DPO share
   theirs too) run once, with the KV cache on and only the last prompt position's logits;
2. every completion runs against its prompt's keys and values, selected from that cache
   (``index_select``, whose backward adds up the G rows' gradients into the shared prompt:
   the gradient of the plain forward, summed in another order);
3. the columns that are padding in every row are cut first: the prompts' common left padding,
   and the completions' columns after the longest one of this (micro-)batch.

So the model runs on U * P' + N * L' positions instead of N * (P + L) (P', L': the longest
prompt and completion present). Log-probs, entropy and temperature are then taken in chunks
over the sequence as in the plain path (r1lab/losses/logprobs.py); masked completion positions
are 0. The idea is "Prefix Grouper" (Liu et al., 2025) with HF's own KV cache doing the
sharing, so any causal LM whose forward takes a KV cache and ``logits_to_keep`` works
(Llama, Qwen2, ..., also under a PEFT or DDP wrapper). Models it does not take, where
``completion_logprobs`` uses the plain forward instead: MoE models (their router loss is
defined over one forward's tokens) and FSDP2-sharded ones (sharded parameters are gathered
once per forward).
"""

from __future__ import annotations

import functools
import inspect

import torch

from r1lab.losses.logprobs import chunked_logprobs
from r1lab.models.adapters import plain_model
from r1lab.train.distributed import local_module


def shared_prefix_logprobs(model, batch: dict[str, torch.Tensor], *, temperature: float, with_entropy: bool,
                           chunk_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(completion token) [N, L] (0 where masked), and entropy [N, L] if asked, of
    ``batch`` (``prompt_completion_batch``'s layout) with each distinct prompt run once."""
    device = next(model.parameters()).device
    mask = batch["completion_mask"].to(device)                                  # [N, L] bool
    n, width = mask.shape
    kept = completion_width(mask)                                               # L'
    ids, attn, pos = (batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids"))
    p_ids, p_attn, p_pos = ids[:, :-width], attn[:, :-width], pos[:, :-width]   # [N, P]
    start = int(p_attn.any(0).nonzero().min())                                  # the common left padding
    p_ids, p_attn, p_pos = p_ids[:, start:], p_attn[:, start:], p_pos[:, start:]  # [N, P']
    # one row per distinct prompt (ids and mask), and which one each row uses
    prompts, row_prompt = torch.unique(torch.cat([p_ids, p_attn], 1), dim=0, return_inverse=True)
    first = torch.zeros(len(prompts), dtype=torch.long, device=device).scatter_(
        0, row_prompt, torch.arange(n, device=device))                          # [U]: a row of each prompt
    inner = local_module(model)
    keyword = cache_keyword(type(plain_model(inner)))                           # "cache" or "past_key_values"
    head = inner(input_ids=p_ids[first], attention_mask=p_attn[first], position_ids=p_pos[first],
                 use_cache=True, logits_to_keep=1)
    cache = getattr(head, keyword)
    cache.reorder_cache(row_prompt)                                             # [U, ...] -> [N, ...] per layer
    c_ids = ids[:, -width:][:, :kept]                                           # [N, L']
    tail = model(input_ids=c_ids, attention_mask=torch.cat([p_attn, attn[:, -width:][:, :kept]], 1),
                 position_ids=pos[:, -width:][:, :kept], use_cache=True, **{keyword: cache})
    # the logits predicting completion token 0 are the prompt's last; token t > 0, completion t - 1's
    parts = [(head.logits[row_prompt], c_ids[:, :1]), (tail.logits[:, :-1], c_ids[:, 1:])]
    logp, entropy = zip(*(chunked_logprobs(logits, targets, chunk_size, temperature=temperature,
                                           with_entropy=with_entropy)
                          for logits, targets in parts))                        # [N, 1] and [N, L'-1] each
    return _full_width(logp, mask), (_full_width(entropy, mask) if with_entropy else None)


@functools.cache
def cache_keyword(model_class: type) -> str | None:
    """The name ``model_class.forward`` takes a KV cache by (and its output holds it by): HF's
    ``cache`` from transformers 5.2x, ``past_key_values`` before; None if neither."""
    params = inspect.signature(model_class.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def completion_width(mask: torch.Tensor) -> int:
    """L': the columns of a completion mask [N, L] up to its last True one (at least 1)."""
    return max(1, int(mask.any(0).nonzero().max()) + 1) if mask.any() else 1


def _full_width(parts: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
    """The kept columns, then zeros to the batch's width; 0 at every masked position: [N, L]."""
    kept = torch.cat(parts, 1)                                                  # [N, L']
    full = torch.nn.functional.pad(kept, (0, mask.shape[1] - kept.shape[1]))
    return torch.where(mask, full, torch.zeros((), dtype=full.dtype, device=full.device))
