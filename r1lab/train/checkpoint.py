"""Atomic writes of run state: a crash or ``kill -9`` never leaves a half-written file."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary sibling, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(ckpt_dir: Path, state: dict) -> None:
    """``state`` (model, optimizer, scheduler, step, ...) plus RNG states, as one atomic file."""
    state = dict(state, rng=rng_state())
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / STATE_FILE)


def load_checkpoint(ckpt_dir: Path) -> dict | None:
    """The last saved state (RNG states restored), or None when there is none."""
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return state


def resume_training(ckpt_dir: Path, model, optimizer, scheduler) -> tuple[int, float]:
    """Restore model, optimizer, scheduler and RNG from ``ckpt_dir`` if it holds a state.

    Returns (steps done, seconds spent before), (0, 0.0) for a fresh start.
    """
    state = load_checkpoint(ckpt_dir)
    if state is None:
        return 0, 0.0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["step"], state["elapsed_s"]


def save_training(ckpt_dir: Path, model, optimizer, scheduler, step: int, elapsed_s: float) -> None:
    """The state :func:`resume_training` reads back, written atomically."""
    save_checkpoint(ckpt_dir, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "step": step, "elapsed_s": elapsed_s})


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_pretrained_atomic(model, tokenizer, out_dir: Path) -> None:
    """Save an HF model + tokenizer into ``out_dir`` via a temporary folder and a rename."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
