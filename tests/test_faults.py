"""Faults a run must survive (issue: hardening): a non-finite gradient skips its step, a metrics
line torn by a crash is dropped on resume, and a second run on the same directory refuses."""

from __future__ import annotations

import math

import pytest
import torch

from r1lab.data.jsonl import DataError
from r1lab.pipeline import RunDirError, run_lock
from r1lab.train.loop import MAX_SKIPPED_IN_A_ROW, NonFiniteError, TrainLoop
from r1lab.train.metrics import MetricsLogger, read_metrics
from r1lab.train.optim import Optim


def step_with(loop, model, bad: bool) -> float:
    x = torch.ones(2, 3)
    loss = model(x).pow(2).mean() * (float("nan") if bad else 1.0)
    loss.backward()
    norm = loop.optimizer_step()
    loop.end_step({"loss": loss.item()})
    return norm


def test_a_non_finite_gradient_skips_the_step_and_too_many_in_a_row_stop_the_stage(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    loop = TrainLoop(model, Optim(lr=0.1, warmup_steps=2), tmp_path, "s", "test", 20, checkpoint_every=2)
    step_with(loop, model, bad=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments, lr = {k: v.clone() for k, v in loop.opt.state[model.weight].items()}, loop.lr
    for _ in range(2):                                                                   # steps 2 and 3
        assert math.isnan(step_with(loop, model, bad=True))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())       # weights unchanged
    assert all(torch.equal(moments[k], v) for k, v in loop.opt.state[model.weight].items())
    assert loop.lr == lr                                                                 # schedule too
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r.get("skipped_steps") for r in rows] == [None, 1.0, 2.0]
    step_with(loop, model, bad=False)                                                    # step 4: counts reset
    good = {k: v.clone() for k, v in model.state_dict().items()}
    assert not all(torch.equal(before[k], v) for k, v in good.items())
    # steps 5-9 are bad: 6 and 8 still checkpoint (the weights of step 4), 9 is the fifth in a row
    with pytest.raises(NonFiniteError, match=f"{MAX_SKIPPED_IN_A_ROW} optimizer steps in a row.*at step 9.*"
                                             f"last checkpoint: step 8"):
        for _ in range(MAX_SKIPPED_IN_A_ROW):
            step_with(loop, model, bad=True)
    fresh = torch.nn.Linear(3, 2)
    TrainLoop(fresh, Optim(lr=0.1, warmup_steps=2), tmp_path, "s", "test", 20, checkpoint_every=2)  # resumes
    assert all(torch.equal(good[k], v) for k, v in fresh.state_dict().items())           # good weights kept


def test_a_metrics_line_torn_by_a_crash_is_dropped_and_any_other_bad_line_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLogger(path, "s")
    for step in (1, 2, 3):
        log.log(step, {"loss": 1.0 / step})
    with path.open("a") as f:
        f.write('{"stage": "s", "step": 4, "lo')                  # the disk filled mid-append
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    MetricsLogger(path, "s", resume_step=3)                        # a resume rewrites it whole
    assert path.read_text().count("\n") == 3 and [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "not json", lines[1]]) + "\n")
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not a metrics line"):
        read_metrics(path)


def test_a_second_run_on_a_locked_run_dir_refuses_and_writes_nothing(tmp_path):
    from r1lab.config import RunConfig
    from r1lab.pipeline import run
    config = RunConfig.model_validate({"name": "x", "task": {"kind": "arithmetic"},
                                       "stages": [{"kind": "eval", "name": "e", "model": str(tmp_path)}]})
    with run_lock(tmp_path / "run"):                               # the first run holds it
        with pytest.raises(RunDirError, match="another r1lab run is using it"):
            run(config, tmp_path / "run", log=lambda *_: None)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]
    with run_lock(tmp_path / "run"):                               # released when the holder ends
        pass
