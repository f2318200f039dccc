"""A run: the ordered stages of one config, each in its own folder of the run directory.

    runs/<name>/config.yaml              the resolved config, as run
    runs/<name>/stages/<i>-<name>/       model/, metrics.jsonl, eval.json, checkpoint/, DONE

A stage whose DONE marker exists is skipped, so re-running the same command after a crash
or Ctrl-C resumes: finished stages are not repeated and the interrupted one continues from
its last checkpoint. DONE is written last, atomically.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml

from r1lab.config import RunConfig
from r1lab.models.io import quiet_transformers
from r1lab.stages import STAGES
from r1lab.stages.context import RunContext, pick_device
from r1lab.train.checkpoint import write_atomic


class RunDirError(ValueError):
    """The run directory holds a different run."""


def stage_dir(run_dir: Path, index: int, name: str) -> Path:
    return run_dir / "stages" / f"{index}-{name}"


def run(config: RunConfig, run_dir: Path | None = None, log=print) -> Path:
    """Run (or resume) every stage of ``config``; returns the run directory."""
    quiet_transformers()
    run_dir = Path(run_dir or Path("runs") / config.name)
    resolved = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    saved = run_dir / "config.yaml"
    if saved.exists() and saved.read_text() != resolved:
        raise RunDirError(f"{run_dir}: holds a run with a different config ({saved}); "
                          f"use another --run-dir or the same config")
    write_atomic(saved, resolved)
    torch.manual_seed(config.seed)
    ctx = RunContext(config=config, run_dir=run_dir, device=pick_device(config.device))
    for i, stage in enumerate(config.stages):
        out = stage_dir(run_dir, i, stage.name)
        ctx.stage_dirs[stage.name] = out
        if (out / "DONE").exists():
            log(f"[{i}] {stage.name} ({stage.kind}): done, skipped")
            continue
        out.mkdir(parents=True, exist_ok=True)
        log(f"[{i}] {stage.name} ({stage.kind})")
        t0 = time.time()
        STAGES[stage.kind].run(ctx, stage, out)
        write_atomic(out / "DONE", json.dumps({"seconds": round(time.time() - t0, 1)}) + "\n")
    return run_dir


# (header, eval.json key, format) of the end-of-run table
EVAL_COLUMNS = [("pass@1", "pass@1", ".3f"), ("cons@k", "cons@k", ".3f"), ("greedy", "greedy_accuracy", ".3f"),
                ("format", "format_rate", ".3f"), ("acc|format", "accuracy_if_formatted", ".3f"),
                ("length", "completion_len/mean", ".1f")]


def eval_table(run_dir: Path) -> str:
    """A text table comparing every eval stage of a run ("-" where a metric is missing)."""
    rows = []
    for path in sorted((Path(run_dir) / "stages").glob("*/eval.json"),
                       key=lambda p: int(p.parent.name.split("-")[0])):
        metrics = json.loads(path.read_text())
        rows.append([metrics.get("model", path.parent.name)] +
                    [format(metrics[k], f) if k in metrics else "-" for _, k, f in EVAL_COLUMNS])
    if not rows:
        return ""
    header = ["model"] + [c for c, _, _ in EVAL_COLUMNS]
    widths = [max(len(r[j]) for r in rows + [header]) for j in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
