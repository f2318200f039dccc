"""The plumbing around a stage's training loop: optimizer and schedule, resume from the last
checkpoint, metrics, progress bar, periodic checkpoints and the final save.

The loop body (what a step computes) stays written out in each stage (STYLE rule 4)::

    loop = TrainLoop(model, cfg, out, cfg.steps)    # cfg: the stage's config (name, kind, optim, checkpoint_every)
    for step in loop.steps():                    # 0-based index of the step about to run
        loss = ...; loss.backward()
        grad_norm = loop.optimizer_step()
        loop.end_step({"loss": loss.item(), "grad_norm": grad_norm}, show=("loss",))
    loop.finish(tokenizer)                       # writes out/model/

Under torchrun (r1lab/train/distributed.py) the training forward goes through ``loop.wrapped``,
the model under DistributedDataParallel; rank 0 alone writes metrics, checkpoints and the model.
Logged values are averaged over ranks, except the work counters in ``SUMMED``, which add up.

A stage that trains a second model beside the first (PPO's critic) names it in ``companions``;
it gets its own optimizer and schedule, ``loop.optimizer_step("critic")`` steps it, checkpoints
hold both, and ``finish`` saves it to ``out/critic/``.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from r1lab.errors import R1labError
from r1lab.models.adapters import save_adapted
from r1lab.models.moe import is_moe, pop_logged
from r1lab.train.checkpoint import resume_training, save_pretrained_atomic, save_training
from r1lab.train.distributed import SINGLE, Dist, whole_model
from r1lab.train.metrics import MetricsLogger
from r1lab.train.offload import offload_optimizer_state
from r1lab.train.optim import Optim, build_optimizer, build_scheduler, optimizer_step
from r1lab.train.preemption import agreed, requested, stopped
from r1lab.train.progress import progress_bar, show
from r1lab.train.watchdog import progress


SUMMED = ("tokens_per_s", "tokens")     # logged values that count work: summed over ranks, not averaged
MAX_SKIPPED_IN_A_ROW = 5                # optimizer steps skipped for a non-finite gradient before the stage stops


class NonFiniteError(R1labError, RuntimeError):
    """Training produced non-finite gradients step after step; the message says where."""


class Companion(NamedTuple):
    """A model trained beside the loop's main one, with its own optimizer and schedule."""
    model: object
    optim: Optim
    opt: object
    sched: object
    wrapped: object      # the model to call in a training forward (under DDP with several ranks)


