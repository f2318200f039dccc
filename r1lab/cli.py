"""The ``r1lab`` command: parse, call, print."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

USAGE = """\
r1lab trains reasoning language models the way DeepSeek-R1 was trained.

  r1lab run                      the whole R1 recipe on a tiny model it builds itself (config r1-tiny)
  r1lab run CONFIG --set k=v     any config (a YAML path or a shipped name) with overrides
  r1lab run CONFIG --plan        each stage's parameters and expected peak memory, before running anything
  r1lab eval MODEL               evaluate a saved model (folder, .gguf, pkg:) on a config's held-out split
  r1lab report RUN_DIR           write RUN_DIR/report.md and plots/*.png (run writes it at the end)
"""


# glibc's malloc returns PyTorch's mid-size activation buffers to the kernel after each step and
# faults them in again on the next one. These limits keep them mapped (docs/log.md, "Page faults
# after pre-training", has the counts). glibc reads them only when a process starts, so the
# console script starts Python again with them, unless the user set either.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "134217728"}
# a full disk, a read-only run directory, no permission: one line, not a traceback
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def entry() -> None:
    """The ``r1lab`` console script: :func:`main` in a process started with ``MALLOC_ENV``."""
    if sys.platform.startswith("linux") and not MALLOC_ENV.keys() & os.environ.keys():
        os.execve(sys.executable, [sys.executable, "-m", "r1lab", *sys.argv[1:]], {**os.environ, **MALLOC_ENV})
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="r1lab", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="run (or resume) every stage of a config",
                           description="Run the stages of CONFIG in order into the run directory. "
                           "Re-running the same command resumes: finished stages are skipped and an "
                           "interrupted one continues from its last checkpoint.")
    run_p.add_argument("config", nargs="?", default=None,
                       help="a YAML file, or the name of a shipped config (default: r1-tiny)")
    run_p.add_argument("--run-dir", type=Path, default=None, help="where to write (default: runs/<name>)")
    run_p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set stages.r1-zero.steps=20 "
                       "(stages by index or name; the value is read as YAML); repeatable")
    run_p.add_argument("--plan", action="store_true",
                       help="run nothing: print each stage's parameters, its expected peak memory (worst case) "
                       "against the device's, and what an earlier run in the run directory measured")
    run_p.add_argument("--for", dest="target", default=None, metavar="DEVICE",
                       help="with --plan: plan for another device than this one: cpu or cuda, with :GB and "
                       "xRANKS (e.g. cuda:80x8)")

    eval_p = sub.add_parser("eval", help="evaluate a model directory on a task's held-out split",
                            description="Evaluate an HF-format model directory with the task and the "
                            "settings of the last eval stage of CONFIG; prints the metrics as JSON.")
    eval_p.add_argument("model", help="a model directory (config.json, weights, tokenizer), a .gguf file, "
                        "or pkg:<package>/<file>")
    eval_p.add_argument("--config", default=None, help="config whose task and eval settings to use "
                        "(default: r1-tiny)")
    eval_p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, as for run")

    report_p = sub.add_parser("report", help="write a run's report.md and plots",
                              description="Write RUN_DIR/report.md (stages, eval table, data stats, "
                              "training curves) and its plots in RUN_DIR/plots/; prints the report's path.")
    report_p.add_argument("run_dir", type=Path, help="a run directory (runs/<name>)")

    args = parser.parse_args(argv)
    if args.command == "run" and args.target and not args.plan:
        parser.error("--for plans for a device: use it with --plan")
    from r1lab.config import load_config
    from r1lab.errors import R1labError
    from r1lab.train.preemption import Preempted

    try:
        if args.command == "report":
            return cmd_report(args.run_dir)
        config = load_config(args.config, args.overrides)
        if args.command == "run" and args.plan:
            return cmd_plan(config, args.run_dir, args.target)
        if args.command == "run":
            return cmd_run(config, args.run_dir)
        return cmd_eval(config, args.model)
    except Preempted as e:                       # a signal stopped the run at a safe point
        print(f"r1lab: {e}", file=sys.stderr)
        return e.exit_code
    except R1labError as e:                      # every error r1lab raises on purpose (r1lab/errors.py)
        print(f"r1lab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        print(f"r1lab: error: {e.filename or 'a file'}: {e.strerror}; what was written before is intact "
              f"(checkpoints and run state are written atomically): fix this and run the same command to resume",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("r1lab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def cmd_run(config, run_dir: Path | None) -> int:
    from r1lab.pipeline import run
    from r1lab.report import eval_table, write_report
    from r1lab.train.distributed import from_env

    out = run(config, run_dir)
    if not from_env().is_main:                   # under torchrun, rank 0 reports
        return 0
    table = eval_table(out)
    print(f"\nrun directory: {out}")
    if table:
        print(table)
    print(f"report: {write_report(out)}")
    return 0


def cmd_plan(config, run_dir: Path | None, target: str | None) -> int:
    from r1lab.plan import Plan, parse_target, process_floor, render

    target = parse_target(target, config)
    floor = process_floor(target)
    run_dir = run_dir or Path("runs") / config.name
    plan = Plan(config, target, floor, run_dir)
    print(render(plan.rows(), target, floor, plan.notes))
    return 0


def cmd_report(run_dir: Path) -> int:
    from r1lab.report import write_report

    print(write_report(run_dir))
    return 0


def cmd_eval(config, model_ref: str) -> int:
    import torch

    from r1lab.locate import resolve
    from r1lab.models.io import load_model, quiet_transformers
    from r1lab.stages.context import pick_device
    from r1lab.stages.eval import EvalConfig, evaluate

    evals = [s for s in config.stages if isinstance(s, EvalConfig)]
    cfg = evals[-1] if evals else EvalConfig(kind="eval", name="eval", model=model_ref)
    quiet_transformers()
    model, tokenizer = load_model(resolve(model_ref), pick_device(config.device))
    with torch.no_grad():
        metrics, _ = evaluate(model, tokenizer, cfg.task or config.task, config.seed, cfg)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
