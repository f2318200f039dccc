"""Throughput of the code reward (programs run per second) with the sandbox's bubblewrap layer on
and off, on the same programs in the same run, alternating turns.

The programs are the reference solutions of the synthetic code task (r1lab/data/code.py), each
run on its 4 tests, scored as a batch through the ``rewards:`` spec (parallel workers, one per
core). "Off" keeps the resource limits, the scrubbed environment and the watcher; it drops only
the namespaces. Prints one JSON line.

    python benchmarks/code_reward.py --problems 48 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import time

from r1lab.data.code import sample_code_problems
from r1lab.rewards import RewardSpec, build_rewards, score
from r1lab.rewards import code as code_module
from r1lab.rewards.sandbox import bubblewrap_works, run_program


def timed(problems: list[dict], isolate: bool) -> float:
    """Seconds to score every problem's reference solution; checks they all pass."""
    real = code_module.run_program
    code_module.run_program = lambda *a, **kw: real(*a, **kw, isolate=isolate)
    try:
        answers = [f"<answer>```python\n{p['answer']}\n```</answer>" for p in problems]
        start = time.perf_counter()
        totals, _ = score(build_rewards({"code": RewardSpec(weight=1.0)}), [""] * len(problems), answers, problems)
        seconds = time.perf_counter() - start
    finally:
        code_module.run_program = real
    assert totals == [1.0] * len(problems), totals
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not bubblewrap_works():
        raise SystemExit("bubblewrap (bwrap) is not available here: nothing to compare")
    problems = sample_code_problems(0, args.problems, split="train")
    runs = sum(len(p["tests"]) for p in problems)
    run_program("pass")                                  # warm the interpreter probe and the page cache
    seconds = {"on": [], "off": []}
    for _ in range(args.rounds):
        for mode in ("on", "off"):
            seconds[mode].append(timed(problems, isolate=mode == "on"))
    best = {m: min(s) for m, s in seconds.items()}
    print(json.dumps({
        "benchmark": "code_reward", "programs": runs, "workers": os.cpu_count(), "load_avg": os.getloadavg()[0],
        "programs_per_s_sandbox_on": round(runs / best["on"], 1),
        "programs_per_s_sandbox_off": round(runs / best["off"], 1),
        "on_over_off": round(best["off"] / best["on"], 3),
        "seconds": {m: [round(x, 2) for x in s] for m, s in seconds.items()},
    }))


if __name__ == "__main__":
    main()