def _optimizer_and_schedule(model, optim: Optim, steps: int, offload: Path):
    opt = build_optimizer(model, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.offload:
        offload_optimizer_state(opt, offload)
    return opt, build_scheduler(opt, warmup_steps=optim.warmup_steps, total_steps=steps, min_ratio=optim.min_lr_ratio)


class TrainLoop:
    """State shared by every training stage's loop; see the module docstring."""

    def __init__(self, model, cfg, out: Path, total_steps: int, optimizer_steps: int | None = None,
                 companions: dict | None = None, dist: Dist = SINGLE, forward: torch.nn.Module | None = None):
        """``cfg``: the stage's config (its ``name``, ``kind``, ``optim``, ``checkpoint_every`` and
        ``checkpoint_every_s``);
        ``total_steps`` loop steps; ``optimizer_steps`` (default: the same) sizes the schedule(s).
        ``companions``: name -> (model, Optim) of further models to train (module docstring);
        ``dist``: the ranks the stage runs on; ``forward``: the module whose forward a training
        step calls, when it is not the model's own (it holds the model; ``wrapped`` wraps it)."""
        if dist.sharded and (cfg.optim.offload or any(o.offload for _, o in (companions or {}).values())):
            raise R1labError(f"stage {cfg.name!r}: optim.offload does not run under FSDP2 (its state is sharded "
                             "already); turn one of them off")
        self.model, self.optim, self.out, self.dist = model, cfg.optim, Path(out), dist
        self.skipped = self.in_a_row = 0            # optimizer steps skipped for a non-finite gradient
        self.name, self.total = cfg.name, total_steps
        self.checkpoint_every, self.checkpoint_every_s = cfg.checkpoint_every, cfg.checkpoint_every_s
        steps = optimizer_steps or total_steps
        # wrapped before the optimizers are made: FSDP2 replaces the parameters it shards. DDP wraps
        # the module whose forward the step calls; FSDP2 shards the model in place, under it.
        if dist.sharded:
            dist.wrap(model, find_unused=is_moe(model))                 # in place
            self.wrapped = forward or model
        else:
            self.wrapped = dist.wrap(forward or model, find_unused=is_moe(model))  # unrouted experts get no gradient
        self.opt, self.sched = _optimizer_and_schedule(model, cfg.optim, steps, self.scratch("optimizer"))
        self.companions = {}
        for name, (m, o) in (companions or {}).items():
            wrapped = dist.wrap(m)
            self.companions[name] = Companion(m, o, *_optimizer_and_schedule(m, o, steps, self.scratch(f"{name}-optimizer")),
                                              wrapped)
        self.step, self.resumed_elapsed = resume_training(self.out / "checkpoint", model, self.opt, self.sched,
                                                          self._companion_states())
        self.log = MetricsLogger(self.out / "metrics.jsonl", cfg.name, resume_step=self.step,
                                 elapsed_s=self.resumed_elapsed, write=dist.is_main)
        self.bar = progress_bar(f"{cfg.name} ({cfg.kind})", total_steps, self.step, disable=not dist.is_main)
        self.saved_step, self.saved_at = self.step, time.monotonic()   # the last checkpoint's step and time

    def scratch(self, name: str) -> Path:
        """A file of this rank's for state kept on disk between uses (r1lab/train/offload.py);
        the folder goes when the stage finishes."""
        return self.out / "offload" / f"{name}-rank{self.dist.rank}.bin"

    def steps(self) -> Iterator[int]:
        """0-based index of each step still to run (after a resume, from where it stopped)."""
        while self.step < self.total:
            progress(f"the start of step {self.step + 1} of {self.total}")
            yield self.step

    def optimizer_step(self, companion: str | None = None) -> float:
        """Clip, step, advance the schedule, zero the grads of the main model (or of the named
        companion); returns the norm before clipping. A non-finite norm skips the step
        (r1lab/train/optim.py), counted in the log as ``skipped_steps``; the stage stops after
        ``MAX_SKIPPED_IN_A_ROW`` in a row, before anything more is saved."""
        if companion is None:
            norm = optimizer_step(self.model, self.opt, self.sched, self.optim.grad_clip)
        else:
            c = self.companions[companion]
            norm = optimizer_step(c.model, c.opt, c.sched, c.optim.grad_clip)
        if math.isfinite(norm):
            self.in_a_row = 0
            return norm
        self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1
        if self.in_a_row >= MAX_SKIPPED_IN_A_ROW:
            last = f"step {self.saved_step}" if self.saved_step else "none"
            raise NonFiniteError(
                f"{self.out}: {self.in_a_row} optimizer steps in a row had a non-finite gradient norm ({norm}) "
                f"at step {self.step + 1}; stopped (last checkpoint: {last}). Lower optim.lr or check the data")
        return norm

    def _companion_states(self) -> dict:
        return {name: (c.model, c.opt, c.sched) for name, c in self.companions.items()}

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def end_step(self, values: dict[str, float], show_keys: Iterable[str] = (), rows: int = 1) -> None:
        """Count the step, log ``values`` under its 1-based number, update the bar, checkpoint:
        every ``checkpoint_every`` steps, when ``checkpoint_every_s`` have passed since the last
        one, and when a signal asked the run to stop (r1lab/train/preemption.py), which then
        raises ``Preempted``. Under torchrun the values are averaged over ranks, each weighted
        by its ``rows`` of the batch, and the ranks agree on when to checkpoint."""
        self.step += 1
        if self.skipped:
            values = {**values, "skipped_steps": float(self.skipped)}
        values = self.dist.mean({**values, **pop_logged(self.model)}, rows, SUMMED)  # + an MoE model's router loss
        self.log.log(self.step, values)
        show(self.bar, {k: values[k] for k in show_keys})
        self.bar.update(1)
        progress(f"step {self.step} of {self.total}")
        due = self.checkpoint_every_s is not None and time.monotonic() - self.saved_at >= self.checkpoint_every_s
        stop, due = agreed(self.dist, requested() is not None, due)
        if self.step == self.total:                  # the model is saved next; a stop comes after it
            return
        if self.step % self.checkpoint_every == 0 or due or stop:
            if self.dist.is_main or self.dist.sharded:   # FSDP2: every rank gathers
                save_training(self.out / "checkpoint", self.model, self.opt, self.sched, self.step,
                              self.log.elapsed(), self._companion_states(), write=self.dist.is_main)
            self.saved_step, self.saved_at = self.step, time.monotonic()
            progress(f"the checkpoint of step {self.step}")
        if stop:
            self.bar.close()
            raise stopped(f"after step {self.step} of {self.total}, its checkpoint written", f"stage {self.name!r}: ")

    def finish(self, tokenizer) -> None:
        """Close the bar and save the trained model (HF format) to ``out/model``, each companion
        to ``out/<name>``. A model with adapters is saved merged, its adapter to ``out/adapter``."""
        self.bar.close()
        model = whole_model(self.model)                    # FSDP2: gathered by every rank, onto rank 0
        if self.dist.is_main:
            save_adapted(model, tokenizer, self.out / "model", save_pretrained_atomic)
        for name, c in self.companions.items():
            model = whole_model(c.model)
            if self.dist.is_main:
                save_pretrained_atomic(model, tokenizer, self.out / name)
        self.dist.barrier()                                # the model is on disk before any rank reads it
        shutil.rmtree(self.out / "offload", ignore_errors=True)
