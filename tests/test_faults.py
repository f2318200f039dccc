"""Faults a run must survive (issue: hardening): a non-finite gradient skips its step, a metrics
line torn by a crash is dropped on resume, a second run on the same directory refuses; damaged
model directories and checkpoints, a full disk and a read-only run directory are one line on
stderr (exit 2) with nothing already written lost."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from r1lab.errors import DataError
from r1lab.pipeline import RunDirError, run_lock
from r1lab.train.loop import MAX_SKIPPED_IN_A_ROW, NonFiniteError, TrainLoop
from r1lab.train.metrics import MetricsLogger, read_metrics
from r1lab.train.optim import Optim


def stage_config(**kw):
    """The fields of a training stage's config that TrainLoop reads."""
    from types import SimpleNamespace
    return SimpleNamespace(**{"name": "s", "kind": "test", "optim": Optim(lr=0.1, warmup_steps=2),
                              "checkpoint_every": 2, "checkpoint_every_s": None, **kw})


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
    loop = TrainLoop(model, stage_config(), tmp_path, 20)
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
    TrainLoop(fresh, stage_config(), tmp_path, 20)  # resumes
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


# ---- what the user sees: one line on stderr, exit 2, nothing already written lost ----

TINY_PRETRAIN = """\
name: f
task: {kind: arithmetic, n_test: 4}
stages:
  - kind: pretrain
    name: base
    steps: 4
    checkpoint_every: 1
    batch_size: 4
    seq_len: 32
    model: {hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, intermediate_size: 64}
"""


def cli_error(argv, capsys) -> str:
    from r1lab.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err                                  # progress bars may come before it
    assert err.count("r1lab: error: ") == 1 and "Traceback" not in err
    return err[err.index("r1lab: error: "):]


def test_model_dirs_without_a_tokenizer_or_with_broken_weights_are_one_line(qwen_dir, tmp_path, capsys):
    import shutil
    for name, damage in (("no-tokenizer", lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")
                                                      if (d / f).exists()]),
                         ("cut-weights", lambda d: (d / "model.safetensors").write_bytes(b"\x10" * 100))):
        model = tmp_path / name
        shutil.copytree(qwen_dir, model)
        damage(model)
        err = cli_error(["eval", str(model), "--config", "r1-zero-tiny"], capsys)
        assert str(model) in err
        assert ("no tokenizer in the model directory" if name == "no-tokenizer" else "cannot load the checkpoint") in err


def test_a_damaged_checkpoint_is_one_line_and_an_unreadable_eval_json_shows_in_the_report(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(TINY_PRETRAIN.replace("steps: 4", "steps: 2") + "  - {kind: eval, name: e, model: base, samples: 1,"
                      " sampling: {max_new_tokens: 4}}\n")
    from r1lab.cli import main
    assert main(["run", str(config), "--run-dir", str(tmp_path / "run")]) == 0
    stage = tmp_path / "run/stages/0-base"
    (stage / "DONE").unlink()
    tensors = next((stage / "checkpoint").glob("tensors-*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:300])
    err = cli_error(["run", str(config), "--run-dir", str(tmp_path / "run")], capsys)
    assert str(tensors) in err and "delete its folder" in err
    (tmp_path / "run/stages/1-e/eval.json").write_text('{"pass@1": 0.')
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "**eval.json unreadable**" in (tmp_path / "run/report.md").read_text()


def test_a_full_disk_during_a_checkpoint_write_keeps_the_last_checkpoint_and_resumes(tmp_path, capsys, monkeypatch):
    import errno
    from r1lab.train import checkpoint
    from r1lab.cli import main
    config = tmp_path / "c.yaml"
    config.write_text(TINY_PRETRAIN)
    real, calls = checkpoint.save_file, []

    def full_disk(tensors, path):
        calls.append(path)
        if len(calls) == 3:                                        # the step-3 checkpoint
            path.write_bytes(b"\x00" * 100)                        # what fitted before the disk filled
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path)
    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    err = cli_error(["run", str(config), "--run-dir", str(tmp_path / "run")], capsys)
    assert "No space left on device" in err and "run the same command to resume" in err
    state = checkpoint.load_checkpoint(tmp_path / "run/stages/0-base/checkpoint")
    assert state["step"] == 2                                      # the last good one, loadable
    monkeypatch.setattr(checkpoint, "save_file", real)             # space freed
    assert main(["run", str(config), "--run-dir", str(tmp_path / "run")]) == 0
    resumed = load_file(tmp_path / "run/stages/0-base/model/model.safetensors")
    assert main(["run", str(config), "--run-dir", str(tmp_path / "unbroken")]) == 0
    unbroken = load_file(tmp_path / "unbroken/stages/0-base/model/model.safetensors")
    assert all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)


def test_a_read_only_run_dir_is_one_line(tmp_path, capsys, monkeypatch):
    import errno
    from r1lab import pipeline
    config = tmp_path / "c.yaml"
    config.write_text(TINY_PRETRAIN)

    def read_only(path, *_, **__):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(pipeline, "write_atomic", read_only)
    err = cli_error(["run", str(config), "--run-dir", str(tmp_path / "run")], capsys)
    assert f"{tmp_path / 'run' / 'config.yaml'}: Read-only file system" in err
