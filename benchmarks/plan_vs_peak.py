"""`r1lab run --plan`'s estimates against each stage's peak RSS, the stage run alone.

A stage's peak in one long run includes what the process kept from the stages before it (the
heap, modules imported), so each stage is run alone here, in a fresh ``r1lab run`` process: a
copy of the config cut after the stage, on a run directory that holds the finished earlier
stages of ``--from`` (linked, not copied), so that only that stage runs. Then the plan is made
against a directory of those alone-run stages, and each stage's estimate (at its measured
completion lengths where it logged them, else the worst case) is compared with its peak.

    r1lab run && python benchmarks/plan_vs_peak.py --from runs/r1-tiny --work /tmp/plan-check
    python benchmarks/plan_vs_peak.py r1-zero-smollm2 --from runs/r1-zero-smollm2 --work /tmp/pc \\
        --stages 0,1,3,4

Prints one JSON line a stage and a last one with the ratios' range and how many are within 25%.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from r1lab.config import config_path, load_config
from r1lab.plan import Plan, parse_target, process_floor


def run_alone(config: str, source: Path, work: Path, index: int, sets: list[str]) -> Path:
    """Run stage ``index`` of ``config`` alone; returns its stage folder."""
    data = yaml.safe_load(config_path(config).read_text())
    stage = data["stages"][index]
    run = work / f"run{index}"
    shutil.rmtree(run, ignore_errors=True)
    (run / "stages").mkdir(parents=True)
    for d in (source / "stages").iterdir():
        if int(d.name.split("-")[0]) < index:
            (run / "stages" / d.name).symlink_to(d.resolve())
    shutil.copy(source / "config.yaml", run / "config.yaml")
    cut = work / f"config{index}.yaml"
    cut.write_text(yaml.safe_dump(dict(data, stages=data["stages"][:index + 1]), sort_keys=False))
    done = subprocess.run(["r1lab", "run", str(cut), "--run-dir", str(run), *sum((["--set", s] for s in sets), [])],
                          capture_output=True, text=True)
    ran = [line for line in done.stdout.splitlines() if line.startswith("[") and "skipped" not in line]
    if done.returncode or any(not line.startswith(f"[{index}]") for line in ran):
        sys.exit(f"stage {index} did not run alone (exit {done.returncode}): {ran} {done.stderr[-400:]}")
    return run / "stages" / f"{index}-{stage['name']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="r1-tiny")
    parser.add_argument("--from", dest="source", type=Path, required=True, help="a finished run of CONFIG")
    parser.add_argument("--work", type=Path, required=True, help="where the alone runs go")
    parser.add_argument("--stages", default=None, help="indices to run alone (default: all)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="--set for the alone runs")
    args = parser.parse_args()
    config = load_config(args.config, args.sets)
    chosen = [int(i) for i in args.stages.split(",")] if args.stages else range(len(config.stages))
    merged = args.work / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    (merged / "stages").mkdir(parents=True)
    for i in chosen:
        folder = run_alone(args.config, args.source, args.work, i, args.sets)
        (merged / "stages" / folder.name).symlink_to(folder.resolve())
    target = parse_target(None, config)
    rows = Plan(config, target, process_floor(target), merged).rows()
    ratios = []
    for r in rows:
        if r["index"] not in chosen or not r["measured"].get("peak_mb"):
            continue
        estimate = r["at_lengths"] or r["peak"]
        ratios.append(estimate / (r["measured"]["peak_mb"] * 1e6))
        print(json.dumps({"stage": r["name"], "kind": r["kind"], "worst_gb": round(r["peak"] / 1e9, 3),
                          "at_lengths_gb": r["at_lengths"] and round(r["at_lengths"] / 1e9, 3),
                          "measured_gb": round(r["measured"]["peak_mb"] / 1e3, 3), "ratio": round(ratios[-1], 3)}))
    print(json.dumps({"stages": len(ratios), "within_25_percent": sum(0.75 <= x <= 1.25 for x in ratios),
                      "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3)}))


if __name__ == "__main__":
    main()
