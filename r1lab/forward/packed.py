"""The packed training forward of completions, for Llama- and Qwen2-family models: every
distinct prompt once, and no padding token through any weight.

The batch comes in ``prompt_completion_batch``'s padded layout, [N, P + L]. Here the model's
own modules (so LoRA/DoRA layers from PEFT work unchanged) are walked layer by layer over a
packed list of tokens instead:

- the U distinct prompts' tokens and the N completions' tokens, without padding: [T, d] with
  T = sum of prompt lengths + sum of completion lengths. Norms, q/k/v/o projections, MLP and
  the LM head run on these T rows alone (they hold ~70% of a forward's time);
- attention alone runs on padded grids: prompts right-aligned at column 0 of [U, P'] with
  causal attention (a real query never sees the padding after it), and completions attending
  to their prompt's keys (selected per row: the backward adds the G rows' gradients into the
  shared prompt) and causally to their own, on up to four grids [n_b, L_b] of rows of like
  length (``_buckets``), so that a grid is mostly tokens, not padding (``grid_attention``);
  where the walk multiplies through oneDNN (below) and a C compiler is at hand, attention
  too runs on the packed list, straight from each token's spans, as one compiled loop
  (r1lab/forward/packed_attention.py), with the grids as its tested reference;
- norms and MLPs keep less for backward than HF's modules do (r1lab/forward/lean_ops.py), and no
  grid keeps a copy of the tokens it was filled from: autograd keeps 0.51x of what it kept
  without these, 0.25x of the padded forward's (benchmarks/saved_activations.py);
- with the model's activation checkpointing on (``activation_checkpointing`` of an RL stage),
  each block keeps only its input and recomputes the rest in the backward: one more forward of
  the blocks for a fraction of the memory, as HF's own checkpointing does;
- only the positions that predict a completion token reach the LM head: each prompt's last
  (for token 0) and each completion token but the last; the head's matmul runs inside the
  log-prob chunk loop (r1lab/losses/logprobs.py ``linear_token_logprobs``), in tiles that
  stay in the caches. Their float32 logits (C x V, C the number of completion tokens) are
  kept for the backward, which spares it a quarter of the head's matmuls; with activation
  checkpointing on they are not, and the backward makes them again;
- on a CPU, for the float32 models the native rollout prepacks (SmolLM2, not the toy), every
  projection and head tile multiplies through oneDNN, forward and backward (r1lab/onednn.py:
  MKL runs its AVX2 code on AMD processors with AVX-512, ~0.43x oneDNN's speed on a Zen 5).

``r1lab/forward/shared_prefix.py`` (HF's forward with its KV cache) takes the models this does
not, and the plain padded forward in r1lab/forward/__init__.py is the slow reference both are
tested against (tests/test_packed.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from r1lab import elementwise, onednn
from r1lab.forward import packed_attention
from r1lab.losses.logprobs import chunked_logprobs, linear_token_logprobs
from r1lab.models.adapters import plain_model
from r1lab.models.recompute import recomputes
from r1lab.rollout.native import _config_window, can_pack, supports as native_supports
from r1lab.forward import lean_ops
from r1lab.forward.shared_prefix import completion_width


# The plain path's chunks are [N, chunk_size, V] (N rows at a time); here rows are packed
# tokens, so an LM-head tile of chunk_size * 16 of them costs what the plain chunk does at N = 16 ...
ROWS_PER_POSITION = 16
# ... and spans as many vocabulary entries as keep its float32 logits under these bytes. On the
# CPU a tile that stays in the caches keeps MKL's products near its peak: SmolLM2's head (1,350
# positions, 49,152 ids, 2 cores) takes 1.9 s forward and backward in [1,024, 1,024] tiles
# against 3.0 s in [341, 49,152] ones. On a GPU, fewer and larger tiles launch fewer kernels.
TILE_BYTES = {"cpu": 4 << 20, "cuda": 64 << 20}


def head_tile(chunk_size: int, vocab: int, device: str) -> tuple[int, int]:
    """(rows, vocabulary entries) of an LM-head tile of the packed forward on ``device``'s type."""
    rows = chunk_size * ROWS_PER_POSITION
    return rows, min(vocab, max(256, TILE_BYTES.get(device, TILE_BYTES["cuda"]) // (4 * rows)))


def supports(model) -> bool:
    """Whether the packed walk computes what ``model``'s HF forward computes: the native
    decoder's families (r1lab/rollout/native.py), full attention in every layer."""
    inner = plain_model(model)
    return native_supports(inner) and _config_window(inner.config) is None


def uses_onednn(model) -> bool:
    """Whether the walk multiplies through oneDNN (r1lab/onednn.py): float32 weights the native
    rollout prepacks too (a CPU with oneDNN, at least ``PACK_MIN_BYTES``; the toy models stay on
    MKL and keep their figures), not sharded by FSDP."""
    inner = plain_model(model)
    weight = inner.lm_head.weight
    return can_pack(inner) and weight.dtype == torch.float32 and not hasattr(weight, "device_mesh")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)


def draws_random(module: torch.nn.Module) -> bool:
    """Whether a training forward of ``module`` draws random numbers: a dropout with p > 0 in it
    (a LoRA adapter's, say; the packed walk's own attention has none)."""
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules())


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
    cos, sin = cos[0].contiguous(), sin[0].contiguous()                        # [T, D] each
    recompute = recomputes(hf) and torch.is_grad_enabled()
    fast = uses_onednn(hf)
    for block in hf.model.layers:
        if recompute:
            # a block that draws no random numbers keeps no RNG state for its recompute: each
            # such copy cut from a freed activation's block fragmented the heap (log.md)
            x = checkpoint(_block, block, x, cos, sin, layout, fast, use_reentrant=False,
                           preserve_rng_state=draws_random(block))
        else:
            x = _block(block, x, cos, sin, layout, fast)
    hidden = lean_ops.rms_norm(hf.model.norm, x[layout.predictors], fast)             # [C, d]: C completion tokens
    targets = layout.ids[layout.targets]                                        # [C]
    head = hf.lm_head
    if type(head) is torch.nn.Linear and head.bias is None:                     # logits made a tile at a time
        rows, cols = head_tile(chunk_size, head.out_features, device.type)
        logp, entropy = linear_token_logprobs(hidden, head.weight, targets, rows, vocab_chunk=cols,
                                              temperature=temperature, with_entropy=with_entropy,
                                              keep_logits=not recompute, fast=fast)
    else:                                                                       # e.g. an adapter on the head
        logp, entropy = chunked_logprobs(head(hidden)[None], targets[None], chunk_size, temperature=temperature,
                                         with_entropy=with_entropy)             # [1, C] each
        logp, entropy = logp[0], None if entropy is None else entropy[0]
    full = lambda values: torch.zeros(n, width, dtype=values.dtype, device=device).masked_scatter(mask, values)
    return full(logp), (full(entropy) if with_entropy else None)


