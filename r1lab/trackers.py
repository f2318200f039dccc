"""Experiment trackers: ``report_to: [tensorboard, trackio, wandb, mlflow]`` in a run config sends
every value a stage writes to its ``metrics.jsonl`` to each named tracker as well.

One tracker run per r1lab run (its name), one namespace per stage (``<stage>/<key>``, against the
stage's own step), and a resumed run continues the same tracker run (the ids are kept in
``<run dir>/trackers.json``), with steps carrying on from the checkpoint. Where each writes:

- tensorboard: event files in ``<run dir>/tensorboard`` (``tensorboard --logdir runs/<name>``);
- trackio: its local store (``TRACKIO_DIR``, default ``~/.cache/huggingface/trackio``), project = run name;
- wandb: offline in ``<run dir>/wandb`` unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads it);
- mlflow: ``MLFLOW_TRACKING_URI`` if set, else a file store in ``<run dir>/mlruns`` (``mlflow ui
  --backend-store-uri runs/<name>/mlruns``; MLflow 3 asks for ``MLFLOW_ALLOW_FILE_STORE=true``, set for it).

Each comes with an extra (``pip install -e ".[tensorboard]"``, ``[trackio]``, ``[wandb]``, ``[mlflow]``);
a config naming one that is not installed is refused at load, saying which to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import time
from contextvars import ContextVar
from pathlib import Path

TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}  # -> module


def missing(name: str) -> str | None:
    """Why the tracker ``name`` cannot be used here, or None."""
    if importlib.util.find_spec(TRACKERS[name]) is None:
        return f"{name} is not installed (pip install -e \".[{name}]\")"
    return None


class _TensorBoard:
    def __init__(self, run_dir: Path, name: str, ids: dict):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, stage: str, step: int, values: dict) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{stage}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Trackio:
    def __init__(self, run_dir: Path, name: str, ids: dict):
        import trackio
        self.trackio = trackio
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            self.run = trackio.init(project=name, name=name, resume="allow", embed=False)

    def log(self, stage: str, step: int, values: dict) -> None:
        self.run.log({f"{stage}/{k}": v for k, v in values.items()} | {f"{stage}/step": step})

    def close(self) -> None:
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            self.run.finish()


class _Wandb:
    def __init__(self, run_dir: Path, name: str, ids: dict):
        import wandb
        ids.setdefault("wandb", secrets.token_hex(4))
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=name, name=name, id=ids["wandb"], resume="allow", dir=str(run_dir),
                              mode=os.environ.get("WANDB_MODE", "offline"))
        self.stages: set[str] = set()

    def log(self, stage: str, step: int, values: dict) -> None:
        if stage not in self.stages:                     # each stage against its own step
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self.stages.add(stage)
        self.run.log({f"{stage}/step": step, **{f"{stage}/{k}": v for k, v in values.items()}})

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, run_dir: Path, name: str, ids: dict):
        from mlflow.tracking import MlflowClient
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:                  # the file store, which MLflow 3 keeps in maintenance and asks to opt into
            uri = (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(uri)
        if "mlflow" not in ids:
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            ids["mlflow"] = self.client.create_run(experiment_id, run_name=name).info.run_id
        self.run_id = ids["mlflow"]

    def log(self, stage: str, step: int, values: dict) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_mlflow_key(f"{stage}/{k}"), float(v), now, step)
                                                    for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _mlflow_key(key: str) -> str:
    """MLflow allows letters, digits, ``_-. /`` in names; anything else becomes ``_``."""
    return re.sub(r"[^\w\-. /]", "_", key)


BACKENDS = {"tensorboard": _TensorBoard, "trackio": _Trackio, "wandb": _Wandb, "mlflow": _MLflow}
_ACTIVE: ContextVar[list | None] = ContextVar("trackers", default=None)


@contextlib.contextmanager
def tracking(names: list[str], run_dir: Path, name: str):
    """Send every metrics line logged inside the block to the trackers ``names``; the ids that
    make a resumed run continue the same tracker run are kept in ``run_dir/trackers.json``."""
    if not names:
        yield
        return
    from r1lab.io import write_atomic
    ids_path = run_dir / "trackers.json"
    ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    opened = [BACKENDS[n](run_dir, name, ids) for n in names]
    write_atomic(ids_path, json.dumps(ids, indent=2) + "\n")
    token = _ACTIVE.set(opened)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        for tracker in opened:
            tracker.close()


def log(stage: str, step: int, values: dict) -> None:
    """Send one metrics line to the active trackers (none outside :func:`tracking`); only the
    numeric values go (bools as 0/1)."""
    trackers = _ACTIVE.get()
    if not trackers:
        return
    numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and v == v}
    for tracker in trackers:
        tracker.log(stage, step, numbers)
