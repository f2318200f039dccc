"""The native generation backend: our own decoding loop for Llama- and Qwen2-family models.

Same contract as :func:`r1lab.rollout.hf.generate` (the slow reference kept next to it,
which samples through the HF forward and its ``DynamicCache``), but much less Python per step:

- weights are read straight from the HF module (q/k/v fused into one matmul,
  Qwen2's q/k/v biases, RMSNorm, SwiGLU, GQA, the model's own rotary embedding so RoPE scaling
  configs match) and the step is a short run of ``torch.nn.functional`` calls;
- the KV cache is preallocated once and written in place, in two parts: each prompt's keys and
  values ``[layers, prompts, kv_heads, prompt_len, head_dim]`` each (the keys in tiles of 16
  positions where the compiled attention reads them: :meth:`_Net.prompt_caches`), computed by
  one prefill and shared by its ``n`` samples (never copied), and each sample's own completion keys and values
  ``[layers, 2, rows, kv_heads, slots, head_dim]``. Attention of a new token is one exact softmax
  over both parts (:func:`attend`); reading the prompt part once per prompt and not once per
  sample is what makes a decode step cheaper than a forward over a row-per-sample cache;
- an optional sliding window: each token attends to the last ``window`` positions (itself
  included), as HF's sliding-window attention does; the completion part is then a ring buffer
  of ``min(window, max_new_tokens)`` slots and prompt columns leave the window through the mask;
- finished rows leave the batch as soon as they end: live rows from the end of the batch move
  into their cache rows, so a step's cost follows the rows still running;
- on CPU the weights are prepacked once per rollout into oneDNN's blocked layout
  (:func:`_pack`): a decode step multiplies a few dozen rows by every weight, where MKL's sgemm
  repacks the weight at each call and reaches ~55% of the machine's matmul peak, the prepacked
  oneDNN product ~95% (SmolLM2-135M's shapes, 64 rows, 2 cores). The plain ``F.linear`` on the
  model's own weights is the reference it is tested against (same tokens, log-probs within 1e-5).
  With them, where a C compiler is at hand, a float32 step's attention is one compiled loop
  (:mod:`r1lab.rollout.decode_attention`) that reads each prompt's keys and values once for up
  to 8 of its rows and each row's own once, with :func:`attend` as its reference and its fallback;
  and its norms and rotary embedding are one compiled pass each (:mod:`r1lab.elementwise`: 2-6% more
  tokens/s on SmolLM2-135M), with ``F.rms_norm`` and the roll form as their reference.

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

from r1lab import elementwise, onednn
from r1lab.errors import BackendError
from r1lab.rollout import decode_attention
from r1lab.rollout.types import Rollout, left_pad
from r1lab.rollout.sampling import sample_next
from r1lab.train.watchdog import progress

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


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


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
    wg: torch.Tensor                   # [I, d]
    bg: torch.Tensor | None
    wu: torch.Tensor                   # [I, d]
    bu: torch.Tensor | None
    wd: torch.Tensor                   # [d, I]
    bd: torch.Tensor | None


PACK_MIN_BYTES = 32 << 20
"""Prepack only models whose weights take at least this much memory: smaller ones stay in the
CPU's caches, where sgemm does not lose to repacking (the 0.9M-parameter toy decodes ~6% faster
unpacked, 64 rows, 2 cores) and the default run keeps its exact figures."""


def can_pack(model) -> bool:
    """Whether :func:`_pack` is used for this model: float32 or bfloat16 weights on a CPU with
    oneDNN, taking at least :data:`PACK_MIN_BYTES`."""
    w = model.lm_head.weight
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return (w.device.type == "cpu" and w.dtype in (torch.float32, torch.bfloat16) and size >= PACK_MIN_BYTES
            and onednn.available())


def _pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` [out, in] reordered once for oneDNN products of about ``rows`` rows (a copy:
    the model's own tensor is untouched). :func:`_linear` multiplies by either form."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)


def _linear(x, w, b=None, then: str = "none", other=None):
    """``F.linear(x, w, b)`` followed by ``then``: "none", "swish" (SiLU), or "add" / "mul" with
    ``other``. A :func:`_pack`-ed weight runs all of it as one oneDNN call; a plain weight is
    the reference, in separate ``torch`` calls."""
    if w.is_mkldnn:
        if other is None:
            return torch.ops.mkldnn._linear_pointwise(x, w, b, then, [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, w, b, then)
    y = F.linear(x, w, b)
    return {"none": y, "swish": F.silu(y)}[then] if other is None else {"add": y.add_, "mul": y.mul_}[then](other)


def _cat(*ts):
    return None if any(t is None for t in ts) else torch.cat(ts, 0)


def _layers(model, pack) -> list[_Layer]:
    """Each block's weights, q/k/v fused into one matmul; ``pack`` (a function of a weight) is
    applied to the matmul weights."""
    out = []
    for blk in model.model.layers:
        a, m = blk.self_attn, blk.mlp
        out.append(_Layer(
            ln1=blk.input_layernorm.weight, ln2=blk.post_attention_layernorm.weight,
            wqkv=pack(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0)),
            bqkv=_cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias),
            wo=pack(a.o_proj.weight), bo=a.o_proj.bias,
            wg=pack(m.gate_proj.weight), bg=m.gate_proj.bias,
            wu=pack(m.up_proj.weight), bu=m.up_proj.bias,
            wd=pack(m.down_proj.weight), bd=m.down_proj.bias))
    return out


def attend(q, prompt_k, prompt_v, prompt_bias, k, v, rows, n: int, keys_first: bool = False):
    """Softmax attention of one new token per row over its prompt's keys and its own keys.

    q [R, K, G, D]: queries, already scaled by D ** -0.5, G query heads per KV head;
    prompt_k, prompt_v [B, K, P, D]: prompt b's keys and values, shared by samples b*n .. b*n+n-1;
    prompt_bias [B, P]: 0 where a prompt column may be attended, -inf where not (padding, window);
    k, v [R, K, U, D]: each row's completion keys and values (the new token's included);
    rows [R]: the sample index (0 .. B*n-1) of each row, or None when all B*n rows are there;
    keys_first: the completion part's scores as k @ q^T (each of the R * K products streams U rows
    of keys against G queries: ~25% faster than q @ k^T at U >= 128 when the cache comes from
    memory, SmolLM2-135M, 64 rows, 2 cores), else q @ k^T. The two round differently; the prepacked
    (large-model) decoder takes the first, small models keep the second and their exact figures.
    -> [R, K, G, D].

    The prompt part is a matmul per prompt with its n * G queries stacked, so each prompt's keys
    are read once per step, not n times. Both parts share one softmax, so the result is exactly
    attention over the concatenated keys (the reference the tests compare with).
    """
    R, K, G, D = q.shape
    B, _, P, _ = prompt_k.shape
    N = B * n
    qn = q if rows is None else q.new_zeros(N, K, G, D).index_copy_(0, rows, q)
    qp = qn.view(B, n, K, G, D).transpose(1, 2).reshape(B, K, n * G, D)
    sp = torch.matmul(qp, prompt_k.transpose(-1, -2)).add_(prompt_bias[:, None, None])  # [B, K, nG, P]
    sp = sp.view(B, K, n, G, P).transpose(1, 2).reshape(N, K, G, P)
    if rows is not None:
        sp = sp[rows]                                                       # [R, K, G, P]
    if keys_first:
        sc = torch.matmul(k, q.transpose(-1, -2)).transpose(-1, -2)         # [R, K, G, U]
    else:
        sc = torch.matmul(q, k.transpose(-1, -2))                           # [R, K, G, U]
    p = torch.cat([sp, sc], -1).softmax(-1, dtype=torch.float32).to(v.dtype)  # [R, K, G, P + U]
    pp = p[..., :P]
    if rows is not None:
        pp = pp.new_zeros(N, K, G, P).index_copy_(0, rows, pp)
    op = torch.matmul(pp.reshape(B, n, K, G, P).transpose(1, 2).reshape(B, K, n * G, P), prompt_v)
    op = op.view(B, K, n, G, D).transpose(1, 2).reshape(N, K, G, D)
    if rows is not None:
        op = op[rows]
    return torch.matmul(p[..., P:], v).add_(op)                             # [R, K, G, D]


class _Net:
    """A read-only view of the HF model's weights with a prefill and a one-token step.
    rows: the decode batch; with ``pack`` the matmul weights are :func:`_pack`-ed for it."""

    def __init__(self, model, n_positions: int, rows: int, pack: bool):
        cfg = model.config
        packer = (lambda w: _pack(w, rows)) if pack else (lambda w: w)
        self.keys_first = pack                                              # see attend()
        self.layers = _layers(model, packer)
        self.embed = model.model.embed_tokens.weight                        # [V, d]
        # the compiled attention, norms and rotary embedding (r1lab/elementwise.py) where the
        # weights are prepacked and the caches (the embedding's dtype) are float32: large float32
        # models on a CPU; PyTorch's calls where they cannot be built
        compiled = pack and self.embed.dtype == torch.float32
        self.kernel = decode_attention.load() if compiled else None
        self.ops = elementwise.load() if compiled else None
        self.norm = model.model.norm.weight                                 # [d]
        self.lm_head = packer(model.lm_head.weight)                         # [V, d]
        self.eps = float(cfg.rms_norm_eps)
        self.H, self.K = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = _head_dim(cfg)
        self.d = cfg.hidden_size
        # RoPE tables from the model's own rotary module: rows are positions.
        pos = torch.arange(n_positions, device=self.embed.device)[None]     # [1, T]
        cos, sin = model.model.rotary_emb(self.embed[:1][None], pos)        # [1, T, D] each
        half = self.D // 2
        self.cos, self.sin = cos[0], sin[0]                                 # [T, D] each
        self.signed_sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], -1)  # [T, D]
        self.half = half

    def _rotation(self, pos):
        """The rotary tables at positions ``pos`` [...], as :meth:`_rope` takes them."""
        if self.ops is not None:
            return self.cos[pos].reshape(-1, self.D), self.sin[pos].reshape(-1, self.D)  # [n, D] each
        return self.cos[pos].unsqueeze(-2), self.signed_sin[pos].unsqueeze(-2)          # [..., 1, D] each

    def _rope(self, x, cos, sin):
        """x [..., heads, D], q's and k's heads read out of q/k/v rows, rotated: x * cos +
        rotate_half(x) * sin (in PyTorch's calls, rotate_half(x) * sin == roll(x) * signed sin)."""
        if self.ops is not None:
            return self.ops.rotate(x.reshape(-1, *x.shape[-2:]), cos, sin).view(x.shape)
        return torch.addcmul(x * cos, x.roll(self.half, -1), sin)

    def _norm(self, x, weight):
        if self.ops is not None and elementwise.fits(x):
            return self.ops.rms_norm(x, weight, self.eps)[0]
        return F.rms_norm(x, (self.d,), weight, self.eps)

    def _mlp(self, x, w):
        h = self._norm(x, w.ln2)
        act = _linear(h, w.wu, w.bu, "mul", _linear(h, w.wg, w.bg, "swish"))  # [..., I]
        return _linear(act, w.wd, w.bd, "add", x)

    def prompt_caches(self, B: int, P: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty caches of B prompts' keys and values, as :meth:`prefill` writes them and
        :meth:`step` reads them: values [L, B, K, P, D]; keys the same, or where the compiled
        attention reads them [L, B, K, ceil(P / 16), D, 16] (``decode_attention.key_tiles``)."""
        L, K, D = len(self.layers), self.K, self.D
        tiles = (-(-P // decode_attention.TILE), D, decode_attention.TILE) if self.kernel is not None else (P, D)
        return (torch.empty((L, B, K, *tiles), dtype=dtype, device=device),
                torch.empty((L, B, K, P, D), dtype=dtype, device=device))

    def prefill(self, ids, pos, mask, prompt_k, prompt_v):
        """ids, pos [B, P]; mask [B, 1, P, P] bool; keys and values go to the caches
        :meth:`prompt_caches` made. -> last-position logits [B, V]."""
        B, P = ids.shape
        H, K, D = self.H, self.K, self.D
        x = F.embedding(ids, self.embed)                                    # [B, P, d]
        cos, sin = self._rotation(pos)
        for i, w in enumerate(self.layers):
            h = self._norm(x, w.ln1)
            qkv = _linear(h, w.wqkv, w.bqkv)                               # [B, P, (H+2K)*D]
            qk = self._rope(qkv[..., :(H + K) * D].view(B, P, H + K, D), cos, sin)
            q = qk[:, :, :H].transpose(1, 2)                                # [B, H, P, D]
            k = qk[:, :, H:].transpose(1, 2)                                # [B, K, P, D]
            if self.kernel is None:
                k = prompt_k[i].copy_(k)
            else:
                k = k.contiguous()
                decode_attention.key_tiles(k, out=prompt_k[i])
            v = prompt_v[i].copy_(qkv[..., (H + K) * D:].view(B, P, K, D).transpose(1, 2))
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != K)
            x = self._mlp(_linear(att.transpose(1, 2).reshape(B, P, H * D), w.wo, w.bo, "add", x), w)
        x = self._norm(x[:, -1].contiguous(), self.norm)                   # [B, d]
        return _linear(x, self.lm_head)                                    # [B, V]

    def step(self, tok, pos, prompt_k, prompt_v, prompt_bias, kv, slot, used, rows, n):
        """One token per row. tok, pos [R]; prompt_k, prompt_v as :meth:`prefill` wrote them and
        prompt_bias [B, P] as :func:`attend` takes it; kv [L, 2, >=R, K, S, D] is written at ``slot`` and
        attended over slots [:used]; rows as in :func:`attend`. -> logits [R, V]."""
        R = tok.shape[0]
        H, K, D = self.H, self.K, self.D
        x = F.embedding(tok, self.embed)                                    # [R, d]
        cos, sin = self._rotation(pos)
        for i, w in enumerate(self.layers):
            h = self._norm(x, w.ln1)
            qkv = _linear(h, w.wqkv, w.bqkv)                               # [R, (H+2K)*D]
            qk = self._rope(qkv[:, :(H + K) * D].view(R, H + K, D), cos, sin)
            kc, vc = kv[i, 0, :R], kv[i, 1, :R]                             # [R, K, S, D]
            kc[:, :, slot] = qk[:, H:]
            vc[:, :, slot] = qkv[:, (H + K) * D:].view(R, K, D)
            q = (qk[:, :H] * D ** -0.5).view(R, K, H // K, D)               # [R, K, G, D]
            if self.kernel is not None:
                att = self.kernel(q, prompt_k[i], prompt_v[i], prompt_bias, kc, vc, used, rows, n)
            else:
                att = attend(q, prompt_k[i], prompt_v[i], prompt_bias,
                             kc[:, :, :used], vc[:, :, :used], rows, n, self.keys_first)
            x = self._mlp(_linear(att.reshape(R, H * D), w.wo, w.bo, "add", x), w)
        return _linear(self._norm(x, self.norm), self.lm_head)             # [R, V]


def cache_shapes(config, n_prompts: int, prompt_len: int, n: int, max_new_tokens: int,
                 window: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the two preallocated caches: (prompt part, completion part)."""
    L, K = config.num_hidden_layers, config.num_key_value_heads
    D = _head_dim(config)
    slots = max_new_tokens if window is None else min(window, max_new_tokens)
    return (L, 2, n_prompts, K, prompt_len, D), (L, 2, n_prompts * n, K, slots, D)


def generate(model, prompts: list[list[int]], *, n: int = 1, max_new_tokens: int,
             eos_token_id: int, pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, stop: list[list[int]] = (), seed: int = 0,
             window: int | None = None, rows_in: tuple[int, int] | None = None,
             pack: bool = True) -> Rollout:
    """Sample ``n`` completions of each prompt; see :func:`r1lab.rollout.hf.generate`.

    window: attend only to the last ``window`` positions (the completion cache is then a ring of
    ``min(window, max_new_tokens)`` slots); None uses the model's own sliding window if all its layers have one, else full attention.
    rows_in: these rows' place in a batch split among ranks, as :func:`r1lab.rollout.hf.generate` takes it.
    pack: multiply by oneDNN-prepacked weights where :func:`can_pack` allows (False: ``F.linear``
    on the model's own weights, the reference the packed products are tested against).
    """
    if not supports(model):
        raise BackendError(f"the native backend does not support {type(model).__name__}; use the hf backend")
    with torch.inference_mode():
        out = _generate(model, prompts, n=n, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                        pad_token_id=pad_token_id, temperature=temperature, top_p=top_p, top_k=top_k,
                        stop=stop, seed=seed, window=window, rows_in=rows_in, pack=pack)
    # Clone outside inference mode so callers may use the tensors in autograd (e.g. gather indices).
    return Rollout(out.completion_ids.clone(), out.mask.clone(), out.logprobs.clone(), out.finish_reasons)


def _generate(model, prompts, *, n, max_new_tokens, eos_token_id, pad_token_id, temperature,
              top_p, top_k, stop, seed, window, rows_in, pack) -> Rollout:
    device = next(model.parameters()).device
    dtype = model.model.embed_tokens.weight.dtype
    own = _config_window(model.config)
    window = own if window is None else (window if own is None else min(window, own))
    B, N = len(prompts), len(prompts) * n
    ids, attn = left_pad(prompts, pad_token_id)                             # [B, P]
    ids, attn = ids.to(device), attn.to(device).bool()
    P = ids.shape[1]
    pad_len = (~attn).sum(-1)                                               # [B]
    net = _Net(model, P + max_new_tokens, N, pack and can_pack(model))
    prompt_k, prompt_v = net.prompt_caches(B, P, dtype, device)           # [L, B, K, P, D] (keys: or in tiles)
    kv = torch.empty(cache_shapes(model.config, B, P, n, max_new_tokens, window)[1], dtype=dtype,
                     device=device)                                         # [L, 2, N, K, S, D]
    S = kv.shape[4]

    # Prefill the B prompts (causal, padding and window masks), once each.
    col = torch.arange(P, device=device)
    pos = (col[None] - pad_len[:, None]).clamp(min=0)                       # [B, P]
    causal = col[None, :] <= col[:, None]                                   # [P, P] (q, k)
    if window is not None:
        causal &= col[None, :] > col[:, None] - window
    mask = (causal[None] & attn[:, None, :]) | torch.eye(P, dtype=torch.bool, device=device)  # [B, P, P]
    logits = net.prefill(ids, pos, mask[:, None], prompt_k, prompt_v).repeat_interleave(n, 0)  # [N, V]
    pad_bias = torch.zeros(B, P, dtype=dtype, device=device).masked_fill(~attn, float("-inf"))
    prompt_bias = pad_bias                                                  # [B, P]
    pos = (P - pad_len).repeat_interleave(n)                                # [N] position of the next token

    generator = torch.Generator(device).manual_seed(seed)
    first, total = rows_in or (0, N)
    stops = [torch.tensor(s, device=device) for s in stop if len(s) > 0]
    tokens = torch.full((N, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logps = torch.zeros(N, max_new_tokens, dtype=torch.float32, device=device)
    length = torch.full((N,), max_new_tokens, dtype=torch.long, device=device)
    reason = torch.zeros(N, dtype=torch.long, device=device)               # 0 length, 1 eos, 2 stop
    active = torch.arange(N, device=device)                                 # [R] sample index of each live row
    steps = max_new_tokens
    for t in range(max_new_tokens):
        progress()                                                          # the stall watchdog's heartbeat
        uniform = torch.rand(total, generator=generator, device=device, dtype=torch.float64)[first:first + N]
        R = active.shape[0]
        tok, lp = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                              uniform=uniform if R == N else uniform[active])  # [R], [R]
        tokens[active, t] = tok
        logps[active, t] = lp
        eos = tok == eos_token_id                                           # [R]
        ended = eos.clone()
        for s in stops:
            if t + 1 >= len(s):
                ended |= (tokens[active, t + 1 - len(s):t + 1] == s).all(-1)
        any_ended = bool(ended.any())
        if any_ended:                                                       # record how the rows ended
            gone = active[ended]
            reason[gone] = torch.where(eos[ended], 1, 2)
            length[gone] = t + 1
        if t == max_new_tokens - 1 or (any_ended and bool(ended.all())):
            steps = t + 1
            break
        if any_ended:                                                       # and drop them from the batch:
            # rows are in no particular order, so the live rows past the new end move into the
            # ended rows before it, and only they are copied
            live = R - int(ended.sum())
            holes = ended[:live].nonzero().squeeze(1)
            movers = (~ended[live:]).nonzero().squeeze(1) + live
            kv[:, :, holes, :, :min(t, S)] = kv[:, :, movers, :, :min(t, S)]
            for state in (pos, active, tok):
                state[holes] = state[movers]
            pos, active, tok = pos[:live], active[:live], tok[:live]
        # Feed completion token t (column P + t): its keys go to slot t % S of the ring.
        if window is not None and P + t - window >= 0:                      # prompt columns leave the window
            prompt_bias = pad_bias.masked_fill(col <= P + t - window, float("-inf"))
        rows = None if active.shape[0] == N else active
        logits = net.step(tok, pos, prompt_k, prompt_v, prompt_bias, kv, t % S, min(t + 1, S), rows, n)
        pos = pos + 1

    names = ("length", "eos", "stop")
    return Rollout(
        completion_ids=tokens[:, :steps].cpu(),                             # [N, L]
        mask=(torch.arange(steps, device=device) < length[:, None]).cpu(),  # [N, L]
        logprobs=logps[:, :steps].cpu(),                                    # [N, L]
        finish_reasons=[names[r] for r in reason.tolist()],
    )
