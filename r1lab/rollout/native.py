"""The native generation backend: our own decoding loop for Llama- and Qwen2-family models.

Same contract as :func:`r1lab.rollout.hf.generate` (the slow reference kept next to it,
which samples through the HF forward and its ``DynamicCache``), but much less Python per step:

- weights are read straight from the HF module (q/k/v and gate/up fused into one matmul each,
  Qwen2's q/k/v biases, RMSNorm, SwiGLU, GQA, the model's own rotary embedding so RoPE scaling
  configs match) and the step is a short run of ``torch.nn.functional`` calls;
- the KV cache is preallocated once as ``[layers, 2, rows, kv_heads, slots, head_dim]`` and
  written in place; ``slots`` is ``longest prompt + max_new_tokens``, or ``window`` when a
  sliding window is set, in which case the cache is a ring buffer and each token attends to
  the last ``window`` positions (itself included), as HF's sliding-window attention does;
- each prompt is prefilled once and its cache rows are copied to its ``n`` samples;
- finished rows leave the batch (their cache rows are dropped) as soon as they end.

Sampling goes through :func:`r1lab.rollout.sampling.sample_next` on the live rows only; the
uniform draws are made for all ``N`` rows every step, as the reference makes them, so the same
seed gives the same tokens.

    from r1lab.rollout import native
    if native.supports(model):
        out = native.generate(model, prompts, n=8, max_new_tokens=256, eos_token_id=eos,
                              pad_token_id=pad, temperature=1.0, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from r1lab.rollout.types import Rollout, left_pad
from r1lab.rollout.sampling import sample_next

_MODEL_TYPES = ("llama", "qwen2")
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")    # cos/sin depend on the position alone


def _rope_type(config) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return params.get("rope_type", params.get("type", "default"))


def _config_window(config) -> int | None:
    """The model's own sliding window: None (full attention), an int, or -1 when layers mix."""
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if types == {"full_attention"}:
        return None
    if types == {"sliding_attention"}:
        return int(config.sliding_window)
    return -1


