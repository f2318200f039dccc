"""Data parallelism through torch.distributed: one process (rank) per device, started by torchrun.

    torchrun --nproc_per_node 2 -m r1lab run r1-zero-tiny               # one machine, 2 ranks
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 \\
             --rdzv_backend c10d --rdzv_endpoint host0:29500 -m r1lab run CONFIG   # on each node

Every rank runs every training stage on its share of each step's global batch, the same batch a
single process would take. The model is wrapped in PyTorch's ``DistributedDataParallel``, which
averages gradients over ranks during the backward pass; so that the sum over ranks is the
single-process gradient, a rank's loss is its share of the global batch's loss
(``Σ over its rows / the global normaliser``) times the number of ranks (:meth:`Dist.backward`).
Gradients are exchanged once per optimizer step: every micro-batch but a rank's last runs under
DDP's ``no_sync`` (:meth:`Dist.micro_batches`), so ranks may hold different numbers of them.

Only rank 0 writes (config, metrics, checkpoints, models, DONE); every rank reads the same
checkpoint on resume, so a run resumes with the same number of ranks or any other. Stages that
train nothing (eval, rejection sampling, preference pairs) run on rank 0 while the others wait.
The backend is NCCL on GPUs (rank r uses ``cuda:LOCAL_RANK``) and gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

# Ranks wait for rank 0 while it runs a stage that trains nothing (an eval, rejection sampling).
WAIT = datetime.timedelta(hours=6)


class ShareError(ValueError):
    """A batch has fewer items than there are ranks to share it."""


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks of the run (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (shares differ in size by at most one)."""
        self.check_share(n, "a batch")
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def check_share(self, n: int, what: str) -> None:
        """Raise :class:`ShareError` naming ``what`` when ``n`` items leave some rank without one."""
        if n < self.world:
            raise ShareError(f"{what} is {n}: it cannot be shared among {self.world} ranks (each needs one)")

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def sum(self, value: float) -> float:
        """``value`` summed over ranks (a float on every rank)."""
        if not self.active:
            return value
        return float(_all_reduce(torch.tensor([float(value)], dtype=torch.float64)))

    def mean(self, values: dict[str, float], weight: float = 1.0, summed: tuple[str, ...] = ()) -> dict[str, float]:
        """Each value averaged over the ranks that hold its key, weighted by each rank's ``weight``
        (its rows of the batch), the keys in ``summed`` added up instead. A rank whose share of the
        batch had no general prompt, say, logs no judge score."""
        if not self.active:
            return values
        every = self._exchange([weight, values])
        keys = dict.fromkeys(k for _, d in every for k in d)
        out = {}
        for k in keys:
            held = [(w, d[k]) for w, d in every if k in d]
            out[k] = sum(v for _, v in held) if k in summed else sum(w * v for w, v in held) / sum(w for w, _ in held)
        return out

    def _exchange(self, obj) -> list:
        """Every rank's JSON-able ``obj``, in rank order (sent as JSON bytes, never pickled)."""
        data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)
        sizes = self.gather(torch.tensor([len(data)]), self.world).tolist()
        padded = torch.zeros(max(sizes), dtype=torch.uint8)
        padded[:len(data)] = data
        parts = self.gather(padded[None], self.world)                      # [world, max size]
        return [json.loads(bytes(p[:k].tolist())) for p, k in zip(parts, sizes)]

    def gather(self, t: torch.Tensor, total: int) -> torch.Tensor:
        """The whole ``[total, ...]`` tensor from every rank's share of it (:meth:`shard`), in order."""
        if not self.active:
            return t
        width = -(-total // self.world)
        padded = t.new_zeros(width, *t.shape[1:]).to(_comm_device())
        padded[:len(t)] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        tdist.all_gather(parts, padded)
        sizes = [len(range(total)[Dist(r, self.world).shard(total)]) for r in range(self.world)]
        return torch.cat([p[:k] for p, k in zip(parts, sizes)]).to(t.device)

    def wrap(self, model, find_unused: bool = False):
        """``model`` as the module to train: under DistributedDataParallel when there are several
        ranks (weights broadcast from rank 0), else itself. ``find_unused``: some weights may get no
        gradient in a step (an MoE model's unrouted experts)."""
        if not self.active or not any(p.requires_grad for p in model.parameters()):
            return model
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)

    def micro_batches(self, model, n: int, size: int) -> Iterator[slice]:
        """Slices of ``n`` rows, ``size`` (0 = all) at a time; each loop body runs (its backward
        included) with gradient exchange off except for the last, which exchanges the sum."""
        size = size or n
        starts = list(range(0, n, size))
        for j, i in enumerate(starts):
            sync = j == len(starts) - 1 or not isinstance(model, DistributedDataParallel)
            with contextlib.nullcontext() if sync else model.no_sync():
                yield slice(i, i + size)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this rank's share of the global batch's loss; DDP averages over ranks."""
        (loss * self.world if self.active else loss).backward()


SINGLE = Dist()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    on = t.to(_comm_device())
    tdist.all_reduce(on, op=tdist.ReduceOp.SUM)
    return on.cpu()


def from_env() -> Dist:
    """The ranks torchrun started (its RANK, WORLD_SIZE and LOCAL_RANK variables), joining their
    process group on first call; rank 0 of 1 when the variables are absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=WAIT)
    return Dist(rank=rank, world=world, local_rank=local)


def local_module(model):
    """The model under a DistributedDataParallel wrapper; any other model as it is."""
    return model.module if isinstance(model, DistributedDataParallel) else model
