"""A run: the ordered stages of one config, each in its own folder of the run directory.

    runs/<name>/config.yaml              the resolved config, as last run
    runs/<name>/.lock                    locked while a run uses the directory (run_lock)
    runs/<name>/stages/<i>-<name>/       model/, data.jsonl, metrics.jsonl, eval.json, checkpoint/,
                                         FINGERPRINT, DONE (seconds and peak RSS of the stage)

Each stage records a fingerprint of what determines its output: its own config, the run's
seed, the task it draws from, and the fingerprints of the stages it reads (a path input counts
by its path). Re-running a command skips every finished stage (DONE) whose fingerprint is
unchanged, resumes an interrupted one from its last checkpoint, and re-executes, from scratch,
the first stage whose fingerprint differs and every stage after it. So fixing a typo in the
last stage keeps the finished ones; a crash or Ctrl-C loses at most the steps since the last
checkpoint. DONE is written last, atomically.

Under torchrun every rank walks the stages together (r1lab/train/distributed.py): all read the
run directory's state, then rank 0 alone changes it; training stages run on every rank, the
others on rank 0 alone while the rest wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

try:
    import fcntl
except ImportError:                     # not on Windows
    fcntl = None

from r1lab.config import RunConfig
from r1lab.data.jsonl import skipping_bad_rows
from r1lab.trackers import tracking
from r1lab.errors import R1labError
from r1lab.models.io import quiet_transformers
from r1lab.stages import STAGES
from r1lab.io import write_atomic
from r1lab.stages.context import RunContext, pick_device
from r1lab.train.distributed import SINGLE, from_collective, from_env
from r1lab.train.preemption import check as check_preempted, stop_on_signals
from r1lab.train.watchdog import last_place, watching


class RunDirError(R1labError, ValueError):
    """The run directory holds a different run."""


class PeerLostError(R1labError, RuntimeError):
    """Under torchrun, a collective failed in a training stage: a peer rank is gone."""


def reset_peak_rss() -> None:
    """Start a new high-water mark of this process's resident memory (Linux: clear_refs 5),
    so each stage's DONE records its own peak; elsewhere a no-op."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float | None:
    """This process's resident-memory high-water mark (VmHWM) in MB since the last reset."""
    return _status_mb("VmHWM")


def rss_mb() -> float | None:
    """This process's resident memory now (VmRSS) in MB."""
    return _status_mb("VmRSS")


def _status_mb(key: str) -> float | None:
    """A memory figure of /proc/self/status in MB; None where there is none (not Linux)."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{key}:"))
    except (OSError, StopIteration):
        return None
    return round(int(line.split()[1]) / 1024, 1)


# settings that change when a stage saves its state, never what it writes: not in its fingerprint
NOT_OUTPUT = {"checkpoint_every_s"}


def stage_dir(run_dir: Path, index: int, name: str) -> Path:
    return run_dir / "stages" / f"{index}-{name}"


def fingerprint(config: RunConfig, stage, upstream: dict[str, str]) -> str:
    """Hash of a stage's config, the seed, its task, and its inputs (earlier stages' fingerprints).
    Settings left unset (None) do not count, so an optional setting added in a later version of
    r1lab does not make finished stages run again."""
    inputs = {".".join(map(str, where)): upstream.get(ref, f"path:{ref}") for where, ref, _ in stage.references()}
    task = getattr(stage, "task", None) or config.task
    payload = {"stage": stage.model_dump(mode="json", exclude_none=True, exclude=NOT_OUTPUT), "seed": config.seed,
               "task": task.model_dump(mode="json", exclude_none=True), "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def recorded_fingerprint(out: Path) -> str | None:
    """The fingerprint a stage's folder was last run under, or None."""
    return (out / "FINGERPRINT").read_text().strip() if (out / "FINGERPRINT").exists() else None


