"""Giving the CPU heap's free pages back to the kernel before a rollout.

Training on the CPU leaves glibc's heap holding the activations it freed, in holes glibc keeps
resident. The rollout's KV cache is a fresh mapping of its own, so the step's peak RSS would be
those free pages plus the cache. ``malloc_trim(0)`` hands the free pages back first, as verl and
OpenRLHF call ``torch.cuda.empty_cache()`` when they switch from training to generation.

Training faults back in what it touches again, so a trim pays only when much is free: hence the
floor :data:`TRIM_ABOVE`. A process that sets glibc's trim threshold (``MALLOC_TRIM_THRESHOLD_``,
or ``glibc.malloc.trim_threshold`` in ``GLIBC_TUNABLES``) has asked to keep freed memory, and is
not trimmed. The ``r1lab`` command sets it, with a 64 MB mmap threshold, to spare the page
faults (r1lab/cli.py): that keeps a small model's KV cache in the heap, whose free pages it then
reuses, so a trim there only makes training fault them in again. The measurements behind both
choices are in docs/log.md, "Micro-batches largest first, and the heap before a rollout".
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch

TRIM_ABOVE = 256 << 20          # bytes free in the heap below which a trim is not worth its page faults


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _glibc():
    """glibc's ``(mallinfo2, malloc_trim)``, or None under another C library or OS (or a glibc
    before 2.33, which has no ``mallinfo2``)."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2, malloc_trim = libc.mallinfo2, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _Mallinfo2
    return mallinfo2, malloc_trim


def free_heap_bytes() -> int | None:
    """Bytes free inside glibc's main heap (freed, still resident); None without glibc."""
    calls = _glibc()
    return None if calls is None else calls[0]().fordblks


def keeps_freed_memory() -> bool:
    """Whether this process set glibc's trim threshold (the ``r1lab`` command does)."""
    return "MALLOC_TRIM_THRESHOLD_" in os.environ or "glibc.malloc.trim_threshold" in os.environ.get("GLIBC_TUNABLES", "")


def release_free_heap(device: torch.device, *, even_if_kept: bool = False) -> bool:
    """Give the free pages of the C heap back to the kernel when ``device`` is the CPU (its
    tensors live in that heap), the C library is glibc, the process did not ask to keep freed
    memory (``even_if_kept``: all the same, for a caller that chose memory over time) and more
    than :data:`TRIM_ABOVE` bytes are free; return whether it did."""
    if device.type != "cpu" or (keeps_freed_memory() and not even_if_kept):
        return False
    free = free_heap_bytes()
    if free is None or free <= TRIM_ABOVE:
        return False
    _glibc()[1](0)
    return True
