"""The ``hf`` backend: sampling through the HF model's own forward and ``DynamicCache``.

It works for any causal LM ``transformers`` can load, and it is the slow reference the
``native`` backend (r1lab/rollout/native.py) is tested against. Prompts are left-padded into one batch and repeated ``n`` times (rows are prompt-major:
row ``i * n + j`` is sample ``j`` of prompt ``i``). Each row ends on EOS, on a stop sequence
(e.g. the ids of ``</answer>``), or at ``max_new_tokens``; the ending token is part of the
completion. Deterministic for a given ``seed``.
"""

from __future__ import annotations

import torch

from r1lab.models.moe import router_loss_off
from r1lab.rollout.sampling import sample_next
from r1lab.rollout.types import Rollout, left_pad


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, n: int = 1, max_new_tokens: int,
             eos_token_id: int, pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, stop: list[list[int]] = (), seed: int = 0,
             rows_in: tuple[int, int] | None = None) -> Rollout:
    """Sample ``n`` completions of each prompt (token ids in, token ids out).

    rows_in: (first, total) when these rows are rows ``first ..`` of a larger batch of ``total``
    split among ranks: the uniform draws are made for all ``total`` rows and this call uses its
    own, so each row gets the tokens it would get in the whole batch sampled at once."""
    device = next(model.parameters()).device
    rows = [p for p in prompts for _ in range(n)]
    ids, attn = left_pad(rows, pad_token_id)                                # [N, P]
    ids, attn = ids.to(device), attn.to(device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)                                # [N, P]
    generator = torch.Generator(device).manual_seed(seed)
    first, total = rows_in or (0, len(rows))
    stops = [torch.tensor(s, device=device) for s in stop if len(s) > 0]
    extra = router_loss_off(model)

    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **extra)
    cache, logits = out.past_key_values, out.logits[:, -1]                  # [N, V]
    pos = pos[:, -1:]                                                       # [N, 1]
    n_rows = ids.shape[0]
    done = torch.zeros(n_rows, dtype=torch.bool, device=device)
    reason = torch.zeros(n_rows, dtype=torch.long, device=device)           # 0 length, 1 eos, 2 stop
    tokens, logprobs, alive = [], [], []
    for _ in range(max_new_tokens):
        uniform = torch.rand(total, generator=generator, device=device, dtype=torch.float64)[first:first + n_rows]
        tok, lp = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                              uniform=uniform)                              # [N], [N]
        tok = tok.masked_fill(done, pad_token_id)
        tokens.append(tok)
        logprobs.append(lp.masked_fill(done, 0.0))
        alive.append(~done)
        ended_eos = (tok == eos_token_id) & ~done
        ended_stop = torch.zeros_like(done)
        for s in stops:
            if len(tokens) >= len(s):
                tail = torch.stack(tokens[-len(s):], dim=1)                 # [N, len(s)]
                ended_stop |= (tail == s).all(-1)
        ended_stop &= ~done & ~ended_eos
        reason = torch.where(ended_eos, 1, torch.where(ended_stop, 2, reason))
        done = done | ended_eos | ended_stop
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)      # [N, P+t+1]
        pos = pos + 1
        out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=pos,
                    past_key_values=cache, use_cache=True, **extra)
        cache, logits = out.past_key_values, out.logits[:, -1]

    names = ("length", "eos", "stop")
    return Rollout(
        completion_ids=torch.stack(tokens, 1).cpu(),                        # [N, L]
        mask=torch.stack(alive, 1).cpu(),                                   # [N, L]
        logprobs=torch.stack(logprobs, 1).float().cpu(),                    # [N, L]
        finish_reasons=[names[r] for r in reason.tolist()],
    )
