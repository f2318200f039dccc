"""A lost rank (issue: reliability): under ``torchrun --max-restarts 1`` one of 2 gloo ranks is
killed with SIGKILL in the middle of a GRPO step; torchrun stops the other, starts the group
again, the run resumes from its last checkpoint by itself and ends with the weights of an
unbroken 2-rank run. The surviving rank's failed collective is one line naming the stage and step."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from preemption import CONFIG, RL, steps_logged
from test_distributed import launch, weights


def rank_pid(launcher: int, rank: int) -> int | None:
    """The process id of torchrun's (``launcher``'s) worker of ``rank``, None while there is none."""
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == launcher and f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """The config (GRPO checkpointing every 4 steps) and its unbroken 2-rank run."""
    work = tmp_path_factory.mktemp("ranks")
    config = work / "c.yaml"
    config.write_text(CONFIG.replace("checkpoint_every: 1000", "checkpoint_every: 4"))
    launch(config, work / "unbroken", 2)
    return config, work / "unbroken"


def torchrun(config, run_dir, *flags) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *flags,
           "-m", "r1lab", "run", str(config), "--run-dir", str(run_dir)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})


def wait_for_steps(proc, run_dir, n: int) -> None:
    while steps_logged(run_dir) < n:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.01)


def same_weights(a, b) -> bool:
    wa, wb = weights(a, "1-rl"), weights(b, "1-rl")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_a_rank_killed_mid_step_restarts_the_group_which_resumes_to_the_unbroken_weights(unbroken, tmp_path):
    config, reference = unbroken
    run_dir = tmp_path / "broken"
    proc = torchrun(config, run_dir, "--max-restarts=1")
    wait_for_steps(proc, run_dir, 5)                         # step 6 under way; the checkpoint is step 4's
    os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "failed (exitcode: -9) local_rank: 1" in out      # torchrun saw the kill, and started the group again:
    # rank 0's collective failed at once, in one line naming the stage and the step
    assert re.search(r"r1lab: error: stage 'rl': a collective failed after (the start of )?step \d+ of 30, on rank 0", out), \
        out[-3000:]
    assert "[1] rl (grpo): resuming" in out                  # the new rank 0 resumed from the checkpoint
    logged = (run_dir / RL / "metrics.jsonl").read_text().splitlines()
    assert len(logged) == 30                                 # steps 5-6 dropped on resume and run again
    assert same_weights(reference, run_dir)


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_after_the_same_step_and_the_run_resumes(unbroken, tmp_path):
    config, reference = unbroken
    run_dir = tmp_path / "stopped"
    proc = torchrun(config, run_dir)
    wait_for_steps(proc, run_dir, 2)
    proc.send_signal(signal.SIGTERM)                         # torchrun forwards it to both ranks
    out, _ = proc.communicate(timeout=600)
    stopped = re.findall(r"r1lab: stage 'rl': stopped by SIGTERM after step (\d+) of 30", out)
    assert len(stopped) == 2 and stopped[0] == stopped[1], out[-3000:]   # both ranks, the same step
    step = int(stopped[0])
    assert json.loads((run_dir / RL / "checkpoint/state.json").read_text())["state"]["step"] == step
    assert steps_logged(run_dir) == step                     # nothing lost
    launch(config, run_dir, 2)
    assert same_weights(reference, run_dir)
