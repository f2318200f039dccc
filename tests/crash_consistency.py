"""Crash consistency: ``r1lab run`` killed with SIGKILL at a random moment, then run again,
ends with the unbroken run's results; and whatever the kill left is never taken as complete.

Used by tests/test_crash_consistency.py (a few trials) and, for the figure in docs/reliability.md, run directly:

    python tests/crash_consistency.py --trials 20

Half the trials kill at a random moment of a random stage (a random part of the time it took in
the unbroken run, after its folder appears); the other half kill inside the k-th write of the
run, k drawn over all its writes (atomic files, checkpoint tensors, saved models): the run is
started through WRAPPER, which writes half of that file, then sends itself SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

CONFIG = """\
name: crash
seed: 1
task: {kind: arithmetic, n_test: 16}
stages:
  - kind: pretrain
    name: base
    steps: 8
    checkpoint_every: 1
    batch_size: 8
    seq_len: 48
    model: {hidden_size: 32, num_layers: 2, num_heads: 2, num_kv_heads: 1, intermediate_size: 64}
  - {kind: eval, name: eval-base, model: base, samples: 4, sampling: {max_new_tokens: 16}}
  - kind: grpo
    name: rl
    init: base
    steps: 6
    checkpoint_every: 1
    prompts_per_step: 4
    group_size: 4
    sampling: {max_new_tokens: 16}
  - {kind: eval, name: eval-rl, model: rl, samples: 4, sampling: {max_new_tokens: 16}}
"""
WALL_CLOCK = {"seconds", "time_s", "tokens_per_s", "rollout_s", "peak_rss_mb", "elapsed_s"}


# Runs ``r1lab`` (argv[2:]) with its writes counted; the argv[1]-th (1-based; 0: none) is cut in
# half and the process killed with SIGKILL right there. The count goes to R1LAB_WRITES_FILE at exit.
WRAPPER = """
import atexit, os, signal, sys
from pathlib import Path
import r1lab.io as rio
from r1lab.train import checkpoint as ck
kill_at, count = int(sys.argv[1]), [0]
atexit.register(lambda: Path(os.environ["R1LAB_WRITES_FILE"]).write_text(str(count[0])))

def hit():
    count[0] += 1
    return count[0] == kill_at

