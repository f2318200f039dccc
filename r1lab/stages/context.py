"""What a stage may read while it runs: the run's config, the device, and earlier stages' output."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from r1lab.locate import resolve
from r1lab.train.distributed import SINGLE, Dist

if TYPE_CHECKING:
    from r1lab.config import RunConfig


def pick_device(name: str, dist: Dist = SINGLE) -> torch.device:
    """The device named in the config; ``auto``: this rank's GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


@dataclass
class RunContext:
    """Handed to every stage's ``run(ctx, cfg, out)``."""
    config: RunConfig
    run_dir: Path
    device: torch.device
    stage_dirs: dict[str, Path] = field(default_factory=dict)   # stage name -> its folder, filled in order
    dist: Dist = SINGLE                                         # the ranks under torchrun (r1lab/train/distributed.py)

    @property
    def seed(self) -> int:
        return self.config.seed

    def task(self, cfg):
        """The task a stage draws questions from: its own ``task:``, else the run's."""
        return getattr(cfg, "task", None) or self.config.task

    def data_path(self, ref: str) -> Path:
        """An earlier stage's ``data.jsonl``, or ``ref`` taken as a path."""
        if ref in self.stage_dirs:
            return self.stage_dirs[ref] / "data.jsonl"
        return Path(ref).expanduser()

    def model_path(self, ref: str) -> Path:
        """An earlier stage's ``model/`` folder, or the path (or packaged file) ``ref`` names
        (r1lab/locate.py)."""
        if ref in self.stage_dirs:
            return self.stage_dirs[ref] / "model"
        return resolve(ref)

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()
