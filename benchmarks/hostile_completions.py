"""The worst time one reward call takes on a hostile completion (tests/test_rewards.py's set:
thousands of tags, 100k-character and 5,000-digit answers, exponent towers, nested fractions),
per rule reward, against math-verify's budget. Each string is scored twice; the second call
after a worker was killed includes waiting for the fresh worker. Prints one JSON line.

    python benchmarks/hostile_completions.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_rewards import HOSTILE_COMPLETIONS  # noqa: E402

from r1lab.rewards import REWARDS  # noqa: E402
from r1lab.rewards.verify_worker import BUDGET_S, MAX_CHARS, WORKER  # noqa: E402


def main() -> None:
    example = {"question": "7+8", "answer": "15"}
    WORKER.equivalent("1", "1")                                  # the worker's start is not a call's cost
    worst: dict[str, tuple[float, str]] = {}
    for name, text in HOSTILE_COMPLETIONS.items():
        for _ in range(2):
            for reward in ("accuracy", "math_verify", "format", "language"):
                start = time.perf_counter()
                REWARDS[reward](text, example)
                seconds = time.perf_counter() - start
                if seconds > worst.get(reward, (0.0, ""))[0]:
                    worst[reward] = (seconds, name)
    print(json.dumps({"benchmark": "hostile_completions", "strings": len(HOSTILE_COMPLETIONS),
                      "math_verify_budget_s": BUDGET_S, "max_chars": MAX_CHARS,
                      "worst_s": {r: round(s, 3) for r, (s, _) in worst.items()},
                      "worst_string": {r: n for r, (_, n) in worst.items()}}))


if __name__ == "__main__":
    main()
