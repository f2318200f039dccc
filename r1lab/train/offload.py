"""State kept in a file on disk between its uses, as DeepSpeed's NVMe offload and verl's
``optimizer_offload`` / ``param_offload`` do for a GPU's memory, here for the host's.

- AdamW's two moments (twice the trained weights, float32) are needed only inside an optimizer
  step: with ``optim.offload`` they are read back just before it and written out just after,
  so rollouts, forwards and backwards run without them (:func:`offload_optimizer_state`).
- A frozen reference's weights are needed only during its forward: with an RL stage's
  ``reference_offload`` they are written once and read back around each reference pass
  (:class:`OffloadedWeights`).

The bytes go out and come back as they were, so training is bit for bit the same
(tests/test_offload.py). The files are written and read past the page cache (O_DIRECT; where
that is refused, through the cache and then dropped from it), so the memory is really given
back, not moved into the kernel's cache; what it costs is one write and one read of the bytes a
step (1.08 GB each for a 135M model's moments: ~0.8 s on this machine's disk). The files are
scratch, not checkpoints: a stopped run resumes from its checkpoint, which holds the state as usual.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import torch

from r1lab.rollout.heap import release_free_heap

ALIGN = 4096                        # bytes: each tensor's place in the file and in memory (O_DIRECT's unit)
CHUNK = 64 << 20                    # bytes a system call moves


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


def _aligned(n: int) -> torch.Tensor:
    """``n`` bytes of memory starting on an ``ALIGN`` boundary."""
    raw = torch.empty(n + ALIGN, dtype=torch.uint8)
    start = -raw.data_ptr() % ALIGN
    return raw[start:start + n]


def _moved(path: Path, flags: int, move) -> None:
    """``move(fd)`` on ``path`` opened with O_DIRECT, past the page cache (this machine's disk:
    1 GiB written in 0.3 s and read in 0.5 s, against 2.8 s and 2.0 s through the cache); where
    the OS or the file system refuses it (macOS, tmpfs), through the cache, then dropped from it."""
    if hasattr(os, "O_DIRECT"):
        try:
            fd = os.open(path, flags | os.O_DIRECT, 0o600)
            try:
                return move(fd)
            finally:
                os.close(fd)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    fd = os.open(path, flags, 0o600)
    try:
        move(fd)
        if flags & os.O_WRONLY:
            os.fsync(fd)                                # dirty pages are not dropped
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_tensors(path: Path, tensors: list[torch.Tensor]) -> None:
    """Write the tensors' bytes to ``path`` (its folder made if need be), each from a multiple
    of ``ALIGN`` and padded to one, past the page cache (:func:`_moved`), ``CHUNK`` bytes a call
    at most. Tensors on a GPU go through the host."""
    buffer = _aligned(max(ALIGN, min(CHUNK, _offsets([like(t) for t in tensors])[1])))   # [bytes]

    path.parent.mkdir(parents=True, exist_ok=True)

    def move(fd: int) -> None:
        for t in tensors:
            data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)       # [bytes]
            for start in range(0, len(data), len(buffer)):
                piece = data[start:start + len(buffer)]
                padded = -(-len(piece) // ALIGN) * ALIGN
                buffer[:len(piece)] = piece
                buffer[len(piece):padded] = 0
                view = memoryview(buffer[:padded].numpy())
                while view:
                    view = view[os.write(fd, view):]
    _moved(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, move)


def read_tensors(path: Path, likes: list[Like]) -> list[torch.Tensor]:
    """The tensors :func:`write_tensors` wrote to ``path``, of the shapes, dtypes and devices in
    ``likes``; those on the CPU as views into one new block of memory (freeing them all gives
    the whole block back), the others copied from it to their device. The heap's free pages go
    back to the kernel first (r1lab/rollout/heap.py), or the block would come on top of what the
    last backward freed and the heap kept."""
    offsets, size = _offsets(likes)
    release_free_heap(torch.device("cpu"), even_if_kept=True)
    block = _aligned(size)                                                     # [bytes]

    def move(fd: int) -> None:
        if os.fstat(fd).st_size < size:
            raise OSError(f"{path}: the file holds {os.fstat(fd).st_size} bytes, not the {size} written to it")
        view, done = memoryview(block.numpy()), 0
        while done < size:
            got = os.readv(fd, [view[done:done + CHUNK]])
            if not got:
                raise OSError(f"{path}: the file ended after {done} of its {size} bytes")
            done += got
    _moved(path, os.O_RDONLY, move)
    return [block[at:at + shape.numel() * dtype.itemsize].view(dtype).view(shape).to(device)
            for (shape, dtype, device), at in zip(likes, offsets)]


def offload_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Keep ``optimizer``'s per-parameter tensors (AdamW's ``exp_avg`` and ``exp_avg_sq``; the
    scalar ``step`` stays) in ``path`` except inside ``step()``, ``state_dict()`` and
    ``load_state_dict()``, through the optimizer's own hooks. While they are away their keys are
    absent, so a step that somehow ran without them would fail, not start from zeros."""
    away: list[tuple[dict, str, Like]] = []                       # (a parameter's state, key, what it was)

    def bring_back(*_) -> None:
        if not away:
            return
        for (state, key, _), t in zip(away, read_tensors(path, [was for _, _, was in away])):
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