def _block(block, x, cos, sin, layout: "_Layout", fast: bool) -> torch.Tensor:
    """One decoder block on the packed tokens x [T, d]; ``fast``: projections through oneDNN."""
    h = lean_ops.rms_norm(block.input_layernorm, x, fast)
    x = x + onednn.linear(block.self_attn.o_proj, _attention(block.self_attn, h, cos, sin, layout, fast), fast)
    return x + lean_ops.mlp(block.mlp, lean_ops.rms_norm(block.post_attention_layernorm, x, fast), fast)


class _Layout:
    """Where each token of the packed list sits in the prompt and completion grids.

    Packed order: the U distinct prompts' tokens, prompt by prompt, then the completion tokens
    bucket by bucket, row by row (``_buckets``: rows of like length share a grid, so padding
    stays small). ``prompt_cells``: each prompt token's flat index in the grid [U, P'];
    ``predictors`` / ``targets`` [C]: the packed index of the token predicting / being each
    completion token, in the row-major order of the completion mask; ``blocks``: the same
    tokens as the compiled attention takes them (packed_attention.blocks)."""

    def __init__(self, batch: dict[str, torch.Tensor], mask: torch.Tensor, device):
        n, width = mask.shape
        ids = batch["input_ids"].to(device)
        pos = batch["position_ids"].to(device)
        p_attn = batch["attention_mask"].to(device)[:, :-width].bool()         # [N, P]
        p_ids = ids[:, :-width].masked_fill(~p_attn, -1)                       # padding -> -1, so prompts compare by content
        prompts, row_prompt = torch.unique(p_ids, dim=0, return_inverse=True)  # [U, P], [N]
        u_attn = prompts >= 0                                                   # [U, P]
        lengths = u_attn.sum(1)                                                 # [U]
        self.U, self.P = len(prompts), int(lengths.max())
        L = completion_width(mask)                                              # L': the longest completion
        # prompt u's j-th token goes to grid cell (u, j): right-padded, so causal attention needs no mask
        u_cols = torch.arange(self.P, device=device)
        u_grid = u_cols < lengths[:, None]                                      # [U, P'] valid cells
        self.prompt_cells = u_grid.flatten().nonzero().squeeze(1)               # [Tp]
        p_tokens = prompts[u_attn]                                              # [Tp], in (u, j) order
        p_pos = u_cols.expand(self.U, -1)[u_grid]
        tp = self.n_prompt_tokens = len(p_tokens)
        c_mask = mask[:, :L]                                                    # [N, L']
        widths = torch.where(c_mask.any(1), L - c_mask.flip(1).int().argmax(1), 0)   # [N]: up to the last token
        splits = _buckets(widths, self.P)                                       # [(rows, L_b)]
        order = torch.cat([rows for rows, _ in splits]) if splits else widths.new_zeros(0)
        o_mask = c_mask[order]                                                  # [M, L']: rows in packed order
        r, t = o_mask.nonzero().unbind(1)                                       # each completion token's (row, column)
        self.ids = torch.cat([p_tokens, ids[:, -width:][:, :L][order][o_mask]])  # [T]
        self.pos = torch.cat([p_pos, pos[:, -width:][:, :L][order][o_mask]])  # [T]
        self.buckets, first = [], 0
        for rows, w in splits:
            self.buckets.append(_Bucket(rows, w, r - first, t, tp, row_prompt[rows], u_grid, c_mask))
            first += len(rows)
        # the packed index of completion cell (i, t): -1 where masked
        at = torch.full((n, L), -1, dtype=torch.long, device=device)
        at[order[r], t] = tp + torch.arange(len(r), device=device)
        last_prompt = torch.cumsum(lengths, 0) - 1                              # [U]: packed index of each prompt's end
        before = torch.cat([last_prompt[row_prompt, None], at[:, :-1]], 1)      # [N, L']: who predicts (i, t)
        self.predictors = before[c_mask]                                        # [C]
        self.targets = at[c_mask]                                               # [C]
        # runs of the packed list for the compiled attention: each prompt attends causally to
        # itself; each completion row to its whole prompt, and causally to itself
        p_start = last_prompt + 1 - lengths                                     # [U]
        counts = o_mask.sum(1)                                                  # [M] tokens of each row, packed order
        r_start = tp + torch.cumsum(counts, 0) - counts
        r_prompt = row_prompt[order]
        self.blocks = packed_attention.blocks(torch.cat([
            torch.stack([p_start, p_start + lengths, torch.zeros_like(p_start), torch.zeros_like(p_start)], 1),
            torch.stack([r_start, r_start + counts, p_start[r_prompt], p_start[r_prompt] + lengths[r_prompt]], 1)]))


