"""A GRPO stage on 2 ranks (``torchrun --nproc_per_node 2``, gloo; ``data_parallel`` ddp and
fsdp2) against the same stage in one process: same config, same global batch, same seed; wall
time and agreement.

The stage is R1-Zero's GRPO (16 questions x 8 completions a step, 96 new tokens, beta 0.04)
from ``--init``, the base model of an earlier run (``r1lab run r1-zero-tiny`` makes one at
runs/r1-zero-tiny/stages/0-base/model). Each launch is a fresh ``r1lab run`` of a one-stage
config; the stage's own seconds come from its DONE file (start-up and imports excluded), the
launch's wall time around it. The one-process run uses every core for its threads; each of the
2 ranks gets ``cores / 2`` (torchrun's OMP_NUM_THREADS). The launches alternate (one process,
ddp, fsdp2), ``--repeats`` times each.

Agreement: every rank samples the rows one process would (r1lab/train/distributed.py), so the
runs differ only by float rounding, until a rounding difference flips a sampled token; the
script prints, for each 2-rank run against the one-process run, the largest weight difference
and the steps whose logged reward and accuracy are equal.

    python benchmarks/torchrun_grpo.py --init runs/r1-zero-tiny/stages/0-base/model   # one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

CONFIG = """\
name: torchrun-grpo
seed: 0
data_parallel: {strategy}
task: {{kind: arithmetic, template: r1-compact, n_test: 120}}
stages:
  - {{kind: grpo, name: rl, init: {init}, steps: {steps}, checkpoint_every: 1000}}
"""


def launch(config: Path, run_dir: Path, ranks: int) -> dict:
    threads = os.cpu_count() // ranks
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    cmd = (launcher if ranks > 1 else [sys.executable]) + ["-m", "r1lab", "run", str(config), "--run-dir", str(run_dir)]
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.time() - t0
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    stage = run_dir / "stages" / "0-rl"
    return {"wall_s": wall, "stage_s": json.loads((stage / "DONE").read_text())["seconds"], "dir": stage}


def compare(a: Path, b: Path) -> dict:
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    same = [x["step"] for x, y in zip(ma, mb) if all(abs(x[k] - y[k]) < 1e-6 for k in ("reward/mean", "accuracy"))]
    return {"max_abs_weight_diff": max((wa[k] - wb[k]).abs().max().item() for k in wa),
            "steps_with_equal_rewards": len(same), "first_step_that_differs": next(
                (x["step"] for x, y in zip(ma, mb) if x["step"] not in same), None),
            "final_accuracy": mb[-1]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", type=Path, required=True, help="base model directory")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    variants = {"one_process": (1, "ddp"), "ddp": (2, "ddp"), "fsdp2": (2, "fsdp2")}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: [] for name in variants}
        for i in range(args.repeats):
            for name, (ranks, strategy) in variants.items():
                config = Path(tmp) / f"{strategy}.yaml"
                config.write_text(CONFIG.format(init=args.init.resolve(), steps=args.steps, strategy=strategy))
                runs[name].append(launch(config, Path(tmp) / f"{name}-{i}", ranks))
        best = {name: min(x["stage_s"] for x in r) for name, r in runs.items()}
        out = {"steps": args.steps, "cores": os.cpu_count(),
               **{f"{name}_stage_s": [x["stage_s"] for x in r] for name, r in runs.items()},
               **{f"{name}_wall_s": [round(x["wall_s"], 1) for x in r] for name, r in runs.items()}}
        for name in ("ddp", "fsdp2"):
            out[f"{name}_speedup"] = round(best["one_process"] / best[name], 3)
            out[f"{name}_vs_one_process"] = compare(runs["one_process"][0]["dir"], runs[name][0]["dir"])
        print(json.dumps(out))

if __name__ == "__main__":
    main()