def supports(model) -> bool:
    """Whether the native loop computes exactly what this model's HF forward computes."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) in _MODEL_TYPES
            and hasattr(model, "model") and hasattr(model, "lm_head")
            and getattr(config, "hidden_act", None) == "silu"
            and _rope_type(config) in _STATIC_ROPE
            and _config_window(config) != -1
            and not getattr(config, "final_logit_softcapping", None))


@dataclass
class _Layer:
    ln1: torch.Tensor                  # [d]
    wqkv: torch.Tensor                 # [(H + 2K) * D, d]
    bqkv: torch.Tensor | None          # [(H + 2K) * D]
    wo: torch.Tensor                   # [d, H * D]
    bo: torch.Tensor | None
    ln2: torch.Tensor                  # [d]
    wgu: torch.Tensor                  # [2 * I, d]
    bgu: torch.Tensor | None
    wd: torch.Tensor                   # [d, I]
    bd: torch.Tensor | None


def _cat(*ts):
    return None if any(t is None for t in ts) else torch.cat(ts, 0)


def _layers(model) -> list[_Layer]:
    out = []
    for blk in model.model.layers:
        a, m = blk.self_attn, blk.mlp
        out.append(_Layer(
            ln1=blk.input_layernorm.weight, ln2=blk.post_attention_layernorm.weight,
            wqkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0),
            bqkv=_cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias),
            wo=a.o_proj.weight, bo=a.o_proj.bias,
            wgu=torch.cat([m.gate_proj.weight, m.up_proj.weight], 0),
            bgu=_cat(m.gate_proj.bias, m.up_proj.bias),
            wd=m.down_proj.weight, bd=m.down_proj.bias))
    return out


class _Net:
    """A read-only view of the HF model's weights with a prefill and a one-token step."""

    def __init__(self, model, n_positions: int):
        cfg = model.config
        self.layers = _layers(model)
        self.embed = model.model.embed_tokens.weight                        # [V, d]
        self.norm = model.model.norm.weight                                 # [d]
        self.lm_head = model.lm_head.weight                                 # [V, d]
        self.eps = float(cfg.rms_norm_eps)
        self.H, self.K = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.d = cfg.hidden_size
        # RoPE tables from the model's own rotary module: rows are positions.
        pos = torch.arange(n_positions, device=self.embed.device)[None]     # [1, T]
        cos, sin = model.model.rotary_emb(self.embed[:1][None], pos)        # [1, T, D] each
        half = self.D // 2
        self.cos = cos[0]                                                   # [T, D]
        self.sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], -1)    # [T, D] signed
        self.half = half

    def _rope(self, x, cos, sin):
        # x * cos + rotate_half(x) * sin, with rotate_half(x) * sin == roll(x) * signed sin
        return torch.addcmul(x * cos, x.roll(self.half, -1), sin)

    def prefill(self, ids, pos, mask, write):
        """ids, pos [B, P]; mask [B, 1, P, P] bool; write(l, k, v) stores [B, K, P, D]. -> logits [B, V]."""
        B, P = ids.shape
        H, K, D, d = self.H, self.K, self.D, self.d
        x = F.embedding(ids, self.embed)                                    # [B, P, d]
        cos, sin = self.cos[pos][:, :, None], self.sin[pos][:, :, None]     # [B, P, 1, D]
        for i, w in enumerate(self.layers):
            h = F.rms_norm(x, (d,), w.ln1, self.eps)
            qkv = F.linear(h, w.wqkv, w.bqkv)                               # [B, P, (H+2K)*D]
            qk = self._rope(qkv[..., :(H + K) * D].view(B, P, H + K, D), cos, sin)
            q = qk[:, :, :H].transpose(1, 2)                                # [B, H, P, D]
            k = qk[:, :, H:].transpose(1, 2)                                # [B, K, P, D]
            v = qkv[..., (H + K) * D:].view(B, P, K, D).transpose(1, 2)     # [B, K, P, D]
            write(i, k, v)
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != K)
            x = x + F.linear(att.transpose(1, 2).reshape(B, P, H * D), w.wo, w.bo)
            h = F.rms_norm(x, (d,), w.ln2, self.eps)
            g, u = F.linear(h, w.wgu, w.bgu).chunk(2, -1)                   # [B, P, I] each
            x = x + F.linear(F.silu(g) * u, w.wd, w.bd)
        x = F.rms_norm(x[:, -1], (d,), self.norm, self.eps)                 # [B, d]
        return F.linear(x, self.lm_head)                                    # [B, V]

    def step(self, tok, pos, cache, slot, used, mask):
        """One token per row. tok, pos [R]; cache [L, 2, >=R, K, S, D] written at ``slot``;
        attention over slots [:used] where mask [R, 1, 1, used] (or None) is True. -> logits [R, V]."""
        R = tok.shape[0]
        H, K, D, d = self.H, self.K, self.D, self.d
        x = F.embedding(tok, self.embed)                                    # [R, d]
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]           # [R, 1, D]
        for i, w in enumerate(self.layers):
            h = F.rms_norm(x, (d,), w.ln1, self.eps)
            qkv = F.linear(h, w.wqkv, w.bqkv)                               # [R, (H+2K)*D]
            qk = self._rope(qkv[:, :(H + K) * D].view(R, H + K, D), cos, sin)
            kc, vc = cache[i, 0, :R], cache[i, 1, :R]                       # [R, K, S, D]
            kc[:, :, slot] = qk[:, H:]
            vc[:, :, slot] = qkv[:, (H + K) * D:].view(R, K, D)
            # GQA without repeating K/V: the G query heads of a KV head act as G query rows.
            q = qk[:, :H].view(R, K, H // K, D)                             # [R, K, G, D]
            att = F.scaled_dot_product_attention(q, kc[:, :, :used], vc[:, :, :used], attn_mask=mask)
            x = x + F.linear(att.reshape(R, H * D), w.wo, w.bo)
            h = F.rms_norm(x, (d,), w.ln2, self.eps)
            g, u = F.linear(h, w.wgu, w.bgu).chunk(2, -1)                   # [R, I] each
            x = x + F.linear(F.silu(g) * u, w.wd, w.bd)
        x = F.rms_norm(x, (d,), self.norm, self.eps)
        return F.linear(x, self.lm_head)                                    # [R, V]


def generate(model, prompts: list[list[int]], *, n: int = 1, max_new_tokens: int,
             eos_token_id: int, pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, stop: list[list[int]] = (), seed: int = 0,
             window: int | None = None, compact: bool = True) -> Rollout:
    """Sample ``n`` completions of each prompt; see :func:`r1lab.rollout.hf.generate`.

    window: attend only to the last ``window`` positions (ring-buffer cache of that many slots);
    None uses the model's own sliding window if all its layers have one, else full attention.
    compact: drop finished rows from the batch (False keeps them, fed pad, as the reference does).
    """
    if not supports(model):
        raise ValueError(f"the native backend does not support {type(model).__name__}; use the hf backend")
    with torch.inference_mode():
        out = _generate(model, prompts, n=n, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                        pad_token_id=pad_token_id, temperature=temperature, top_p=top_p, top_k=top_k,
                        stop=stop, seed=seed, window=window, compact=compact)
    # Clone outside inference mode so callers may use the tensors in autograd (e.g. gather indices).
    return Rollout(out.completion_ids.clone(), out.mask.clone(), out.logprobs.clone(), out.finish_reasons)


def _generate(model, prompts, *, n, max_new_tokens, eos_token_id, pad_token_id, temperature,
              top_p, top_k, stop, seed, window, compact) -> Rollout:
    device = next(model.parameters()).device
    dtype = model.model.embed_tokens.weight.dtype
    own = _config_window(model.config)
    window = own if window is None else (window if own is None else min(window, own))
    B, N = len(prompts), len(prompts) * n
    ids, attn = left_pad(prompts, pad_token_id)                             # [B, P]
    ids, attn = ids.to(device), attn.to(device).bool()
    P = ids.shape[1]
    pad_len = (~attn).sum(-1)                                               # [B]
    S = P + max_new_tokens if window is None else min(window, P + max_new_tokens)
    net = _Net(model, P + max_new_tokens)
    cfg = model.config
    cache = torch.empty(len(net.layers), 2, N, net.K, S, net.D, dtype=dtype, device=device)  # [L, 2, N, K, S, D]

    # Prefill the B prompts; the last S columns go to slots col % S of all n rows of each prompt.
    col = torch.arange(P, device=device)
    pos = (col[None] - pad_len[:, None]).clamp(min=0)                       # [B, P]
    causal = col[None, :] <= col[:, None]                                   # [P, P] (q, k)
    if window is not None:
        causal &= col[None, :] > col[:, None] - window
    mask = (causal[None] & attn[:, None, :]) | torch.eye(P, dtype=torch.bool, device=device)  # [B, P, P]
    cols = col[max(0, P - S):]                                              # [min(P, S)]
    slots = cols % S
    rows = cache.view(len(net.layers), 2, B, n, net.K, S, net.D)

    def write(i, k, v):                                                     # k, v [B, K, P, D]
        rows[i, 0][:, :, :, slots] = k[:, None, :, cols]
        rows[i, 1][:, :, :, slots] = v[:, None, :, cols]

    logits = net.prefill(ids, pos, mask[:, None], write).repeat_interleave(n, 0)  # [N, V]
    valid = torch.zeros(N, S, dtype=torch.bool, device=device)             # key slot holds a real token
    valid[:, slots] = attn[:, cols].repeat_interleave(n, 0)
    max_pad = int(pad_len.max())
    pos = (P - pad_len).repeat_interleave(n)                                # [N] position of the next token

    generator = torch.Generator(device).manual_seed(seed)
    stops = [torch.tensor(s, device=device) for s in stop if len(s) > 0]
    tokens = torch.full((N, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logps = torch.zeros(N, max_new_tokens, dtype=torch.float32, device=device)
    alive = torch.zeros(N, max_new_tokens, dtype=torch.bool, device=device)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    reason = torch.zeros(N, dtype=torch.long, device=device)               # 0 length, 1 eos, 2 stop
    active = torch.arange(N, device=device)                                 # rows still in the batch
    steps = max_new_tokens
    for t in range(max_new_tokens):
        uniform = torch.rand(N, generator=generator, device=device, dtype=torch.float64)
        tok, lp = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                              uniform=uniform[active])                      # [R], [R]
        live = ~done[active]                                                # [R]; all True if compacting
        tok = tok.masked_fill(~live, pad_token_id)
        tokens[active, t] = tok
        logps[active, t] = lp.masked_fill(~live, 0.0)
        alive[active, t] = live
        ended_eos = live & (tok == eos_token_id)
        ended_stop = torch.zeros_like(live)
        for s in stops:
            if t + 1 >= len(s):
                ended_stop |= (tokens[active, t + 1 - len(s):t + 1] == s).all(-1)
        ended_stop &= live & ~ended_eos
        reason[active] = torch.where(ended_eos, 1, torch.where(ended_stop, 2, reason[active]))
        done[active] = ~live | ended_eos | ended_stop
        if t == max_new_tokens - 1 or bool(done.all()):
            steps = t + 1
            break
        if compact and bool(done[active].any()):                           # drop finished rows
            keep = (~done[active]).nonzero().squeeze(1)                     # [R'] indices into active
            used = min(P + t, S)
            R = keep.shape[0]
            cache[:, :, :R, :, :used] = cache[:, :, keep, :, :used]
            valid[:R] = valid[keep]
            pos, active = pos[keep], active[keep]
        c = P + t                                                           # column of the fed token
        slot, used = c % S, min(c + 1, S)
        R = active.shape[0]
        valid[:R, slot] = True
        mask = valid[:R, None, None, :used] if max_pad > c + 1 - used else None  # [R, 1, 1, used]
        logits = net.step(tokens[active, t], pos, cache, slot, used, mask)  # [R, V]
        pos = pos + 1

    names = ("length", "eos", "stop")
    return Rollout(
        completion_ids=tokens[:, :steps].cpu(),                             # [N, L]
        mask=alive[:, :steps].cpu(),                                        # [N, L]
        logprobs=logps[:, :steps].cpu(),                                    # [N, L]
        finish_reasons=[names[r] for r in reason.tolist()],
    )
