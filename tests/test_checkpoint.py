"""Checkpoints: a resumed run equals an unbroken one, RNG round-trips, nothing is unpickled,
a crash between the two writes keeps the previous checkpoint, errors name the file."""

from __future__ import annotations

import json
import math
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from r1lab.train import checkpoint
from r1lab.train.checkpoint import (STATE_FILE, CheckpointStateError, decode_state, encode_state,
                                    load_checkpoint, resume_training, save_checkpoint, save_training,
                                    write_atomic)
from r1lab.train.metrics import MetricsLogger, read_metrics
from r1lab.train.optim import build_optimizer, build_scheduler, optimizer_step


def tiny_setup(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.25), torch.nn.Linear(8, 1))
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=10, min_ratio=0.1)
    return model, opt, sched


def train(model, opt, sched, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(4, 3)                                     # [4, 3], from the global RNG
        loss = (model(x).squeeze(-1) - x.sum(-1)).pow(2).mean()   # dropout draws from it too
        loss.backward()
        optimizer_step(model, opt, sched, grad_clip=1.0)


def test_resumed_training_equals_unbroken(tmp_path):
    model, opt, sched = tiny_setup(0)
    train(model, opt, sched, 3)
    save_training(tmp_path, model, opt, sched, step=3, elapsed_s=1.5)
    train(model, opt, sched, 3)

    fresh, fresh_opt, fresh_sched = tiny_setup(1)
    assert not torch.equal(fresh[0].weight, model[0].weight)
    assert resume_training(tmp_path, fresh, fresh_opt, fresh_sched) == (3, 1.5)
    train(fresh, fresh_opt, fresh_sched, 3)

    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert fresh_sched.get_last_lr() == sched.get_last_lr()
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE, "tensors-3.safetensors"]


def test_companions_resume_with_the_main_model(tmp_path):
    """A second model (PPO's critic) saved beside the first resumes to the unbroken run too, and
    a checkpoint without it is refused by name."""
    (model, opt, sched), (critic, c_opt, c_sched) = tiny_setup(0), tiny_setup(5)
    for m, o, s in ((model, opt, sched), (critic, c_opt, c_sched)):
        train(m, o, s, 3)
    save_training(tmp_path, model, opt, sched, step=3, elapsed_s=1.5, companions={"critic": (critic, c_opt, c_sched)})
    for m, o, s in ((model, opt, sched), (critic, c_opt, c_sched)):
        train(m, o, s, 3)

    (fresh, f_opt, f_sched), (f_critic, fc_opt, fc_sched) = tiny_setup(1), tiny_setup(6)
    assert resume_training(tmp_path, fresh, f_opt, f_sched, {"critic": (f_critic, fc_opt, fc_sched)}) == (3, 1.5)
    for m, o, s in ((fresh, f_opt, f_sched), (f_critic, fc_opt, fc_sched)):
        train(m, o, s, 3)
    for a, b in ((model.state_dict(), fresh.state_dict()), (critic.state_dict(), f_critic.state_dict())):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert fc_sched.get_last_lr() == c_sched.get_last_lr()
    with pytest.raises(CheckpointStateError, match="'value'"):
        resume_training(tmp_path, *tiny_setup(1), {"value": tiny_setup(6)})


def test_fresh_start_when_there_is_no_checkpoint(tmp_path):
    model, opt, sched = tiny_setup(0)
    assert resume_training(tmp_path / "missing", model, opt, sched) == (0, 0.0)


def draws():
    return random.gauss(0, 1), np.random.standard_normal(3), torch.rand(3)


def test_rng_states_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    draws()                                  # leaves a cached gaussian in python and numpy
    save_checkpoint(tmp_path, {"step": 1})
    before = draws()
    assert load_checkpoint(tmp_path)["step"] == 1
    after = draws()
    assert before[0] == after[0]
    assert np.array_equal(before[1], after[1])
    assert torch.equal(before[2], after[2])


