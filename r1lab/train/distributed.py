"""Data parallelism through torch.distributed: one process (rank) per device, started by torchrun.

    torchrun --nproc_per_node 2 -m r1lab run r1-zero-tiny               # one machine, 2 ranks
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 \\
             --rdzv_backend c10d --rdzv_endpoint host0:29500 -m r1lab run CONFIG   # on each node

Every rank runs every training stage on its share of each step's global batch, the same batch a
single process would take. The run's ``data_parallel`` picks how the model is held:

- ``ddp`` (default): a whole copy on each rank, under PyTorch's ``DistributedDataParallel``;
- ``fsdp2``: sharded over the ranks with PyTorch's ``fully_shard`` (each decoder layer, then the
  rest), for models whose weights, gradients and AdamW moments do not fit on one device. Weights
  are gathered layer by layer for each forward and whole for decoding (r1lab/rollout); the
  reference model of a KL penalty stays a whole copy (with LoRA there is none: the reference is
  the sharded model with its adapters off). Not with MoE models yet.

Both average gradients over ranks during the backward pass; so that the sum over ranks is the
single-process gradient, a rank's loss is its share of the global batch's loss
(``Σ over its rows / the global normaliser``) times the number of ranks (:meth:`Dist.backward`).
Gradients are exchanged once per optimizer step: every micro-batch but a rank's last runs with
the exchange off (:meth:`Dist.micro_batches`), so under DDP ranks may hold different numbers of
micro-batches; under FSDP2 every forward gathers weights from every rank, so ranks must hold
equal shares (:meth:`Dist.check_share`).

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
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from r1lab.errors import R1labError
from r1lab.models.adapters import plain_model
from r1lab.train.watchdog import progress

# Ranks wait for rank 0 while it runs a stage that trains nothing (an eval, rejection sampling).
WAIT = datetime.timedelta(hours=6)


class DistributedError(R1labError, ValueError):
    """A setting the ranks cannot run: a batch too small to share, a model FSDP2 cannot shard."""


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks of the run (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "ddp"          # or "fsdp2" (module docstring)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        return self.active and self.strategy == "fsdp2"

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (shares differ in size by at most one)."""
        self.check_share(n, "a batch")
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def check_share(self, n: int, what: str) -> None:
        """Raise :class:`DistributedError` naming ``what`` when ``n`` items leave some rank without one."""
        if n < self.world:
            raise DistributedError(f"{what} is {n}: it cannot be shared among {self.world} ranks (each needs one)")
        if self.sharded and n % self.world:
            raise DistributedError(f"{what} is {n}: under fsdp2 the {self.world} ranks need equal shares "
                                   f"(every forward gathers weights from all of them); use a multiple of {self.world}")

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def sum(self, value: float) -> float:
        """``value`` summed over ranks (a float on every rank)."""
        return self.sum_each([value])[0] if self.active else value

    def sum_each(self, values: list[float]) -> list[float]:
        """Each of ``values`` summed over ranks, in one exchange."""
        if not self.active:
            return list(values)
        return _all_reduce(torch.tensor([float(v) for v in values], dtype=torch.float64)).tolist()

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
        ranks (weights broadcast from rank 0), sharded in place under fsdp2, else itself.
        ``find_unused``: some weights may get no gradient in a step (an MoE model's unrouted
        experts). Call it before making the optimizer: sharding replaces the parameters."""
        if not self.active or not any(p.requires_grad for p in model.parameters()):
            return model
        if self.strategy == "fsdp2":
            return _shard(model, find_unused)
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)

    def micro_batches(self, model, n: int, size: int, lengths: torch.Tensor | None = None) -> Iterator[slice]:
        """The slices of :func:`micro_batch_slices`; each loop body runs (its backward included)
        with gradient exchange off except for the last, which exchanges the sum."""
        slices = micro_batch_slices(n, size, lengths)
        root = next((m for m in model.modules() if isinstance(m, FSDPModule)), None)   # maybe under a forward module
        for j, rows in enumerate(slices):
            last = j == len(slices) - 1
            if root is not None:
                root.set_requires_gradient_sync(last)
            sync = last or not isinstance(model, DistributedDataParallel)
            progress()                                   # the stall watchdog's heartbeat
            with contextlib.nullcontext() if sync else model.no_sync():
                yield rows

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this rank's share of the global batch's loss; DDP averages over ranks."""
        (loss * self.world if self.active else loss).backward()


SINGLE = Dist()


def micro_batch_slices(n: int, size: int, lengths: torch.Tensor | None = None) -> list[slice]:
    """``n`` rows in slices of ``size`` (0 = all at once). With ``lengths`` (each row's token
    count) the slice holding the most tokens comes first, then the others by decreasing tokens
    (ties in row order); callers put results back in row order by ``slice.start``.

    Largest first for the memory: on the CPU, glibc's malloc keeps what a micro-batch frees as
    holes in its heap and reuses a hole only for a request that fits in it. After the largest
    micro-batch every later one fits in the holes it left; in row order each larger one grows the
    heap again (docs/log.md, "Micro-batches largest first, and the heap before a rollout", has
    the peaks). The gradients' sum, taken in another order, differs only by rounding."""
    size = size or n
    slices = [slice(i, min(i + size, n)) for i in range(0, n, size)]
    if lengths is not None:
        slices.sort(key=lambda rows: -int(lengths[rows].sum()))
    return slices


