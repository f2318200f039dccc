"""Preemption: ``r1lab run`` sent SIGTERM (or SIGUSR1, SIGINT) at a random moment of a GRPO stage
stops after the step under way with that step's checkpoint written, exits with EXIT_PREEMPTED,
and run again ends with the unbroken run's weights.

Used by tests/test_preemption.py (a few trials) and, for the figure in docs/reliability.md, run directly:

    python tests/preemption.py --trials 20

The GRPO stage checkpoints every 1,000 steps, so before r1lab stopped on signals a kill lost
every step it had done. Each trial starts from the unbroken run's pre-trained base (its stage
folder copied: the run skips it), signals the process a random part of the GRPO stage's
unbroken time after its folder appears, and records the steps logged when the signal went out,
the step of the checkpoint the exit left, and the steps lost (logged but not in the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

CONFIG = """\
name: preempt
seed: 1
task: {kind: arithmetic, n_test: 16}
stages:
  - kind: pretrain
    name: base
    steps: 8
    batch_size: 8
    seq_len: 48
    model: {hidden_size: 32, num_layers: 2, num_heads: 2, num_kv_heads: 1, intermediate_size: 64}
  - kind: grpo
    name: rl
    init: base
    steps: 30
    checkpoint_every: 1000
    prompts_per_step: 8
    group_size: 8
    sampling: {max_new_tokens: 24}
"""
RL = "stages/1-rl"
EXIT_PREEMPTED = 75


def start(config: Path, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "r1lab", "run", str(config), "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(config: Path, run_dir: Path) -> None:
    proc = start(config, run_dir)
    _, err = proc.communicate(timeout=600)
    if proc.returncode:
        raise AssertionError(f"r1lab run {run_dir} failed with exit status {proc.returncode}: {err[-2000:]}")


def steps_logged(run_dir: Path) -> int:
    path = run_dir / RL / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.endswith("}")) if path.exists() else 0


def checkpoint_step(run_dir: Path) -> int | None:
    path = run_dir / RL / "checkpoint/state.json"
    return json.loads(path.read_text())["state"]["step"] if path.exists() else None


def signal_at(proc: subprocess.Popen, run_dir: Path, delay: float, signum: int) -> dict:
    """Send ``signum`` ``delay`` seconds after the GRPO stage's folder appears; what it left."""
    folder, started = run_dir / RL, None
    while proc.poll() is None:
        now = time.monotonic()
        if started is None and folder.exists():
            started = now
        if started is not None and now - started >= delay:
            logged = steps_logged(run_dir)
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=600)
            last = err.strip().splitlines()[-1] if err.strip() else ""
            return {"at_s": round(now - started, 2), "steps_when_signalled": logged, "exit": proc.returncode,
                    "message": last, "checkpoint_step": checkpoint_step(run_dir), "steps_logged": steps_logged(run_dir)}
        time.sleep(0.002 if started is not None else 0.02)
    return {"at_s": None, "exit": proc.returncode}            # the run ended first


def trials(work: Path, n: int, seed: int = 0, signals=(signal.SIGTERM,), log=print) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "preempt.yaml"
    config.write_text(CONFIG)
    finish(config, work / "unbroken")
    reference = load_file(work / "unbroken" / RL / "model/model.safetensors")
    seconds = json.loads((work / "unbroken" / RL / "DONE").read_text())["seconds"]
    rng, out = random.Random(seed), []
    for i in range(n):
        run_dir, signum = work / f"trial-{i}", signals[i % len(signals)]
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(work / "unbroken" / "stages/0-base", run_dir / "stages/0-base")
        shutil.copy(work / "unbroken" / "config.yaml", run_dir / "config.yaml")
        got = signal_at(start(config, run_dir), run_dir, rng.uniform(0.0, seconds), signum)
        got = {"trial": i, "signal": signal.Signals(signum).name, **got}
        if got["at_s"] is not None:                      # a stage that finished lost nothing: its model is saved
            stage_done = (run_dir / RL / "DONE").exists()
            got["steps_lost"] = 0 if stage_done else got["steps_logged"] - (got["checkpoint_step"] or 0)
            got["steps_after_signal"] = got["steps_logged"] - got["steps_when_signalled"]
        finish(config, run_dir)
        weights = load_file(run_dir / RL / "model/model.safetensors")
        got["same_as_unbroken"] = weights.keys() == reference.keys() and all(
            torch.equal(weights[k], reference[k]) for k in reference)
        out.append(got)
        log(json.dumps(got))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--signal", default="SIGTERM", choices=["SIGTERM", "SIGUSR1", "SIGINT"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/r1lab-preempt"))
    args = ap.parse_args()
    done = trials(args.work, args.trials, args.seed, (getattr(signal, args.signal),),
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    hit = [d for d in done if d["at_s"] is not None]
    print(json.dumps({"benchmark": "preemption", "signal": args.signal, "trials": len(done), "signalled": len(hit),
                      "exit_preempted": sum(d["exit"] == EXIT_PREEMPTED for d in hit),
                      "max_steps_after_signal": max((d["steps_after_signal"] for d in hit), default=None),
                      "steps_lost": sum(d["steps_lost"] for d in hit),
                      "identical_after_resume": sum(d["same_as_unbroken"] for d in done)}))


if __name__ == "__main__":
    main()