class Bomb:
    """Unpickling it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickles_in_the_directory_are_never_loaded(tmp_path):
    marker, ckpt = tmp_path / "exploded", tmp_path / "ckpt"
    ckpt.mkdir()
    bomb = pickle.dumps(Bomb(marker))
    (ckpt / "state.pt").write_bytes(bomb)                    # the old format's file name
    (ckpt / "tensors-9.safetensors").write_bytes(bomb)       # a bogus tensor file, with no state.json
    assert load_checkpoint(ckpt) is None
    assert not marker.exists()

    save_checkpoint(ckpt, {"step": 2, "w": torch.ones(2)})   # next to a real checkpoint as well
    (ckpt / "state.pt").write_bytes(bomb)
    assert load_checkpoint(ckpt)["step"] == 2
    assert not marker.exists()

    pickle.loads(bomb)                                       # the bomb is real
    assert marker.exists()


def test_crash_between_the_two_writes_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"step": 3, "w": torch.full((2,), 3.0)})

    def crash(*_):
        raise KeyboardInterrupt("killed before state.json")
    monkeypatch.setattr(checkpoint, "write_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"step": 6, "w": torch.full((2,), 6.0)})
    assert (tmp_path / "tensors-6.safetensors").is_file()    # the new tensors are on disk ...
    state = load_checkpoint(tmp_path)                        # ... but the commit point is the old one
    assert state["step"] == 3 and torch.equal(state["w"], torch.full((2,), 3.0))

    # a tensor file written by hand without state.json changes nothing either
    save_file({"0": torch.zeros(2)}, tmp_path / "tensors-7.safetensors")
    assert load_checkpoint(tmp_path)["step"] == 3

    monkeypatch.undo()
    save_checkpoint(tmp_path, {"step": 9, "w": torch.full((2,), 9.0)})   # the stale files go
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE, "tensors-9.safetensors"]
    assert torch.equal(load_checkpoint(tmp_path)["w"], torch.full((2,), 9.0))


def test_saving_the_same_step_twice_never_overwrites_the_committed_file(tmp_path):
    save_checkpoint(tmp_path, {"step": 4, "w": torch.ones(2)})
    save_checkpoint(tmp_path, {"step": 4, "w": torch.zeros(2)})
    assert json.loads((tmp_path / STATE_FILE).read_text())["tensors"] == "tensors-4-1.safetensors"
    assert torch.equal(load_checkpoint(tmp_path)["w"], torch.zeros(2))


def test_encoder_round_trips_nested_state():
    state = {"a": {0: (1, 2.5), 1: [True, None, "x"]},
             "floats": (math.inf, -math.inf, math.nan, 0.1),
             "arr": np.arange(5, dtype=np.uint32),
             "t": torch.arange(3.0),
             ("k", 2): False,
             "looks_tagged": {"__tuple__": [1]}}
    tensors = {}
    skeleton = json.loads(json.dumps(encode_state(state, tensors), allow_nan=False))   # strict JSON
    out = decode_state(skeleton, tensors)

    assert out.keys() == state.keys()
    assert out["a"] == {0: (1, 2.5), 1: [True, None, "x"]}
    assert list(out["a"]) == [0, 1] and isinstance(out["a"][0], tuple)
    inf, ninf, nan, tenth = out["floats"]
    assert (inf, ninf, tenth) == (math.inf, -math.inf, 0.1) and math.isnan(nan)
    assert isinstance(out["arr"], np.ndarray) and out["arr"].dtype == np.uint32
    assert out["arr"].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(out["t"], torch.tensor([0.0, 1.0, 2.0]))
    assert out[("k", 2)] is False
    assert out["looks_tagged"] == {"__tuple__": [1]}


def test_encoder_refuses_what_it_cannot_store():
    with pytest.raises(TypeError, match="set"):
        encode_state({"s": {1, 2}}, {})


def test_tensors_that_share_memory_are_saved(tmp_path):
    w = torch.arange(6.0)
    save_checkpoint(tmp_path, {"embed": w, "lm_head": w, "half": w[3:]})   # tied weights, a view
    state = load_checkpoint(tmp_path)
    assert torch.equal(state["embed"], w) and torch.equal(state["lm_head"], w)
    assert torch.equal(state["half"], torch.tensor([3.0, 4.0, 5.0]))


def test_corrupt_state_file_raises_naming_it(tmp_path):
    save_checkpoint(tmp_path, {"step": 1, "w": torch.ones(2)})
    (tmp_path / STATE_FILE).write_text('{"tensors": "tensors-1.safe')
    with pytest.raises(CheckpointStateError, match="state.json"):
        load_checkpoint(tmp_path)


def test_missing_tensor_file_raises_naming_it(tmp_path):
    save_checkpoint(tmp_path, {"step": 1, "w": torch.ones(2)})
    (tmp_path / "tensors-1.safetensors").unlink()
    with pytest.raises(CheckpointStateError, match="tensors-1.safetensors"):
        load_checkpoint(tmp_path)


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    write_atomic(path, "first")
    write_atomic(path, b"second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_metrics_logger_drops_lines_after_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLogger(path, "base")
    for step in range(1, 6):
        log.log(step, {"loss": float(step)})
    log = MetricsLogger(path, "base", resume_step=3, elapsed_s=100.0)   # the run died after step 5
    assert [m["step"] for m in read_metrics(path)] == [1, 2, 3]
    log.log(4, {"loss": 0.5})
    rows = read_metrics(path)
    assert [m["step"] for m in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] == 0.5 and rows[-1]["stage"] == "base" and rows[-1]["time_s"] >= 100.0
