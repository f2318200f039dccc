"""The packed training forward of completions, for Llama- and Qwen2-family models: every
distinct prompt once, and no padding token through any weight.

The batch comes in ``prompt_completion_batch``'s padded layout, [N, P + L]. Here the model's
own modules (so LoRA/DoRA layers from PEFT work unchanged) are walked layer by layer over a
packed list of tokens instead:

- the U distinct prompts' tokens and the N completions' tokens, without padding: [T, d] with
  T = sum of prompt lengths + sum of completion lengths. Norms, q/k/v/o projections, MLP and
  the LM head run on these T rows alone (they hold ~70% of a forward's time);
- attention alone runs on padded grids: prompts right-aligned at column 0 of [U, P'] with
  causal attention (a real query never sees the padding after it), and completions [N, L']
  attending to their prompt's keys (selected per row: the backward adds the G rows'
  gradients into the shared prompt) and causally to their own;
- only the positions that predict a completion token reach the LM head: each prompt's last
  (for token 0) and each completion token but the last; the head's matmul runs inside the
  log-prob chunk loop (r1lab/losses/logprobs.py ``linear_token_logprobs``), so no [C, V]
  logits are kept, where C is the number of completion tokens.

``r1lab/train/shared_prefix.py`` (HF's forward with its KV cache) takes the models this does
not, and the plain padded forward in r1lab/train/forward.py is the slow reference both are
tested against (tests/test_packed.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r1lab.losses.logprobs import chunked_logprobs, linear_token_logprobs
from r1lab.models.adapters import plain_model
from r1lab.rollout.native import _config_window, supports as native_supports
from r1lab.train.shared_prefix import completion_width


# The plain path's chunks are [N, chunk_size, V] (N rows at a time); here rows are packed
# tokens, so a chunk of chunk_size * 16 of them costs what the plain one does at N = 16.
ROWS_PER_POSITION = 16


def supports(model) -> bool:
    """Whether the packed walk computes what ``model``'s HF forward computes: the native
    decoder's families (r1lab/rollout/native.py), full attention in every layer."""
    inner = plain_model(model)
    return native_supports(inner) and _config_window(inner.config) is None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)


