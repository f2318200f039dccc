"""A decode step's attention as one compiled C loop on the CPU (decode_attention.c beside this file).

:func:`r1lab.rollout.native.attend` computes the attention of a decode step in PyTorch calls:
scores, softmax and the weighted sum of values are separate batched products of small per-row
matrices, each of which reads the cache or writes an intermediate through memory. On
SmolLM2-135M (64 rows, 2 cores) that is ~30% of a decode step, at ~1.7x the time of reading the
keys and values once. The C loop takes the rows of a prompt together, up to 8 at a time, for
each KV head: their queries are scored against the prompt's keys (kept in tiles of 16
positions, each key a column, so each score is built in a vector lane and no sum runs across a
vector) and weigh its values in one pass over each, and each row reads its own cached keys and
values once. Scores stay in the core's cache; it runs on PyTorch's own OpenMP threads: the
library names libgomp, and the loader resolves it to the copy PyTorch has already loaded.

It is compiled on first use (r1lab/compiled.py) and loaded with ctypes. Where no compiler is found or
compiling fails, :func:`load` returns None and the decoder keeps :func:`~r1lab.rollout.native.attend`,
the reference this loop is tested against (tests/test_decode_attention.py). Float32 only.

    kernel = decode_attention.load()            # None: use native.attend
    out = kernel(q, decode_attention.key_tiles(prompt_k), prompt_v, prompt_bias, k_cache, v_cache, used, rows, n)
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from r1lab import compiled

SOURCE = Path(__file__).with_suffix(".c")
TILE = 16                                   # prompt positions a tile of keys: decode_attention.c's TILE


@functools.cache
def load():
    """The compiled attention as a function of the decoder's tensors, or None where it cannot be
    built (a warning says why) or ``R1LAB_DECODE_ATTENTION=torch`` asks for the PyTorch version."""
    lib = compiled.library(SOURCE, "R1LAB_DECODE_ATTENTION", "decode attention")
    if lib is None:
        return None
    fn = lib.attend_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int] * 10
    return functools.partial(_attend, fn)


def key_tiles(k: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Prompt keys [..., P, D] as the loop reads them: [..., ceil(P / TILE), D, TILE], TILE
    positions a tile, each key a column of it, positions past P zero; written into ``out``
    where given."""
    *lead, P, D = k.shape
    tiles = -(-P // TILE)
    padded = torch.nn.functional.pad(k, (0, 0, 0, tiles * TILE - P))          # [..., tiles * TILE, D]
    laid = padded.view(*lead, tiles, TILE, D).transpose(-1, -2)
    return laid.contiguous() if out is None else out.copy_(laid)


def _attend(fn, q, prompt_kt, prompt_v, prompt_bias, k_cache, v_cache, used: int, rows, n: int) -> torch.Tensor:
    """q [R, K, G, D] scaled queries; prompt_kt [B, K, ceil(P / TILE), D, TILE] the prompts'
    keys as :func:`key_tiles` lays them out; prompt_v [B, K, P, D]; prompt_bias [B, P];
    k_cache, v_cache [>=R, K, S, D], slots [:used] attended; rows [R] sample indices in
    [0, B * n) or None. Everything float32, contiguous, on the CPU. -> [R, K, G, D], as
    native.attend returns."""
    R, K, G, D = q.shape
    B, _, P, _ = prompt_v.shape
    S = k_cache.shape[2]
    floats = (q, prompt_kt, prompt_v, prompt_bias, k_cache, v_cache)
    ts = floats + (() if rows is None else (rows,))
    if (not all(t.is_contiguous() and t.device.type == "cpu" for t in ts)
            or any(t.dtype != torch.float32 for t in floats) or (rows is not None and rows.dtype != torch.int64)):
        raise ValueError("decode attention: contiguous CPU tensors, float32 (rows int64), only")
    bad_rows = rows is not None and (rows.shape != (R,) or (R > 0 and (int(rows.min()) < 0 or int(rows.max()) >= B * n)))
    if (prompt_v.shape[1:4:2] != (K, D) or prompt_kt.shape != (B, K, -(-P // TILE), D, TILE)
            or prompt_bias.shape != (B, P) or v_cache.shape != k_cache.shape or k_cache.shape[0] < R
            or k_cache.shape[1:4:2] != (K, D) or not 1 <= used <= S or bad_rows or (rows is None and R > B * n)):
        raise ValueError("decode attention: the tensors' shapes do not fit together (see _attend's docstring)")
    out = torch.empty_like(q)                                # [R, K, G, D]
    failed = fn(q.data_ptr(), prompt_kt.data_ptr(), prompt_v.data_ptr(), prompt_bias.data_ptr(),
                k_cache.data_ptr(), v_cache.data_ptr(), None if rows is None else rows.data_ptr(), out.data_ptr(),
                R, B, K, G, D, P, S, used, n, torch.get_num_threads())
    if failed:
        raise MemoryError(f"decode attention: no memory for {G} x {P + used} scores")
    return out
