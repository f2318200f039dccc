"""The one metrics logger: JSON lines with ``stage``, ``step``, ``time_s`` and named values."""

from __future__ import annotations

import json
import time
from pathlib import Path

from r1lab.train.checkpoint import write_atomic


class MetricsLogger:
    """Appends to ``metrics.jsonl``. On resume from ``resume_step`` the lines logged after that
    step (by the run that died) are dropped, so the file reads as one unbroken run. With
    ``write=False`` (a rank other than 0) it keeps time and writes nothing."""

    def __init__(self, path: Path, stage: str, resume_step: int = 0, elapsed_s: float = 0.0, write: bool = True):
        self.path, self.stage, self.write = Path(path), stage, write
        self.start = time.time() - elapsed_s
        if write and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            write_atomic(self.path, "".join(line + "\n" for line in kept))

    def elapsed(self) -> float:
        return time.time() - self.start

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.write:
            return
        row = {"stage": self.stage, "step": step, "time_s": round(self.elapsed(), 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
