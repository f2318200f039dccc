"""State kept in a file on disk between its uses, as DeepSpeed's NVMe offload and verl's
``optimizer_offload`` / ``param_offload`` do for a GPU's memory, here for the host's.

- AdamW's two moments (twice the trained weights, float32) are needed only inside an optimizer
  step: with ``optim.offload`` they are read back just before it and written out just after,
  so rollouts, forwards and backwards run without them (:func:`offload_optimizer_state`).
- A frozen reference's weights are needed only during its forward: with an RL stage's
  ``reference_offload`` they are written once and read back around each reference pass
  (:class:`OffloadedWeights`).

The bytes go out and come back as they were, so training is bit for bit the same
(tests/test_offload.py). Each file is written through and then dropped from the page cache
(``posix_fadvise``), so the memory is really given back, not moved into the kernel's cache;
what it costs is one write and one read of the bytes a step (~1 GB each for a 135M model's
moments: about a second on an NVMe disk). The files are scratch, not checkpoints: a stopped run
resumes from its checkpoint, which holds the state as usual.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from r1lab.rollout.heap import release_free_heap

ALIGN = 64                          # bytes: every tensor starts on a cache line of the block


Like = tuple[torch.Size, torch.dtype, torch.device]      # what a tensor in a file will come back as


def like(t: torch.Tensor) -> Like:
    return t.shape, t.dtype, t.device


def _offsets(likes: list[Like]) -> tuple[list[int], int]:
    """Byte offset of each tensor in the file, and the file's size."""
    offsets, at = [], 0
    for shape, dtype, _ in likes:
        offsets.append(at)
        at += -(-shape.numel() * dtype.itemsize // ALIGN) * ALIGN
    return offsets, at


def _drop_cache(fd: int) -> None:
    if hasattr(os, "posix_fadvise"):                  # Linux; elsewhere the page cache keeps the bytes
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def write_tensors(path: Path, tensors: list[torch.Tensor]) -> None:
    """Write the tensors' bytes to ``path``, each at a multiple of ``ALIGN``, through to the
    disk, and drop them from the page cache. Tensors on a GPU go through the host."""
    offsets, size = _offsets([like(t) for t in tensors])
    with open(path, "wb", buffering=0) as f:
        for t, at in zip(tensors, offsets):
            f.seek(at)
            f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
        f.truncate(size)
        os.fsync(f.fileno())
        _drop_cache(f.fileno())


def read_tensors(path: Path, likes: list[Like]) -> list[torch.Tensor]:
    """The tensors :func:`write_tensors` wrote to ``path``, of the shapes, dtypes and devices in
    ``likes``; those on the CPU as views into one new block of memory (freeing them all gives
    the whole block back), the others copied from it to their device. The heap's free pages go
    back to the kernel first (r1lab/rollout/heap.py), or the block would come on top of what the
    last backward freed and the heap kept."""
    offsets, size = _offsets(likes)
    release_free_heap(torch.device("cpu"), even_if_kept=True)
    block = torch.empty(size, dtype=torch.uint8)                               # [bytes]
    with open(path, "rb", buffering=0) as f:
        view, done = memoryview(block.numpy()), 0
        while done < size:
            got = f.readinto(view[done:])
            if not got:
                raise OSError(f"{path}: the file ends after {done} of its {size} bytes")
            done += got
        _drop_cache(f.fileno())
    return [block[at:at + shape.numel() * dtype.itemsize].view(dtype).view(shape).to(device)
            for (shape, dtype, device), at in zip(likes, offsets)]


def offload_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Keep ``optimizer``'s per-parameter tensors (AdamW's ``exp_avg`` and ``exp_avg_sq``; the
    scalar ``step`` stays) in ``path`` except inside ``step()``, ``state_dict()`` and
    ``load_state_dict()``, through the optimizer's own hooks. While they are away their keys are
    absent, so a step that somehow ran without them would fail, not start from zeros."""
    away: list[tuple[dict, str, Like]] = []                       # (a parameter's state, key, what it was)

    def bring_back(*_) -> None:
        for (state, key, _), t in zip(away, read_tensors(path, [was for _, _, was in away]) if away else []):
            state[key] = t
        away.clear()

    def put_away(*_, write: bool = True) -> None:
        held = [(state, key) for state in optimizer.state.values() for key, t in state.items()
                if isinstance(t, torch.Tensor) and t.dim() > 0]
        if held and write:
            write_tensors(path, [state[key] for state, key in held])
        for state, key in held:
            away.append((state, key, like(state[key])))
            del state[key]

    def after_state_dict(_, state_dict: dict) -> dict:
        # the returned dict holds the tensors until it is saved; the file holds them already
        state_dict["state"] = {k: dict(v) for k, v in state_dict["state"].items()}
        put_away(write=False)
        return state_dict

    optimizer.register_step_pre_hook(bring_back)
    optimizer.register_step_post_hook(put_away)
    optimizer.register_state_dict_pre_hook(bring_back)
    optimizer.register_state_dict_post_hook(after_state_dict)
    optimizer.register_load_state_dict_pre_hook(lambda *_: away.clear())     # the file's state is replaced
    optimizer.register_load_state_dict_post_hook(put_away)


class OffloadedWeights:
    """A frozen model whose parameters live in ``path`` between uses::

        ref = OffloadedWeights(model, path)      # writes them once and lets go of them
        with ref.loaded():
            logprobs = forward(model, batch)     # the weights are back, bit for bit

    Tied parameters are written once. Buffers (rotary tables and the like) stay in memory."""

    def __init__(self, model: torch.nn.Module, path: Path):
        self.path = path
        self.params = list({id(p): p for p in model.parameters()}.values())
        if any(p.requires_grad for p in self.params):
            raise ValueError("OffloadedWeights: only a frozen model's weights can be offloaded")
        self.likes = [like(p) for p in self.params]
        write_tensors(path, [p.data for p in self.params])
        self._release()

    def _release(self) -> None:
        for p in self.params:
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    @contextlib.contextmanager
    def loaded(self):
        for p, t in zip(self.params, read_tensors(self.path, self.likes)):
            p.data = t
        try:
            yield
        finally:
            self._release()
