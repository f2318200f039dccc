"""Long runs (issue: reliability): a polite signal stops a run after the step under way with
its checkpoint written, and the run resumes to the unbroken result (tests/preemption.py; its
20-trial run is the figure in docs/reliability.md); a second signal stops at once; checkpoints
come every ``checkpoint_every_s`` too; a stage that hangs ends in the stall timeout with every
thread's stack in its stall.log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from preemption import EXIT_PREEMPTED, RL, start, steps_logged, trials
from r1lab.train.loop import TrainLoop
from r1lab.train.optim import Optim
from r1lab.train.preemption import EXIT_PREEMPTED as EXIT_CODE, REPEAT_S
from r1lab.train.watchdog import EXIT_STALLED


@pytest.mark.slow
def test_a_signal_at_a_random_moment_stops_after_the_step_with_nothing_lost_and_resumes_identically(tmp_path):
    done = trials(tmp_path, 3, seed=1, signals=(signal.SIGTERM, signal.SIGUSR1, signal.SIGINT), log=lambda *_: None)
    assert EXIT_PREEMPTED == EXIT_CODE
    for d in done:
        assert d["at_s"] is not None, d                       # the signal went out while the stage ran
        assert d["exit"] == EXIT_PREEMPTED, d
        assert f"stopped by {d['signal']}" in d["message"] and "run the same command to resume" in d["message"], d
        assert d["steps_after_signal"] <= 1 and d["steps_lost"] == 0, d
        assert d["same_as_unbroken"], d


# ``r1lab`` (argv[2:]) with step 2 of the stage "rl" taking argv[1] seconds more (a slow or stuck step)
SLOW_STEP = """
import sys, time
from r1lab.train.loop import TrainLoop
real, pause = TrainLoop.optimizer_step, float(sys.argv[1])
def optimizer_step(self, *a, **k):
    if self.name == "rl" and self.step == 1:
        time.sleep(pause)
    return real(self, *a, **k)
TrainLoop.optimizer_step = optimizer_step
from r1lab.cli import main
sys.exit(main(sys.argv[2:]))
"""


def with_slow_step(pause_s: float, config, run_dir, **kw):
    return subprocess.Popen([sys.executable, "-c", SLOW_STEP, str(pause_s), "run", str(config), "--run-dir",
                             str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


@pytest.mark.slow
def test_a_second_signal_stops_at_once_and_a_repeat_at_once_counts_once(tmp_path):
    from preemption import CONFIG
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    proc = with_slow_step(60, config, tmp_path / "run")
    while steps_logged(tmp_path / "run") < 1:                 # step 2, which takes a minute, has begun
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)                          # the same request again (a scheduler and torchrun)
    time.sleep(REPEAT_S + 0.3)
    assert proc.poll() is None                                # still finishing step 2
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM                 # killed by it, as without r1lab's handler
    assert steps_logged(tmp_path / "run") == 1


def test_checkpoints_come_every_checkpoint_every_s_as_well(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    cfg = SimpleNamespace(name="s", kind="test", optim=Optim(lr=0.1), checkpoint_every=1000, checkpoint_every_s=0.3)
    loop = TrainLoop(model, cfg, tmp_path, 20)
    saved = []
    for pause in (0.0, 0.35, 0.0, 0.0, 0.35):
        time.sleep(pause)
        model(torch.ones(2, 3)).pow(2).mean().backward()
        loop.optimizer_step()
        loop.end_step({})
        saved.append(loop.saved_step)
    assert saved == [0, 2, 2, 2, 5]
    assert (tmp_path / "checkpoint/tensors-5.safetensors").exists()


@pytest.mark.slow
def test_a_step_that_hangs_ends_in_the_stall_timeout_with_every_threads_stack(tmp_path):
    from preemption import CONFIG
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("seed: 1", "seed: 1\nstall_timeout_s: 10"))
    t0 = time.monotonic()
    proc = with_slow_step(3600, config, tmp_path / "run")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_STALLED, err[-2000:]
    assert time.monotonic() - t0 < 180
    line = f"r1lab: stage 'rl': no progress for 10 s after the start of step 2 of 30 (stall_timeout_s: 10)"
    assert line in err
    log = (tmp_path / "run" / RL / "stall.log").read_text()
    assert log.startswith(line)
    assert "in optimizer_step" in log                         # the stuck thread's stack
    assert "Current thread 0x" in log and "\nThread 0x" in log  # every thread's: the watchdog's and the others
    assert steps_logged(tmp_path / "run") == 1
