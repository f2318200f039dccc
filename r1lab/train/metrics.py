"""The one metrics logger: JSON lines with ``stage``, ``step``, ``time_s`` and named values, also
sent to the run's trackers (r1lab/trackers.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from r1lab import trackers
from r1lab.errors import DataError
from r1lab.io import write_atomic


class MetricsLogger:
    """Appends to ``metrics.jsonl``. On resume from ``resume_step`` the lines logged after that
    step (by the run that died) are dropped, so the file reads as one unbroken run. With
    ``write=False`` (a rank other than 0) it keeps time and writes nothing."""

    def __init__(self, path: Path, stage: str, resume_step: int = 0, elapsed_s: float = 0.0, write: bool = True):
        self.path, self.stage, self.write = Path(path), stage, write
        self.start = time.time() - elapsed_s
        if write and self.path.exists():
            kept = [row for row in read_metrics(self.path) if row["step"] <= resume_step]
            write_atomic(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def elapsed(self) -> float:
        return time.time() - self.start

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.write:
            return
        row = {"stage": self.stage, "step": step, "time_s": round(self.elapsed(), 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        trackers.log(self.stage, step, {k: v for k, v in row.items() if k not in ("stage", "step")})


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics file. A last line cut short (a crash or a full disk mid-append) is
    dropped; any other line that is not a JSON object with a ``step`` is a :class:`DataError`
    naming the file and line."""
    lines = [(i, line) for i, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1) if line.strip()]
    rows = []
    for k, (i, line) in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not an object with an integer step")
        except ValueError as e:
            if k == len(lines) - 1:
                break                                                     # torn by a crash: dropped
            raise DataError(f"{path}:{i}: not a metrics line ({e})") from None
        rows.append(row)
    return rows