class _Bucket:
    """Rows whose completions attend on one grid [n_b, L_b] (``rows``: their indices in the
    batch, longest first); ``start:stop``, their tokens' span of the packed list; ``cells``,
    each token's flat index in the grid; ``bias`` [n_b, 1, L_b, P' + L_b]: what each query
    may attend to (its prompt's tokens, and its own completion causally)."""

    def __init__(self, rows: torch.Tensor, width: int, r: torch.Tensor, t: torch.Tensor, tp: int,
                 row_prompt: torch.Tensor, prompt_valid: torch.Tensor, c_mask: torch.Tensor):
        """``r``, ``t`` [C]: every completion token's row (counted from this bucket's first row)
        and column, in packed order after the ``tp`` prompt tokens; ``row_prompt`` [n_b]: each
        row's prompt; ``prompt_valid`` [U, P']: the prompt grid's valid cells; ``c_mask`` [N, L']."""
        self.rows, self.width, self.row_prompt = rows, width, row_prompt
        mine = (r >= 0) & (r < len(rows))
        at = mine.nonzero()
        self.start, self.stop = tp + int(at[0]), tp + int(at[-1]) + 1
        self.cells = r[mine] * width + t[mine]
        keys_prompt = prompt_valid[row_prompt][:, None, :].expand(-1, width, -1)
        causal = torch.ones(width, width, dtype=torch.bool, device=c_mask.device).tril()
        keys_own = causal[None] & c_mask[rows, None, :width]                   # [n_b, L_b, L_b]
        self.bias = torch.cat([keys_prompt, keys_own], -1)[:, None]             # [n_b, 1, L_b, P' + L_b]


# At most this many completion grids per forward: each is one attention call per layer.
MAX_BUCKETS = 4


