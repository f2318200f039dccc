"""One tile of the LM head's logits on the CPU: its softmax statistics (forward) and its
gradient (backward) as one compiled C pass each (logit_tiles.c beside this file).

``linear_token_logprobs`` (r1lab/losses/logprobs.py) makes the head's logits a tile at a time.
In PyTorch calls a tile's forward is five passes over it (max, subtract, exp, sum, and the
entropy's dot) with a temporary the tile's size, and its backward three (subtract, exp,
multiply) before the target's scatter; at SmolLM2's vocabulary that was ~5% of a micro-batch's
forward and backward. Here each is one loop over the tile's rows (the max first, then one pass
of exp with both sums), the tile kept in the core's cache.

Compiled on first use (r1lab/compiled.py); where it cannot be built, or
``R1LAB_LOGIT_TILES=torch``, :func:`load` returns None and the PyTorch calls stay, the reference
this is tested against (tests/test_logprobs.py). Float32 tiles on the CPU only.

    tiles = logit_tiles.load()                  # None: PyTorch's calls
    tiles.stats(z, ids, first, temperature, m, s, dot, target)
    tiles.grad_(z, lse, ids, first, g)
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from types import SimpleNamespace

import torch

from r1lab import compiled

SOURCE = Path(__file__).with_suffix(".c")


@functools.cache
def load() -> SimpleNamespace | None:
    """``stats`` and ``grad_`` of a float32 CPU tile, or None (see the module's docstring)."""
    lib = compiled.library(SOURCE, "R1LAB_LOGIT_TILES", "logit tiles")
    if lib is None:
        return None
    p, i, i64, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
    lib.tile_stats_f32.argtypes = [p, i, i, i64, p, i64, f, p, p, p, p, i]
    lib.tile_grad_f32.argtypes = [p, i, i, i64, p, p, i64, p, i]
    lib.tile_stats_f32.restype = lib.tile_grad_f32.restype = None
    return SimpleNamespace(stats=functools.partial(_stats, lib.tile_stats_f32),
                           grad_=functools.partial(_grad, lib.tile_grad_f32))


def fits(z: torch.Tensor) -> bool:
    """Whether the compiled passes take the tile ``z``: float32 on the CPU, rows of unit stride
    that do not overlap."""
    return (z.dtype == torch.float32 and z.device.type == "cpu" and z.dim() == 2 and z.stride(1) == 1
            and z.stride(0) >= z.shape[1])


def _vectors(*xs: torch.Tensor, rows: int, dtype) -> None:
    for x in xs:
        if x is not None and (x.shape != (rows,) or x.dtype != dtype or not x.is_contiguous() or x.device.type != "cpu"):
            raise ValueError(f"logit tiles: a per-row vector must be a contiguous CPU {dtype} of {rows} entries")


def _stats(fn, z: torch.Tensor, ids: torch.Tensor, first: int, temperature: float, m: torch.Tensor,
           s: torch.Tensor, dot: torch.Tensor | None, target: torch.Tensor) -> None:
    """z [R, C] /= temperature in place; m, s [R] <- each row's max and sum of exp(z - m); dot [R]
    (where given) <- sum of exp(z - m) * z; target[r] <- z[r, ids[r] - first] where it is in the tile."""
    if not fits(z):
        raise ValueError("logit tiles: the tile must be float32 on the CPU, [R, C] with rows of unit stride")
    R, C = z.shape
    ids = ids.contiguous()
    _vectors(m, s, dot, target, rows=R, dtype=torch.float32)
    _vectors(ids, rows=R, dtype=torch.int64)
    fn(z.data_ptr(), R, C, z.stride(0), ids.data_ptr(), first, temperature, m.data_ptr(), s.data_ptr(),
       None if dot is None else dot.data_ptr(), target.data_ptr(), torch.get_num_threads())


def _grad(fn, z: torch.Tensor, lse: torch.Tensor, ids: torch.Tensor, first: int, g: torch.Tensor) -> torch.Tensor:
    """z [R, C] (scaled logits) <- (onehot(ids - first) - exp(z - lse)) * g in place; returns z."""
    if not fits(z):
        raise ValueError("logit tiles: the tile must be float32 on the CPU, [R, C] with rows of unit stride")
    R, C = z.shape
    ids, lse = ids.contiguous(), lse.contiguous()
    _vectors(lse, g, rows=R, dtype=torch.float32)
    _vectors(ids, rows=R, dtype=torch.int64)
    fn(z.data_ptr(), R, C, z.stride(0), lse.data_ptr(), ids.data_ptr(), first, g.data_ptr(), torch.get_num_threads())
    return z