def check_run_dir(config: RunConfig, run_dir: Path) -> None:
    """Refuse a run directory that holds another run (another ``name``)."""
    saved = run_dir / "config.yaml"
    if saved.exists():
        other = (yaml.safe_load(saved.read_text()) or {}).get("name")
        if other != config.name:
            raise RunDirError(f"{run_dir}: holds the run {other!r}, not {config.name!r} ({saved}); "
                              f"use another --run-dir")


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` for the duration: an advisory ``flock`` the OS releases when the
    process ends, even by ``kill -9``, so a second ``r1lab run`` on the same directory refuses at
    once instead of writing beside the first. (Where ``fcntl`` is missing, no lock is taken.)"""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    with open(path, "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirError(f"{run_dir}: another r1lab run is using it ({path} is locked); wait for it "
                                  f"to end, or use another --run-dir") from None
        yield


@contextlib.contextmanager
def naming_lost_peers(dist, stage: str) -> Iterator[None]:
    """A collective that fails under torchrun (a peer rank died) raised as one line naming the
    stage and the step, not a traceback from inside torch.distributed."""
    try:
        yield
    except RuntimeError as e:
        if not (dist.active and from_collective(e)):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeerLostError(f"stage {stage!r}: a collective failed after {last_place()}, on rank {dist.rank} "
                            f"({first}); a peer rank has likely died. Under torchrun --max-restarts the group "
                            f"starts again and resumes from the last checkpoint") from None


def run(config: RunConfig, run_dir: Path | None = None, log=print) -> Path:
    """Run (or resume) every stage of ``config``; returns the run directory."""
    quiet_transformers()
    dist = from_env(config.data_parallel, config.device)
    run_dir = Path(run_dir or Path("runs") / config.name)
    log = log if dist.is_main else (lambda *_: None)
    with run_lock(run_dir) if dist.is_main else contextlib.nullcontext():    # rank 0 speaks for the ranks
        with skipping_bad_rows(log) if config.bad_rows == "skip" else contextlib.nullcontext(), \
                tracking(config.report_to if dist.is_main else [], run_dir, config.name), stop_on_signals():
            return _run(config, run_dir, dist, log)


def _run(config: RunConfig, run_dir: Path, dist, log) -> Path:
    check_run_dir(config, run_dir)
    dist.barrier()                               # every rank has read the run dir before rank 0 writes
    if dist.is_main:
        write_atomic(run_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    torch.manual_seed(config.seed)
    ctx = RunContext(config=config, run_dir=run_dir, device=pick_device(config.device, dist), dist=dist)
    prints: dict[str, str] = {}
    rerun_from: str | None = None      # the first stage that (re-)ran: every later one runs too
    for i, stage in enumerate(config.stages):
        out = stage_dir(run_dir, i, stage.name)
        ctx.stage_dirs[stage.name] = out
        fp = prints[stage.name] = fingerprint(config, stage, prints)
        recorded = recorded_fingerprint(out)
        done = (out / "DONE").exists()
        head = f"[{i}] {stage.name} ({stage.kind})"
        dist.barrier()                           # every rank has decided before rank 0 changes ``out``
        if done and recorded == fp and rerun_from is None:
            log(f"{head}: done, skipped (config and inputs unchanged)")
            continue
        if out.exists() and (recorded != fp or done or rerun_from):
            why = "its config or inputs changed" if recorded != fp else f"an earlier stage ({rerun_from}) ran again"
            log(f"{head}: {why}; running it again from scratch")
            if dist.is_main:
                shutil.rmtree(out)
        elif out.exists():
            log(f"{head}: resuming")
        else:
            log(head)
        check_preempted(dist, f"before stage {stage.name!r} (the stages before it are done)")
        rerun_from = rerun_from or stage.name
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / "FINGERPRINT", fp + "\n")
        dist.barrier()
        t0 = time.time()
        reset_peak_rss()
        runs_here = stage.data_parallel or dist.is_main   # else: rank 0 runs it alone while this rank waits
        with watching(config.stall_timeout_s if runs_here else None, out / "stall.log", stage.name):
            if stage.data_parallel:
                with naming_lost_peers(dist, stage.name):
                    STAGES[stage.kind].run(ctx, stage, out)
            elif dist.is_main:                   # alone: its collectives must not wait for the others
                STAGES[stage.kind].run(dataclasses.replace(ctx, dist=SINGLE), stage, out)
        dist.barrier()                           # rank 0 has finished a stage the others skipped
        done = {"seconds": round(time.time() - t0, 1), "peak_rss_mb": peak_rss_mb()}
        if dist.is_main:
            write_atomic(out / "DONE", json.dumps(done) + "\n")
    return run_dir