def packed_logprobs(model, batch: dict[str, torch.Tensor], *, temperature: float, with_entropy: bool,
                    chunk_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(completion token) [N, L] (0 where masked), and entropy [N, L] if asked."""
    hf = plain_model(model)
    device = hf.lm_head.weight.device
    mask = batch["completion_mask"].to(device)                                  # [N, L] bool
    n, width = mask.shape
    layout = _Layout(batch, mask, device)
    x = hf.model.embed_tokens(layout.ids)                                       # [T, d]
    cos, sin = hf.model.rotary_emb(x, layout.pos[None])                         # [1, T, D] each
    cos, sin = cos[0, :, None], sin[0, :, None]                                 # [T, 1, D]
    for block in hf.model.layers:
        h = block.input_layernorm(x)
        x = x + block.self_attn.o_proj(_attention(block.self_attn, h, cos, sin, layout))
        x = x + block.mlp(block.post_attention_layernorm(x))
    hidden = hf.model.norm(x[layout.predictors])                                # [C, d]: C completion tokens
    targets = layout.ids[layout.targets]                                        # [C]
    head = hf.lm_head
    if type(head) is torch.nn.Linear and head.bias is None:                     # no [C, V] logits kept
        logp, entropy = linear_token_logprobs(hidden, head.weight, targets, chunk_size * ROWS_PER_POSITION,
                                              temperature=temperature, with_entropy=with_entropy)
    else:                                                                       # e.g. an adapter on the head
        logp, entropy = chunked_logprobs(head(hidden)[None], targets[None], chunk_size, temperature=temperature,
                                         with_entropy=with_entropy)             # [1, C] each
        logp, entropy = logp[0], None if entropy is None else entropy[0]
    full = lambda values: torch.zeros(n, width, dtype=values.dtype, device=device).masked_scatter(mask, values)
    return full(logp), (full(entropy) if with_entropy else None)


class _Layout:
    """Where each token of the packed list sits in the prompt and completion grids.

    Packed order: the U distinct prompts' tokens, prompt by prompt, then the completion tokens
    row by row. ``prompt_cells`` / ``completion_cells``: each packed token's flat index in the
    grid [U, P'] / [N, L'] (the grids attention runs on); ``row_prompt`` [N]: each row's prompt;
    ``completion_bias`` [N, 1, L', P' + L'] bool: what each completion query may attend to."""

    def __init__(self, batch: dict[str, torch.Tensor], mask: torch.Tensor, device):
        n, width = mask.shape
        ids = batch["input_ids"].to(device)
        pos = batch["position_ids"].to(device)
        p_attn = batch["attention_mask"].to(device)[:, :-width].bool()         # [N, P]
        p_ids = ids[:, :-width].masked_fill(~p_attn, -1)                       # padding -> -1, so prompts compare by content
        prompts, self.row_prompt = torch.unique(p_ids, dim=0, return_inverse=True)   # [U, P], [N]
        u_attn = prompts >= 0                                                   # [U, P]
        lengths = u_attn.sum(1)                                                 # [U]
        self.U, self.P = len(prompts), int(lengths.max())
        self.L = completion_width(mask)                                         # L': the longest completion
        # prompt u's j-th token goes to grid cell (u, j): right-padded, so causal attention needs no mask
        u_cols = torch.arange(self.P, device=device)
        u_grid = u_cols < lengths[:, None]                                      # [U, P'] valid cells
        self.prompt_cells = u_grid.flatten().nonzero().squeeze(1)               # [Tp]
        p_tokens = prompts[u_attn]                                              # [Tp], in (u, j) order
        p_pos = u_cols.expand(self.U, -1)[u_grid]
        c_mask = mask[:, :self.L]                                               # [N, L']
        self.completion_cells = c_mask.flatten().nonzero().squeeze(1)           # [Tc]
        c_tokens = ids[:, -width:][:, :self.L][c_mask]                          # [Tc]
        c_pos = pos[:, -width:][:, :self.L][c_mask]
        self.ids = torch.cat([p_tokens, c_tokens])                              # [T]
        self.pos = torch.cat([p_pos, c_pos])                                    # [T]
        tp = len(p_tokens)
        # the packed index of completion cell (i, t): -1 where masked
        at = torch.full((n * self.L,), -1, dtype=torch.long, device=device)
        at[self.completion_cells] = tp + torch.arange(len(c_tokens), device=device)
        at = at.view(n, self.L)
        last_prompt = torch.cumsum(lengths, 0) - 1                              # [U]: packed index of each prompt's end
        before = torch.cat([last_prompt[self.row_prompt, None], at[:, :-1]], 1)  # [N, L']: who predicts (i, t)
        self.predictors = before[c_mask]                                        # [Tc]
        self.targets = at[c_mask]                                               # [Tc]
        keys_prompt = (u_cols < lengths[self.row_prompt, None])[:, None, :].expand(n, self.L, self.P)
        causal = torch.ones(self.L, self.L, dtype=torch.bool, device=device).tril()
        keys_own = causal[None] & c_mask[:, None, :]                            # [N, L', L']
        self.completion_bias = torch.cat([keys_prompt, keys_own], -1)[:, None]  # [N, 1, L', P' + L']
        self.n_prompt_tokens = tp


def _attention(attn, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """One attention layer over the packed tokens ``h`` [T, d] -> [T, H * D], before o_proj."""
    cfg = attn.config
    H, K = cfg.num_attention_heads, cfg.num_key_value_heads
    D = attn.head_dim
    T = h.shape[0]
    q = attn.q_proj(h).view(T, H, D)
    k = attn.k_proj(h).view(T, K, D)
    v = attn.v_proj(h).view(T, K, D)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    tp, U, P, L = layout.n_prompt_tokens, layout.U, layout.P, layout.L
    n = len(layout.row_prompt)

    def grid(x, rows, cols, cells, start, stop):                                # packed [t, h, D] -> [rows, h, cols, D]
        out = x.new_zeros(rows * cols, x.shape[1], D).index_copy(0, cells, x[start:stop])
        return out.view(rows, cols, x.shape[1], D).transpose(1, 2)

    qp, kp, vp = (grid(x, U, P, layout.prompt_cells, 0, tp) for x in (q, k, v))  # [U, *, P', D]
    qc, kc, vc = (grid(x, n, L, layout.completion_cells, tp, T) for x in (q, k, v))  # [N, *, L', D]
    gqa = H != K
    out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=gqa)    # [U, H, P', D]
    keys = torch.cat([kp.index_select(0, layout.row_prompt), kc], 2)          # [N, K, P' + L', D]
    values = torch.cat([vp.index_select(0, layout.row_prompt), vc], 2)
    out_c = F.scaled_dot_product_attention(qc, keys, values, attn_mask=layout.completion_bias, enable_gqa=gqa)
    flat = lambda o, cells: o.transpose(1, 2).reshape(-1, H * D).index_select(0, cells)
    return torch.cat([flat(out_p, layout.prompt_cells), flat(out_c, layout.completion_cells)])  # [T, H * D]
