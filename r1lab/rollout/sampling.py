"""Pure helpers that turn last-position logits into a sampled token and its log-prob.

Sampling is by inversion: one uniform draw per row picks the token whose cumulative-probability
interval holds it. ``torch.multinomial`` instead draws an exponential variate per vocabulary
entry (``[B, V]`` random numbers a step, 10 ms for 64 x 8192 on a laptop core, most of a small
model's step); inversion needs ``[B]`` and one pass over the probabilities. Callers draw the
uniforms for every row of the batch, so the random stream does not depend on which rows are
still running: the native backend samples only its live rows, the hf reference all of them,
and both get the same tokens.

On a large vocabulary (SmolLM2's 49,152) top-k/top-p do not sort the whole row:
:func:`sample_candidates` looks at the ``FIRST_CANDIDATES`` most likely tokens, then the
``CANDIDATES`` most likely, where a nucleus of top-p 0.95 nearly always lies, and falls back to
the full sort of :func:`filter_logits` (its slow reference) only for rows whose nucleus runs past
them. Sorting 800 rows of 49,152 logits took most of an evaluation's step. The first look finds
its few tokens among the blocks of ``BLOCK`` entries with the largest maxima
(:func:`top_candidates`), not in the whole row. A batch is sampled ``ROWS`` rows at a time, so
the [rows, V] temporaries (logits / T, exponentials) are small enough for glibc to reuse its heap
for them instead of mapping fresh zeroed pages at every step (800 rows of 49,152 floats are 157
MB a temporary: ~35 ms a step of page faults each), and stay in the caches.

Without top-k or top-p (GRPO's rollouts sample at T = 1 from the whole vocabulary), a float32
CPU batch of a large vocabulary is drawn by one compiled C loop (sampling.c beside this file):
a pass for the row's maximum, one of exponentials summed by block, and the chosen block's
exponentials again, with no [rows, V] temporary; PyTorch's calls were ~5 passes over the logits,
~4 ms of a 68 ms SmolLM2-135M decode step at 64 rows. The same two-level inversion in the same
double sums, so the same token is drawn for a uniform up to the exponentials' rounding at an
interval's edge. They stay as the reference (tests/test_sampling.py) and wherever the pass
cannot be built or ``R1LAB_SAMPLING=torch``.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from r1lab import compiled

BLOCK = 256    # vocabulary entries per block in the two-level inversion
LARGE_VOCAB = 4096   # from this vocabulary size on, top-k/top-p go through sample_candidates
FIRST_CANDIDATES = 32   # tokens sample_candidates looks at first for top-p alone ...
CANDIDATES = 256     # ... and then, for the rows whose nucleus runs past them
ROWS = 64            # rows sampled at a time (sample_next)
SOURCE = Path(__file__).with_suffix(".c")


@functools.cache
def load():
    """The compiled draw (:func:`_draw`'s signature less ``fn``), or None where it cannot be
    built (a warning says why) or ``R1LAB_SAMPLING=torch``."""
    lib = compiled.library(SOURCE, "R1LAB_SAMPLING", "sampling pass")
    if lib is None:
        return None
    fn = lib.sample_rows_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_int]
    return functools.partial(_draw, fn)


def _draw(fn, scaled: torch.Tensor, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [B] drawn as ``sample_from(scaled.softmax(-1), uniform)`` draws them, and their
    log-probs ``scaled.log_softmax(-1)`` [B]; scaled [B, V] float32 CPU rows of unit stride."""
    B, V = scaled.shape
    if scaled.dtype != torch.float32 or scaled.device.type != "cpu" or scaled.stride(1) != 1 or (
            B > 1 and scaled.stride(0) < V):
        raise ValueError("sampling: float32 CPU logits whose rows have unit stride only")
    if uniform.shape != (B,):
        raise ValueError("sampling: one uniform a row")
    u = uniform.to(torch.float64).contiguous()
    tokens, logprobs = torch.empty(B, dtype=torch.long), torch.empty(B, dtype=torch.float32)
    if fn(scaled.data_ptr(), scaled.stride(0), B, V, BLOCK, u.data_ptr(), tokens.data_ptr(), logprobs.data_ptr(),
          torch.get_num_threads()):
        raise MemoryError("sampling: no memory for a row's block masses")
    return tokens, logprobs


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


def _invert(mass: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the interval of the running sum of ``mass`` [B, M] that holds ``target`` [B],
    and how far into that interval ``target`` lies. Never an index whose mass is 0."""
    mass = mass.double()
    cdf = mass.cumsum(-1)                                                   # [B, M]
    target = target.clamp(min=0)[:, None]                                   # [B, 1]
    idx = torch.searchsorted(cdf, target, right=True)                       # first cdf > target
    last = torch.searchsorted(cdf, cdf[:, -1:].contiguous())             # last entry with mass
    idx = torch.minimum(idx, last)                                          # [B, 1]
    rest = target - (cdf.gather(1, idx) - mass.gather(1, idx))
    return idx.squeeze(1), rest.squeeze(1)


def sample_from(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: the token whose cumulative-probability interval holds
    ``uniform * total``. probs [B, V] (need not sum to 1), uniform [B] in [0, 1) -> tokens [B].

    Two levels, so rounding is relative to a block's mass and not to the running total: first
    a block of ``BLOCK`` tokens by the running sum of block masses, then the token inside it
    (one level when the vocabulary fits in a block).
    A token of probability 0 is never returned. Example: probs [[0, .5, .5]] with uniform .4
    gives token 1, with uniform .6 token 2.
    """
    B, V = probs.shape
    if V <= BLOCK:
        return _invert(probs, uniform.double() * probs.double().sum(-1))[0]
    blocks = (F.pad(probs, (0, -V % BLOCK)) if V % BLOCK else probs).view(B, -1, BLOCK)  # [B, nb, BLOCK]
    block_mass = blocks.sum(-1)                                             # [B, nb]
    target = uniform.double() * block_mass.double().sum(-1)                 # [B]
    b, rest = _invert(block_mass, target)                                   # [B], [B]
    inside = blocks[torch.arange(B, device=probs.device), b]                # [B, BLOCK]
    t, _ = _invert(inside, rest)
    return b * BLOCK + t


def top_candidates(scaled: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``scaled.topk(k, -1)``: the k largest entries of each row [B, V] and their indices,
    descending, looked for in the k blocks of ``BLOCK`` entries with the largest maxima only
    (every one of the k largest lies in one of them) where those are fewer than all; ties may
    pick other indices than ``torch.topk``."""
    B, V = scaled.shape
    n = V // BLOCK
    if k >= n or V % BLOCK:
        return scaled.topk(k, -1)
    blocks = scaled.view(B, n, BLOCK)
    best = blocks.amax(-1).topk(k, -1).indices                             # [B, k] blocks
    vals, at = blocks.gather(1, best[..., None].expand(B, k, BLOCK)).view(B, k * BLOCK).topk(k, -1)
    return vals, best.gather(1, at // BLOCK) * BLOCK + at % BLOCK


def sample_candidates(scaled: torch.Tensor, top_k: int, top_p: float, uniform: torch.Tensor,
                      lse: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens [B] drawn as ``sample_from(filter_logits(scaled, top_k, top_p).softmax(-1), uniform)``
    draws them, from the top candidates of each row instead of the whole sorted row.

    The candidates are the top-k tokens (top_k > 0) or, for top-p alone, the
    ``FIRST_CANDIDATES`` most likely, then for the rows whose nucleus runs past those the
    ``CANDIDATES`` most likely; the nucleus is cut on them (the mass before a token,
    renormalised over the top-k set as the reference does, < top_p); the kept tokens are put
    back in vocabulary order, so one uniform picks the token the reference picks up to rounding
    at an interval's edge. A row whose candidates all stay in the nucleus with less than top_p
    of the mass may have more tokens in it: that row takes the reference path. Where logits tie
    at the k-th value, the reference keeps every tied token and this exactly k. lse:
    ``scaled.logsumexp(-1)`` [B] if the caller has it.
    """
    B, V = scaled.shape
    if top_k > 0:                                                           # the top-k set holds the nucleus
        return _draw_candidates(scaled, min(V, top_k), True, top_p, uniform, None)[0]
    lse = scaled.logsumexp(-1) if lse is None else lse
    tokens, spill = _draw_candidates(scaled, min(V, FIRST_CANDIDATES), False, top_p, uniform, lse)
    if FIRST_CANDIDATES < min(V, CANDIDATES) and bool(spill.any()):       # a wider look for these rows
        rows = spill.nonzero().squeeze(1)
        tokens[rows], spill[rows] = _draw_candidates(scaled[rows], min(V, CANDIDATES), False, top_p,
                                                     uniform[rows], lse[rows])
    if CANDIDATES < V and bool(spill.any()):                                # the nucleus may go on
        rows = spill.nonzero().squeeze(1)
        tokens[rows] = sample_from(filter_logits(scaled[rows], top_k, top_p).softmax(-1), uniform[rows])
    return tokens


def _draw_candidates(scaled, k: int, top_k: bool, top_p: float, uniform, lse) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_candidates` on the k most likely tokens of each row, renormalised over them
    (``top_k``) or by ``lse``: the tokens [B], and the rows whose candidates hold less than top_p
    of the mass (for top-p alone: their nucleus may run past them)."""
    vals, idx = top_candidates(scaled, k)                                   # [B, k], descending
    norm = vals.logsumexp(-1, keepdim=True) if top_k else lse[:, None]      # [B, 1]
    probs = (vals - norm).exp()                                             # [B, k]
    cum = probs.cumsum(-1)
    keep = (cum - probs < top_p) if top_p < 1.0 else torch.ones_like(probs, dtype=torch.bool)
    idx = idx.masked_fill(~keep, scaled.shape[1])                           # dropped: after every token
    idx, order = idx.sort(-1)                                               # vocabulary order
    probs = (probs * keep).gather(-1, order)
    tokens = idx.gather(-1, sample_from(probs, uniform)[:, None]).squeeze(-1)
    return tokens, cum[:, -1] < top_p


def sample_next(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float,
                uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; returns (tokens [B], logprobs [B]).

    uniform: [B] draws in [0, 1), one per row (unused when greedy). The log-prob is that of
    the token under softmax(logits / T) before top-k/top-p, i.e. what a full forward pass with
    the same temperature gives; T = 0 means greedy, scored at T = 1.
    """
    if logits.shape[0] > ROWS:                                              # small temporaries, rows apart
        parts = [sample_next(logits[i:i + ROWS], temperature=temperature, top_k=top_k, top_p=top_p,
                             uniform=uniform[i:i + ROWS]) for i in range(0, logits.shape[0], ROWS)]
        return torch.cat([t for t, _ in parts]), torch.cat([lp for _, lp in parts])
    logits = logits.float()
    scaled = logits if temperature in (0, 1) else logits / temperature
    if temperature != 0 and logits.shape[-1] >= LARGE_VOCAB:               # no [B, V] log-probs written
        if top_k > 0 or top_p < 1.0:
            lse = scaled.logsumexp(-1)                                      # [B]
            tokens = sample_candidates(scaled, top_k, top_p, uniform, lse)
        else:
            draw = load() if scaled.device.type == "cpu" else None          # the compiled pass
            if draw is not None:
                return draw(scaled, uniform)
            # one exponential pass: exp(logits - max) is sampled from and summed to the lse
            top = scaled.amax(-1, keepdim=True)                             # [B, 1]
            top.masked_fill_(top.abs() == float("inf"), 0)                  # as torch.logsumexp does
            unnormalised = (scaled - top).exp_()                            # [B, V]
            tokens = sample_from(unnormalised, uniform)
            lse = unnormalised.sum(-1).log_().add_(top[:, 0])               # == scaled.logsumexp(-1)
        return tokens, scaled.gather(-1, tokens[:, None]).squeeze(-1) - lse
    logp = scaled.log_softmax(-1)                                           # [B, V]
    if temperature == 0:
        tokens = logits.argmax(-1)                                          # [B]
    elif top_k > 0 or top_p < 1.0:
        tokens = sample_from(filter_logits(scaled, top_k, top_p).softmax(-1), uniform)
    else:
        tokens = sample_from(logp.exp(), uniform)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