def die_halfway(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    os.kill(os.getpid(), signal.SIGKILL)

real_write, real_save, real_model = ck.write_atomic, ck.save_file, ck.save_pretrained_atomic

def write_atomic(path, data):
    if hit():
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        die_halfway(tmp)
    return real_write(path, data)

def save_file(tensors, path):
    real_save(tensors, path)
    if hit():
        die_halfway(path)

def save_pretrained_atomic(model, tokenizer, out_dir):
    if hit():
        tmp = Path(out_dir).with_name(f".{Path(out_dir).name}.tmp")
        model.save_pretrained(tmp, safe_serialization=True)
        die_halfway(tmp / "model.safetensors")
    return real_model(model, tokenizer, out_dir)

rio.write_atomic = ck.write_atomic = write_atomic
ck.save_file, ck.save_pretrained_atomic = save_file, save_pretrained_atomic
from r1lab.cli import main                       # after the patch: modules bind write_atomic on import
sys.exit(main(sys.argv[2:]))
"""


def start(config: Path, run_dir: Path, kill_at_write: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRAPPER, str(kill_at_write), "run", str(config), "--run-dir",
                             str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                         "R1LAB_WRITES_FILE": str(run_dir) + ".writes"})


def finish(config: Path, run_dir: Path) -> None:
    proc = start(config, run_dir)
    if proc.wait(timeout=600):
        raise AssertionError(f"r1lab run {run_dir} failed with exit status {proc.returncode}")


def results(run_dir: Path) -> dict:
    """Every stage's final weights and eval metrics (wall-clock fields aside)."""
    out = {}
    for stage in sorted((run_dir / "stages").iterdir()):
        if (stage / "model/model.safetensors").exists():
            out[stage.name] = load_file(stage / "model/model.safetensors")
        if (stage / "eval.json").exists():
            out[stage.name + "/eval"] = {k: v for k, v in json.loads((stage / "eval.json").read_text()).items()
                                         if k not in WALL_CLOCK}
    return out


def same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        if isinstance(a[k], dict) and all(isinstance(v, torch.Tensor) for v in a[k].values()):
            if a[k].keys() != b[k].keys() or not all(torch.equal(a[k][t], b[k][t]) for t in a[k]):
                return False
        elif a[k] != b[k]:
            return False
    return True


def left_complete(run_dir: Path) -> list[str]:
    """What the kill left that claims to be complete and is not: a stage marked DONE whose outputs
    do not load, a checkpoint whose state does not load (a torn last metrics line is allowed:
    resume drops it)."""
    from r1lab.train.checkpoint import load_checkpoint
    broken = []
    for stage in sorted((run_dir / "stages").iterdir()) if (run_dir / "stages").is_dir() else []:
        if (stage / "DONE").exists():
            try:
                json.loads((stage / "DONE").read_text())
                if (stage / "model").exists():
                    load_file(stage / "model/model.safetensors")
                if stage.name.split("-", 1)[1].startswith("eval"):
                    json.loads((stage / "eval.json").read_text())
            except Exception as e:                      # noqa: BLE001 - any failure is the finding
                broken.append(f"{stage.name} is DONE but {type(e).__name__}: {e}")
        if (stage / "checkpoint/state.json").exists():
            try:
                load_checkpoint(stage / "checkpoint")
            except Exception as e:                      # noqa: BLE001
                broken.append(f"{stage.name}/checkpoint: {type(e).__name__}: {e}")
    return broken


def kill_at(proc: subprocess.Popen, run_dir: Path, rng: random.Random, stages: dict[str, float]) -> str:
    """SIGKILL the run's process group at a random moment of a random stage (``stages``: each
    one's seconds in the unbroken run), a random part of its time after its folder appears."""
    target = rng.choice(sorted(stages))
    delay = rng.uniform(0.0, 0.9 * stages[target])
    folder, started = run_dir / "stages" / target, None
    while proc.poll() is None:
        now = time.monotonic()
        if started is None and folder.exists():
            started = now
        if started is not None and now - started >= delay:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"at {now - started:.2f}s into {target}"
        time.sleep(0.001 if started is not None else 0.01)
    return f"not killed (the run ended first; aimed at {target})"


def stage_at_kill(run_dir: Path) -> str:
    """The stage the kill interrupted: the first one without DONE ("start-up" before any)."""
    stages = sorted((run_dir / "stages").iterdir(), key=lambda d: int(d.name.split("-")[0])) \
        if (run_dir / "stages").is_dir() else []
    unfinished = [d.name for d in stages if not (d / "DONE").exists()]
    return unfinished[0] if unfinished else f"after {stages[-1].name}" if stages else "start-up"


def trials(work: Path, n: int, seed: int = 0, log=print) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "crash.yaml"
    config.write_text(CONFIG)
    finish(config, work / "unbroken")
    reference = results(work / "unbroken")
    writes = int(Path(str(work / "unbroken") + ".writes").read_text())
    rng, out = random.Random(seed), []
    stages = {d.name: json.loads((d / "DONE").read_text())["seconds"] for d in (work / "unbroken" / "stages").iterdir()}
    for i in range(n):
        run_dir = work / f"trial-{i}"
        if i % 2:
            k = rng.randint(1, writes)
            proc = start(config, run_dir, kill_at_write=k)
            where = f"inside write {k} of {writes}" if proc.wait() == -signal.SIGKILL else "not killed"
        else:
            where = kill_at(start(config, run_dir), run_dir, rng, stages)
        broken, stage = left_complete(run_dir), stage_at_kill(run_dir)
        try:
            finish(config, run_dir)
            identical = same(results(run_dir), reference)
        except AssertionError as e:                     # the resume itself failed
            broken, identical = broken + [str(e)], False
        out.append({"trial": i, "killed": where, "stage": stage, "left_complete_but_broken": broken,
                    "same_as_unbroken": identical})
        log(json.dumps(out[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/r1lab-crash"))
    args = ap.parse_args()
    done = trials(args.work, args.trials, args.seed, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({"benchmark": "crash_consistency", "trials": len(done),
                      "killed": sum(not d["killed"].startswith("not") for d in done),
                      "killed_inside_a_write": sum(d["killed"].startswith("inside") for d in done),
                      "stages": {s: sum(d["stage"] == s for d in done) for s in sorted({d["stage"] for d in done})},
                      "identical_after_resume": sum(d["same_as_unbroken"] for d in done),
                      "partial_taken_as_complete": sum(bool(d["left_complete_but_broken"]) for d in done)}))


if __name__ == "__main__":
    main()