def in_row_order(parts: dict[int, torch.Tensor]) -> torch.Tensor:
    """Micro-batches' results, keyed by their slice's start, concatenated in row order."""
    return torch.cat([parts[start] for start in sorted(parts)])


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    on = t.to(_comm_device())
    tdist.all_reduce(on, op=tdist.ReduceOp.SUM)
    return on.cpu()


def _shard(model, find_unused: bool):
    """``fully_shard`` on each of the model's decoder layers (the classes HF lists in
    ``_no_split_modules``), then on the whole, so that embeddings and a tied head share one unit.
    A PEFT model is sharded whole, frozen base weights and adapters alike (FSDP2 shards each
    parameter on its own, so a unit may mix trainable and frozen ones); only the adapters get
    gradients and AdamW moments."""
    if find_unused:
        raise DistributedError("data_parallel fsdp2 does not cover mixture-of-experts models yet; "
                               "use data_parallel: ddp")
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    for layer in [m for m in model.modules() if type(m).__name__ in names]:
        fully_shard(layer)
    fully_shard(model)
    return model


def full_state_dicts(model, optimizer) -> tuple[dict, dict]:
    """The model's and the optimizer's state, whole: from an FSDP2 model gathered from every rank
    (collective; rank 0 gets them, on the CPU, the others empty dicts), else as they are."""
    if not isinstance(model, FSDPModule):
        return model.state_dict(), optimizer.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state_dicts(model, optimizer, model_state: dict, optimizer_state: dict) -> None:
    """Load what :func:`full_state_dicts` gave (each rank keeps its shard of an FSDP2 model's)."""
    if not isinstance(model, FSDPModule):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def whole_model(model):
    """A model to save: an FSDP2 model's weights gathered into a plain copy of its class on rank 0
    (collective; None on the other ranks), with its adapters if it has them; any other model as
    it is."""
    if not isinstance(model, FSDPModule):
        return model
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if tdist.get_rank() != 0:
        return None
    inner = plain_model(model)                          # a PEFT model's transformers model, else model
    with torch.device("meta"):
        plain = _plain_class(inner)(inner.config)
        if inner is not model:                          # the same adapters around it, to load into
            from peft import get_peft_model
            plain = get_peft_model(plain, model.peft_config[model.active_adapter])
    plain.load_state_dict(state, assign=True)
    plain_model(plain).tie_weights()
    return plain


def _plain_class(module) -> type:
    """The class ``module`` had before ``fully_shard`` swapped in its FSDP subclass."""
    return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))


def from_env(strategy: str = "ddp", device: str = "auto") -> Dist:
    """The ranks torchrun started (its RANK, WORLD_SIZE and LOCAL_RANK variables), joining their
    process group on first call (NCCL when ``device`` takes the GPUs, else gloo); rank 0 of 1
    when the variables are absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    gpus = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not tdist.is_initialized():
        if gpus:
            if local >= torch.cuda.device_count():
                raise DistributedError(
                    f"torchrun started local rank {local}, but this node has {torch.cuda.device_count()} CUDA "
                    "device(s): start one rank per GPU (--nproc_per_node), or run every rank on the CPU "
                    "(gloo) with CUDA_VISIBLE_DEVICES=''")
            torch.cuda.set_device(local)
        tdist.init_process_group("nccl" if gpus else "gloo", store=_attempt_store(rank, world), rank=rank,
                                 world_size=world, timeout=WAIT)
    return Dist(rank=rank, world=world, local_rank=local, strategy=strategy)


def from_collective(error: BaseException) -> bool:
    """Whether ``error`` was raised inside torch.distributed (a collective whose peer is gone)."""
    if isinstance(error, tdist.DistError):
        return True
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"torch{os.sep}distributed{os.sep}" in tb.tb_frame.f_code.co_filename


def _attempt_store(rank: int, world: int):
    """torchrun's key-value store, under a prefix of its own for each start of the group. After
    ``--max-restarts`` starts the ranks again, the store still holds the keys the last group's
    ranks wrote (their addresses), and the new group would connect to the dead ranks and wait
    (pytorch/pytorch#167288); with the restart count in every key it reads its own."""
    store, _, _ = next(tdist.rendezvous("env://", rank, world, timeout=WAIT))
    return tdist.PrefixStore(f"r1lab/start-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def local_module(model):
    """The model under a DistributedDataParallel wrapper; any other model as it is."""
    return model.module if isinstance(model, DistributedDataParallel) else model
