"""Atomic writes of run state: a crash or ``kill -9`` never leaves a half-written file.

A training checkpoint is a directory holding no pickle, so loading one runs no code from disk::

    tensors-<step>.safetensors   every tensor of the state, by the names the skeleton uses
    state.json                   {"tensors": "tensors-<step>.safetensors", "state": skeleton}

The tensor file is written first, then ``state.json``: its atomic rename is the commit point,
so a crash between the two leaves the previous checkpoint whole. Tensor files that
``state.json`` does not name are deleted after it is in place.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from r1lab.errors import R1labError
from r1lab.io import write_atomic
from r1lab.train.distributed import full_state_dicts, load_full_state_dicts

STATE_FILE = "state.json"
TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__float__", "__items__")


class CheckpointStateError(R1labError, ValueError):
    """A checkpoint's ``state.json`` or the tensor file it names cannot be read; the message names it."""

    def __str__(self) -> str:
        return f"{super().__str__()}; the checkpoint is damaged: delete its folder to run that stage from its start"


def encode_state(obj, tensors: dict[str, torch.Tensor]):
    """A JSON-able skeleton of ``obj``; its tensors go into ``tensors`` under the names it holds.

    Tuples, numpy arrays, non-finite floats and dicts with keys other than str are tagged so that
    :func:`decode_state` gives them back as they were:

    >>> encode_state({"lr": 0.1, 0: (1, float("inf"))}, {})
    {'__items__': [['lr', 0.1], [0, {'__tuple__': [1, {'__float__': 'inf'}]}]]}
    """
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = obj
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": encode_state(torch.from_numpy(np.ascontiguousarray(obj)), tensors)}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": str(obj)}                         # "inf", "-inf", "nan"
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(x, tensors) for x in obj]}
    if isinstance(obj, list):
        return [encode_state(x, tensors) for x in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in TAGS):
            return {k: encode_state(v, tensors) for k, v in obj.items()}
        return {"__items__": [[encode_state(k, tensors), encode_state(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def decode_state(skeleton, tensors: dict[str, torch.Tensor]):
    """The object :func:`encode_state` made ``skeleton`` from."""
    if isinstance(skeleton, list):
        return [decode_state(x, tensors) for x in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if len(skeleton) == 1 and (tag := next(iter(skeleton))) in TAGS:
        value = skeleton[tag]
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__ndarray__":
            return decode_state(value, tensors).numpy()
        if tag == "__tuple__":
            return tuple(decode_state(x, tensors) for x in value)
        if tag == "__float__":
            return float(value)
        return {decode_state(k, tensors): decode_state(v, tensors) for k, v in value}
    return {k: decode_state(v, tensors) for k, v in skeleton.items()}


def save_checkpoint(ckpt_dir: Path, state: dict) -> None:
    """``state`` (model, optimizer, scheduler, step, ...) plus RNG states, committed atomically."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = encode_state(dict(state, rng=rng_state()), tensors)
    seen = set()                            # safetensors refuses tensors that share memory (tied weights)
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        tensors[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    committed = _committed_tensor_file(ckpt_dir)
    name = f"tensors-{state.get('step', 0)}.safetensors"
    if name == committed:                   # never overwrite the file the commit point names
        name = f"tensors-{state.get('step', 0)}-1.safetensors"
    tmp = ckpt_dir / f".{name}.tmp"
    save_file(tensors, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / name)
    write_atomic(ckpt_dir / STATE_FILE, json.dumps({"tensors": name, "state": skeleton}, allow_nan=False))
    for old in [*ckpt_dir.glob("tensors-*.safetensors"), *ckpt_dir.glob(".tensors-*.tmp")]:
        if old.name != name:
            old.unlink()


def _committed_tensor_file(ckpt_dir: Path) -> str | None:
    try:
        return json.loads((ckpt_dir / STATE_FILE).read_text())["tensors"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_checkpoint(ckpt_dir: Path) -> dict | None:
    """The last saved state (RNG states restored), or None when there is none."""
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        name, skeleton = doc["tensors"], doc["state"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointStateError(f"{path}: not a checkpoint state file ({e})") from None
    tensor_path = path.parent / str(name)
    if Path(str(name)).name != name or not tensor_path.is_file():
        raise CheckpointStateError(f"{path}: names the tensor file {name!r}, which is not in {path.parent}")
    try:
        state = decode_state(skeleton, load_file(tensor_path))
    except (SafetensorError, KeyError) as e:
        raise CheckpointStateError(f"{tensor_path}: cannot be read with {path} ({e})") from None
    set_rng_state(state["rng"])
    return state


def resume_training(ckpt_dir: Path, model, optimizer, scheduler,
                    companions: dict[str, tuple] | None = None) -> tuple[int, float]:
    """Restore model, optimizer, scheduler and RNG from ``ckpt_dir`` if it holds a state, and
    each of ``companions`` (name -> (model, optimizer, scheduler)) saved beside them.

    Returns (steps done, seconds spent before), (0, 0.0) for a fresh start.
    """
    state = load_checkpoint(ckpt_dir)
    if state is None:
        return 0, 0.0
    saved = state.get("companions", {})
    for name, parts in (companions or {}).items():
        if name not in saved:
            raise CheckpointStateError(f"{Path(ckpt_dir) / STATE_FILE}: holds no state of {name!r}")
        _load_states(parts, saved[name])
    _load_states((model, optimizer, scheduler), state)
    return state["step"], state["elapsed_s"]


def save_training(ckpt_dir: Path, model, optimizer, scheduler, step: int, elapsed_s: float,
                  companions: dict[str, tuple] | None = None, write: bool = True) -> None:
    """The state :func:`resume_training` reads back, written atomically. An FSDP2-sharded model's
    state is gathered from every rank, so every rank calls this; ``write`` on rank 0 alone."""
    state = dict(_states(model, optimizer, scheduler), step=step, elapsed_s=elapsed_s)
    if companions:
        state["companions"] = {name: _states(*parts) for name, parts in companions.items()}
    if write:
        save_checkpoint(ckpt_dir, state)


def _states(model, optimizer, scheduler) -> dict:
    model_state, optimizer_state = full_state_dicts(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state, "scheduler": scheduler.state_dict()}


def _load_states(parts: tuple, state: dict) -> None:
    model, optimizer, scheduler = parts
    load_full_state_dicts(model, optimizer, state["model"], state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


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
