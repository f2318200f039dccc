"""A data stage's ``data.jsonl``, written chunk by chunk so that a crash loses at most one chunk.

Rows of each chunk are appended to ``data.partial.jsonl`` and fsynced; then ``progress.json``
(chunks done, rows written, the stage's running stats) is replaced atomically: that is the
commit point. On resume the partial file is cut back to the rows the progress records, so rows
a crash appended after the last commit are dropped, and the finished file equals an unbroken
run's byte for byte. ``finish`` renames the partial file to ``data.jsonl`` and writes
``stats.json``::

    writer = ChunkedJsonl(out, fresh_stats={"drawn": 0})
    for b in range(writer.chunks, n_chunks):
        writer.commit(rows_of_chunk(b, writer.stats))
    writer.finish()
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from r1lab.io import write_atomic
from r1lab.train.preemption import requested, stopped
from r1lab.train.watchdog import progress


class ChunkedJsonl:
    def __init__(self, out: Path, fresh_stats: dict):
        """Open ``out``'s partial data: resume from ``progress.json``, or start with ``fresh_stats``."""
        self.out = Path(out)
        self.partial, self.progress = self.out / "data.partial.jsonl", self.out / "progress.json"
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.progress.exists():
            for name in ("data.partial.jsonl", "data.jsonl", "stats.json"):
                (self.out / name).unlink(missing_ok=True)
            self.state = {"chunks": 0, "rows": 0, "stats": fresh_stats}
            return
        self.state = json.loads(self.progress.read_text())
        if self.partial.exists():
            data, end = self.partial.read_bytes(), 0
            for _ in range(self.state["rows"]):
                end = data.find(b"\n", end) + 1
                if end == 0:
                    raise RuntimeError(f"{self.partial}: fewer rows than the {self.state['rows']} that "
                                       f"{self.progress} records")
            with open(self.partial, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        elif not (self.out / "data.jsonl").exists():
            raise RuntimeError(f"{self.progress} records {self.state['rows']} rows, but {self.partial} is missing")

    @property
    def chunks(self) -> int:
        """Chunks committed so far: the next one to make."""
        return self.state["chunks"]

    @property
    def stats(self) -> dict:
        return self.state["stats"]

    def commit(self, rows: list[dict]) -> None:
        """Append one chunk's rows, then record it as done (the commit point)."""
        with open(self.partial, "ab") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
            f.flush()
            os.fsync(f.fileno())
        self.state["chunks"], self.state["rows"] = self.state["chunks"] + 1, self.state["rows"] + len(rows)
        write_atomic(self.progress, json.dumps(self.state, ensure_ascii=False) + "\n")
        progress(f"chunk {self.chunks}")
        if requested():                    # a polite stop (r1lab/train/preemption.py): after a commit
            raise stopped(f"after chunk {self.chunks} ({self.state['rows']} rows written)", f"{self.out}: ")

    def finish(self) -> None:
        """``data.jsonl`` and ``stats.json`` in place, the progress file gone."""
        if self.partial.exists():          # absent only when a crash came after this rename
            os.replace(self.partial, self.out / "data.jsonl")
        write_atomic(self.out / "stats.json", json.dumps(self.stats, indent=2) + "\n")
        self.progress.unlink()