def _buckets(widths: torch.Tensor, prompt_len: int) -> list[tuple[torch.Tensor, int]]:
    """Rows with a completion token, longest first, as (rows, width) runs: at most MAX_BUCKETS, so that
    the cells attention works on, sum of n_b * (P' + 2 L_b) (queries, and keys of prompt and
    completion), are fewest: an exact dynamic programme over the distinct widths."""
    order = torch.sort(widths, descending=True, stable=True).indices
    order = order[widths[order] > 0]
    if not len(order):
        return []
    distinct, counts = torch.unique_consecutive(widths[order], return_counts=True)
    w, c = distinct.tolist(), counts.tolist()                                  # descending widths, rows of each
    k = len(w)
    before = [0]
    for ci in c:
        before.append(before[-1] + ci)                                          # rows of widths w[:j]
    cost = lambda i, j: (before[j] - before[i]) * (prompt_len + 2 * w[i])     # one grid for widths w[i:j]
    best = {(1, j): (cost(0, j), 0) for j in range(1, k + 1)}                  # (groups, j) -> (cells, split)
    for g in range(2, min(MAX_BUCKETS, k) + 1):
        for j in range(g, k + 1):
            best[g, j] = min((best[g - 1, i][0] + cost(i, j), i) for i in range(g - 1, j))
    g = min(range(1, min(MAX_BUCKETS, k) + 1), key=lambda g: best[g, k][0])
    splits, j = [], k
    while g:
        i = best[g, j][1]
        splits.append((i, j))
        j, g = i, g - 1
    return [(order[before[i]:before[j]], w[i]) for i, j in reversed(splits)]


def _attention(attn, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: _Layout,
               fast: bool) -> torch.Tensor:
    """One attention layer over the packed tokens ``h`` [T, d] -> [T, H * D], before o_proj."""
    cfg = attn.config
    H, K = cfg.num_attention_heads, cfg.num_key_value_heads
    D = attn.head_dim
    T = h.shape[0]
    q = onednn.linear(attn.q_proj, h, fast).view(T, H, D)
    k = onednn.linear(attn.k_proj, h, fast).view(T, K, D)
    v = onednn.linear(attn.v_proj, h, fast).view(T, K, D)
    ops = elementwise.taking(fast, q, k, cos, sin)
    if ops is not None:                                                         # one pass each, compiled
        q, k = ops.rope(q, cos, sin), ops.rope(k, cos, sin)
    else:
        q = q * cos[:, None] + _rotate_half(q) * sin[:, None]
        k = k * cos[:, None] + _rotate_half(k) * sin[:, None]
    attend = packed_attention.load() if fast and packed_attention.fits(q.dtype, q.device, D) else None
    if attend is not None:
        return attend(q, k, v, layout.blocks).view(T, H * D)
    return grid_attention(q, k, v, layout)


def grid_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """Attention of the packed tokens (q [T, H, D], k, v [T, K, D]) laid out on the layout's padded
    grids through ``F.scaled_dot_product_attention`` -> [T, H * D]: the reference of
    r1lab/forward/packed_attention.py's loop, and the path wherever that loop does not run."""
    H, K, D = q.shape[1], k.shape[1], q.shape[2]
    tp, U, P = layout.n_prompt_tokens, layout.U, layout.P

    def grid(x, rows, cols, cells, start, stop):                                # packed [t, h, D] -> [rows, h, cols, D]
        out = x.new_zeros(rows * cols, x.shape[1], D).index_put((cells,), x[start:stop])  # keeps no copy of x
        return out.view(rows, cols, x.shape[1], D).transpose(1, 2)

    gqa = H != K
    flat = lambda o, cells: o.transpose(1, 2).reshape(-1, H * D).index_select(0, cells)
    qp, kp, vp = (grid(x, U, P, layout.prompt_cells, 0, tp) for x in (q, k, v))  # [U, *, P', D]
    out = [flat(F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=gqa), layout.prompt_cells)]
    for b in layout.buckets:
        qc, kc, vc = (grid(x, len(b.rows), b.width, b.cells, b.start, b.stop) for x in (q, k, v))  # [n_b, *, L_b, D]
        keys = torch.cat([kp.index_select(0, b.row_prompt), kc], 2)            # [n_b, K, P' + L_b, D]
        values = torch.cat([vp.index_select(0, b.row_prompt), vc], 2)
        out.append(flat(F.scaled_dot_product_attention(qc, keys, values, attn_mask=b.bias, enable_gqa=gqa), b.cells))
    return torch.cat(out)                                                       # [T, H * D]
