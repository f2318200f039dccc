"""report_to: every metrics.jsonl value reaches each tracker, one run per r1lab run, one namespace
per stage, steps continuing across a resume; read back from what each tracker wrote."""

import glob
import json
import os
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from r1lab.train.metrics import MetricsLogger
from r1lab.trackers import tracking

LINES = {1: 0.5, 2: 0.25, 3: 0.125, 4: 0.0625}      # step -> loss


def log_with_a_resume(run_dir, names):
    """Steps 1-3 of stage 'sft', a crash, then a resume from step 2's checkpoint logging 3-4."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for steps, resume in ((range(1, 4), 0), (range(3, 5), 2)):
        if resume:          # wandb names an offline run's folder by the second it starts: a resume
            time.sleep(1.01 - time.time() % 1)          # in the same second would write over the run's file
        with tracking(names, run_dir, "demo"):
            log = MetricsLogger(run_dir / "metrics.jsonl", "sft", resume_step=resume)
            for step in steps:
                log.log(step, {"loss": LINES[step], "ok": True, "note": "text is not sent"})


def test_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log_with_a_resume(tmp_path, ["tensorboard"])
    seen = {}
    for events in sorted(glob.glob(str(tmp_path / "tensorboard" / "events.*"))):
        acc = EventAccumulator(events)
        acc.Reload()
        seen |= {e.step: e.value for e in acc.Scalars("sft/loss")}        # the later file wins, as TensorBoard shows it
        assert "sft/note" not in acc.Tags()["scalars"]
    assert seen == pytest.approx(LINES)


def test_mlflow(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    log_with_a_resume(tmp_path, ["mlflow"])
    run_id = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    history = MlflowClient((tmp_path / "mlruns").as_uri()).get_metric_history(run_id, "sft/loss")
    assert {m.step: m.value for m in history} == pytest.approx(LINES)              # one run, resumed
    assert len(MlflowClient((tmp_path / "mlruns").as_uri()).search_runs(
        [MlflowClient((tmp_path / "mlruns").as_uri()).get_experiment_by_name("demo").experiment_id])) == 1


def _wandb_history(path):
    """History rows of an offline .wandb file (LevelDB-log framing of Record protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, block, pos, buf, rows = open(path, "rb").read(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        if length == 0 and kind == 0:
            pos += left
            continue
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):                                                         # a whole record
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    log_with_a_resume(tmp_path, ["wandb"])
    run_id = json.loads((tmp_path / "trackers.json").read_text())["wandb"]
    files = glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    assert len(files) == 2                                                         # the run and its resume, one id
    seen = {row["sft/step"]: row["sft/loss"] for f in files for row in _wandb_history(f)}
    assert seen == pytest.approx(LINES)


def test_trackio(tmp_path):
    pytest.importorskip("trackio")
    script = textwrap.dedent(f"""
        import json, pathlib
        from tests.test_trackers import log_with_a_resume
        log_with_a_resume(pathlib.Path({str(tmp_path / 'run')!r}), ["trackio"])
        from trackio.sqlite_storage import SQLiteStorage
        print("LOGS " + json.dumps(SQLiteStorage.get_logs("demo", "demo")))
    """)
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}             # its store, read at import
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("LOGS "))[5:])
    assert {r["sft/step"]: r["sft/loss"] for r in rows} == pytest.approx(LINES)


def test_a_tracker_that_is_not_installed_is_refused_at_config_load(monkeypatch):
    from pydantic import ValidationError
    from r1lab import trackers
    from r1lab.config import RunConfig
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValidationError, match=r'wandb is not installed \(pip install -e "\.\[wandb\]"\)'):
        RunConfig.model_validate({"name": "t", "task": {"kind": "arithmetic"}, "report_to": ["wandb"],
                                  "stages": [{"kind": "eval", "name": "e", "model": "m"}]})
